package proxy_test

import (
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/credflow/credflow/internal/testca"
	"github.com/credflow/credflow/proxy"
	"github.com/credflow/credflow/proxy/anomaly"
	"github.com/credflow/credflow/proxy/route"
	"github.com/credflow/credflow/token/txn"
)

// anomalySidecar runs an HTTP inbound listener that takes transaction
// tokens from /edge, with detector cfg wired as the sidecar wires it: a
// quarantine closes the peer's connections, a revoke revokes the token.
//
// It returns the registries of the detector's metrics and of the proxy's.
func anomalySidecar(t *testing.T, ca *testca.CA, cfg anomaly.Config) (*proxy.Proxy, *anomaly.Detector, *prometheus.Registry, *prometheus.Registry) {
	t.Helper()
	appLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	app := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, "ok") })}
	go app.Serve(appLn)
	t.Cleanup(func() { app.Close() })
	reg := prometheus.NewRegistry()
	var p *proxy.Proxy
	q := anomaly.NewQuarantine(anomaly.QuarantineConfig{OnAdd: func(anomaly.Entry) { p.Revalidate() }})
	det, err := anomaly.New(cfg, anomaly.Options{Quarantine: q, Sinks: []anomaly.Sink{anomaly.NewMetrics(reg)},
		OnRevoke: func(e anomaly.Event, jti string) { p.RevokeJTI(jti, e.Until, "test") }})
	if err != nil {
		t.Fatal(err)
	}
	anyone := policy(t, "spiffe://example.org")
	all, _ := route.ParsePath("/*")
	var proxyReg *prometheus.Registry
	p, proxyReg = startProxy(t, proxy.Config{
		SVIDs:   static{svid: ca.Issue(t, spiffeid.RequireFromPath(td, "/backend"))},
		Bundles: x509bundle.NewSet(ca.Bundle()),
		Anomaly: det,
		Inbound: []proxy.Inbound{{Name: "app", Listen: "127.0.0.1:0", App: appLn.Addr().String(), Allow: anyone,
			HTTP: &proxy.InboundHTTP{Routes: route.Table{Rules: []route.Rule{{Name: "orders", Peers: anyone, Paths: []route.Path{all}}}},
				TxnMinters: policy(t, "spiffe://example.org/edge")}}},
	})
	return p, det, reg, proxyReg
}

// TestAnomalyQuarantine: a peer sending a burst of bad transaction tokens
// is caught by token_failures and quarantined: its next request is
// refused (403 quarantined), its established connection closed, its new
// connections refused at the handshake, while another peer is served; the
// event is counted; the quarantine ends by itself.
func TestAnomalyQuarantine(t *testing.T) {
	ca := testca.New(t, td)
	const quarantine = 2 * time.Second
	p, det, reg, _ := anomalySidecar(t, ca, anomaly.Config{
		TokenFailures: anomaly.Burst{Count: 5, Window: time.Minute, Response: anomaly.Response{Action: anomaly.ActionQuarantine, For: quarantine}},
	})
	client := func(path string) *http.Client {
		return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{ForceAttemptHTTP2: true,
			TLSClientConfig: clientConfig(ca.Issue(t, spiffeid.RequireFromPath(td, path)))}}
	}
	get := func(c *http.Client, tok string) (int, string, error) {
		req, _ := http.NewRequest(http.MethodGet, "https://"+p.Addr("app").String()+"/orders", nil)
		if tok != "" {
			req.Header.Set(txn.Header, tok)
		}
		resp, err := c.Do(req)
		if err != nil {
			return 0, "", err
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode, resp.Header.Get("X-Credflow-Reason"), nil
	}
	intruder, reports := client("/intruder"), client("/reports")
	for i := range 5 { // within the burst: refused for the token only
		if code, why, err := get(intruder, "not.a.token"); err != nil || code != http.StatusUnauthorized || why == "quarantined" {
			t.Fatalf("bad token %d: %d %q %v", i+1, code, why, err)
		}
	}
	// The sixth fires: its answer is 401, unless the quarantine closed the
	// connection first.
	if code, why, err := get(intruder, "not.a.token"); err == nil && code != http.StatusUnauthorized {
		t.Fatalf("the sixth bad token, the one that fires: %d %q", code, why)
	}
	caught := time.Now()
	if _, ok := det.Quarantine().Quarantined(anomaly.Peer(spiffeid.RequireFromPath(td, "/intruder")), caught); !ok {
		t.Fatal("six bad tokens past a burst of 5: the intruder is not in quarantine")
	}
	// Its connection is closed, and it cannot come back while quarantined.
	if code, why, err := get(intruder, ""); err == nil && (code != http.StatusForbidden || why != "quarantined") {
		t.Errorf("the intruder in quarantine: %d %q; want its connection closed or 403 quarantined", code, why)
	}
	c, err := tls.Dial("tcp", p.Addr("app").String(), clientConfig(ca.Issue(t, spiffeid.RequireFromPath(td, "/intruder"))))
	if err == nil {
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		_, err = c.Read(make([]byte, 1))
		c.Close()
	}
	if err == nil {
		t.Error("a new connection of the quarantined intruder was served")
	}
	if code, _, err := get(reports, ""); err != nil || code != http.StatusOK {
		t.Errorf("another peer while the intruder is quarantined: %d %v", code, err)
	}
	(&inbound{reg: reg}).waitMetric(t, 1, "credflow_anomalies_total", "detector=token_failures", "action=quarantine")
	// It ends by itself.
	time.Sleep(time.Until(caught.Add(quarantine)))
	deadline := time.Now().Add(10 * time.Second)
	for {
		code, _, err := get(client("/intruder"), "")
		if err == nil && code == http.StatusOK {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the intruder still refused 10 s after its quarantine ended: %d %v", code, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestAnomalyRevoke: a peer whose request rate jumps far above its own
// baseline with a valid transaction token is caught by rate_spike with the
// revoke action: the token is refused from then on (txn_revoked), another
// token of the same minter is not, and the peer is quarantined.
func TestAnomalyRevoke(t *testing.T) {
	ca := testca.New(t, td)
	p, det, _, _ := anomalySidecar(t, ca, anomaly.Config{
		RateSpike: anomaly.Spike{Factor: 5, MinRate: 50, HalfLife: time.Second, Interval: 100 * time.Millisecond, WarmUp: 500 * time.Millisecond,
			Response: anomaly.Response{Action: anomaly.ActionRevoke, For: time.Minute}},
	})
	edge := static{svid: ca.Issue(t, spiffeid.RequireFromPath(td, "/edge"))}
	m, err := txn.NewMinter(edge, txn.MintConfig{})
	if err != nil {
		t.Fatal(err)
	}
	mint := func() string {
		tok, _, err := m.Mint(txn.Request{Subject: "alice", SubjectIssuer: idpIssuer})
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{ForceAttemptHTTP2: true, TLSClientConfig: clientConfig(edge.svid)}}
	get := func(tok string) (int, string) {
		req, _ := http.NewRequest(http.MethodGet, "https://"+p.Addr("app").String()+"/orders", nil)
		req.Header.Set(txn.Header, tok)
		resp, err := c.Do(req)
		if err != nil {
			return 0, err.Error()
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode, resp.Header.Get("X-Credflow-Reason")
	}
	tok := mint()
	// A steady 10 a second past the warm-up: the baseline.
	for range 10 {
		if code, why := get(tok); code != http.StatusOK {
			t.Fatalf("steady load: %d %s", code, why)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if len(det.Quarantine().List(time.Now())) > 0 {
		t.Fatal("a steady 10 a second fired rate_spike")
	}
	// Then as fast as it goes: hundreds a second, far above 5× the baseline.
	var fired bool
	for range 2000 {
		if code, _ := get(tok); code != http.StatusOK {
			fired = true
			break
		}
	}
	if !fired {
		t.Fatal("2000 requests as fast as they go never fired rate_spike")
	}
	edgeID := anomaly.Peer(spiffeid.RequireFromPath(td, "/edge"))
	if _, ok := det.Quarantine().Quarantined(edgeID, time.Now()); !ok {
		t.Fatal("rate_spike with revoke fired, but the peer is not in quarantine")
	}
	// Lift the quarantine: the token stays revoked, a fresh one passes.
	// (The quarantine's closing of the connection may still be under way:
	// a request it cuts is sent again on a new one.)
	det.Quarantine().Lift(edgeID)
	again := func(tok string) (int, string) {
		for range 5 {
			if code, why := get(tok); code != 0 {
				return code, why
			}
		}
		return 0, "no answer"
	}
	if code, why := again(tok); code != http.StatusUnauthorized || why != "txn_revoked" {
		t.Errorf("the spiking token after the event: %d %q; want 401 txn_revoked", code, why)
	}
	if code, why := again(mint()); code != http.StatusOK {
		t.Errorf("another token of the same minter: %d %q", code, why)
	}
}

// TestAnomalySourceQuarantine: handshakes that fail (a certificate of an
// unknown CA) carry no verified identity, so refusal_burst counts them by
// source address, and a quarantined address is closed at accept, before
// any handshake; lifting it lets a valid peer from there in again.
func TestAnomalySourceQuarantine(t *testing.T) {
	ca := testca.New(t, td)
	p, det, reg, proxyReg := anomalySidecar(t, ca, anomaly.Config{
		RefusalBurst: anomaly.Burst{Count: 3, Window: time.Minute, Response: anomaly.Response{Action: anomaly.ActionQuarantine, For: time.Minute}},
	})
	stranger := clientConfig(testca.New(t, td).Issue(t, spiffeid.RequireFromPath(td, "/frontend")))
	valid := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{ForceAttemptHTTP2: true,
		TLSClientConfig: clientConfig(ca.Issue(t, spiffeid.RequireFromPath(td, "/reports")))}}
	addr := p.Addr("app").String()
	for range 4 {
		c, err := tls.Dial("tcp", addr, stranger)
		if err == nil {
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			c.Read(make([]byte, 1))
			c.Close()
		}
	}
	// Each refusal is observed as the sidecar ends the handshake, just
	// after the client learns of it.
	loopback := anomaly.Source(netip.MustParseAddr("127.0.0.1"))
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if _, ok := det.Quarantine().Quarantined(loopback, time.Now()); ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("4 failed handshakes past a burst of 3: 127.0.0.1 not in quarantine (%v)", det.Quarantine().List(time.Now()))
		}
	}
	if _, err := valid.Get("https://" + addr + "/orders"); err == nil {
		t.Error("a valid peer from a quarantined address was served")
	}
	// The event is counted just after the quarantine begins.
	(&inbound{reg: reg}).waitMetric(t, 1, "credflow_anomalies_total", "detector=refusal_burst", "action=quarantine")
	// The refusal is counted just after the connection is closed.
	pm := &inbound{reg: proxyReg}
	for deadline := time.Now().Add(5 * time.Second); pm.metric(t, "credflow_refusals_total", "reason=quarantined") < 1; {
		if time.Now().After(deadline) {
			t.Fatal("credflow_refusals_total{reason=quarantined} = 0; the valid peer's connection was not closed at accept")
		}
		time.Sleep(10 * time.Millisecond)
	}
	det.Quarantine().Lift(loopback)
	resp, err := valid.Get("https://" + addr + "/orders")
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("after the lift: %v %v", resp, err)
	}
	resp.Body.Close()
}

// TestAnomalyUnobserved: a listener kept from anomaly detection feeds it
// nothing: a burst of bad tokens there quarantines no one.
func TestAnomalyUnobserved(t *testing.T) {
	ca := testca.New(t, td)
	det, err := anomaly.New(anomaly.Config{TokenFailures: anomaly.Burst{Count: 2, Response: anomaly.Response{Action: anomaly.ActionQuarantine}}}, anomaly.Options{})
	if err != nil {
		t.Fatal(err)
	}
	anyone := policy(t, "spiffe://example.org")
	all, _ := route.ParsePath("/*")
	p, _ := startProxy(t, proxy.Config{
		SVIDs:   static{svid: ca.Issue(t, spiffeid.RequireFromPath(td, "/backend"))},
		Bundles: x509bundle.NewSet(ca.Bundle()),
		Anomaly: det,
		Inbound: []proxy.Inbound{{Name: "app", Listen: "127.0.0.1:0", App: "127.0.0.1:1", Allow: anyone, Unobserved: true,
			HTTP: &proxy.InboundHTTP{Routes: route.Table{Rules: []route.Rule{{Peers: anyone, Paths: []route.Path{all}}}},
				TxnMinters: policy(t, "spiffe://example.org/edge")}}},
	})
	c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{ForceAttemptHTTP2: true,
		TLSClientConfig: clientConfig(ca.Issue(t, spiffeid.RequireFromPath(td, "/intruder")))}}
	for range 5 {
		req, _ := http.NewRequest(http.MethodGet, "https://"+p.Addr("app").String()+"/", nil)
		req.Header.Set(txn.Header, "not.a.token")
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusUnauthorized {
			t.Fatalf("bad token on an unobserved listener: %d", resp.StatusCode)
		}
	}
	if n := det.Tracked(); n != 0 || len(det.Quarantine().List(time.Now())) != 0 {
		t.Errorf("an unobserved listener fed the detector: %d subjects tracked, quarantine %v", n, det.Quarantine().List(time.Now()))
	}
}
