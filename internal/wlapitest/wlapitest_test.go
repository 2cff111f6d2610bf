package wlapitest_test

import (
	"path/filepath"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/credflow/credflow/agent"
	"github.com/credflow/credflow/internal/testca"
	"github.com/credflow/credflow/internal/wlapitest"
)

// TestStandIn: the sidecar's own Workload API client gets the SVID, a
// rotation, and JWT-SVIDs that validate against the JWT bundle served.
func TestStandIn(t *testing.T) {
	td := spiffeid.RequireTrustDomainFromString("example.org")
	id := spiffeid.RequireFromPath(td, "/w")
	ca := testca.New(t, td)
	first := ca.Issue(t, id)
	srv, err := wlapitest.Start(t.Context(), filepath.Join(t.TempDir(), "api.sock"), first, ca.Bundle())
	if err != nil {
		t.Fatal(err)
	}
	src, err := agent.New(agent.Config{Addr: srv.Addr()})
	if err != nil {
		t.Fatal(err)
	}
	go src.Run(t.Context())
	deadline := time.Now().Add(10 * time.Second)
	for src.Ready() != nil {
		if time.Now().After(deadline) {
			t.Fatalf("not ready: %v", src.Ready())
		}
		time.Sleep(20 * time.Millisecond)
	}
	got, _ := src.GetX509SVID()
	if got.ID != id || !got.Certificates[0].Equal(first.Certificates[0]) {
		t.Fatalf("SVID %s, want the one served", got.ID)
	}
	second := ca.Issue(t, id)
	changed := src.Changed()
	srv.SetSVID(second, nil)
	select {
	case <-changed:
	case <-time.After(10 * time.Second):
		t.Fatal("no update after SetSVID")
	}
	if got, _ := src.GetX509SVID(); !got.Certificates[0].Equal(second.Certificates[0]) {
		t.Fatal("the rotated SVID did not arrive")
	}
	jwt, err := src.FetchJWTSVID(t.Context(), "spiffe://example.org/peer")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := agent.ValidateJWTSVID(jwt.Marshal(), src, "spiffe://example.org/peer"); err != nil {
		t.Fatalf("the stand-in's JWT-SVID does not validate against its bundle: %v", err)
	}
}
