package exchange_test

import (
	"context"
	"fmt"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"

	"github.com/credflow/credflow/reason"
	"github.com/credflow/credflow/token/exchange"
)

// agentCache stands for the agent: it counts the fetches that would be a
// round trip to the SPIRE server (audiences it has not cached), and
// caches every audience it fetched.
type agentCache struct {
	mu         sync.Mutex
	cached     map[string]bool
	roundTrips int
}

func (a *agentCache) FetchJWTSVID(ctx context.Context, aud string) (*jwtsvid.SVID, error) {
	a.mu.Lock()
	if !a.cached[aud] {
		a.roundTrips++
		a.cached[aud] = true
	}
	a.mu.Unlock()
	return tokens{}.FetchJWTSVID(ctx, aud)
}

func (a *agentCache) CachedJWTSVID(aud string) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.cached[aud]
}

func (a *agentCache) trips() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.roundTrips
}

var _ exchange.Cache = (*agentCache)(nil)

// TestTokenIssuanceLimits is S19-2: a local caller looping over 10,000
// distinct audiences gets tokens for a burst of them, then for
// NewAudienceRate a second; the rest are refused with 429, a Retry-After
// and the reason token_rate_limited, and never reach the agent. Meanwhile
// an audience the agent has cached, and one the caller already holds, are
// served at once. The refusals are all counted but their log lines are
// rate-limited.
func TestTokenIssuanceLimits(t *testing.T) {
	const (
		n     = 10000
		rate  = 5
		burst = 20
	)
	agent := &agentCache{cached: map[string]bool{"spiffe://example.org/cached": true}}
	e := serve(t, exchange.Config{Tokens: agent, Audiences: []string{exchange.AnyAudience}, NewAudienceRate: rate, NewAudienceBurst: burst}, "", false)
	start := time.Now()
	var issued, limited int
	for i := range n {
		code, out, h := e.post(t, form("audience", fmt.Sprintf("spiffe://example.org/svc-%d", i)), nil)
		switch {
		case code == 200:
			issued++
		case code == 429 && h.Get("X-Credflow-Reason") == string(reason.TokenRateLimited) && out["error"] == "temporarily_unavailable":
			limited++
			if s, err := strconv.Atoi(h.Get("Retry-After")); err != nil || s != 1 {
				t.Fatalf("request %d: Retry-After %q, want 1 (a second at most for the next of 5 a second)", i, h.Get("Retry-After"))
			}
		default:
			t.Fatalf("request %d: %d %v", i, code, out)
		}
		if i%1000 == 0 {
			// Past the burst: what the agent caches, and what this caller
			// already holds, are still served.
			for _, aud := range []string{"spiffe://example.org/cached", "spiffe://example.org/svc-0"} {
				if code, out, _ := e.post(t, form("audience", aud), nil); code != 200 {
					t.Fatalf("after %d requests, %s: %d %v", i, aud, code, out)
				}
			}
		}
	}
	elapsed := time.Since(start)
	most := burst + int(rate*elapsed.Seconds()) + 1
	if agent.trips() != issued || issued > most || issued < burst {
		t.Errorf("%d issued, %d round trips to the server, in %s: want between %d and %d, all round trips", issued, agent.trips(), elapsed, burst, most)
	}
	if limited != n-issued {
		t.Errorf("%d refused token_rate_limited of %d not issued", limited, n-issued)
	}
	logged := 0
	for _, l := range e.log.lines(t) {
		if l["reason"] == string(reason.TokenRateLimited) {
			logged++
		}
	}
	if most := 50 + 10*int(elapsed.Seconds()+1); logged > most {
		t.Errorf("%d log lines for %d token_rate_limited refusals, want at most %d", logged, limited, most)
	}
	counted := 0
	for _, r := range e.refusals() {
		if r == string(reason.TokenRateLimited) {
			counted++
		}
	}
	if counted != limited {
		t.Errorf("%d token_rate_limited refusals counted, want %d", counted, limited)
	}
	t.Logf("%d distinct audiences in %s: %d issued (each a round trip), %d refused, %d logged", n, elapsed.Round(time.Millisecond), issued, limited, logged)
}

// TestTokenAudienceCap is S19-2's cap: a caller holds tokens for at most
// MaxAudiences audiences it did not find cached; past it a new one is
// refused (token_rate_limited) with a Retry-After of when its first token
// expires, while those it holds are still served.
func TestTokenAudienceCap(t *testing.T) {
	agent := &agentCache{cached: map[string]bool{}}
	e := serve(t, exchange.Config{Tokens: agent, Audiences: []string{exchange.AnyAudience}, NewAudienceRate: 1000, NewAudienceBurst: 1000, MaxAudiences: 3}, "", false)
	for i := range 3 {
		if code, out, _ := e.post(t, form("audience", fmt.Sprint("a", i)), nil); code != 200 {
			t.Fatalf("audience %d of 3: %d %v", i, code, out)
		}
	}
	code, _, h := e.post(t, form("audience", "a3"), nil)
	// The fake's tokens live a minute.
	if s, err := strconv.Atoi(h.Get("Retry-After")); code != 429 || h.Get("X-Credflow-Reason") != string(reason.TokenRateLimited) || err != nil || s < 1 || s > 60 {
		t.Fatalf("a fourth audience: %d, reason %q, Retry-After %q; want 429, token_rate_limited, 1-60", code, h.Get("X-Credflow-Reason"), h.Get("Retry-After"))
	}
	if code, out, _ := e.post(t, form("audience", "a1"), nil); code != 200 {
		t.Fatalf("an audience held, past the cap: %d %v", code, out)
	}
	if agent.trips() != 3 {
		t.Errorf("%d round trips, want 3", agent.trips())
	}
}
