package wlapitest_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
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

// TestSharedJWTKey: with SetJWTKey, a JWT-SVID one stand-in mints
// validates against the JWT bundle the other serves; without, it does not.
func TestSharedJWTKey(t *testing.T) {
	td := spiffeid.RequireTrustDomainFromString("example.org")
	ca := testca.New(t, td)
	for _, shared := range []bool{false, true} {
		t.Run(map[bool]string{false: "own keys", true: "shared key"}[shared], func(t *testing.T) {
			dir := t.TempDir()
			var sources [2]*agent.Source
			var servers [2]*wlapitest.Server
			for i, name := range []string{"client", "server"} {
				srv, err := wlapitest.Start(t.Context(), filepath.Join(dir, name+".sock"), ca.Issue(t, spiffeid.RequireFromPath(td, "/"+name)), ca.Bundle())
				if err != nil {
					t.Fatal(err)
				}
				servers[i] = srv
			}
			if shared {
				key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
				if err != nil {
					t.Fatal(err)
				}
				servers[0].SetJWTKey(key)
				servers[1].SetJWTKey(key)
			}
			for i, srv := range servers {
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
				sources[i] = src
			}
			const aud = "spiffe://example.org/server"
			// The JWT bundle arrives on its own watch, after the SVID: wait
			// until the server's source validates its own JWT-SVIDs.
			own, err := sources[1].FetchJWTSVID(t.Context(), aud)
			if err != nil {
				t.Fatal(err)
			}
			deadline := time.Now().Add(10 * time.Second)
			for {
				if _, err := agent.ValidateJWTSVID(own.Marshal(), sources[1], aud); err == nil {
					break
				} else if time.Now().After(deadline) {
					t.Fatalf("the server's own JWT-SVID: %v", err)
				}
				time.Sleep(20 * time.Millisecond)
			}
			jwt, err := sources[0].FetchJWTSVID(t.Context(), aud)
			if err != nil {
				t.Fatal(err)
			}
			_, verr := agent.ValidateJWTSVID(jwt.Marshal(), sources[1], aud)
			if (verr == nil) != shared {
				t.Fatalf("validated by the other stand-in's bundle: %v, want %v", verr, shared)
			}
		})
	}
}
