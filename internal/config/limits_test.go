package config_test

import (
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/credflow/credflow/internal/config"
	"github.com/credflow/credflow/proxy/limit"
)

const limitsConfig = `
inbound:
  - name: api
    listen: 0.0.0.0:15006
    app: 127.0.0.1:8080
    allow: [spiffe://example.org]
    protocol: http
    routes: [{peers: [spiffe://example.org], paths: [/*]}]
    limits:
      requests:
        total: {rate: 1000, burst: 200}
        per_identity: {rate: 50}
        overrides:
          - {peers: [spiffe://example.org/batch/*], rate: 2.5, burst: 5}
      connections:
        per_identity: {rate: 10, burst: 20}
      concurrent_per_identity: 50
      max_identities: 20000
`

// TestParseLimits: an inbound listener's limits, the burst defaulting to
// one second's worth; mistakes refused at load with the field named.
func TestParseLimits(t *testing.T) {
	c, err := config.Parse([]byte(limitsConfig))
	if err != nil {
		t.Fatal(err)
	}
	l := c.Inbound[0].Limits
	if l.Requests.Total != (limit.Rate{PerSecond: 1000, Burst: 200}) || l.Requests.PerIdentity != (limit.Rate{PerSecond: 50, Burst: 50}) ||
		len(l.Requests.Overrides) != 1 || l.Requests.Overrides[0].Rate != (limit.Rate{PerSecond: 2.5, Burst: 5}) ||
		!l.Requests.Overrides[0].Peers.Allows(spiffeid.RequireFromString("spiffe://example.org/batch/nightly")) ||
		l.Connections.PerIdentity != (limit.Rate{PerSecond: 10, Burst: 20}) || l.ConcurrentPerIdentity != 50 || l.MaxIdentities != 20000 {
		t.Errorf("limits: %+v", l)
	}
	for _, bad := range []struct{ name, from, to, want string }{
		{"zero rate", "per_identity: {rate: 50}", "per_identity: {rate: 0}", "inbound[0].limits.requests.per_identity.rate: 0 is not a rate per second"},
		{"negative burst", "burst: 200}", "burst: -1}", "inbound[0].limits.requests.total.burst"},
		{"bad override peers", "[spiffe://example.org/batch/*]", "[spiffe://Example.org/batch/*]", "inbound[0].limits.requests.overrides[0].peers[0]"},
		{"empty set", "      connections:\n        per_identity: {rate: 10, burst: 20}\n", "      connections: {}\n", "inbound[0].limits.connections: total, per_identity or overrides is required"},
		{"request limits on TCP", "    protocol: http\n    routes: [{peers: [spiffe://example.org], paths: [/*]}]\n", "", "inbound[0].limits.requests: request limits need protocol: http"},
		{"negative concurrency", "concurrent_per_identity: 50", "concurrent_per_identity: -1", "inbound[0].limits.concurrent_per_identity"},
		{"unknown field", "max_identities: 20000", "max_identites: 20000", "inbound[0].limits.max_identites: unknown field (did you mean max_identities?)"},
	} {
		t.Run(bad.name, func(t *testing.T) {
			f := strings.Replace(limitsConfig, bad.from, bad.to, 1)
			if f == limitsConfig {
				t.Fatalf("%q not in the file", bad.from)
			}
			if _, err := config.Parse([]byte(f)); err == nil || !strings.Contains(err.Error(), bad.want) {
				t.Fatalf("error %v, want one naming %q", err, bad.want)
			}
		})
	}
}

// TestDiffLimits: a listener's limits, changed, added or removed, apply
// without a restart.
func TestDiffLimits(t *testing.T) {
	old, err := config.Parse([]byte(limitsConfig))
	if err != nil {
		t.Fatal(err)
	}
	for name, edit := range map[string][2]string{
		"changed":           {"per_identity: {rate: 50}", "per_identity: {rate: 5, burst: 1}"},
		"removed":           {"      concurrent_per_identity: 50\n", ""},
		"added":             {"        per_identity: {rate: 10, burst: 20}\n", "        per_identity: {rate: 10, burst: 20}\n        total: {rate: 100}\n"},
		"an override added": {"      connections:\n", "      connections:\n        overrides: [{peers: [spiffe://example.org/x], rate: 1}]\n"},
	} {
		next, err := config.Parse([]byte(strings.Replace(limitsConfig, edit[0], edit[1], 1)))
		if err != nil {
			t.Fatal(err)
		}
		hot, restart := config.Diff(old, next)
		if len(hot) == 0 || len(restart) != 0 || !slices.ContainsFunc(hot, func(p string) bool { return strings.HasPrefix(p, "inbound[0].limits.") }) {
			t.Errorf("%s: hot %v, restart %v", name, hot, restart)
		}
	}
}

const globalConfig = `
limits:
  global: {service: "ratelimit.infra:8081", timeout: 50ms, failure_mode: deny}
inbound:
  - name: api
    listen: 0.0.0.0:15006
    app: 127.0.0.1:8080
    allow: [spiffe://example.org]
    protocol: http
    routes: [{peers: [spiffe://example.org], paths: [/*]}]
    limits:
      global: {requests: true, connections: true}
`

// TestParseGlobalLimits: the rate limit service, its defaults, and the
// listeners that count against it; mistakes refused with the field named.
func TestParseGlobalLimits(t *testing.T) {
	c, err := config.Parse([]byte(globalConfig))
	if err != nil {
		t.Fatal(err)
	}
	want := limit.GlobalConfig{Service: "ratelimit.infra:8081", Timeout: 50 * time.Millisecond, FailureMode: limit.FailClosed}
	if c.GlobalLimits == nil || *c.GlobalLimits != want {
		t.Errorf("limits.global = %+v; want %+v", c.GlobalLimits, want)
	}
	if g := c.Inbound[0].Limits.Global; !g.Requests || !g.Connections {
		t.Errorf("inbound[0].limits.global = %+v", g)
	}
	c, err = config.Parse([]byte(strings.Replace(globalConfig, ", timeout: 50ms, failure_mode: deny", "", 1)))
	if err != nil {
		t.Fatal(err)
	}
	if g := c.GlobalLimits; g.Timeout != limit.DefaultGlobalTimeout || g.FailureMode != limit.FailOpen {
		t.Errorf("defaults: %+v; want timeout %v, failure mode allow", g, limit.DefaultGlobalTimeout)
	}

	for _, bad := range []struct{ name, from, to, want string }{
		{"no service", `service: "ratelimit.infra:8081", `, "", "limits.global.service: required"},
		{"bad failure mode", "failure_mode: deny", "failure_mode: open", `limits.global.failure_mode: "open" is not allow or deny`},
		{"long timeout", "timeout: 50ms", "timeout: 1m", "limits.global.timeout: 1m0s: above 0, at most 5s"},
		{"no service for a listener", "limits:\n  global: {service: \"ratelimit.infra:8081\", timeout: 50ms, failure_mode: deny}\n", "", "inbound[0].limits.global: needs the rate limit service"},
		{"nothing counted", "global: {requests: true, connections: true}", "global: {}", "inbound[0].limits.global: requests: true or connections: true is required"},
		{"requests on TCP", "    protocol: http\n    routes: [{peers: [spiffe://example.org], paths: [/*]}]\n", "", "inbound[0].limits.global.requests: request limits need protocol: http"},
	} {
		t.Run(bad.name, func(t *testing.T) {
			f := strings.Replace(globalConfig, bad.from, bad.to, 1)
			if f == globalConfig {
				t.Fatalf("%q not in the file", bad.from)
			}
			if _, err := config.Parse([]byte(f)); err == nil || !strings.Contains(err.Error(), bad.want) {
				t.Fatalf("error %v, want one naming %q", err, bad.want)
			}
		})
	}

	// What a listener counts reloads; where the service is does not.
	old, _ := config.Parse([]byte(globalConfig))
	next, err := config.Parse([]byte(strings.Replace(globalConfig, "connections: true}", "connections: false}", 1)))
	if err != nil {
		t.Fatal(err)
	}
	if hot, restart := config.Diff(old, next); len(hot) != 1 || len(restart) != 0 {
		t.Errorf("listener's global kinds changed: hot %v, restart %v", hot, restart)
	}
	next, _ = config.Parse([]byte(strings.Replace(globalConfig, "infra:8081", "infra:9081", 1)))
	if hot, restart := config.Diff(old, next); len(hot) != 0 || len(restart) != 1 {
		t.Errorf("service changed: hot %v, restart %v", hot, restart)
	}
}

const routeLimitsConfig = `
inbound:
  - name: api
    listen: 0.0.0.0:15006
    app: 127.0.0.1:8080
    allow: [spiffe://example.org]
    protocol: http
    routes:
      - {name: export, peers: [spiffe://example.org], paths: [/export/*], limit: {rate: 2}}
      - {name: orders, peers: [spiffe://example.org], paths: [/v1/orders/*]}
      - {peers: [spiffe://example.org], paths: [/*]}
`

// TestParseRouteLimits: a named route's limit, per identity; names
// unique and required for a limit; a change reloads.
func TestParseRouteLimits(t *testing.T) {
	c, err := config.Parse([]byte(routeLimitsConfig))
	if err != nil {
		t.Fatal(err)
	}
	in := c.Inbound[0]
	if want := map[string]limit.Rate{"export": {PerSecond: 2, Burst: 2}}; !reflect.DeepEqual(in.Limits.Routes, want) {
		t.Errorf("limits.routes = %v; want %v", in.Limits.Routes, want)
	}
	if r := in.HTTP.Routes.Rules; r[0].Name != "export" || r[1].Name != "orders" || r[2].Name != "" {
		t.Errorf("route names: %q %q %q", r[0].Name, r[1].Name, r[2].Name)
	}
	for _, bad := range []struct{ name, from, to, want string }{
		{"limit without a name", "{name: export, ", "{", "inbound[0].routes[0].name: a route with a limit needs a name"},
		{"duplicate", "name: orders", "name: export", `inbound[0].routes[1].name: "export" is also the name of routes[0]`},
		{"bad name", "name: orders", "name: 'or ders'", `inbound[0].routes[1].name: "or ders": letters, digits`},
		{"bad rate", "limit: {rate: 2}", "limit: {rate: -2}", "inbound[0].routes[0].limit.rate"},
	} {
		t.Run(bad.name, func(t *testing.T) {
			f := strings.Replace(routeLimitsConfig, bad.from, bad.to, 1)
			if f == routeLimitsConfig {
				t.Fatalf("%q not in the file", bad.from)
			}
			if _, err := config.Parse([]byte(f)); err == nil || !strings.Contains(err.Error(), bad.want) {
				t.Fatalf("error %v, want one naming %q", err, bad.want)
			}
		})
	}
	next, err := config.Parse([]byte(strings.Replace(routeLimitsConfig, "paths: [/v1/orders/*]}", "paths: [/v1/orders/*], limit: {rate: 5, burst: 10}}", 1)))
	if err != nil {
		t.Fatal(err)
	}
	if hot, restart := config.Diff(c, next); len(hot) == 0 || len(restart) != 0 {
		t.Errorf("a route limit added: hot %v, restart %v", hot, restart)
	}
}

// TestParseRevocation: the deny list from a file or from Redis, exactly
// one of them; mistakes named.
func TestParseRevocation(t *testing.T) {
	base := "inbound:\n  - {name: api, listen: 0.0.0.0:15006, app: 127.0.0.1:8080, allow: [spiffe://example.org]}\n"
	c, err := config.Parse([]byte(base + "revocation: {file: /etc/credflow/revocations.json, interval: 1s}\n"))
	if err != nil {
		t.Fatal(err)
	}
	if r := c.Revocation; r == nil || r.File != "/etc/credflow/revocations.json" || r.Interval != time.Second || r.RedisAddr != "" {
		t.Errorf("file: %+v", r)
	}
	c, err = config.Parse([]byte(base + "revocation: {redis: {address: redis.infra:6379, key: deny, resync: 10s}}\n"))
	if err != nil {
		t.Fatal(err)
	}
	if r := c.Revocation; r == nil || r.RedisAddr != "redis.infra:6379" || r.RedisKey != "deny" || r.Resync != 10*time.Second {
		t.Errorf("redis: %+v", r)
	}
	for _, bad := range []struct{ name, section, want string }{
		{"neither", "revocation: {}", "revocation: exactly one of file and redis"},
		{"both", "revocation: {file: /x.json, redis: {address: r:6379}}", "revocation: exactly one of file and redis"},
		{"relative file", "revocation: {file: x.json}", `revocation.file: "x.json": an absolute path`},
		{"no address", "revocation: {redis: {key: deny}}", "revocation.redis.address: required"},
		{"short resync", "revocation: {redis: {address: r:6379, resync: 10ms}}", "revocation.redis.resync: 10ms: at least 1s"},
		{"interval with redis", "revocation: {redis: {address: r:6379}, interval: 1s}", "revocation.interval: is the period of file"},
	} {
		if _, err := config.Parse([]byte(base + bad.section + "\n")); err == nil || !strings.Contains(err.Error(), bad.want) {
			t.Errorf("%s: error %v, want one naming %q", bad.name, err, bad.want)
		}
	}
}

const anomalyConfig = `
inbound:
  - {name: api, listen: 0.0.0.0:15006, app: 127.0.0.1:8080, allow: [spiffe://example.org]}
anomaly:
  refusal_burst: {count: 20, window: 30s, action: quarantine, for: 5m}
  token_failures: {count: 10, action: revoke, for: 10m, cooldown: 1m}
  rate_spike: {factor: 10, min_rate: 20, half_life: 2m, interval: 1s, warm_up: 5m}
  new_caller: {routes: [export, api], learn_for: 1h}
  max_subjects: 20000
  webhook: {url: "http://alertmanager:9093/api/v2/alerts", labels: {pod: frontend-0}, timeout: 2s, queue: 100}
`

// TestParseAnomaly: every detector's settings, defaults left to the
// package; mistakes named.
func TestParseAnomaly(t *testing.T) {
	c, err := config.Parse([]byte(anomalyConfig))
	if err != nil {
		t.Fatal(err)
	}
	a := c.Anomaly
	want := &config.Anomaly{
		RefusalBurst:  config.Burst{Count: 20, Window: 30 * time.Second, Response: config.Response{Action: "quarantine", For: 5 * time.Minute}},
		TokenFailures: config.Burst{Count: 10, Response: config.Response{Action: "revoke", For: 10 * time.Minute, Cooldown: time.Minute}},
		RateSpike:     config.Spike{Factor: 10, MinRate: 20, HalfLife: 2 * time.Minute, Interval: time.Second, WarmUp: 5 * time.Minute},
		NewCaller:     config.Novelty{Routes: []string{"export", "api"}, LearnFor: time.Hour},
		MaxSubjects:   20000,
		Webhook:       &config.Webhook{URL: "http://alertmanager:9093/api/v2/alerts", Labels: map[string]string{"pod": "frontend-0"}, Timeout: 2 * time.Second, Queue: 100},
	}
	if !reflect.DeepEqual(a, want) {
		t.Errorf("anomaly:\n got %+v\nwant %+v", a, want)
	}
	if c.Inbound[0].Unobserved {
		t.Error("inbound[0] unobserved by default")
	}
	c, err = config.Parse([]byte(strings.Replace(anomalyConfig, "allow: [spiffe://example.org]}", "allow: [spiffe://example.org], anomaly: false}", 1)))
	if err != nil || !c.Inbound[0].Unobserved {
		t.Errorf("inbound[0].anomaly: false: %v", err)
	}
	for _, bad := range []struct{ name, from, to, want string }{
		{"unknown action", "action: quarantine", "action: ban", `anomaly.refusal_burst.action: "ban" is not alert, quarantine or revoke`},
		{"zero count", "count: 20", "count: 0", "anomaly.refusal_burst.count: 0"},
		{"factor 1", "factor: 10", "factor: 1", "anomaly.rate_spike.factor: 1"},
		{"no routes", "routes: [export, api]", "routes: []", "anomaly.new_caller.routes: 0 routes"},
		{"bad webhook", `url: "http://alertmanager:9093/api/v2/alerts"`, `url: "alertmanager:9093"`, "anomaly.webhook.url"},
		{"typo", "half_life: 2m", "halflife: 2m", "anomaly.rate_spike.halflife: unknown field"},
	} {
		t.Run(bad.name, func(t *testing.T) {
			f := strings.Replace(anomalyConfig, bad.from, bad.to, 1)
			if f == anomalyConfig {
				t.Fatalf("%q not in the file", bad.from)
			}
			if _, err := config.Parse([]byte(f)); err == nil || !strings.Contains(err.Error(), bad.want) {
				t.Fatalf("error %v, want one naming %q", err, bad.want)
			}
		})
	}
	if _, err := config.Parse([]byte("inbound:\n  - {name: api, listen: 0.0.0.0:15006, app: 127.0.0.1:8080, allow: [spiffe://example.org]}\nanomaly: {max_subjects: 5}\n")); err == nil ||
		!strings.Contains(err.Error(), "anomaly: no detector is configured") {
		t.Errorf("no detector: %v", err)
	}
}

// TestParseTracingAndAudit: the tracing and audit sections, their
// defaults, the listeners kept from them; mistakes named.
func TestParseTracingAndAudit(t *testing.T) {
	base := "inbound:\n  - {name: api, listen: 0.0.0.0:15006, app: 127.0.0.1:8080, allow: [spiffe://example.org], audit: false, tracing: false}\n"
	c, err := config.Parse([]byte(base + "tracing: {endpoint: collector:4317}\naudit: {path: /var/log/credflow/audit.jsonl}\n"))
	if err != nil {
		t.Fatal(err)
	}
	if tr := c.Tracing; tr == nil || tr.Endpoint != "collector:4317" || tr.SampleRatio != config.DefaultTraceSampleRatio ||
		tr.ServiceName != "credflow" || tr.Queue != config.DefaultTraceQueue || tr.Timeout != config.DefaultTraceTimeout || tr.Insecure {
		t.Errorf("tracing defaults: %+v", tr)
	}
	if a := c.Audit; a == nil || a.Path != "/var/log/credflow/audit.jsonl" || a.MaxBytes != 0 {
		t.Errorf("audit: %+v", a)
	}
	if in := c.Inbound[0]; !in.Unaudited || !in.Untraced {
		t.Errorf("inbound[0] audit: false, tracing: false: %+v", in)
	}
	c, err = config.Parse([]byte(base + "tracing: {endpoint: 127.0.0.1:4317, insecure: true, sample_ratio: 0, connections: true}\n"))
	if err != nil || c.Tracing.SampleRatio != 0 || !c.Tracing.Insecure || !c.Tracing.Connections {
		t.Errorf("sample_ratio 0: %+v %v", c.Tracing, err)
	}
	c, err = config.Parse([]byte(base + "audit: {path: /a.jsonl, export: {endpoint: collector:4317}}\n"))
	if e := c.Audit.Export; err != nil || e == nil || e.Endpoint != "collector:4317" || e.Insecure || e.ServiceName != "credflow" ||
		e.Queue != config.DefaultAuditExportQueue || e.Timeout != config.DefaultAuditExportTimeout {
		t.Errorf("audit.export defaults: %+v %v", e, err)
	}
	c, err = config.Parse([]byte(base + "audit: {path: /a.jsonl, export: {endpoint: 127.0.0.1:4317, insecure: true, service_name: pay, queue: 10, timeout: 1s}}\n"))
	if e := c.Audit.Export; err != nil || e == nil || !e.Insecure || e.ServiceName != "pay" || e.Queue != 10 || e.Timeout != time.Second {
		t.Errorf("audit.export: %+v %v", e, err)
	}
	for _, bad := range []struct{ section, want string }{
		{"tracing: {sample_ratio: 0.5}", "tracing.endpoint: required"},
		{"tracing: {endpoint: c:4317, sample_ratio: 2}", "tracing.sample_ratio: 2: between 0 and 1"},
		{"audit: {path: audit.jsonl}", `audit.path: "audit.jsonl": an absolute path`},
		{"audit: {path: /a.jsonl, max_bytes: 10}", "audit.max_bytes: 10: 65536"},
		{"audit: {path: /a.jsonl, checkpoint_interval: 1ms}", "audit.checkpoint_interval: 1ms: at least 100ms"},
		{"audit: {path: /a.jsonl, export: {queue: 5}}", "audit.export.endpoint: required"},
		{"audit: {path: /a.jsonl, export: {endpoint: c:4317, queue: -1}}", "audit.export.queue: -1"},
		{"audit: {path: /a.jsonl, export: {endpoint: c:4317, timeout: 2m}}", "audit.export.timeout: 2m0s"},
	} {
		if _, err := config.Parse([]byte(base + bad.section + "\n")); err == nil || !strings.Contains(err.Error(), bad.want) {
			t.Errorf("%s: error %v, want one naming %q", bad.section, err, bad.want)
		}
	}
}
