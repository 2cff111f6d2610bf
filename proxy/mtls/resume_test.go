package mtls_test

import (
	"crypto/tls"
	"io"
	"sync"
	"testing"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/credflow/credflow/internal/testca"
	"github.com/credflow/credflow/proxy/mtls"
)

// changing is an SVID and bundle source that signals its changes, as
// agent.Source does.
type changing struct {
	mu      sync.Mutex
	svid    *x509svid.SVID
	bundle  *x509bundle.Bundle
	changed chan struct{}
}

func newChanging(svid *x509svid.SVID, bundle *x509bundle.Bundle) *changing {
	return &changing{svid: svid, bundle: bundle, changed: make(chan struct{})}
}

func (c *changing) set(svid *x509svid.SVID, bundle *x509bundle.Bundle) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.svid, c.bundle = svid, bundle
	close(c.changed)
	c.changed = make(chan struct{})
}

func (c *changing) GetX509SVID() (*x509svid.SVID, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.svid, nil
}

func (c *changing) GetX509BundleForTrustDomain(spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.bundle, nil
}

func (c *changing) Changed() <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.changed
}

// TestResumptionAcrossAuthorityRotation: sessions begun under an old
// authority are not resumed once the SVIDs or bundles change: after both
// sides move to a new authority and the old one leaves the bundle, the next
// connection makes a full handshake with the current SVIDs and succeeds,
// where resuming would carry the old certificates and be refused. Later
// connections resume again.
func TestResumptionAcrossAuthorityRotation(t *testing.T) {
	oldCA, newCA := testca.New(t, td), testca.New(t, td)
	both := x509bundle.FromX509Authorities(td, append(oldCA.Roots(), newCA.Roots()...))
	serverID, clientID := spiffeid.RequireFromPath(td, "/server"), spiffeid.RequireFromPath(td, "/client")
	server := newChanging(oldCA.Issue(t, serverID), both)
	client := newChanging(oldCA.Issue(t, clientID), both)
	allowAll := func(spiffeid.ID) bool { return true }
	serverConf := mtls.Config{SVIDs: server, Bundles: server, Authorize: allowAll}.Server()
	clientConf := mtls.Config{SVIDs: client, Bundles: client, Authorize: allowAll}.Client()

	addr := ticketServer(t, serverConf)
	connect := func(step string) (resumed bool) {
		t.Helper()
		c, err := tls.Dial("tcp", addr, clientConf)
		if err != nil {
			t.Fatalf("%s: %v", step, err)
		}
		defer c.Close()
		// A refusal by the server arrives after the client's handshake.
		if _, err := io.ReadFull(c, make([]byte, 1)); err != nil {
			t.Fatalf("%s: %v", step, err)
		}
		return c.ConnectionState().DidResume
	}

	if connect("first connection") {
		t.Fatal("the first connection resumed")
	}
	if !connect("second connection") {
		t.Fatal("the second connection did not resume")
	}
	// Both sides on the new authority, the old one revoked.
	onlyNew := x509bundle.FromX509Authorities(td, newCA.Roots())
	server.set(newCA.Issue(t, serverID), onlyNew)
	client.set(newCA.Issue(t, clientID), onlyNew)
	if connect("after the rotation") {
		t.Fatal("a session of the old authority was resumed")
	}
	if !connect("the next connection") {
		t.Fatal("no resumption after the full handshake")
	}

	// One side changes alone: the server's SVID rotates; the client's
	// cached session is resumed by neither.
	server.set(newCA.Issue(t, serverID), onlyNew)
	if connect("after a server rotation") {
		t.Fatal("a session from before the server's rotation was resumed")
	}
	client.set(newCA.Issue(t, clientID), onlyNew)
	if connect("after a client rotation") {
		t.Fatal("a session from before the client's rotation was resumed")
	}
}
