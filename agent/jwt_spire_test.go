package agent_test

import (
	"errors"
	"testing"
	"time"

	"github.com/credflow/credflow/agent"
	"github.com/credflow/credflow/internal/spiretest"
)

// TestJWTSVIDFromSPIRE: a JWT-SVID minted by SPIRE validates against the
// JWT bundle of the same Source; the cache returns the same token until the
// refresh point (half its lifetime) and a new one after it.
func TestJWTSVIDFromSPIRE(t *testing.T) {
	s := startSPIRE(t, spiretest.Options{})
	id := registerSelf(t, s, "/workload/jwt", 0, 20*time.Second)
	src, reg := runSource(t, s, agent.Config{})
	waitReady(t, src, 30*time.Second)
	ctx := t.Context()
	const aud = "spiffe://example.org/backend"

	first, err := src.FetchJWTSVID(ctx, aud)
	if err != nil {
		t.Fatal(err)
	}
	fetchedAt := time.Now()
	if first.ID != id {
		t.Fatalf("JWT-SVID subject = %s, want %s", first.ID, id)
	}
	if lifetime := time.Until(first.Expiry); lifetime > 25*time.Second || lifetime < 10*time.Second {
		t.Fatalf("JWT-SVID lifetime %s; the entry asked for 20s", lifetime)
	}
	waitJWTBundle(t, src, s)
	got, err := agent.ValidateJWTSVID(first.Marshal(), src, aud)
	if err != nil {
		t.Fatalf("validating a SPIRE JWT-SVID against the Source's bundle: %v", err)
	}
	if got.ID != id {
		t.Fatalf("validated subject = %s, want %s", got.ID, id)
	}

	// Refusals: no expected audience, another audience.
	if _, err := agent.ValidateJWTSVID(first.Marshal(), src, ""); !errors.Is(err, agent.ErrNoAudience) {
		t.Fatalf("empty audience: err = %v, want ErrNoAudience", err)
	}
	if _, err := agent.ValidateJWTSVID(first.Marshal(), src, "spiffe://example.org/other"); err == nil {
		t.Fatal("token for another audience validated")
	}
	tampered := first.Marshal()[:len(first.Marshal())-4] + "AAAA"
	if _, err := agent.ValidateJWTSVID(tampered, src, aud); err == nil {
		t.Fatal("token with a tampered signature validated")
	}

	// Before the refresh point: the same token, from the cache.
	refreshAt := fetchedAt.Add(time.Until(first.Expiry) / 2)
	for time.Now().Before(refreshAt.Add(-2 * time.Second)) {
		again, err := src.FetchJWTSVID(ctx, aud)
		if err != nil {
			t.Fatal(err)
		}
		if again.Marshal() != first.Marshal() {
			t.Fatalf("a new token %s before the refresh point %s", time.Now().Format(time.RFC3339Nano), refreshAt.Format(time.RFC3339Nano))
		}
		time.Sleep(500 * time.Millisecond)
	}
	if hits := metricValue(t, reg, "credflow_jwt_svid_cache_total"); hits < 3 {
		t.Fatalf("credflow_jwt_svid_cache_total = %v, want the repeated requests counted", hits)
	}
	// After it: a new token, still valid, still for the same subject.
	time.Sleep(time.Until(refreshAt) + 1500*time.Millisecond)
	next, err := src.FetchJWTSVID(ctx, aud)
	if err != nil {
		t.Fatal(err)
	}
	if next.Marshal() == first.Marshal() {
		t.Fatal("the same token after its refresh point")
	}
	if _, err := agent.ValidateJWTSVID(next.Marshal(), src, aud); err != nil {
		t.Fatalf("refreshed token: %v", err)
	}
	if time.Until(next.Expiry) <= agent.DefaultJWTMinRemaining {
		t.Fatalf("token returned with %s left, below the floor", time.Until(next.Expiry))
	}
}

func waitJWTBundle(t *testing.T, src *agent.Source, s *spiretest.SPIRE) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := src.GetJWTBundleForTrustDomain(s.TrustDomain()); err == nil {
			return
		} else if time.Now().After(deadline) {
			t.Fatal(err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
