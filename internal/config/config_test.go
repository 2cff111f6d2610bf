package config_test

import (
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/credflow/credflow/internal/config"
)

const valid = `
workload_api: unix:///run/spire/agent.sock
admin: 127.0.0.1:15000
log: {level: debug, format: text}
timeouts: {handshake: 3s, drain: 1m}
limits: {max_connections: 50}
inbound:
  - name: app
    listen: 0.0.0.0:15006
    app: 127.0.0.1:8080
    allow: [spiffe://example.org/frontend, spiffe://example.org/ns/*]
outbound:
  - name: backend
    listen: 127.0.0.1:15001
    upstream: backend.svc:15006
    expect: [spiffe://example.org/backend]
`

func TestParseValid(t *testing.T) {
	c, err := config.Parse([]byte(valid))
	if err != nil {
		t.Fatal(err)
	}
	if c.HandshakeTimeout != 3*time.Second || c.DrainTimeout != time.Minute || c.IdleTimeout != config.DefaultIdleTimeout ||
		c.MaxConnections != 50 || c.LogLevel != "debug" || c.LogFormat != "text" {
		t.Fatalf("parsed %+v", c)
	}
	if !c.Inbound[0].Allow.Allows(spiffeid.RequireFromString("spiffe://example.org/ns/x")) ||
		c.Inbound[0].Allow.Allows(spiffeid.RequireFromString("spiffe://example.org/nsx")) {
		t.Fatal("inbound policy wrong")
	}
	if !c.Outbound[0].Expect.Allows(spiffeid.RequireFromString("spiffe://example.org/backend")) {
		t.Fatal("outbound policy wrong")
	}
}

// TestParseErrors is B22: typos, unknown fields, bad SPIFFE IDs and port
// clashes are refused at load with the field named.
func TestParseErrors(t *testing.T) {
	in := func(extra string) string {
		return "inbound:\n  - name: app\n    listen: 127.0.0.1:15006\n    app: 127.0.0.1:8080\n    allow: [spiffe://example.org/a]\n" + extra
	}
	tests := []struct{ name, file, want string }{
		{"typo'd field", "inbound:\n  - name: app\n    listen: :1\n    app: 127.0.0.1:2\n    alow: [spiffe://a/b]\n", "field alow not found"},
		{"unknown top-level", in("tiemouts: {idle: 1s}\n"), "field tiemouts not found"},
		{"bad SPIFFE ID", "inbound:\n  - name: app\n    listen: :1\n    app: 127.0.0.1:2\n    allow: [spiffe://Example.org/a]\n", "inbound[0].allow[0]"},
		{"wildcard in the middle", "inbound:\n  - name: app\n    listen: :1\n    app: 127.0.0.1:2\n    allow: [spiffe://a/*/b]\n", "inbound[0].allow[0]"},
		{"empty allow", "inbound:\n  - name: app\n    listen: :1\n    app: 127.0.0.1:2\n    allow: []\n", "inbound[0].allow: at least one"},
		{"app not on loopback", "inbound:\n  - name: app\n    listen: :1\n    app: 10.0.0.1:2\n    allow: [spiffe://a]\n", "inbound[0].app"},
		{"admin not on loopback", in("admin: 0.0.0.0:15000\n"), "admin:"},
		{"admin on a pod IP", in("admin: 10.1.2.3:15000\n"), "admin:"},
		{"token endpoint not on loopback", in("token_endpoint: 0.0.0.0:15080\n"), "token_endpoint:"},
		{"app_response_timeout on a TCP listener", "inbound:\n  - name: app\n    listen: :1\n    app: 127.0.0.1:2\n    allow: [spiffe://a]\n    app_response_timeout: 5s\n", "need protocol: http"},
		{"port clash", in("outbound:\n  - name: b\n    listen: 127.0.0.1:15006\n    upstream: x:1\n    expect: [spiffe://a]\n"), "outbound[0].listen: 127.0.0.1:15006 clashes with inbound[0].listen"},
		{"clash with a wildcard host", in("outbound:\n  - name: b\n    listen: 0.0.0.0:15006\n    upstream: x:1\n    expect: [spiffe://a]\n"), "clashes"},
		{"clash with admin", in("admin: 127.0.0.1:15006\n"), "clashes with admin"},
		{"duplicate name", in("outbound:\n  - name: app\n    listen: 127.0.0.1:1\n    upstream: x:1\n    expect: [spiffe://a]\n"), "outbound[0].name: \"app\" is also the name of inbound[0]"},
		{"bad port", in("outbound:\n  - name: b\n    listen: 127.0.0.1:http\n    upstream: x:1\n    expect: [spiffe://a]\n"), "outbound[0].listen"},
		{"bad duration", in("timeouts: {idle: 5}\n"), "not a duration"},
		{"negative duration", in("timeouts: {idle: -5s}\n"), "must be positive"},
		{"bad log level", in("log: {level: loud}\n"), "log.level"},
		{"no listeners", "admin: 127.0.0.1:15000\n", "no inbound or outbound listener"},
		{"empty file", "", "empty"},
		{"two documents", in("---\nadmin: 127.0.0.1:1\n"), "more than one YAML document"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := config.Parse([]byte(tt.file))
			if err == nil {
				t.Fatalf("parsed: %+v", c)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error %q does not contain %q", err, tt.want)
			}
		})
	}
}

const edgeConfig = `
edge:
  issuers:
    - issuer: https://idp.example
      audiences: [orders]
      algorithms: [RS256, ES256]
      jwks_url: https://idp.example/jwks
      jwks_refresh: 1m
  txn_token: {ttl: 30s, scopes: [orders.read]}
outbound:
  - name: middle
    listen: 127.0.0.1:15001
    upstream: middle:15006
    expect: [spiffe://example.org/middle]
    protocol: http
    exchange: true
inbound:
  - name: app
    listen: :15006
    app: 127.0.0.1:8080
    allow: [spiffe://example.org]
    protocol: http
    routes: [{peers: [spiffe://example.org], paths: [/*]}]
    txn_token: {require: true, minters: [spiffe://example.org/edge]}
`

func TestParseEdge(t *testing.T) {
	c, err := config.Parse([]byte(edgeConfig))
	if err != nil {
		t.Fatal(err)
	}
	e := c.Edge
	if e == nil || len(e.Issuers) != 1 || e.Issuers[0].JWKSRefresh != time.Minute || e.TxnTTL != 30*time.Second || e.KeepExternal {
		t.Fatalf("edge %+v", e)
	}
	if !c.Outbound[0].HTTP.Exchange {
		t.Error("exchange not set on the outbound listener")
	}
	h := c.Inbound[0].HTTP
	if !h.RequireTxn || !h.TxnMinters.Allows(spiffeid.RequireFromString("spiffe://example.org/edge")) ||
		h.TxnMinters.Allows(spiffeid.RequireFromString("spiffe://example.org/middle")) {
		t.Errorf("inbound txn policy: require %v, minters %v", h.RequireTxn, h.TxnMinters.Patterns())
	}
	bad := []struct{ name, from, to, want string }{
		{"http JWKS URL", "https://idp.example/jwks", "http://idp.example/jwks", "edge.issuers[0].jwks_url"},
		{"HMAC algorithm", "[RS256, ES256]", "[HS256]", "edge.issuers[0].algorithms[0]"},
		{"no audience", "audiences: [orders]", "audiences: []", "edge.issuers[0].audiences"},
		{"file and URL", "jwks_refresh: 1m", "jwks_file: /x", "exactly one of jwks_file and jwks_url"},
		{"long-lived txn tokens", "ttl: 30s", "ttl: 1h", "edge.txn_token.ttl"},
		{"require without minters", "minters: [spiffe://example.org/edge]", "minters: []", "inbound[0].txn_token.minters"},
		{"bad minter", "minters: [spiffe://example.org/edge]", "minters: [edge]", "inbound[0].txn_token.minters[0]"},
		{"exchange on tcp", "    protocol: http\n    exchange", "    exchange", "outbound[0].protocol"},
	}
	for _, tc := range bad {
		t.Run(tc.name, func(t *testing.T) {
			file := strings.Replace(edgeConfig, tc.from, tc.to, 1)
			if file == edgeConfig {
				t.Fatalf("%q not in the config", tc.from)
			}
			_, err := config.Parse([]byte(file))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want one naming %q", err, tc.want)
			}
		})
	}
	_, rest, _ := strings.Cut(edgeConfig, "outbound:")
	if _, err := config.Parse([]byte("outbound:" + rest)); err == nil || !strings.Contains(err.Error(), "outbound[0].exchange: needs an edge section") {
		t.Errorf("exchange without an edge section: %v", err)
	}
}

func FuzzParse(f *testing.F) {
	f.Add([]byte(valid))
	f.Add([]byte("inbound: [{name: a, listen: ':1', app: '127.0.0.1:2', allow: ['spiffe://a/*']}]\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := config.Parse(data)
		if err != nil {
			return
		}
		if len(c.Inbound)+len(c.Outbound) == 0 || c.MaxConnections <= 0 || c.HandshakeTimeout <= 0 {
			t.Fatalf("invalid config accepted: %+v", c)
		}
	})
}

func TestParseSessionResumption(t *testing.T) {
	for file, want := range map[string]bool{
		valid: false,
		valid + "tls: {session_resumption: true}\n":  false,
		valid + "tls: {session_resumption: false}\n": true,
	} {
		c, err := config.Parse([]byte(file))
		if err != nil {
			t.Fatal(err)
		}
		if c.NoResumption != want {
			t.Errorf("NoResumption = %v, want %v for\n%s", c.NoResumption, want, file)
		}
	}
}

func TestParseCapture(t *testing.T) {
	const file = `
outbound:
  - name: capture
    listen: 127.0.0.1:15001
    capture:
      destinations:
        - {cidr: 10.96.0.0/12, port: 8080, expect: [spiffe://example.org/backend]}
        - {port: 5432, expect: [spiffe://example.org/db]}
        - {host: backend.shop.svc.cluster.local., port: 8080, expect: [spiffe://example.org/backend]}
`
	c, err := config.Parse([]byte(file))
	if err != nil {
		t.Fatal(err)
	}
	cp := c.Outbound[0].Capture
	if cp == nil || len(cp.Destinations) != 3 || cp.Destinations[2].Host != "backend.shop.svc.cluster.local" || cp.Destinations[0].Prefix.String() != "10.96.0.0/12" || cp.Destinations[1].Port != 5432 ||
		!cp.Destinations[1].Expect.Allows(spiffeid.RequireFromString("spiffe://example.org/db")) {
		t.Fatalf("capture %+v", cp)
	}
	for _, bad := range []struct{ name, from, to, want string }{
		{"with an upstream", "    capture:", "    upstream: x:1\n    capture:", "outbound[0].upstream"},
		{"bad CIDR", "10.96.0.0/12", "10.96.0.0/40", "outbound[0].capture.destinations[0].cidr"},
		{"neither CIDR nor port nor host", "{port: 5432, ", "{", "outbound[0].capture.destinations[1]: a cidr, a port, a host"},
		{"bad host", "{port: 5432, ", "{host: \"db:5432\", ", "outbound[0].capture.destinations[1].host"},
		{"no expect", ", expect: [spiffe://example.org/db]", "", "outbound[0].capture.destinations[1].expect"},
		{"over QUIC", "    capture:", "    transport: quic\n    capture:", "outbound[0].capture: capture carries protocol tcp over transport tcp only"},
	} {
		t.Run(bad.name, func(t *testing.T) {
			f := strings.Replace(file, bad.from, bad.to, 1)
			if f == file {
				t.Fatalf("%q not in the file", bad.from)
			}
			if _, err := config.Parse([]byte(f)); err == nil || !strings.Contains(err.Error(), bad.want) {
				t.Fatalf("error %v, want one naming %q", err, bad.want)
			}
		})
	}
}

func TestParseConnectionLifetime(t *testing.T) {
	c, err := config.Parse([]byte(valid))
	if err != nil {
		t.Fatal(err)
	}
	if c.MaxConnectionAge != 0 || c.CloseOnPeerExpiry {
		t.Errorf("defaults: max_connection_age %v, close_on_peer_expiry %v; want no limit and false", c.MaxConnectionAge, c.CloseOnPeerExpiry)
	}
	with := func(timeouts string) string {
		return strings.Replace(valid, "timeouts: {handshake: 3s, drain: 1m}", "timeouts: {"+timeouts+"}", 1)
	}
	c, err = config.Parse([]byte(with("max_connection_age: 24h, close_on_peer_expiry: true")))
	if err != nil {
		t.Fatal(err)
	}
	if c.MaxConnectionAge != 24*time.Hour || !c.CloseOnPeerExpiry {
		t.Errorf("max_connection_age %v, close_on_peer_expiry %v; want 24h and true", c.MaxConnectionAge, c.CloseOnPeerExpiry)
	}
	if _, err := config.Parse([]byte(with("max_connection_age: 0s"))); err == nil || !strings.Contains(err.Error(), "positive") {
		t.Errorf("max_connection_age: 0s accepted: %v", err)
	}
}
