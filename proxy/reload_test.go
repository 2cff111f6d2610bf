package proxy_test

import (
	"strings"
	"sync"
	"testing"

	"github.com/credflow/credflow/proxy"
	"github.com/credflow/credflow/proxy/route"
)

// TestHTTPSetHTTP: an HTTP inbound listener's routes and token settings
// change while it runs. A route revoked is refused on the very next
// request (403 route_denied), on a new connection or one already open;
// settings bound to the app connection are refused and change nothing;
// requests racing a change see the old settings or the new, whole.
func TestHTTPSetHTTP(t *testing.T) {
	hp := startHTTPPair(t, echoApp)
	get := func(path string) (int, string) {
		return rawRequest(t, hp.outAddr, "GET "+path+" HTTP/1.1\r\nHost: backend\r\nConnection: close\r\n\r\n")
	}
	rules := func(paths ...string) route.Table {
		var tbl route.Table
		for _, s := range paths {
			pth, err := route.ParsePath(s)
			if err != nil {
				t.Fatal(err)
			}
			tbl.Rules = append(tbl.Rules, route.Rule{Peers: policy(t, "spiffe://example.org/frontend"), Paths: []route.Path{pth}})
		}
		return tbl
	}
	if code, body := get("/api/items"); code != 200 || !strings.Contains(body, `auth=""`) {
		t.Fatalf("before: %d %s", code, body)
	}

	// Revoke /api/*: the next request is refused.
	if err := hp.in.p.SetHTTP("app", proxy.InboundHTTP{Routes: rules("/health"), RequireJWT: true}); err != nil {
		t.Fatal(err)
	}
	if code, body := get("/api/items"); code != 403 || !strings.Contains(body, "route_denied") {
		t.Fatalf("a revoked route: %d %s", code, body)
	}
	if code, _ := get("/health"); code != 200 {
		t.Fatalf("the new route: %d", code)
	}
	if n := hp.in.metric(t, "credflow_refusals_total", "reason=route_denied"); n != 1 {
		t.Errorf("route_denied refusals = %v, want 1", n)
	}

	// Token settings: pass the validated JWT-SVID on to the app.
	if err := hp.in.p.SetHTTP("app", proxy.InboundHTTP{Routes: rules("/api/*"), RequireJWT: true, PassJWT: true}); err != nil {
		t.Fatal(err)
	}
	if code, body := get("/api/items"); code != 200 || !strings.Contains(body, `auth="Bearer `) {
		t.Fatalf("jwt.pass after the change: %d %s", code, body)
	}

	// What is bound to the app connection, or to another listener, is
	// refused, and the settings in force stay.
	for name, tc := range map[string]struct {
		listener string
		cfg      proxy.InboundHTTP
		want     string
	}{
		"AppH2C":                {"app", proxy.InboundHTTP{Routes: rules("/health"), AppH2C: true}, "AppH2C"},
		"ResponseHeaderTimeout": {"app", proxy.InboundHTTP{Routes: rules("/health"), ResponseHeaderTimeout: 1}, "ResponseHeaderTimeout"},
		"no such listener":      {"nope", proxy.InboundHTTP{Routes: rules("/health")}, `no listener "nope"`},
	} {
		if err := hp.in.p.SetHTTP(tc.listener, tc.cfg); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want an error naming %q", name, err, tc.want)
		}
	}
	if err := hp.out.p.SetHTTP("up", proxy.InboundHTTP{}); err == nil {
		t.Error("SetHTTP on an outbound listener succeeded")
	}
	if code, body := get("/api/items"); code != 200 || !strings.Contains(body, `auth="Bearer `) {
		t.Fatalf("after refused changes: %d %s", code, body)
	}

	// Requests racing changes (run with -race): each is either allowed
	// with the token passed (old) or refused (new), never allowed with
	// the token stripped, which only a mix of the two could do.
	allowPass := proxy.InboundHTTP{Routes: rules("/api/*"), RequireJWT: true, PassJWT: true}
	denyStrip := proxy.InboundHTTP{Routes: rules("/health"), RequireJWT: true}
	var wg sync.WaitGroup
	stop := make(chan struct{})
	wg.Go(func() {
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			cfg := allowPass
			if i%2 == 1 {
				cfg = denyStrip
			}
			if err := hp.in.p.SetHTTP("app", cfg); err != nil {
				t.Error(err)
				return
			}
		}
	})
	for range 50 {
		code, body := get("/api/items")
		if code == 200 && !strings.Contains(body, `auth="Bearer `) || code != 200 && code != 403 {
			t.Errorf("a request during changes: %d %s", code, body)
		}
	}
	close(stop)
	wg.Wait()
}

// TestApply: Apply changes every listener's policy and HTTP request policy
// together, or, when the listeners given differ from the running ones in
// anything a restart would change, nothing at all.
func TestApply(t *testing.T) {
	hp := startHTTPPair(t, echoApp)
	get := func(path string) (int, string) {
		return rawRequest(t, hp.outAddr, "GET "+path+" HTTP/1.1\r\nHost: backend\r\nConnection: close\r\n\r\n")
	}
	health, err := route.ParsePath("/health")
	if err != nil {
		t.Fatal(err)
	}
	revoked := hp.inCfg
	revoked.HTTP = &proxy.InboundHTTP{Routes: route.Table{Rules: []route.Rule{{Peers: policy(t, "spiffe://example.org/frontend"), Paths: []route.Path{health}}}}, RequireJWT: true}
	revoked.Allow = policy(t, "spiffe://example.org/frontend")

	moved := revoked
	moved.Listen = "127.0.0.1:1"
	err = hp.in.p.Apply([]proxy.Inbound{moved}, nil)
	if err == nil || !strings.Contains(err.Error(), `listener "app": Listen is "127.0.0.1:0", not "127.0.0.1:1"`) {
		t.Fatalf("a moved listener: %v", err)
	}
	for _, bad := range [][]proxy.Inbound{nil, {revoked, revoked}, {revoked, {Name: "new"}}} {
		if err := hp.in.p.Apply(bad, nil); err == nil {
			t.Errorf("Apply(%d listeners) succeeded", len(bad))
		}
	}
	if err := hp.in.p.Apply(nil, []proxy.Outbound{{Name: "app"}}); err == nil || !strings.Contains(err.Error(), `listener "app" is inbound`) {
		t.Errorf("an inbound listener given as outbound: %v", err)
	}
	if code, body := get("/api/items"); code != 200 {
		t.Fatalf("after refused Applys: %d %s", code, body)
	}
	if got := hp.in.p.Policies()["app"]; len(got) != 1 || got[0] != "spiffe://example.org" {
		t.Fatalf("policy after refused Applys: %v", got)
	}

	if err := hp.in.p.Apply([]proxy.Inbound{revoked}, nil); err != nil {
		t.Fatal(err)
	}
	if code, body := get("/api/items"); code != 403 || !strings.Contains(body, "route_denied") {
		t.Fatalf("a revoked route: %d %s", code, body)
	}
	if got := hp.in.p.Policies()["app"]; len(got) != 1 || got[0] != "spiffe://example.org/frontend" {
		t.Fatalf("policy after Apply: %v", got)
	}

	// An outbound listener's Expect may change, but not what New derived
	// from it: here the audience of the JWT-SVIDs it attaches.
	up := proxy.Outbound{Name: "up", Listen: "127.0.0.1:0", Upstream: hp.inAddr, Expect: policy(t, "spiffe://example.org/backend", "spiffe://example.org/backend2"), HTTP: &proxy.OutboundHTTP{}}
	if err := hp.out.p.Apply(nil, []proxy.Outbound{up}); err == nil || !strings.Contains(err.Error(), "JWT-SVID audience") {
		t.Errorf("an Expect that changes the audience: %v", err)
	}
	up.Expect = policy(t, "spiffe://example.org/backend")
	if err := hp.out.p.Apply(nil, []proxy.Outbound{up}); err != nil {
		t.Errorf("the same Expect: %v", err)
	}
}
