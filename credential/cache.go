package credential

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/credflow/credflow/internal/logkey"
)

// Credential is a value to inject and what is known of its life.
type Credential struct {
	Value Secret
	// Expires is when the value stops being valid; zero when the source
	// does not say (an API key), and the Cache then fetches it again every
	// Refresh.
	Expires time.Time
	// Version names the value without revealing it where the source has
	// such a name (a secret store's version number); empty otherwise.
	Version string
}

// A Source obtains a fresh credential from where it lives. Fetch is
// called by one goroutine at a time, with a deadline. Its errors must not
// hold the credential or any other secret: they are logged and shown.
type Source interface {
	Fetch(ctx context.Context) (Credential, error)
}

// ErrUnavailable is returned by Get when the Cache has no valid credential
// and could not fetch one.
var ErrUnavailable = errors.New("credential unavailable")

// Defaults of a Cache.
const (
	DefaultRefresh    = 30 * time.Second
	DefaultTimeout    = 10 * time.Second
	DefaultMinBackoff = 500 * time.Millisecond
	DefaultMaxBackoff = 30 * time.Second
	// refreshShare is the share of a credential's life after which the
	// Cache replaces it.
	refreshShare = 0.8
	// maxMargin bounds the end of a credential's life in which it is no
	// longer served: a token sent a moment before its expiry could arrive
	// after it.
	maxMargin = 5 * time.Second
)

// A Cache keeps the credential of one Source fresh. Get answers from
// memory while the credential is valid; on a cold or expired cache the
// callers that arrive while a fetch is under way all wait for that one
// fetch. Run refreshes the credential in the background after 80% of its
// life (every Refresh when it has no expiry), retrying a failed fetch with
// exponential backoff and jitter while the credential it has stays valid.
// A credential is not served in the last tenth of its life (at most 5 s),
// so that it does not expire on its way.
//
// The zero value is not usable: Name and Source must be set. A Cache must
// not be copied after first use.
type Cache struct {
	// Name names the source in logs, metrics and /debug/credentials.
	Name   string
	Source Source
	// Refresh is how often a credential with no expiry is fetched again.
	// Default 30s.
	Refresh time.Duration
	// Timeout bounds one fetch. Default 10s.
	Timeout time.Duration
	// MinBackoff and MaxBackoff bound the wait before retrying a failed
	// fetch, doubling from the first to the second. Defaults 500ms, 30s.
	MinBackoff, MaxBackoff time.Duration
	// Log receives fetch failures and recoveries; nil discards them.
	Log *slog.Logger
	// Fetched, if set, is told of every fetch, done or failed (for the
	// audit trail: never the value). It must not block.
	Fetched func(FetchEvent)

	now func() time.Time // time.Now; tests set it

	mu           sync.Mutex
	cur          *held
	inflight     chan struct{} // closed when the fetch under way ends
	lastErr      error
	failures     int       // consecutive failed fetches
	failingSince time.Time // first of those
	nextFetch    time.Time // when Run fetches next
	invalidated  time.Time // when Invalidate last dropped a credential
	wake         chan struct{}
	stats        Stats
}

// held is the credential a Cache serves, and when it was fetched.
type held struct {
	Credential
	fetched time.Time
}

// Stats count what a Cache did since it started.
type Stats struct {
	Hits     uint64 // Get answered from memory, without waiting for a fetch
	Fetches  uint64 // fetches that succeeded
	Failures uint64 // fetches that failed
}

// Status is what a Cache's State says of it.
type Status string

// The statuses of a Cache.
const (
	StatusEmpty      Status = "empty"      // no credential yet
	StatusFresh      Status = "fresh"      // a valid credential, the last fetch succeeded
	StatusRefreshing Status = "refreshing" // a fetch is under way
	StatusFailing    Status = "failing"    // the last fetch failed
	StatusExpired    Status = "expired"    // the credential held is no longer served
)

// State is a Cache's state, without its value.
type State struct {
	Name         string    `json:"name"`
	Status       Status    `json:"status"`
	Version      string    `json:"version,omitempty"`
	Fetched      time.Time `json:"fetched,omitzero"`
	Expires      time.Time `json:"expires,omitzero"`
	FailingSince time.Time `json:"failing_since,omitzero"`
	LastError    string    `json:"last_error,omitempty"`
	// Usable reports whether Get answers from memory now: a credential is
	// held and valid (a refresh or a failing one may be under way).
	Usable bool `json:"usable"`
	Stats
}

func (c *Cache) clock() time.Time {
	if c.now != nil {
		return c.now()
	}
	return time.Now()
}

// servable reports whether h may be served at now.
func (h *held) servable(now time.Time) bool {
	if h == nil {
		return false
	}
	if h.Expires.IsZero() {
		return true
	}
	margin := min(maxMargin, h.Expires.Sub(h.fetched)/10)
	return now.Before(h.Expires.Add(-margin))
}

// Get returns a valid credential, fetching one if the Cache has none. It
// fails with an error wrapping ErrUnavailable, and the last fetch's error,
// when there is none to be had, or with ctx's error.
func (c *Cache) Get(ctx context.Context) (Credential, error) {
	for {
		c.mu.Lock()
		now := c.clock()
		if c.cur.servable(now) {
			c.stats.Hits++
			cred := c.cur.Credential
			c.mu.Unlock()
			return cred, nil
		}
		waited := c.inflight != nil
		done := c.startFetchLocked()
		c.mu.Unlock()
		select {
		case <-done:
		case <-ctx.Done():
			return Credential{}, ctx.Err()
		}
		c.mu.Lock()
		if c.cur.servable(c.clock()) { // a wait for a fetch is not a hit
			cred := c.cur.Credential
			c.mu.Unlock()
			return cred, nil
		}
		err := c.lastErr
		c.mu.Unlock()
		// A fetch that was under way when this call came may have started
		// before the credential it held expired: wait for one fetch of
		// its own before failing.
		if !waited || err != nil {
			return Credential{}, c.unavailable(err)
		}
	}
}

func (c *Cache) unavailable(err error) error {
	if err == nil {
		return fmt.Errorf("credential %q: %w", c.Name, ErrUnavailable)
	}
	return fmt.Errorf("credential %q: %w: %w", c.Name, ErrUnavailable, err)
}

// startFetchLocked starts a fetch unless one is under way, and returns the
// channel closed when it ends. c.mu must be held.
func (c *Cache) startFetchLocked() <-chan struct{} {
	if c.inflight != nil {
		return c.inflight
	}
	done := make(chan struct{})
	c.inflight = done
	go c.fetch(done)
	return done
}

// FetchEvent is one fetch of a Cache, for Cache.Fetched.
type FetchEvent struct {
	Name string
	// Refresh is whether a credential was held already.
	Refresh bool
	// Expires is the new credential's expiry; zero for none.
	Expires time.Time
	// Err is why the fetch failed; nil when it did not.
	Err error
}

func (c *Cache) fetch(done chan struct{}) {
	timeout := c.Timeout
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	cred, err := c.Source.Fetch(ctx)
	cancel()
	if err == nil && cred.Value.IsZero() {
		err = errors.New("the source returned an empty value")
	}
	now := c.clock()
	if err == nil && !cred.Expires.IsZero() && !cred.Expires.After(now) {
		err = fmt.Errorf("the source returned a credential that expired at %s", cred.Expires.UTC().Format(time.RFC3339))
	}

	c.mu.Lock()
	defer c.mu.Unlock()
	defer close(done)
	c.inflight = nil
	if c.wake != nil {
		select {
		case c.wake <- struct{}{}:
		default:
		}
	}
	if err != nil {
		c.stats.Failures++
		c.failures++
		if c.failingSince.IsZero() {
			c.failingSince = now
		}
		c.lastErr = err
		c.nextFetch = now.Add(c.backoff())
		c.logger().Warn("credential: fetch failed", slog.String(logkey.Credential, c.Name),
			slog.Int(logkey.Failures, c.failures), slog.Duration(logkey.Backoff, c.nextFetch.Sub(now)),
			slog.String(logkey.Error, err.Error()))
		if c.Fetched != nil {
			c.Fetched(FetchEvent{Name: c.Name, Refresh: c.cur != nil, Err: err})
		}
		return
	}
	if c.Fetched != nil {
		c.Fetched(FetchEvent{Name: c.Name, Refresh: c.cur != nil, Expires: cred.Expires})
	}
	if c.failures > 0 {
		c.logger().Info("credential: fetch succeeded again", slog.String(logkey.Credential, c.Name), slog.Int(logkey.Failures, c.failures))
	}
	c.stats.Fetches++
	c.failures, c.failingSince, c.lastErr = 0, time.Time{}, nil
	c.cur = &held{Credential: cred, fetched: now}
	c.nextFetch = c.refreshAt(c.cur)
}

func (c *Cache) logger() *slog.Logger {
	if c.Log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return c.Log
}

// refreshAt is when h should be replaced.
func (c *Cache) refreshAt(h *held) time.Time {
	if h.Expires.IsZero() {
		refresh := c.Refresh
		if refresh <= 0 {
			refresh = DefaultRefresh
		}
		return h.fetched.Add(refresh)
	}
	return h.fetched.Add(time.Duration(refreshShare * float64(h.Expires.Sub(h.fetched))))
}

// backoff is the wait before the next attempt after c.failures failures:
// doubling from MinBackoff up to MaxBackoff, with half of it random so
// that the sidecars of many replicas do not retry in step.
func (c *Cache) backoff() time.Duration {
	lo, hi := c.MinBackoff, c.MaxBackoff
	if lo <= 0 {
		lo = DefaultMinBackoff
	}
	if hi <= 0 {
		hi = DefaultMaxBackoff
	}
	d := lo
	for i := 1; i < c.failures && d < hi; i++ {
		d *= 2
	}
	d = min(d, hi)
	return d/2 + rand.N(d/2+1)
}

// Invalidate reports that the upstream refused v (an HTTP 401 for a
// request that carried it). If v is the credential held, it is dropped and
// a new one fetched: the next Get waits for it. It is done at most once
// per MinBackoff, so an upstream that refuses every credential costs a
// fetch per MinBackoff, not one per request.
func (c *Cache) Invalidate(v Secret) {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := c.clock()
	minWait := c.MinBackoff
	if minWait <= 0 {
		minWait = DefaultMinBackoff
	}
	if c.cur == nil || !c.cur.Value.Equal(v) || now.Sub(c.invalidated) < minWait {
		return
	}
	c.invalidated = now
	c.cur = nil
	c.logger().Info("credential: refused upstream, fetching a new one", slog.String(logkey.Credential, c.Name))
	c.startFetchLocked()
}

// Run keeps the credential fresh until ctx ends: it fetches one at once,
// then again at each refresh time, or after a backoff while fetches fail.
func (c *Cache) Run(ctx context.Context) {
	c.mu.Lock()
	if c.wake == nil {
		c.wake = make(chan struct{}, 1)
	}
	wake := c.wake
	c.mu.Unlock()
	for {
		c.mu.Lock()
		var wait time.Duration
		if c.cur != nil || c.failures > 0 {
			wait = c.nextFetch.Sub(c.clock())
		}
		c.mu.Unlock()
		if wait > 0 {
			t := time.NewTimer(wait)
			select {
			case <-ctx.Done():
				t.Stop()
				return
			case <-wake: // a fetch ended: its refresh time may differ
				t.Stop()
			case <-t.C:
			}
			continue
		}
		c.mu.Lock()
		done := c.startFetchLocked()
		c.mu.Unlock()
		select {
		case <-ctx.Done():
			return
		case <-done:
		}
	}
}

// State returns the Cache's state, without the credential's value.
func (c *Cache) State() State {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := State{Name: c.Name, FailingSince: c.failingSince, Stats: c.stats}
	if c.lastErr != nil {
		s.LastError = c.lastErr.Error()
	}
	if c.cur != nil {
		s.Version, s.Fetched, s.Expires = c.cur.Version, c.cur.fetched, c.cur.Expires
		s.Usable = c.cur.servable(c.clock())
	}
	switch {
	case c.inflight != nil:
		s.Status = StatusRefreshing
	case c.failures > 0:
		s.Status = StatusFailing
	case c.cur == nil:
		s.Status = StatusEmpty
	case !c.cur.servable(c.clock()):
		s.Status = StatusExpired
	default:
		s.Status = StatusFresh
	}
	return s
}
