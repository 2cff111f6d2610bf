package rls_test

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/credflow/credflow/internal/redistest"
	"github.com/credflow/credflow/internal/rlstest"
	"github.com/credflow/credflow/internal/testenv"
	"github.com/credflow/credflow/proxy/limit"
	"github.com/credflow/credflow/proxy/limit/rls"
)

// serviceConfig gives frontend 30 requests a second on listener api, and
// every identity 5 a second on its route export, shared by every sidecar;
// nothing else has a limit.
const serviceConfig = `
domain: credflow
descriptors:
  - key: listener
    value: api
    descriptors:
      - key: kind
        value: request
        descriptors:
          - key: peer
            value: spiffe://example.org/frontend
            rate_limit:
              unit: second
              requests_per_unit: 30
          - key: route
            value: export
            descriptors:
              - key: peer
                rate_limit:
                  unit: second
                  requests_per_unit: 5
`

var (
	frontend = spiffeid.RequireFromString("spiffe://example.org/frontend")
	reports  = spiffeid.RequireFromString("spiffe://example.org/reports")
)

// startService runs Redis and the rate limit service for t.
func startService(t *testing.T) (*redistest.Server, *rlstest.Service) {
	t.Helper()
	testenv.NeedsRateLimitService(t)
	ctx := t.Context()
	redis := redistest.Start(t)
	svc, err := rlstest.StartService(ctx, "", redis.Addr, serviceConfig)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(svc.Close)
	return redis, svc
}

func dial(t *testing.T, addr string, mode limit.FailureMode) *rls.Client {
	t.Helper()
	g, err := rls.Dial(limit.GlobalConfig{Service: addr, Timeout: time.Second, FailureMode: mode})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { g.Close() })
	return g
}

// TestGlobalSharedBudget floods the service from three clients, as three
// sidecars of one service would, over three whole windows of one second:
// together they are let through the budget, 30 a second, and no more; an
// identity without a limit is never refused.
func TestGlobalSharedBudget(t *testing.T) {
	_, svc := startService(t)
	clients := []*rls.Client{
		dial(t, svc.GRPC, limit.FailClosed), dial(t, svc.GRPC, limit.FailClosed), dial(t, svc.GRPC, limit.FailClosed),
	}
	hit := limit.Hit{Listener: "api", Kind: limit.KindRequest, Peer: frontend}
	// Warm the connections up, in a window that is not counted.
	for _, g := range clients {
		if v := g.Check(t.Context(), limit.Hit{Listener: "api", Kind: limit.KindRequest, Peer: reports}); !v.OK || v.Err != nil {
			t.Fatalf("warm-up: %+v", v)
		}
	}

	// The service's windows are whole seconds of the clock: start at the
	// next second and stop just before the third after it ends.
	const windows = 3
	start := time.Now().Truncate(time.Second).Add(time.Second)
	end := start.Add(windows*time.Second - 50*time.Millisecond)
	time.Sleep(time.Until(start))

	var ok, limited, failed, other atomic.Int64
	var retry atomic.Int64
	var wg sync.WaitGroup
	for _, g := range clients {
		for range 3 {
			wg.Go(func() {
				for time.Now().Before(end) {
					v := g.Check(t.Context(), hit)
					switch {
					case v.Err != nil:
						failed.Add(1)
					case v.OK:
						ok.Add(1)
					default:
						limited.Add(1)
						retry.Store(int64(v.RetryAfter))
					}
				}
			})
		}
		wg.Go(func() {
			for time.Now().Before(end) {
				if v := g.Check(t.Context(), limit.Hit{Listener: "api", Kind: limit.KindRequest, Peer: reports}); !v.OK {
					other.Add(1)
				}
			}
		})
	}
	wg.Wait()

	budget := int64(windows * 30)
	t.Logf("frontend: %d let through (budget %d), %d refused; reports refused %d", ok.Load(), budget, limited.Load(), other.Load())
	if failed.Load() != 0 {
		t.Fatalf("%d checks failed: %s", failed.Load(), svc.Log())
	}
	if got := ok.Load(); got > budget || float64(got) < 0.9*float64(budget) {
		t.Errorf("let through %d; want within 10%% under the shared budget of %d", got, budget)
	}
	if limited.Load() == 0 {
		t.Error("the flood was never refused")
	}
	if r := time.Duration(retry.Load()); r <= 0 || r > time.Second {
		t.Errorf("RetryAfter = %v; want the rest of the one-second window", r)
	}
	if other.Load() != 0 {
		t.Errorf("an identity with no limit was refused %d times", other.Load())
	}
}

// waitVerdict checks h until the verdict is what want says, or fails t
// after 20 s.
func waitVerdict(t *testing.T, g *rls.Client, h limit.Hit, what string, want func(limit.Verdict) bool) limit.Verdict {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		v := g.Check(t.Context(), h)
		if want(v) {
			return v
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: still %+v after 20 s", what, v)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestGlobalFailureMode stops Redis, then the service itself: checks get
// the configured failure mode (open or closed), within the timeout, and
// real answers again once each is back.
func TestGlobalFailureMode(t *testing.T) {
	redis, svc := startService(t)
	open, closed := dial(t, svc.GRPC, limit.FailOpen), dial(t, svc.GRPC, limit.FailClosed)
	// A limited identity, at 20 checks a second, within its 30: the
	// service asks Redis for it (it does not for an unlimited one).
	hit := limit.Hit{Listener: "api", Kind: limit.KindRequest, Peer: frontend}
	answered := func(v limit.Verdict) bool { return v.Err == nil && v.OK }
	failing := func(v limit.Verdict) bool { return v.Err != nil }
	for _, g := range []*rls.Client{open, closed} {
		waitVerdict(t, g, hit, "before any failure", answered)
	}

	for _, outage := range []struct {
		name  string
		stop  func()
		start func(context.Context) error
	}{
		{"redis", redis.Kill, func(context.Context) error { redis.Restart(); return nil }},
		{"service", svc.Stop, svc.Start},
	} {
		outage.stop()
		for _, c := range []struct {
			g    *rls.Client
			want bool
		}{{open, true}, {closed, false}} {
			begun := time.Now()
			v := waitVerdict(t, c.g, hit, outage.name+" down", failing)
			if v.OK != c.want {
				t.Errorf("%s down, failure mode %v: OK = %v; want %v (%v)", outage.name, c.g.Config().FailureMode, v.OK, c.want, v.Err)
			}
			if took := time.Since(begun); took > 5*time.Second {
				t.Errorf("%s down: a failing check took %v; the timeout is 1 s", outage.name, took)
			}
		}
		if err := outage.start(t.Context()); err != nil {
			t.Fatal(err)
		}
		for _, g := range []*rls.Client{open, closed} {
			waitVerdict(t, g, hit, outage.name+" back", answered)
		}
	}
}

// TestGlobalRoute: a request on a named route is counted on the route
// too, each identity on its own: past 5 in a window, refused; the same
// identity elsewhere is not.
func TestGlobalRoute(t *testing.T) {
	_, svc := startService(t)
	g := dial(t, svc.GRPC, limit.FailClosed)
	onRoute := limit.Hit{Listener: "api", Kind: limit.KindRequest, Route: "export", Peer: reports}
	elsewhere := limit.Hit{Listener: "api", Kind: limit.KindRequest, Route: "orders", Peer: reports}
	if v := g.Check(t.Context(), elsewhere); !v.OK || v.Err != nil { // connected, outside the window counted
		t.Fatalf("warm-up: %+v", v)
	}
	time.Sleep(time.Until(time.Now().Truncate(time.Second).Add(time.Second)))
	first := time.Now().Unix()
	ok := 0
	for range 10 {
		if v := g.Check(t.Context(), onRoute); v.Err != nil {
			t.Fatal(v.Err)
		} else if v.OK {
			ok++
		}
	}
	// Ten checks take milliseconds; on a loaded machine they may reach
	// into the next window, which has 5 of its own.
	if spanned := int(time.Now().Unix()-first) + 1; ok > 5*spanned || ok < 5 || (spanned == 1 && ok != 5) {
		t.Errorf("%d of 10 checks on route export let through over %d one-second windows; want 5 a window", ok, spanned)
	}
	for range 10 {
		if v := g.Check(t.Context(), elsewhere); !v.OK {
			t.Fatalf("the same identity on another route refused: %+v", v)
		}
	}
}
