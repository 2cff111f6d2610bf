package agent_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"errors"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/credflow/credflow/agent"
	"github.com/credflow/credflow/reason"
)

// fakeWorkloadAPI serves JWT-SVIDs with a chosen lifetime and counts the
// fetches per audience. Its X.509 and bundle streams stay silent. It is
// for the cache's unit tests; SPIRE behaviour is tested on real SPIRE.
type fakeWorkloadAPI struct {
	workload.UnimplementedSpiffeWorkloadAPIServer
	key    *ecdsa.PrivateKey
	ttl    time.Duration
	delay  time.Duration
	failed atomic.Bool

	mu      sync.Mutex
	fetches map[string]int
}

func (f *fakeWorkloadAPI) FetchJWTSVID(ctx context.Context, req *workload.JWTSVIDRequest) (*workload.JWTSVIDResponse, error) {
	aud := strings.Join(req.Audience, ",")
	f.mu.Lock()
	f.fetches[aud]++
	f.mu.Unlock()
	if f.failed.Load() {
		return nil, status.Error(codes.Unavailable, "fake: agent down")
	}
	time.Sleep(f.delay)
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: f.key},
		(&jose.SignerOptions{}).WithType("JWT").WithHeader("kid", "k1"))
	if err != nil {
		return nil, err
	}
	now := time.Now()
	tok, err := jwt.Signed(signer).Claims(jwt.Claims{
		Subject:  "spiffe://example.org/fake",
		Audience: req.Audience,
		IssuedAt: jwt.NewNumericDate(now),
		Expiry:   jwt.NewNumericDate(now.Add(f.ttl)),
		ID:       rand.Text(),
	}).Serialize()
	if err != nil {
		return nil, err
	}
	return &workload.JWTSVIDResponse{Svids: []*workload.JWTSVID{{SpiffeId: "spiffe://example.org/fake", Svid: tok}}}, nil
}

func (f *fakeWorkloadAPI) FetchX509SVID(_ *workload.X509SVIDRequest, stream grpc.ServerStreamingServer[workload.X509SVIDResponse]) error {
	<-stream.Context().Done()
	return nil
}

func (f *fakeWorkloadAPI) FetchJWTBundles(_ *workload.JWTBundlesRequest, stream grpc.ServerStreamingServer[workload.JWTBundlesResponse]) error {
	<-stream.Context().Done()
	return nil
}

func (f *fakeWorkloadAPI) count(aud string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.fetches[aud]
}

// startFake serves a fake Workload API on a unix socket and runs a Source
// against it.
func startFake(t *testing.T, ttl time.Duration, cfg agent.Config) (*fakeWorkloadAPI, *agent.Source) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeWorkloadAPI{key: key, ttl: ttl, delay: 50 * time.Millisecond, fetches: map[string]int{}}
	sock := filepath.Join(t.TempDir(), "api.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	workload.RegisterSpiffeWorkloadAPIServer(srv, f)
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(srv.Stop)

	cfg.Addr = "unix://" + sock
	src, err := agent.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- src.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	return f, src
}

func TestJWTFetchesCoalesce(t *testing.T) {
	f, src := startFake(t, time.Minute, agent.Config{})
	const n = 50
	tokens := make([]string, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			svid, err := src.FetchJWTSVID(t.Context(), "spiffe://example.org/b")
			if err != nil {
				t.Error(err)
				return
			}
			tokens[i] = svid.Marshal()
		})
	}
	wg.Wait()
	if got := f.count("spiffe://example.org/b"); got != 1 {
		t.Fatalf("%d concurrent requests made %d fetches, want 1", n, got)
	}
	for i := range tokens {
		if tokens[i] != tokens[0] {
			t.Fatalf("request %d got a different token", i)
		}
	}
}

func TestJWTFloor(t *testing.T) {
	_, src := startFake(t, 3*time.Second, agent.Config{JWTMinRemaining: 5 * time.Second})
	_, err := src.FetchJWTSVID(t.Context(), "spiffe://example.org/b")
	if err == nil || !strings.Contains(err.Error(), "floor") {
		t.Fatalf("a token with 3s left under a 5s floor: err = %v, want a floor error", err)
	}
}

func TestJWTEmptyAudience(t *testing.T) {
	f, src := startFake(t, time.Minute, agent.Config{})
	if _, err := src.FetchJWTSVID(t.Context(), ""); err == nil {
		t.Fatal("FetchJWTSVID with an empty audience succeeded")
	}
	if got := f.count(""); got != 0 {
		t.Fatalf("an empty audience reached the Workload API %d times", got)
	}
}

func TestJWTCacheBounded(t *testing.T) {
	f, src := startFake(t, time.Minute, agent.Config{JWTCacheSize: 2})
	for _, aud := range []string{"a", "b", "c", "a"} {
		if _, err := src.FetchJWTSVID(t.Context(), aud); err != nil {
			t.Fatal(err)
		}
	}
	// "a" was evicted by "c" (size 2), so it was fetched twice; "b" and
	// "c" once each.
	for aud, want := range map[string]int{"a": 2, "b": 1, "c": 1} {
		if got := f.count(aud); got != want {
			t.Errorf("fetches for %q = %d, want %d", aud, got, want)
		}
	}
}

// TestJWTRefreshFailureKeepsCachedToken: past the refresh point with the
// Workload API failing, the cached token is returned while it has more than
// the floor left, and refused after.
func TestJWTRefreshFailureKeepsCachedToken(t *testing.T) {
	f, src := startFake(t, 8*time.Second, agent.Config{JWTMinRemaining: 2 * time.Second})
	first, err := src.FetchJWTSVID(t.Context(), "x")
	if err != nil {
		t.Fatal(err)
	}
	f.failed.Store(true)
	time.Sleep(time.Until(first.Expiry) - 3500*time.Millisecond) // past the refresh point, 3.5s left
	got, err := src.FetchJWTSVID(t.Context(), "x")
	if err != nil {
		t.Fatalf("refresh failed with the cached token still good: %v", err)
	}
	if got.Marshal() != first.Marshal() {
		t.Fatal("a different token while the Workload API is failing")
	}
	time.Sleep(time.Until(first.Expiry) - 1500*time.Millisecond) // 1.5s left, under the floor
	if _, err := src.FetchJWTSVID(t.Context(), "x"); err == nil {
		t.Fatal("a token under the floor was returned")
	}
	if f.count("x") < 2 {
		t.Fatalf("fetches = %d: the refresh was never attempted", f.count("x"))
	}
}

func TestNewRejectsBadAddress(t *testing.T) {
	for _, addr := range []string{"", "/no/scheme", "http://example.org"} {
		if _, err := agent.New(agent.Config{Addr: addr}); err == nil {
			t.Errorf("New(%q) succeeded", addr)
		}
	}
}

func TestNotReadyErrorIs(t *testing.T) {
	err := error(&agent.NotReadyError{Reason: reason.SVIDExpired})
	if !errors.Is(err, agent.ErrNotReady) {
		t.Fatal("NotReadyError does not match ErrNotReady")
	}
}

// TestJWTRecheck: a cached token in use is fetched again every JWTRecheck,
// long before its refresh point, and a replacement the Workload API hands
// out is returned from then on; a token not in use is not fetched again;
// while the Workload API fails, the cached token is still served and the
// recheck is retried once per interval, not on every tick.
func TestJWTRecheck(t *testing.T) {
	const recheck = 2 * time.Second
	f, src := startFake(t, time.Minute, agent.Config{JWTRecheck: recheck})
	ctx := t.Context()
	// start precedes the first fetch, so the token's recheck time is at
	// least start+recheck however slowly the fetch runs.
	start := time.Now()
	first, err := src.FetchJWTSVID(ctx, "used")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := src.FetchJWTSVID(ctx, "idle"); err != nil {
		t.Fatal(err)
	}
	for {
		got, err := src.FetchJWTSVID(ctx, "used")
		if err != nil {
			t.Fatal(err)
		}
		if got.Marshal() != first.Marshal() {
			break
		}
		if time.Since(start) > 3*recheck+5*time.Second {
			t.Fatalf("the same token %s after the first fetch, with a recheck every %s", time.Since(start), recheck)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if elapsed := time.Since(start); elapsed < recheck {
		t.Fatalf("a new token after %s, before the recheck interval", elapsed)
	}
	if n := f.count("idle"); n != 1 {
		t.Fatalf("an unused token was fetched %d times, want 1", n)
	}

	f.failed.Store(true)
	before := f.count("used")
	cached, err := src.FetchJWTSVID(ctx, "used")
	if err != nil {
		t.Fatal(err)
	}
	for end := time.Now().Add(2*recheck + recheck/2); time.Now().Before(end); {
		got, err := src.FetchJWTSVID(ctx, "used")
		if err != nil || got.Marshal() != cached.Marshal() {
			t.Fatalf("with the Workload API failing: %v, same token %v", err, err == nil && got.Marshal() == cached.Marshal())
		}
		time.Sleep(100 * time.Millisecond)
	}
	if n := f.count("used") - before; n < 1 || n > 3 {
		t.Fatalf("%d fetches in %s of failures with a %s recheck, want 1 to 3", n, 2*recheck+recheck/2, recheck)
	}
}
