package proxy_test

import (
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/credflow/credflow/internal/sidecartest"
	"github.com/credflow/credflow/internal/testca"
	"github.com/credflow/credflow/proxy"
	"github.com/credflow/credflow/proxy/limit"
	"github.com/credflow/credflow/proxy/route"
)

// slow refills a bucket so slowly that no token comes back during a test.
const slow = 0.001

// TestHTTPRateLimits: requests past an identity's burst are answered 429
// with Retry-After and the reason rate_limited (gRPC: RESOURCE_EXHAUSTED
// in the trailers), counted and logged, and never reach the app; another
// identity keeps its own budget; an override gives a pattern's identities
// theirs; Apply changes the limits, and keeps the state while they stay
// the same.
func TestHTTPRateLimits(t *testing.T) {
	ca := testca.New(t, td)
	var reached int
	appLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { reached++; io.WriteString(w, "ok") })}
	go srv.Serve(appLn)
	t.Cleanup(func() { srv.Close() })

	batch := policy(t, "spiffe://example.org/batch/*")
	limits := limit.Config{Requests: limit.Limits{PerIdentity: limit.Rate{PerSecond: slow, Burst: 3},
		Overrides: []limit.Override{{Peers: batch, Rate: limit.Rate{PerSecond: slow, Burst: 10}}}}}
	all, _ := route.ParsePath("/*")
	in := proxy.Inbound{Name: "app", Listen: "127.0.0.1:0", App: appLn.Addr().String(), Allow: policy(t, "spiffe://example.org"),
		HTTP:   &proxy.InboundHTTP{Routes: route.Table{Rules: []route.Rule{{Peers: policy(t, "spiffe://example.org"), Paths: []route.Path{all}}}}},
		Limits: limits}
	acc := &accessLog{}
	p, reg := startProxy(t, proxy.Config{
		SVIDs:     static{svid: ca.Issue(t, spiffeid.RequireFromPath(td, "/backend"))},
		Bundles:   x509bundle.NewSet(ca.Bundle()),
		Inbound:   []proxy.Inbound{in},
		AccessLog: acc.logger(),
	})
	m := &inbound{reg: reg}
	url := "https://" + p.Addr("app").String() + "/v1/orders"
	client := func(path string) *http.Client {
		return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{ForceAttemptHTTP2: true,
			TLSClientConfig: clientConfig(ca.Issue(t, spiffeid.RequireFromPath(td, path)))}}
	}
	// send makes n requests and counts the answers by status; it checks
	// the refusals' Retry-After and reason.
	send := func(c *http.Client, n int, grpc bool) map[int]int {
		t.Helper()
		got := map[int]int{}
		for range n {
			req, _ := http.NewRequest(http.MethodPost, url, strings.NewReader("{}"))
			if grpc {
				req.Header.Set("Content-Type", "application/grpc")
			}
			resp, err := c.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			status := resp.StatusCode
			if grpc {
				status = 0
				if s := resp.Trailer.Get("Grpc-Status"); s == "8" { // RESOURCE_EXHAUSTED
					status = http.StatusTooManyRequests
				} else if s == "" && resp.StatusCode == http.StatusOK {
					status = http.StatusOK
				}
			}
			got[status]++
			if status == http.StatusTooManyRequests {
				if why := resp.Header.Get("X-Credflow-Reason"); why != "rate_limited" {
					t.Errorf("refused with %q, want rate_limited", why)
				}
				if ra := resp.Header.Get("Retry-After"); ra == "" || ra == "0" {
					t.Errorf("Retry-After %q on a 429", ra)
				}
			}
		}
		return got
	}

	front := client("/frontend")
	if got := send(front, 5, false); got[200] != 3 || got[429] != 2 {
		t.Errorf("frontend, 5 requests past a burst of 3: %v", got)
	}
	if got := send(front, 1, true); got[429] != 1 {
		t.Errorf("frontend's gRPC call past its limit: %v, want RESOURCE_EXHAUSTED", got)
	}
	if got := send(client("/reports"), 3, false); got[200] != 3 {
		t.Errorf("reports, within its own burst: %v; the frontend's flood took its budget", got)
	}
	if got := send(client("/batch/nightly"), 12, false); got[200] != 10 || got[429] != 2 {
		t.Errorf("batch/nightly, 12 requests past its override's burst of 10: %v", got)
	}
	if reached != 16 {
		t.Errorf("the app saw %d requests, want the 16 admitted", reached)
	}
	if n := m.metric(t, "credflow_refusals_total", "reason=rate_limited"); n != 5 {
		t.Errorf("credflow_refusals_total{reason=rate_limited} = %v, want 5", n)
	}
	acc.waitLine(t, "listener=app", "reason=rate_limited", "peer_id=spiffe://example.org/frontend", "status=429")

	// The same limits again: the frontend's state is kept.
	if err := p.Apply([]proxy.Inbound{in}, nil); err != nil {
		t.Fatal(err)
	}
	if got := send(front, 1, false); got[429] != 1 {
		t.Errorf("after applying the same limits: %v, want still refused", got)
	}
	// Limits lifted.
	in.Limits = limit.Config{}
	if err := p.Apply([]proxy.Inbound{in}, nil); err != nil {
		t.Fatal(err)
	}
	if got := send(front, 5, false); got[200] != 5 {
		t.Errorf("after lifting the limits: %v", got)
	}
}

// TestConnectionLimits: on a TCP listener, a peer identity past its open
// connections, or its new connections per second, is closed after the
// handshake (rate_limited) before any byte reaches the app; another
// identity is not affected, and a closed connection frees its place.
func TestConnectionLimits(t *testing.T) {
	ca := testca.New(t, td)
	echo, err := sidecartest.Echo(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	p, reg := startProxy(t, proxy.Config{
		SVIDs:   static{svid: ca.Issue(t, spiffeid.RequireFromPath(td, "/backend"))},
		Bundles: x509bundle.NewSet(ca.Bundle()),
		Inbound: []proxy.Inbound{
			{Name: "open", Listen: "127.0.0.1:0", App: echo, Allow: policy(t, "spiffe://example.org"),
				Limits: limit.Config{ConcurrentPerIdentity: 2}},
			{Name: "new", Listen: "127.0.0.1:0", App: echo, Allow: policy(t, "spiffe://example.org"),
				Limits: limit.Config{Connections: limit.Limits{PerIdentity: limit.Rate{PerSecond: slow, Burst: 3}}}},
		},
	})
	m := &inbound{reg: reg}
	front := clientConfig(ca.Issue(t, spiffeid.RequireFromPath(td, "/frontend")))
	reports := clientConfig(ca.Issue(t, spiffeid.RequireFromPath(td, "/reports")))
	// open makes a connection to listener and reports whether it echoes.
	open := func(listener string, cfg *tls.Config, msg string) (*tls.Conn, bool) {
		t.Helper()
		c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", p.Addr(listener).String(), cfg)
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(5 * time.Second))
		io.WriteString(c, msg)
		buf := make([]byte, len(msg))
		_, err = io.ReadFull(c, buf)
		return c, err == nil && string(buf) == msg
	}

	// Open connections: two at a time per identity.
	a, okA := open("open", front, "one")
	b, okB := open("open", front, "two")
	if !okA || !okB {
		t.Fatal("the frontend's first two connections do not echo")
	}
	c, ok := open("open", front, "three")
	c.Close()
	if ok {
		t.Error("a third open connection of the frontend echoed")
	}
	o, ok := open("open", reports, "reports")
	o.Close()
	if !ok {
		t.Error("another identity refused for the frontend's connections")
	}
	// Once one closes, the next gets in (the sidecar learns of the close
	// when its relay ends: try until then).
	a.Close()
	deadline := time.Now().Add(10 * time.Second)
	for {
		d, ok := open("open", front, "four")
		d.Close()
		if ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("still refused 10 s after one of the frontend's two connections closed")
		}
		time.Sleep(10 * time.Millisecond)
	}
	b.Close()

	// New connections: a burst of 3, closed or not.
	before := m.metric(t, "credflow_refusals_total", "reason=rate_limited")
	for i := range 3 {
		c, ok := open("new", front, "hello")
		c.Close()
		if !ok {
			t.Fatalf("new connection %d of a burst of 3 refused", i+1)
		}
	}
	c, ok = open("new", front, "hello")
	c.Close()
	if ok {
		t.Error("a fourth new connection past the burst of 3 echoed")
	}
	if c, ok := open("new", reports, "hello"); !ok {
		t.Error("another identity refused for the frontend's new connections")
	} else {
		c.Close()
	}
	// Counted just after the refused connection is closed: waited for.
	m.waitMetric(t, before+1, "credflow_refusals_total", "reason=rate_limited")
}

// TestRouteRateLimits: a named route's limit refuses an identity past it
// on that route only (429, rate_limited), the route's name is in the
// access log, and a reload changes the limit.
func TestRouteRateLimits(t *testing.T) {
	ca := testca.New(t, td)
	appLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") })}
	go srv.Serve(appLn)
	t.Cleanup(func() { srv.Close() })

	anyone := policy(t, "spiffe://example.org")
	export, _ := route.ParsePath("/export/*")
	all, _ := route.ParsePath("/*")
	in := proxy.Inbound{Name: "app", Listen: "127.0.0.1:0", App: appLn.Addr().String(), Allow: anyone,
		HTTP: &proxy.InboundHTTP{Routes: route.Table{Rules: []route.Rule{
			{Name: "export", Peers: anyone, Paths: []route.Path{export}},
			{Peers: anyone, Paths: []route.Path{all}},
		}}},
		Limits: limit.Config{Routes: map[string]limit.Rate{"export": {PerSecond: slow, Burst: 2}}}}
	acc := &accessLog{}
	p, _ := startProxy(t, proxy.Config{
		SVIDs:     static{svid: ca.Issue(t, spiffeid.RequireFromPath(td, "/backend"))},
		Bundles:   x509bundle.NewSet(ca.Bundle()),
		Inbound:   []proxy.Inbound{in},
		AccessLog: acc.logger(),
	})
	client := func(path string) *http.Client {
		return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{ForceAttemptHTTP2: true,
			TLSClientConfig: clientConfig(ca.Issue(t, spiffeid.RequireFromPath(td, path)))}}
	}
	send := func(c *http.Client, path string, n int) map[int]int {
		t.Helper()
		got := map[int]int{}
		for range n {
			resp, err := c.Get("https://" + p.Addr("app").String() + path)
			if err != nil {
				t.Fatal(err)
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			got[resp.StatusCode]++
			if resp.StatusCode == http.StatusTooManyRequests && resp.Header.Get("X-Credflow-Reason") != "rate_limited" {
				t.Errorf("429 with reason %q", resp.Header.Get("X-Credflow-Reason"))
			}
		}
		return got
	}
	front := client("/frontend")
	if got := send(front, "/export/orders.csv", 4); got[200] != 2 || got[429] != 2 {
		t.Errorf("frontend, 4 requests on export past its burst of 2: %v", got)
	}
	if got := send(front, "/v1/orders", 5); got[200] != 5 {
		t.Errorf("frontend on a route without a limit: %v", got)
	}
	if got := send(client("/reports"), "/export/orders.csv", 2); got[200] != 2 {
		t.Errorf("reports on export: %v; the frontend's requests took its budget", got)
	}
	acc.waitLine(t, "listener=app", "route=export", "reason=rate_limited", "peer_id=spiffe://example.org/frontend", "status=429")
	acc.waitLine(t, "listener=app", "route=export", "decision=allow", "peer_id=spiffe://example.org/reports")

	in.Limits.Routes["export"] = limit.Rate{PerSecond: slow, Burst: 5}
	if err := p.Apply([]proxy.Inbound{in}, nil); err != nil {
		t.Fatal(err)
	}
	if got := send(front, "/export/orders.csv", 6); got[200] != 5 || got[429] != 1 {
		t.Errorf("after a reload to a burst of 5: %v", got)
	}
}

// TestHTTPConnectionLimitsAndCallers: an HTTP inbound that limits each
// identity's open connections serves a caller whose app keeps more
// requests in flight than that (each on its own connection to its
// sidecar) without refusing it once and without a request failing: told
// by the upstream that it limits connections, the caller's sidecar keeps
// to its HTTP/2 pool instead of one connection per request in flight. The
// app behind the inbound cannot tell it otherwise.
func TestHTTPConnectionLimitsAndCallers(t *testing.T) {
	app := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set(proxy.ConnectionsHeader, "per-request") // not the app's to say
		io.WriteString(w, "ok")
	})
	hp := startHTTPPairSet(t, app, func(in *proxy.Inbound, _ *proxy.Outbound) {
		in.Limits = limit.Config{ConcurrentPerIdentity: 3}
	})
	send := func(method string) map[string]int {
		const workers, each = 8, 25
		got := make(chan string, workers*each)
		var wg sync.WaitGroup
		for range workers {
			wg.Go(func() {
				client := &http.Client{Transport: &http.Transport{}, Timeout: 10 * time.Second}
				defer client.CloseIdleConnections()
				for range each {
					var body io.Reader
					if method == http.MethodPost {
						body = strings.NewReader("payload")
					}
					req, _ := http.NewRequest(method, "http://"+hp.outAddr+"/api/x", body)
					resp, err := client.Do(req)
					if err != nil {
						got <- err.Error()
						continue
					}
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					if h := resp.Header.Values(proxy.ConnectionsHeader); len(h) > 0 {
						got <- "app saw " + proxy.ConnectionsHeader + ": " + strings.Join(h, ",")
						continue
					}
					got <- resp.Status
				}
			})
		}
		wg.Wait()
		close(got)
		n := map[string]int{}
		for s := range got {
			n[s]++
		}
		return n
	}
	for _, method := range []string{http.MethodGet, http.MethodPost} {
		if got := send(method); got["200 OK"] != 200 {
			t.Errorf("%s: %v, want 200 × 200 OK", method, got)
		}
	}
	if n := hp.in.metric(t, "credflow_refusals_total", "reason=rate_limited"); n != 0 {
		t.Errorf("the inbound refused the caller's connections %v times", n)
	}
}
