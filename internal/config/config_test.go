package config_test

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/credflow/credflow/internal/config"
	"github.com/credflow/credflow/proxy/defaults"
)

const valid = `
version: 1
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
	if c.HandshakeTimeout != 3*time.Second || c.DrainTimeout != time.Minute || c.IdleTimeout != defaults.IdleTimeout ||
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
		{"typo'd field", "inbound:\n  - name: app\n    listen: :1\n    app: 127.0.0.1:2\n    alow: [spiffe://a/b]\n", "inbound[0].alow: unknown field (did you mean allow?)"},
		{"unknown top-level", in("tiemouts: {idle: 1s}\n"), "tiemouts: unknown field (did you mean timeouts?)"},
		{"bad SPIFFE ID", "inbound:\n  - name: app\n    listen: :1\n    app: 127.0.0.1:2\n    allow: [spiffe://Example.org/a]\n", "inbound[0].allow[0]"},
		{"wildcard in the middle", "inbound:\n  - name: app\n    listen: :1\n    app: 127.0.0.1:2\n    allow: [spiffe://a/*/b]\n", "inbound[0].allow[0]"},
		{"empty allow", "inbound:\n  - name: app\n    listen: :1\n    app: 127.0.0.1:2\n    allow: []\n", "inbound[0].allow: at least one"},
		{"app not on loopback", "inbound:\n  - name: app\n    listen: :1\n    app: 10.0.0.1:2\n    allow: [spiffe://a]\n", "inbound[0].app"},
		{"admin not on loopback", in("admin: 0.0.0.0:15000\n"), "admin:"},
		{"a file format from the future", in("version: 2\n"), "version: 2 is not a version this credflow reads (1)"},
		{"admin on a pod IP", in("admin: 10.1.2.3:15000\n"), "admin:"},
		{"token endpoint not on loopback", in("token_endpoint: 0.0.0.0:15080\n"), "token_endpoint.listen:"},
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
		{"leeway over a minute", "edge:\n", "jwt: {leeway: 2m}\nedge:\n", "jwt.leeway"},
		{"http JWKS URL", "https://idp.example/jwks", "http://idp.example/jwks", "edge.issuers[0].jwks_url"},
		{"HMAC algorithm", "[RS256, ES256]", "[HS256]", "edge.issuers[0].algorithms[0]"},
		{"no audience", "audiences: [orders]", "audiences: []", "edge.issuers[0].audiences"},
		{"file and URL", "jwks_refresh: 1m", "jwks_file: /x", "exactly one of jwks_file and jwks_url"},
		{"long-lived txn tokens", "ttl: 30s", "ttl: 1h", "edge.txn_token.ttl"},
		{"txn tokens over five minutes", "ttl: 30s", "ttl: 6m", "edge.txn_token.ttl"},
		{"txn audience not a SPIFFE ID", "ttl: 30s,", "ttl: 30s, audience: orders-api,", "edge.txn_token.audience"},
		{"txn audience: a workload and its trust domain", "ttl: 30s,", "ttl: 30s, audience: [spiffe://example.org, spiffe://example.org/orders],", "edge.txn_token.audience"},
		{"txn audience not a list of strings", "ttl: 30s,", "ttl: 30s, audience: {a: b},", "edge.txn_token.audience: expected a list, got a mapping"},
		{"single_use without minters", "txn_token: {require: true, minters: [spiffe://example.org/edge]}", "txn_token: {single_use: true}", "inbound[0].txn_token.minters"},
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
			var errs config.Errors
			if strings.Contains(err.Error(), "struct {") || errors.As(err, &errs) && len(errs) == 0 {
				t.Fatalf("error %q: a Go type, or no error listed", err)
			}
			for _, e := range errs {
				if e.Path == "" || e.Msg == "" {
					t.Fatalf("error without a field path or message: %q in %q", e, err)
				}
			}
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

// TestParseDebugPprof: debug.pprof is off unless the file turns it on;
// it is not a field a running sidecar takes from a reload.
func TestParseDebugPprof(t *testing.T) {
	for _, tc := range []struct {
		name, file string
		want       bool
	}{
		{"absent", valid, false},
		{"off", valid + "debug: {pprof: false}\n", false},
		{"on", valid + "debug: {pprof: true}\n", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := config.Parse([]byte(tc.file))
			if err != nil {
				t.Fatal(err)
			}
			if c.Pprof != tc.want {
				t.Errorf("Pprof = %v, want %v", c.Pprof, tc.want)
			}
		})
	}
	if _, err := config.Parse([]byte(valid + "debug: {prof: true}\n")); err == nil || !strings.Contains(err.Error(), "debug.prof: unknown field (did you mean pprof?)") {
		t.Errorf("a typo'd debug field: %v", err)
	}
	off, err := config.Parse([]byte(valid))
	if err != nil {
		t.Fatal(err)
	}
	on, err := config.Parse([]byte(valid + "debug: {pprof: true}\n"))
	if err != nil {
		t.Fatal(err)
	}
	if hot, restart := config.Diff(off, on); len(hot) != 0 || !cmp.Equal(restart, []string{"debug.pprof"}) {
		t.Errorf("Diff: hot %v, restart %v; want debug.pprof to need a restart", hot, restart)
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
        - {cidr: "fd00:10:96::1/112", port: 8080, expect: [spiffe://example.org/backend]}
`
	c, err := config.Parse([]byte(file))
	if err != nil {
		t.Fatal(err)
	}
	cp := c.Outbound[0].Capture
	if cp == nil || len(cp.Destinations) != 4 || cp.Destinations[3].Prefix.String() != "fd00:10:96::/112" || cp.Destinations[2].Host != "backend.shop.svc.cluster.local" || cp.Destinations[0].Prefix.String() != "10.96.0.0/12" || cp.Destinations[1].Port != 5432 ||
		!cp.Destinations[1].Expect.Allows(spiffeid.RequireFromString("spiffe://example.org/db")) {
		t.Fatalf("capture %+v", cp)
	}
	for _, bad := range []struct{ name, from, to, want string }{
		{"with an upstream", "    capture:", "    upstream: x:1\n    capture:", "outbound[0].upstream"},
		{"bad CIDR", "10.96.0.0/12", "10.96.0.0/40", "outbound[0].capture.destinations[0].cidr"},
		{"bad IPv6 CIDR", "fd00:10:96::1/112", "fd00:10:96::1/129", "outbound[0].capture.destinations[3].cidr"},
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

// TestParseRouteUpgrade: a route lists the protocols its requests may
// switch to; h2c and anything that is not a single protocol token are
// refused at load with the field named.
func TestParseRouteUpgrade(t *testing.T) {
	file := func(upgrade string) string {
		return "inbound:\n  - name: app\n    listen: 127.0.0.1:15006\n    app: 127.0.0.1:8080\n    allow: [spiffe://example.org]\n" +
			"    protocol: http\n    routes:\n      - peers: [spiffe://example.org/frontend]\n        methods: [GET]\n        paths: [/ws/*]\n" +
			"        upgrade: " + upgrade + "\n      - peers: [spiffe://example.org/frontend]\n        paths: [/api/*]\n"
	}
	c, err := config.Parse([]byte(file("[websocket]")))
	if err != nil {
		t.Fatal(err)
	}
	front := spiffeid.RequireFromString("spiffe://example.org/frontend")
	routes := c.Inbound[0].HTTP.Routes
	if !routes.AllowsUpgrade(front, "GET", "/ws/chat", "websocket") || routes.AllowsUpgrade(front, "GET", "/api/x", "websocket") {
		t.Errorf("upgrade rules: %+v", routes.Rules)
	}
	for _, bad := range []string{"[h2c]", "[H2C]", "[websocket, h2c]", "['']", "['web socket']", "['websocket,foo']"} {
		if c, err := config.Parse([]byte(file(bad))); err == nil || !strings.Contains(err.Error(), "inbound[0].routes[0].upgrade") {
			t.Errorf("upgrade: %s: %v, %+v", bad, err, c)
		}
	}
	if _, err := config.Parse([]byte(strings.Replace(file("[websocket]"), "protocol: http\n", "protocol: http\n    app_protocol: h2c\n", 1))); err == nil ||
		!strings.Contains(err.Error(), "inbound[0].routes[0].upgrade: needs app_protocol http1") {
		t.Errorf("upgrade towards an h2c app: %v", err)
	}
	tcp := "inbound:\n  - name: app\n    listen: 127.0.0.1:15006\n    app: 127.0.0.1:8080\n    allow: [spiffe://example.org]\n"
	if _, err := config.Parse([]byte(tcp + "    routes: [{peers: [spiffe://example.org], paths: [/*], upgrade: [websocket]}]\n")); err == nil {
		t.Error("routes on a TCP listener parsed")
	}
}

// TestParseJWTLeeway: jwt.leeway, the clock skew tolerated on every token
// (JWT-SVIDs, external tokens, transaction tokens), defaults to a minute
// and reaches each validator's settings.
func TestParseJWTLeeway(t *testing.T) {
	c, err := config.Parse([]byte(edgeConfig))
	if err != nil {
		t.Fatal(err)
	}
	if c.JWTLeeway != time.Minute || c.Edge.Leeway != time.Minute || c.Inbound[0].HTTP.TxnLeeway != time.Minute {
		t.Errorf("default leeway: jwt %v, edge %v, txn %v; want 1m", c.JWTLeeway, c.Edge.Leeway, c.Inbound[0].HTTP.TxnLeeway)
	}
	c, err = config.Parse([]byte("jwt: {leeway: 15s}\n" + edgeConfig))
	if err != nil {
		t.Fatal(err)
	}
	if c.JWTLeeway != 15*time.Second || c.Edge.Leeway != 15*time.Second || c.Inbound[0].HTTP.TxnLeeway != 15*time.Second {
		t.Errorf("leeway 15s: jwt %v, edge %v, txn %v", c.JWTLeeway, c.Edge.Leeway, c.Inbound[0].HTTP.TxnLeeway)
	}
}

// TestParseTxnAudienceAndSingleUse: edge.txn_token.audience is one SPIFFE ID
// or a list (the next hops); txn_token.single_use reaches the listener.
func TestParseTxnAudienceAndSingleUse(t *testing.T) {
	c, err := config.Parse([]byte(edgeConfig))
	if err != nil {
		t.Fatal(err)
	}
	if c.Edge.TxnAudiences != nil || c.Inbound[0].HTTP.TxnSingleUse {
		t.Errorf("defaults: audiences %q (want none: the trust domain), single use %v", c.Edge.TxnAudiences, c.Inbound[0].HTTP.TxnSingleUse)
	}
	for _, tc := range []struct {
		yaml string
		want []string
	}{
		{"audience: spiffe://example.org/orders", []string{"spiffe://example.org/orders"}},
		{"audience: [spiffe://example.org/orders, spiffe://example.org/payments]", []string{"spiffe://example.org/orders", "spiffe://example.org/payments"}},
		{"audience: spiffe://example.org", []string{"spiffe://example.org"}},
	} {
		file := strings.Replace(edgeConfig, "ttl: 30s,", "ttl: 30s, "+tc.yaml+",", 1)
		file = strings.Replace(file, "txn_token: {require: true,", "txn_token: {single_use: true, require: true,", 1)
		c, err := config.Parse([]byte(file))
		if err != nil {
			t.Fatalf("%s: %v", tc.yaml, err)
		}
		if strings.Join(c.Edge.TxnAudiences, " ") != strings.Join(tc.want, " ") {
			t.Errorf("%s: audiences %q", tc.yaml, c.Edge.TxnAudiences)
		}
		if !c.Inbound[0].HTTP.TxnSingleUse {
			t.Errorf("single_use: true not set on the listener")
		}
	}
}

// TestParseErrorsAllAtOnce: every problem in a file is reported in one go,
// one per line in file order, each naming its field path and line; an
// unknown field suggests the field meant, and no Go type is ever dumped.
func TestParseErrorsAllAtOnce(t *testing.T) {
	const listener = "inbound:\n  - name: app\n    listen: 127.0.0.1:15006\n    app: 127.0.0.1:8080\n    allow: [spiffe://example.org/a]\n"
	tests := []struct {
		name, file string
		want       []string
	}{
		{"typo'd field", "inbound:\n  - name: app\n    listen: 127.0.0.1:15006\n    app: 127.0.0.1:8080\n    alow: [spiffe://example.org/a]\n",
			[]string{"line 5: inbound[0].alow: unknown field (did you mean allow?)"}},
		{"nested typo", listener + "    protocol: http\n    routes: [{peers: [spiffe://example.org], paths: [/*]}]\n    jwt: {requier: true}\n",
			[]string{"line 8: inbound[0].jwt.requier: unknown field (did you mean require?)"}},
		{"prefix of a field", listener + "limits: {max_conn: 5}\n",
			[]string{"line 6: limits.max_conn: unknown field (did you mean max_connections?)"}},
		{"nothing like it", listener + "colour: blue\n", []string{"line 6: colour: unknown field"}},
		{"set twice", listener + "admin: 127.0.0.1:1\nadmin: 127.0.0.1:2\n",
			[]string{"line 7: admin: set twice (first on line 6)"}},
		{"several at once", "tiemouts: {idle: 1s}\n" + listener + "timeouts: {idle: 5, drain: -1s, dial: 3s}\nlimits: {max_connections: many}\n" +
			"tls: {session_resumption: maybe}\nlog: {level: loud}\noutbound:\n  - name: b\n    listen: 127.0.0.1:15006\n    upstream: x:1\n    expect: spiffe://example.org/b\n",
			[]string{
				"line 1: tiemouts: unknown field (did you mean timeouts?)",
				`line 7: timeouts.idle: "5" is not a duration such as 10s or 1m30s`,
				`line 7: timeouts.drain: "-1s" must be positive`,
				`line 8: limits.max_connections: "many" is not a whole number`,
				`line 9: tls.session_resumption: "maybe" is not true or false`,
				`line 10: log.level: "loud" is not debug, info, warn or error`,
				"line 13: outbound[0].listen: 127.0.0.1:15006 clashes with inbound[0].listen (127.0.0.1:15006)",
				"line 15: outbound[0].expect: expected a list, got \"spiffe://example.org/b\"",
			}},
		{"wrong kinds", "timeouts: 5s\ninbound:\n  - name: app\n    listen: 127.0.0.1:15006\n    app: {host: x}\n    allow: [[spiffe://example.org/a]]\n",
			[]string{
				`line 1: timeouts: expected a mapping, got "5s"`,
				"line 5: inbound[0].app: expected a single value, got a mapping",
				"line 6: inbound[0].allow[0]: expected a single value, got a list",
			}},
		{"semantic errors with lines", "inbound:\n  - listen: 127.0.0.1:1\n    app: 10.0.0.1:2\n    allow: [spiffe://example.org/a, spiffe://Bad/x]\n",
			[]string{
				"line 2: inbound[0].name: required",
				`line 3: inbound[0].app: "10.0.0.1:2": must be a loopback address (127.0.0.1, [::1] or localhost)`,
				`line 4: inbound[0].allow[1]: authz: pattern "spiffe://Bad/x": trust domain characters are limited to lowercase letters, numbers, dots, dashes, and underscores`,
			}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := config.Parse([]byte(tt.file))
			if err == nil {
				t.Fatalf("parsed: %+v", c)
			}
			want := "config: invalid:\n" + strings.Join(tt.want, "\n")
			if diff := cmp.Diff(want, err.Error()); diff != "" {
				t.Errorf("error (-want +got):\n%s", diff)
			}
			var errs config.Errors
			if !errors.As(err, &errs) || len(errs) != len(tt.want) {
				t.Fatalf("errors.As(config.Errors): %v, %d errors", errs, len(errs))
			}
		})
	}
}

// TestPolicyTrustDomains: every trust domain a policy names (allow,
// expect, route peers, transaction-token minters, capture destinations),
// with the fields naming it.
func TestPolicyTrustDomains(t *testing.T) {
	const file = `
inbound:
  - name: api
    listen: 127.0.0.1:15006
    app: 127.0.0.1:8080
    protocol: http
    allow: [spiffe://example.org, spiffe://partner.example/ns/*]
    routes:
      - {peers: [spiffe://partner.example/billing], paths: [/*]}
    txn_token: {require: true, minters: [spiffe://edge.example/gw]}
outbound:
  - name: backend
    listen: 127.0.0.1:15001
    upstream: backend:15006
    expect: [spiffe://example.org/backend]
  - name: capture
    listen: 127.0.0.1:15002
    capture:
      destinations: [{port: 5432, expect: [spiffe://db.example/pg]}]
`
	c, err := config.Parse([]byte(file))
	if err != nil {
		t.Fatal(err)
	}
	want := []config.PolicyTrustDomain{
		{TrustDomain: "db.example", Fields: []string{"outbound[1].capture.destinations[0].expect"}},
		{TrustDomain: "edge.example", Fields: []string{"inbound[0].txn_token.minters"}},
		{TrustDomain: "example.org", Fields: []string{"inbound[0].allow", "outbound[0].expect"}},
		{TrustDomain: "partner.example", Fields: []string{"inbound[0].allow", "inbound[0].routes[0].peers"}},
	}
	if diff := cmp.Diff(want, c.PolicyTrustDomains()); diff != "" {
		t.Errorf("PolicyTrustDomains (-want +got):\n%s", diff)
	}
}

// TestParseHTTPInboundLimits is S15-9's configuration: an HTTP inbound
// listener's app connections, HTTP/2 streams per peer connection and app
// response timeout, left to proxy's defaults when absent, "0" turning the
// response timeout off.
func TestParseHTTPInboundLimits(t *testing.T) {
	const base = "inbound:\n  - name: api\n    listen: :15007\n    app: 127.0.0.1:8081\n    allow: [spiffe://example.org]\n    protocol: http\n    routes: [{peers: [spiffe://example.org], paths: [/*]}]\n"
	for _, tc := range []struct {
		extra            string
		timeout          time.Duration
		conns, maxStream int
	}{
		{"", 0, 0, 0}, // proxy's defaults
		{"    app_response_timeout: 0\n", -1, 0, 0},
		{"    app_response_timeout: 0s\n", -1, 0, 0},
		{"    app_response_timeout: 5m\n    app_connections: 16\n    max_concurrent_streams: 250\n", 5 * time.Minute, 16, 250},
	} {
		c, err := config.Parse([]byte(base + tc.extra))
		if err != nil {
			t.Fatalf("%q: %v", tc.extra, err)
		}
		h := c.Inbound[0].HTTP
		if h.ResponseHeaderTimeout != tc.timeout || h.AppConnections != tc.conns || h.MaxConcurrentStreams != tc.maxStream {
			t.Errorf("%q: timeout %v, app connections %d, streams %d; want %v, %d, %d", tc.extra,
				h.ResponseHeaderTimeout, h.AppConnections, h.MaxConcurrentStreams, tc.timeout, tc.conns, tc.maxStream)
		}
	}
	for extra, want := range map[string]string{
		"    app_connections: -1\n":                "inbound[0].app_connections: must be positive",
		"    max_concurrent_streams: -5\n":         "inbound[0].max_concurrent_streams: must be positive",
		"    max_concurrent_streams: 3000000000\n": "inbound[0].max_concurrent_streams: at most 2147483647",
		"    app_response_timeout: -1s\n":          "must be positive",
		"    app_response_timeout: forever\n":      "not a duration",
	} {
		if _, err := config.Parse([]byte(base + extra)); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: error %v, want one naming %q", extra, err, want)
		}
	}
	tcp := "inbound:\n  - name: app\n    listen: :1\n    app: 127.0.0.1:2\n    allow: [spiffe://a]\n"
	for _, extra := range []string{"    app_connections: 8\n", "    max_concurrent_streams: 8\n"} {
		if _, err := config.Parse([]byte(tcp + extra)); err == nil || !strings.Contains(err.Error(), "need protocol: http") {
			t.Errorf("%q on a TCP listener: %v", extra, err)
		}
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
