package e2e_test

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/credflow/credflow/internal/sidecartest"
)

// TestE2ERateLimits: per-identity limits on real SPIRE identities, through
// the callers' own sidecars. The frontend floods an HTTP listener at ten
// times its limit while the reports workload, whose override allows more,
// calls it at five times the default limit: every one of the reports
// calls succeeds (the frontend's flood takes nothing of its budget), and
// the frontend's excess is answered 429 with Retry-After and the reason
// rate_limited. A grpc-go client past its limit gets RESOURCE_EXHAUSTED.
// On a TCP listener, the frontend's second open connection is closed, and
// admitted once the first is closed.
func TestE2ERateLimits(t *testing.T) {
	s, bin, _ := startWorkloads(t, 0, map[int]string{uidFrontend: "/frontend", uidBackend: "/backend", uidIntruder: "/reports"})
	ctx := t.Context()

	grpcLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer()
	healthpb.RegisterHealthServer(gs, health.NewServer())
	go gs.Serve(grpcLn)
	t.Cleanup(gs.Stop)
	var reached atomic.Int64
	httpLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hs := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		reached.Add(1)
		io.WriteString(w, "ok")
	})}
	go hs.Serve(httpLn)
	t.Cleanup(func() { hs.Close() })
	echo, err := sidecartest.Echo(ctx)
	if err != nil {
		t.Fatal(err)
	}

	addrs := make([]string, 7)
	for i := range addrs {
		if addrs[i], err = sidecartest.FreeAddr(); err != nil {
			t.Fatal(err)
		}
	}
	inWeb, inGRPC, inTCP, outWeb, outGRPC, outTCP, reportsWeb := addrs[0], addrs[1], addrs[2], addrs[3], addrs[4], addrs[5], addrs[6]
	common := fmt.Sprintf("workload_api: %s\nadmin: \"{{admin}}\"\n", s.AgentAddr())
	backend := startSidecar(t, s, bin, uidBackend, "backend", common+fmt.Sprintf(`inbound:
  - name: web
    listen: %q
    app: %q
    protocol: http
    allow: [spiffe://example.org]
    routes: [{peers: [spiffe://example.org], paths: [/*]}]
    limits:
      requests:
        per_identity: {rate: 20, burst: 20}
        overrides: [{peers: [spiffe://example.org/reports], rate: 1000, burst: 1000}]
  - name: grpc
    listen: %q
    app: %q
    protocol: http
    app_protocol: h2c
    allow: [spiffe://example.org]
    routes: [{peers: [spiffe://example.org], paths: [/*]}]
    limits:
      requests: {per_identity: {rate: 0.001, burst: 3}}
  - name: tcp
    listen: %q
    app: %q
    allow: [spiffe://example.org]
    limits: {concurrent_per_identity: 1}
`, inWeb, httpLn.Addr(), inGRPC, grpcLn.Addr(), inTCP, echo))
	out := func(name, listen, upstream, protocol string) string {
		return fmt.Sprintf("  - name: %s\n    listen: %q\n    upstream: %q\n    protocol: %s\n    expect: [spiffe://example.org/backend]\n", name, listen, upstream, protocol)
	}
	startSidecar(t, s, bin, uidFrontend, "frontend", common+"outbound:\n"+out("web", outWeb, inWeb, "http")+out("grpc", outGRPC, inGRPC, "http")+out("tcp", outTCP, inTCP, "tcp"))
	startSidecar(t, s, bin, uidIntruder, "reports", common+"outbound:\n"+out("web", reportsWeb, inWeb, "http"))

	// The flood and the steady caller, side by side for 4 s.
	type tally struct{ ok, limited, other atomic.Int64 }
	var front, reports tally
	var badLimited atomic.Value
	call := func(client *http.Client, addr string, tl *tally) {
		resp, err := client.Get("http://" + addr + "/v1/report")
		if err != nil {
			tl.other.Add(1)
			return
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		switch resp.StatusCode {
		case http.StatusOK:
			tl.ok.Add(1)
		case http.StatusTooManyRequests:
			tl.limited.Add(1)
			if resp.Header.Get("Retry-After") == "" || resp.Header.Get("X-Credflow-Reason") != "rate_limited" {
				badLimited.Store(fmt.Sprintf("Retry-After %q, reason %q", resp.Header.Get("Retry-After"), resp.Header.Get("X-Credflow-Reason")))
			}
		default:
			tl.other.Add(1)
		}
	}
	began := time.Now()
	loadCtx, stop := context.WithTimeout(ctx, 4*time.Second)
	defer stop()
	var wg sync.WaitGroup
	// At most 10 workers x 50/s = 500 requests/s from the frontend (its
	// limit is 20/s), at most 4 x 25/s = 100/s from reports (5 times the
	// default limit, a tenth of its override).
	for _, w := range []struct {
		addr    string
		tl      *tally
		workers int
		pause   time.Duration
	}{{outWeb, &front, 10, 20 * time.Millisecond}, {reportsWeb, &reports, 4, 40 * time.Millisecond}} {
		client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: w.workers}}
		for range w.workers {
			wg.Go(func() {
				for loadCtx.Err() == nil {
					call(client, w.addr, w.tl)
					time.Sleep(w.pause)
				}
			})
		}
	}
	wg.Wait()
	elapsed := time.Since(began)
	fOK, fLimited, fOther := front.ok.Load(), front.limited.Load(), front.other.Load()
	rOK, rLimited, rOther := reports.ok.Load(), reports.limited.Load(), reports.other.Load()
	t.Logf("frontend: %d ok, %d limited, %d other; reports: %d ok, %d limited, %d other", fOK, fLimited, fOther, rOK, rLimited, rOther)
	if rTotal := rOK + rLimited + rOther; rTotal == 0 || float64(rOK) < 0.99*float64(rTotal) {
		t.Errorf("reports: %d of %d calls succeeded during the frontend's flood, want at least 99%%", rOK, rTotal)
	}
	if fOther != 0 {
		t.Errorf("frontend: %d calls failed other than 429", fOther)
	}
	if fTotal := fOK + fLimited; fLimited == 0 || float64(fTotal) < 10*20*4*0.25 {
		t.Errorf("frontend: %d limited of %d: the flood did not reach its limit", fLimited, fTotal)
	}
	// The burst of 20, then 20 a second for as long as calls ran.
	if max := 20 + int64(20*elapsed.Seconds()+1); fOK > max {
		t.Errorf("frontend: %d calls admitted in %v under a limit of 20/s (burst 20), want at most %d", fOK, elapsed, max)
	}
	if v := badLimited.Load(); v != nil {
		t.Errorf("a 429 without its Retry-After or reason: %v", v)
	}
	if got := reached.Load(); got != fOK+rOK {
		t.Errorf("the app saw %d requests, want the %d admitted", got, fOK+rOK)
	}
	if n, err := backend.Metric(ctx, "credflow_refusals_total", "direction=inbound", "reason=rate_limited"); err != nil || n != float64(fLimited) {
		t.Errorf("backend credflow_refusals_total{reason=rate_limited} = %v (%v), want %d", n, err, fLimited)
	}

	// gRPC: three calls of the burst, then RESOURCE_EXHAUSTED.
	conn, err := grpc.NewClient("passthrough:///"+outGRPC, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	hc := healthpb.NewHealthClient(conn)
	var codesSeen []codes.Code
	for range 5 {
		_, err := hc.Check(ctx, &healthpb.HealthCheckRequest{})
		codesSeen = append(codesSeen, status.Code(err))
	}
	if want := []codes.Code{codes.OK, codes.OK, codes.OK, codes.ResourceExhausted, codes.ResourceExhausted}; fmt.Sprint(codesSeen) != fmt.Sprint(want) {
		t.Errorf("gRPC calls past a burst of 3: %v, want %v", codesSeen, want)
	}

	// TCP: one open connection per identity.
	dial := func(msg string) (net.Conn, bool) {
		c, err := net.DialTimeout("tcp", outTCP, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(10 * time.Second))
		io.WriteString(c, msg)
		buf := make([]byte, len(msg))
		_, err = io.ReadFull(c, buf)
		return c, err == nil && string(buf) == msg
	}
	first, ok := dial("first")
	if !ok {
		t.Fatal("the frontend's first TCP connection does not echo")
	}
	second, ok := dial("second")
	second.Close()
	if ok {
		t.Error("a second open TCP connection of the frontend echoed past concurrent_per_identity: 1")
	}
	first.Close()
	deadline := time.Now().Add(15 * time.Second)
	for {
		c, ok := dial("third")
		c.Close()
		if ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the frontend's TCP connections still refused 15 s after its open one closed")
		}
		time.Sleep(50 * time.Millisecond)
	}
}
