package proxy_test

import (
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/credflow/credflow/internal/redistest"
	"github.com/credflow/credflow/internal/rlstest"
	"github.com/credflow/credflow/internal/sidecartest"
	"github.com/credflow/credflow/internal/testca"
	"github.com/credflow/credflow/internal/testenv"
	"github.com/credflow/credflow/proxy"
	"github.com/credflow/credflow/proxy/limit"
	"github.com/credflow/credflow/proxy/route"
)

// globalServiceConfig: the frontend may make 20 requests a second to
// listener app, and open 3 connections a second to listener tcp, across
// every sidecar; nobody else is limited.
const globalServiceConfig = `
domain: credflow
descriptors:
  - key: listener
    value: app
    descriptors:
      - key: kind
        value: request
        descriptors:
          - key: peer
            value: spiffe://example.org/frontend
            rate_limit: {unit: second, requests_per_unit: 20}
  - key: listener
    value: tcp
    descriptors:
      - key: kind
        value: connection
        descriptors:
          - key: peer
            value: spiffe://example.org/frontend
            rate_limit: {unit: second, requests_per_unit: 3}
`

// TestGlobalRateLimits runs three sidecars of one service against the
// real rate limit service and Redis: a frontend flooding all three over
// three whole one-second windows is let through the shared budget, and no
// more (429, Retry-After, rate_limited); another identity is never
// refused; new L4 connections count too. With Redis down, the sidecar
// whose failure mode is deny refuses (503 limit_unavailable) and the
// others let requests through; when Redis is back, the budget applies
// again.
func TestGlobalRateLimits(t *testing.T) {
	testenv.NeedsRateLimitService(t)
	redis := redistest.Start(t)
	svc, err := rlstest.StartService(t.Context(), "", redis.Addr, globalServiceConfig)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(svc.Close)

	ca := testca.New(t, td)
	appLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var reached atomic.Int64
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { reached.Add(1); io.WriteString(w, "ok") })}
	go srv.Serve(appLn)
	t.Cleanup(func() { srv.Close() })
	echo, err := sidecartest.Echo(t.Context())
	if err != nil {
		t.Fatal(err)
	}

	all, _ := route.ParsePath("/*")
	anyone := policy(t, "spiffe://example.org")
	var sidecars []*proxy.Proxy
	var metrics []*inbound
	for _, mode := range []limit.FailureMode{limit.FailClosed, limit.FailOpen, limit.FailOpen} {
		p, reg := startProxy(t, proxy.Config{
			SVIDs:        static{svid: ca.Issue(t, spiffeid.RequireFromPath(td, "/backend"))},
			Bundles:      x509bundle.NewSet(ca.Bundle()),
			GlobalLimits: &limit.GlobalConfig{Service: svc.GRPC, Timeout: time.Second, FailureMode: mode},
			Inbound: []proxy.Inbound{
				{Name: "app", Listen: "127.0.0.1:0", App: appLn.Addr().String(), Allow: anyone,
					HTTP:   &proxy.InboundHTTP{Routes: route.Table{Rules: []route.Rule{{Peers: anyone, Paths: []route.Path{all}}}}},
					Limits: limit.Config{Global: limit.GlobalKinds{Requests: true}}},
				{Name: "tcp", Listen: "127.0.0.1:0", App: echo, Allow: anyone,
					Limits: limit.Config{Global: limit.GlobalKinds{Connections: true}}},
			},
		})
		sidecars = append(sidecars, p)
		metrics = append(metrics, &inbound{reg: reg})
	}
	client := func(path string) *http.Client {
		return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{ForceAttemptHTTP2: true,
			TLSClientConfig: clientConfig(ca.Issue(t, spiffeid.RequireFromPath(td, path)))}}
	}
	front, reports := client("/frontend"), client("/reports")
	// get sends one request through sidecar i and returns the status and
	// the reason and Retry-After headers.
	get := func(c *http.Client, i int) (int, string, string) {
		resp, err := c.Get("https://" + sidecars[i].Addr("app").String() + "/v1/orders")
		if err != nil {
			t.Error(err)
			return 0, "", ""
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode, resp.Header.Get("X-Credflow-Reason"), resp.Header.Get("Retry-After")
	}
	for i := range sidecars { // connections made, outside the windows counted
		if s, _, _ := get(reports, i); s != http.StatusOK {
			t.Fatalf("warm-up through sidecar %d: %d", i, s)
		}
	}

	// The service's windows are whole seconds of the clock.
	const windows = 3
	start := time.Now().Truncate(time.Second).Add(time.Second)
	end := start.Add(windows*time.Second - 50*time.Millisecond)
	time.Sleep(time.Until(start))
	var mu sync.Mutex
	byStatus := map[int]int{}
	var otherRefused atomic.Int64
	var wg sync.WaitGroup
	for i := range sidecars {
		for range 2 {
			wg.Go(func() {
				for time.Now().Before(end) {
					s, why, retry := get(front, i)
					mu.Lock()
					byStatus[s]++
					mu.Unlock()
					if s == http.StatusTooManyRequests && (why != "rate_limited" || retry != "1") {
						t.Errorf("429 with reason %q, Retry-After %q; want rate_limited, 1", why, retry)
					}
				}
			})
		}
		wg.Go(func() {
			for time.Now().Before(end) {
				if s, _, _ := get(reports, i); s != http.StatusOK {
					otherRefused.Add(1)
				}
			}
		})
	}
	wg.Wait()
	budget := windows * 20
	t.Logf("frontend through three sidecars: %v (budget %d); reports refused %d", byStatus, budget, otherRefused.Load())
	if ok := byStatus[http.StatusOK]; ok > budget || float64(ok) < 0.9*float64(budget) {
		t.Errorf("%d requests let through; want within 10%% under the shared budget of %d", ok, budget)
	}
	if byStatus[http.StatusTooManyRequests] == 0 || len(byStatus) != 2 {
		t.Errorf("answers %v; want 200s and 429s only", byStatus)
	}
	if otherRefused.Load() != 0 {
		t.Errorf("an identity without a limit was refused %d times", otherRefused.Load())
	}
	var over float64
	for _, m := range metrics {
		over += m.metric(t, "credflow_global_limit_checks_total", "kind=request", "result=over_limit")
	}
	if int(over) != byStatus[http.StatusTooManyRequests] {
		t.Errorf("credflow_global_limit_checks_total{result=over_limit} = %v across the sidecars; want %d", over, byStatus[http.StatusTooManyRequests])
	}

	// New connections to listener tcp: 3 a second across the sidecars.
	frontTLS := clientConfig(ca.Issue(t, spiffeid.RequireFromPath(td, "/frontend")))
	first := time.Now().Unix()
	echoed := 0
	for i := range 10 {
		if echoes(t, sidecars[i%3].Addr("tcp").String(), frontTLS) {
			echoed++
		}
	}
	spanned := int(time.Now().Unix()-first) + 1
	if echoed > 3*spanned || echoed == 10 {
		t.Errorf("%d of 10 new connections echoed over %d one-second windows; the budget is 3 a window", echoed, spanned)
	}

	// Redis down: the failure modes decide.
	redis.Kill()
	waitStatus := func(c *http.Client, i, want int, what string) {
		t.Helper()
		deadline := time.Now().Add(20 * time.Second)
		for {
			s, why, _ := get(c, i)
			if s == want {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: sidecar %d still answers %d (%s) after 20 s; want %d", what, i, s, why, want)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	waitStatus(front, 0, http.StatusServiceUnavailable, "Redis down, failure mode deny")
	if s, why, _ := get(front, 0); s != http.StatusServiceUnavailable || why != "limit_unavailable" {
		t.Errorf("Redis down, failure mode deny: %d %q; want 503 limit_unavailable", s, why)
	}
	if s, _, _ := get(front, 1); s != http.StatusOK {
		t.Errorf("Redis down, failure mode allow: %d; want 200", s)
	}
	if n := metrics[1].metric(t, "credflow_global_limit_checks_total", "kind=request", "result=error"); n == 0 {
		t.Error("no check counted as an error while Redis was down")
	}
	redis.Restart()
	waitStatus(front, 0, http.StatusOK, "Redis back")
	// And the budget holds again: a burst past it is refused.
	refused := 0
	for range 60 {
		if s, _, _ := get(front, 1); s == http.StatusTooManyRequests {
			refused++
		}
	}
	if refused == 0 {
		t.Error("Redis back: 60 requests, none refused; the budget is 20 a second")
	}
}

// echoes makes a connection to addr and reports whether it echoes.
func echoes(t *testing.T, addr string, cfg *tls.Config) bool {
	t.Helper()
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	io.WriteString(c, "ping")
	buf := make([]byte, 4)
	_, err = io.ReadFull(c, buf)
	return err == nil && string(buf) == "ping"
}
