package limit

import (
	"fmt"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/credflow/credflow/proxy/authz"
)

var (
	t0    = time.Date(2026, 12, 6, 0, 0, 0, 0, time.UTC)
	alice = spiffeid.RequireFromString("spiffe://example.org/alice")
	bob   = spiffeid.RequireFromString("spiffe://example.org/bob")
	batch = spiffeid.RequireFromString("spiffe://example.org/batch/nightly")
)

// admitted counts the requests of id admitted at now, out of n.
func admitted(l *Limiter, id spiffeid.ID, now time.Time, n int) int {
	ok := 0
	for range n {
		if _, yes := l.Request(id, now); yes {
			ok++
		}
	}
	return ok
}

// TestPerIdentity: each identity has its own bucket: one that spends its
// burst is refused, with the wait until its next token, and the other is
// not affected; the bucket refills at its rate.
func TestPerIdentity(t *testing.T) {
	l := New(Config{Requests: Limits{PerIdentity: Rate{PerSecond: 10, Burst: 5}}})
	if n := admitted(l, alice, t0, 8); n != 5 {
		t.Errorf("alice: %d of 8 admitted at once, want the burst of 5", n)
	}
	retry, ok := l.Request(alice, t0)
	if ok || retry != 100*time.Millisecond {
		t.Errorf("alice past her burst: ok %v, retry %v, want refused, retry 100ms", ok, retry)
	}
	if n := admitted(l, bob, t0, 5); n != 5 {
		t.Errorf("bob: %d of 5 admitted, want 5: alice's flood took his budget", n)
	}
	if n := admitted(l, alice, t0.Add(time.Second), 10); n != 5 {
		t.Errorf("alice a second later: %d admitted, want 5 (refilled to the burst)", n)
	}
}

// TestTotal: the total bounds every identity together, and a request the
// total refuses costs the identity no token of its own.
func TestTotal(t *testing.T) {
	l := New(Config{Requests: Limits{Total: Rate{PerSecond: 1, Burst: 4}, PerIdentity: Rate{PerSecond: 1, Burst: 3}}})
	if n := admitted(l, alice, t0, 3) + admitted(l, bob, t0, 3); n != 4 {
		t.Fatalf("%d admitted under a total burst of 4", n)
	}

	// A total that refills fast, identities that refill slowly: alice's
	// requests refused by the total leave her own tokens.
	l = New(Config{Requests: Limits{Total: Rate{PerSecond: 100, Burst: 1}, PerIdentity: Rate{PerSecond: 0.001, Burst: 3}}})
	if n := admitted(l, alice, t0, 6); n != 1 {
		t.Fatalf("%d admitted under a total burst of 1", n)
	}
	for i := 1; i <= 2; i++ {
		if n := admitted(l, alice, t0.Add(time.Duration(i)*time.Second), 1); n != 1 {
			t.Errorf("second %d: alice refused: the requests the total refused spent her own tokens", i)
		}
	}
}

// TestOverrides: the first override whose pattern matches an identity
// sets its rate; others keep the default.
func TestOverrides(t *testing.T) {
	batchPeers, err := authz.ParsePolicy([]string{"spiffe://example.org/batch/*"})
	if err != nil {
		t.Fatal(err)
	}
	l := New(Config{Requests: Limits{PerIdentity: Rate{PerSecond: 1, Burst: 2},
		Overrides: []Override{{Peers: batchPeers, Rate: Rate{PerSecond: 100, Burst: 50}}}}})
	if n := admitted(l, batch, t0, 60); n != 50 {
		t.Errorf("batch: %d admitted, want its override's burst of 50", n)
	}
	if n := admitted(l, alice, t0, 60); n != 2 {
		t.Errorf("alice: %d admitted, want the default burst of 2", n)
	}
}

// TestConnections: new connections per second, and open connections per
// identity, released once each.
func TestConnections(t *testing.T) {
	l := New(Config{Connections: Limits{PerIdentity: Rate{PerSecond: 1, Burst: 3}}, ConcurrentPerIdentity: 2})
	r1, _, ok1 := l.Connect(alice, t0)
	r2, _, ok2 := l.Connect(alice, t0)
	if !ok1 || !ok2 {
		t.Fatal("alice's first two connections refused")
	}
	if _, retry, ok := l.Connect(alice, t0); ok || retry != 0 {
		t.Errorf("a third open connection: ok %v, retry %v, want refused for the open count", ok, retry)
	}
	r1()
	r1() // a second release changes nothing
	r3, _, ok := l.Connect(alice, t0)
	if !ok {
		t.Fatal("refused after a release")
	}
	if _, _, ok := l.Connect(alice, t0); ok {
		t.Error("a third open connection after a double release")
	}
	r2()
	r3()
	// Three new connections spent the burst: the next waits for a token.
	if _, retry, ok := l.Connect(alice, t0); ok || retry != time.Second {
		t.Errorf("a fourth new connection at once: ok %v, retry %v, want refused, retry 1s", ok, retry)
	}
	if _, _, ok := l.Connect(bob, t0); !ok {
		t.Error("bob refused for alice's connections")
	}
}

// TestBounded: the state kept stays within MaxIdentities however many
// identities arrive, and the identities seen most recently keep theirs.
func TestBounded(t *testing.T) {
	l := New(Config{Requests: Limits{PerIdentity: Rate{PerSecond: 1, Burst: 1}}, MaxIdentities: 1000})
	l.Request(alice, t0)
	for i := range 100000 {
		l.Request(spiffeid.RequireFromString(fmt.Sprintf("spiffe://example.org/flood/%d", i)), t0)
		if i%500 == 0 {
			l.Request(alice, t0) // alice stays recent, and refused
		}
	}
	if n := l.Tracked(); n != 1000 {
		t.Errorf("%d identities tracked, want the cap of 1000", n)
	}
	if _, ok := l.Request(alice, t0); ok {
		t.Error("alice, seen recently, got a fresh bucket: her state was evicted")
	}
}

// TestNoLimits: a zero Config admits everything and keeps no state.
func TestNoLimits(t *testing.T) {
	l := New(Config{})
	if n := admitted(l, alice, t0, 1000); n != 1000 {
		t.Errorf("%d of 1000 admitted", n)
	}
	if release, _, ok := l.Connect(alice, t0); !ok {
		t.Error("a connection refused")
	} else {
		release()
	}
	if l.Tracked() != 0 {
		t.Errorf("%d identities tracked with no limits", l.Tracked())
	}
}

// TestRoutes: a named route's limit is each identity's own on that route:
// spending it leaves the identity's other routes, routes without a limit
// and other identities alone; it refills at its rate.
func TestRoutes(t *testing.T) {
	l := New(Config{Routes: map[string]Rate{"export": {PerSecond: 1, Burst: 2}}})
	route := func(id spiffeid.ID, name string, now time.Time, n int) int {
		ok := 0
		for range n {
			if _, yes := l.RouteRequest(id, name, now); yes {
				ok++
			}
		}
		return ok
	}
	if n := route(alice, "export", t0, 5); n != 2 {
		t.Errorf("alice on export: %d of 5 admitted, want the burst of 2", n)
	}
	if retry, ok := l.RouteRequest(alice, "export", t0); ok || retry != time.Second {
		t.Errorf("alice past export's burst: ok %v, retry %v; want refused, 1s", ok, retry)
	}
	if n := route(alice, "orders", t0, 50); n != 50 {
		t.Errorf("alice on orders, a route without a limit: %d of 50 admitted", n)
	}
	if n := route(bob, "export", t0, 2); n != 2 {
		t.Errorf("bob on export: %d of 2 admitted; alice's requests took his budget", n)
	}
	if n := route(alice, "export", t0.Add(time.Second), 5); n != 1 {
		t.Errorf("alice on export a second later: %d admitted, want 1", n)
	}
	if n := admitted(l, alice, t0, 10); n != 10 {
		t.Errorf("Request with route limits only: %d of 10 admitted", n)
	}
}
