package agent_test

import (
	"testing"
	"time"

	"github.com/credflow/credflow/agent"
)

// TestJWTCachedReportsRoundTrips: CachedJWTSVID says whether FetchJWTSVID
// would answer without the Workload API: not before a fetch, yes after,
// for that audience only; it fetches nothing itself.
func TestJWTCachedReportsRoundTrips(t *testing.T) {
	f, src := startFake(t, time.Minute, agent.Config{})
	const aud = "spiffe://example.org/b"
	if src.CachedJWTSVID(aud) {
		t.Fatal("an audience never fetched is cached")
	}
	if _, err := src.FetchJWTSVID(t.Context(), aud); err != nil {
		t.Fatal(err)
	}
	if !src.CachedJWTSVID(aud) || src.CachedJWTSVID("spiffe://example.org/c") {
		t.Fatal("cached: want the audience fetched, and only it")
	}
	src.CachedJWTSVID("spiffe://example.org/d")
	if got := f.count(aud) + f.count("spiffe://example.org/c") + f.count("spiffe://example.org/d"); got != 1 {
		t.Fatalf("%d fetches, want 1", got)
	}
}
