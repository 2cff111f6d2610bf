package agent

import (
	"container/list"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"

	"github.com/credflow/credflow/internal/logkey"
)

// refreshInterval is how often the background refresher looks for cached
// JWT-SVIDs past their refresh point.
const refreshInterval = time.Second

// jwtCache holds one JWT-SVID per audience, least recently used first out,
// and the fetches in flight, one per audience.
type jwtCache struct {
	mu       sync.Mutex
	max      int
	recheck  time.Duration
	entries  map[string]*list.Element // of *jwtEntry
	lru      *list.List               // front: most recently used
	inflight map[string]*jwtFetch
}

type jwtEntry struct {
	audience  string
	svid      *jwtsvid.SVID
	refreshAt time.Time
	recheckAt time.Time // when to ask the Workload API again, if used
	used      bool      // requested since it was fetched
}

// jwtFetch is one Workload API fetch that every caller asking for the same
// audience meanwhile waits on.
type jwtFetch struct {
	done chan struct{}
	svid *jwtsvid.SVID
	err  error
}

func (c *jwtCache) init(max int, recheck time.Duration) {
	c.max = max
	c.recheck = recheck
	c.entries = make(map[string]*list.Element)
	c.lru = list.New()
	c.inflight = make(map[string]*jwtFetch)
}

// refreshPoint is when a JWT-SVID should be replaced: half its lifetime
// after it was issued (its iat claim, or when it was fetched if it has none).
func refreshPoint(svid *jwtsvid.SVID, fetched time.Time) time.Time {
	issued := fetched
	if iat, ok := svid.Claims["iat"].(float64); ok {
		issued = time.Unix(int64(iat), 0)
	}
	if !issued.Before(svid.Expiry) {
		return svid.Expiry
	}
	return issued.Add(svid.Expiry.Sub(issued) / 2)
}

// usable reports whether svid still has more than floor of its lifetime left.
func usable(svid *jwtsvid.SVID, now time.Time, floor time.Duration) bool {
	return svid.Expiry.Sub(now) > floor
}

// FetchJWTSVID returns a JWT-SVID of this workload for audience. Tokens are
// cached per audience until half their lifetime has passed and refreshed in
// the background while they are being used; meanwhile a token in use is
// fetched again every Config.JWTRecheck, so that one the agent replaced
// early is picked up. Concurrent requests for one audience share one fetch.
// The token returned always has more than Config.JWTMinRemaining of its
// lifetime left: if the Workload API cannot be reached, a cached token is
// returned only while that holds.
func (s *Source) FetchJWTSVID(ctx context.Context, audience string) (*jwtsvid.SVID, error) {
	if audience == "" {
		return nil, errors.New("agent: JWT-SVID audience is empty")
	}
	c := &s.jwtCache
	now := time.Now()
	c.mu.Lock()
	var cached *jwtsvid.SVID
	if el, ok := c.entries[audience]; ok {
		e := el.Value.(*jwtEntry)
		e.used = true
		c.lru.MoveToFront(el)
		if now.Before(e.refreshAt) && usable(e.svid, now, s.cfg.JWTMinRemaining) {
			c.mu.Unlock()
			s.cfg.Metrics.jwtResult(true)
			return e.svid, nil
		}
		cached = e.svid
	}
	f := s.startFetchLocked(audience)
	c.mu.Unlock()
	s.cfg.Metrics.jwtResult(false)

	select {
	case <-f.done:
	case <-ctx.Done():
		return nil, fmt.Errorf("agent: JWT-SVID for audience %q: %w", audience, ctx.Err())
	}
	if f.err == nil {
		return f.svid, nil
	}
	if cached != nil && usable(cached, time.Now(), s.cfg.JWTMinRemaining) {
		// The refresh failed but the cached token is still good.
		return cached, nil
	}
	return nil, f.err
}

// CachedJWTSVID reports whether FetchJWTSVID would answer for audience
// from the cache now, without asking the Workload API (and so the SPIRE
// server). It does not count as a use of the cached token.
func (s *Source) CachedJWTSVID(audience string) bool {
	c := &s.jwtCache
	now := time.Now()
	c.mu.Lock()
	defer c.mu.Unlock()
	el, ok := c.entries[audience]
	if !ok {
		return false
	}
	e := el.Value.(*jwtEntry)
	return now.Before(e.refreshAt) && usable(e.svid, now, s.cfg.JWTMinRemaining)
}

// startFetchLocked returns the fetch in flight for audience, starting one if
// there is none. c.mu must be held.
func (s *Source) startFetchLocked(audience string) *jwtFetch {
	c := &s.jwtCache
	if f, ok := c.inflight[audience]; ok {
		return f
	}
	f := &jwtFetch{done: make(chan struct{})}
	c.inflight[audience] = f
	if s.life.Err() != nil {
		f.err = errors.New("agent: source closed")
		delete(c.inflight, audience)
		close(f.done)
		return f
	}
	s.bg.Go(func() {
		f.svid, f.err = s.fetchJWTSVID(audience)
		c.mu.Lock()
		delete(c.inflight, audience)
		if f.err == nil {
			c.storeLocked(audience, f.svid, time.Now())
		} else if el, ok := c.entries[audience]; ok {
			// Recheck again one interval later, not on every tick.
			el.Value.(*jwtEntry).recheckAt = time.Now().Add(c.recheck)
		}
		c.mu.Unlock()
		close(f.done)
	})
	return f
}

func (s *Source) fetchJWTSVID(audience string) (*jwtsvid.SVID, error) {
	ctx, cancel := context.WithTimeout(s.life, s.cfg.FetchTimeout)
	defer cancel()
	svid, err := s.client.FetchJWTSVID(ctx, jwtsvid.Params{Audience: audience})
	if err != nil {
		why := ReasonOf(err)
		s.cfg.Metrics.apiError("jwt_svid", why)
		s.log.Warn("agent: JWT-SVID fetch failed",
			slog.String(logkey.Audience, audience),
			slog.String(logkey.Reason, string(why)),
			slog.String(logkey.Error, err.Error()))
		return nil, fmt.Errorf("agent: JWT-SVID for audience %q: %w", audience, err)
	}
	if !usable(svid, time.Now(), s.cfg.JWTMinRemaining) {
		return nil, fmt.Errorf("agent: JWT-SVID for audience %q expires at %s, within the %s floor",
			audience, svid.Expiry.Format(time.RFC3339), s.cfg.JWTMinRemaining)
	}
	s.log.Debug("agent: JWT-SVID fetched",
		slog.String(logkey.Audience, audience),
		slog.String(logkey.SPIFFEID, svid.ID.String()),
		slog.Time(logkey.Expiry, svid.Expiry))
	if s.cfg.JWTFetched != nil {
		s.cfg.JWTFetched(audience, svid.Expiry)
	}
	return svid, nil
}

// storeLocked caches svid for audience, evicting the least recently used
// audience beyond the cache size. c.mu must be held.
func (c *jwtCache) storeLocked(audience string, svid *jwtsvid.SVID, now time.Time) {
	e := &jwtEntry{audience: audience, svid: svid, refreshAt: refreshPoint(svid, now), recheckAt: now.Add(c.recheck)}
	if el, ok := c.entries[audience]; ok {
		el.Value = e
		c.lru.MoveToFront(el)
		return
	}
	c.entries[audience] = c.lru.PushFront(e)
	for c.lru.Len() > c.max {
		old := c.lru.Back()
		c.lru.Remove(old)
		delete(c.entries, old.Value.(*jwtEntry).audience)
	}
}

// refreshJWTSVIDs replaces cached JWT-SVIDs past their refresh or recheck
// point: those requested since they were fetched are fetched again; the
// others are left alone and dropped once under the lifetime floor.
func (s *Source) refreshJWTSVIDs(ctx context.Context) {
	t := time.NewTicker(refreshInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			s.refreshDue(now)
		}
	}
}

func (s *Source) refreshDue(now time.Time) {
	c := &s.jwtCache
	c.mu.Lock()
	defer c.mu.Unlock()
	for aud, el := range c.entries {
		e := el.Value.(*jwtEntry)
		if now.Before(e.refreshAt) && now.Before(e.recheckAt) {
			continue
		}
		if !e.used {
			// Not requested since it was fetched: not worth a refresh,
			// but kept while usable, as a fallback if the Workload API
			// fails when it is next asked for.
			if !usable(e.svid, now, s.cfg.JWTMinRemaining) {
				c.lru.Remove(el)
				delete(c.entries, aud)
			}
			continue
		}
		e.used = false
		s.startFetchLocked(aud)
	}
}
