package proxy_test

import (
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/credflow/credflow/internal/sidecartest"
	"github.com/credflow/credflow/internal/testca"
	"github.com/credflow/credflow/proxy"
)

// swappable is an identity whose SVID and bundles a test replaces, as a
// Workload API update does; like agent.Source it signals each change.
type swappable struct {
	cur     atomic.Pointer[static]
	mu      sync.Mutex
	changed chan struct{}
}

func (s *swappable) set(svid *x509svid.SVID, bundles ...*x509bundle.Bundle) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.cur.Store(&static{svid: svid, bundles: x509bundle.NewSet(bundles...)})
	if s.changed != nil {
		close(s.changed)
	}
	s.changed = make(chan struct{})
}

func (s *swappable) Changed() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.changed
}

func (s *swappable) GetX509SVID() (*x509svid.SVID, error) { return s.cur.Load().GetX509SVID() }
func (s *swappable) GetX509BundleForTrustDomain(t spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	return s.cur.Load().GetX509BundleForTrustDomain(t)
}

// TestOutboundStaleResumedSession is F9's removal step at the outbound
// side, with a federated trust domain: the remote domain rotated its root
// and the backend now presents a new-root certificate, while the frontend
// had sessions from handshakes with the old-root one. When the old root
// leaves the frontend's bundle, the next connection succeeds: no session
// whose certificate no longer verifies is resumed. A backend that still
// presents an old-root certificate is refused, and counted once.
func TestOutboundStaleResumedSession(t *testing.T) {
	remote := spiffeid.RequireTrustDomainFromString("remote.test")
	local := testca.New(t, td)
	oldCA, newCA := testca.New(t, remote), testca.New(t, remote)
	backendID := spiffeid.RequireFromPath(remote, "/backend")
	oldBackend, newBackend := oldCA.Issue(t, backendID), newCA.Issue(t, backendID)

	backend := &swappable{}
	backend.set(oldBackend, local.Bundle(), oldCA.Bundle())
	echo, err := sidecartest.Echo(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	in, _ := startProxy(t, proxy.Config{
		SVIDs:   backend,
		Bundles: backend,
		Inbound: []proxy.Inbound{{Name: "app", Listen: "127.0.0.1:0", App: echo, Allow: policy(t, "spiffe://example.org/frontend")}},
	})

	frontend := &swappable{}
	frontSVID := local.Issue(t, spiffeid.RequireFromPath(td, "/frontend"))
	overlap := x509bundle.FromX509Authorities(remote, append(oldCA.Roots(), newCA.Roots()...))
	frontend.set(frontSVID, local.Bundle(), overlap)
	out, reg := startProxy(t, proxy.Config{
		SVIDs:            frontend,
		Bundles:          frontend,
		Outbound:         []proxy.Outbound{{Name: "up", Listen: "127.0.0.1:0", Upstream: in.Addr("app").String(), Expect: policy(t, "spiffe://remote.test/backend")}},
		HandshakeTimeout: 2 * time.Second,
	})
	m := &inbound{reg: reg}
	addr := out.Addr("up").String()
	send := func(want string) {
		t.Helper()
		if got := exchange(t, addr, "x"); got != want {
			t.Fatalf("echo %q, want %q", got, want)
		}
	}

	// A full handshake with the old-root certificate, then a resumed one.
	send("x")
	send("x")
	m.waitMetric(t, 1, "credflow_tls_connections_total", "resumed=true")
	// The backend moves to the new root, then the old root leaves the
	// frontend's bundle.
	backend.set(newBackend, local.Bundle(), oldCA.Bundle(), newCA.Bundle())
	send("x")
	frontend.set(frontSVID, local.Bundle(), newCA.Bundle())
	for range 3 {
		send("x")
	}
	if n := m.metric(t, "credflow_refusals_total"); n != 0 {
		t.Fatalf("%v refusals for a backend that holds a trusted certificate", n)
	}

	// A backend still on the old root is refused, and counted once: the
	// resumed handshake is refused, then the full one.
	backend.set(oldBackend, local.Bundle(), oldCA.Bundle(), newCA.Bundle())
	front2 := &swappable{}
	front2.set(frontSVID, local.Bundle(), overlap)
	out2, reg2 := startProxy(t, proxy.Config{
		SVIDs:            front2,
		Bundles:          front2,
		Outbound:         []proxy.Outbound{{Name: "up", Listen: "127.0.0.1:0", Upstream: in.Addr("app").String(), Expect: policy(t, "spiffe://remote.test/backend")}},
		HandshakeTimeout: 2 * time.Second,
	})
	m2 := &inbound{reg: reg2}
	for range 2 {
		if got := exchange(t, out2.Addr("up").String(), "x"); got != "x" {
			t.Fatalf("echo %q before the old root left", got)
		}
	}
	m2.waitMetric(t, 1, "credflow_tls_connections_total", "resumed=true")
	front2.set(frontSVID, local.Bundle(), newCA.Bundle())
	if got := exchange(t, out2.Addr("up").String(), "x"); got != "" {
		t.Fatalf("an old-root backend got through: %q", got)
	}
	m2.waitMetric(t, 1, "credflow_refusals_total", "reason=untrusted")
	time.Sleep(100 * time.Millisecond)
	if n := m2.metric(t, "credflow_refusals_total"); n != 1 {
		t.Fatalf("%v refusals recorded for one refused connection", n)
	}
}
