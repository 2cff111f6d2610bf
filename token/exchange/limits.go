package exchange

import (
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// Defaults of the issuance limits (Config.NewAudienceRate,
// Config.NewAudienceBurst, Config.MaxAudiences).
const (
	DefaultNewAudienceRate  = 5
	DefaultNewAudienceBurst = 20
	DefaultMaxAudiences     = 256
)

// Cache is implemented by a Tokens that caches JWT-SVIDs per audience, as
// agent.Source does. CachedJWTSVID reports whether a JWT-SVID for audience
// would be served from the cache, without a round trip to the SPIRE
// server; the endpoint serves such audiences whatever its issuance limits.
type Cache interface {
	CachedJWTSVID(audience string) bool
}

// pendingFor is how long an audience admitted but not yet issued counts
// towards its caller's audiences.
const pendingFor = time.Minute

// maxIdleCallers is how many callers the limits keep before forgetting
// those with nothing to remember.
const maxIdleCallers = 1024

// issuance holds the issuance limits of every caller, by uid: each has a
// token bucket of audiences new to the agent's cache, and the audiences
// issued to it whose token has not expired.
type issuance struct {
	rate  rate.Limit
	burst int
	max   int

	mu      sync.Mutex
	callers map[uint32]*callerLimits
}

type callerLimits struct {
	newAudiences *rate.Limiter
	audiences    map[string]time.Time // until when each counts
}

func newIssuance(c Config) *issuance {
	r, burst, maxAud := c.NewAudienceRate, c.NewAudienceBurst, c.MaxAudiences
	if r <= 0 {
		r = DefaultNewAudienceRate
	}
	if burst <= 0 {
		burst = DefaultNewAudienceBurst
	}
	if maxAud <= 0 {
		maxAud = DefaultMaxAudiences
	}
	return &issuance{rate: rate.Limit(r), burst: burst, max: maxAud, callers: make(map[uint32]*callerLimits)}
}

// admit decides whether uid may get a token for audience now. An audience
// the agent has cached, or one issued to uid whose token has not expired,
// is always admitted; any other takes one from uid's bucket of new
// audiences and one of its MaxAudiences. If it is refused, retry says
// when asking again may succeed.
func (s *issuance) admit(uid uint32, audience string, cached bool, now time.Time) (retry time.Duration, ok bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c := s.callers[uid]
	if c == nil {
		s.forgetIdle(now)
		c = &callerLimits{newAudiences: rate.NewLimiter(s.rate, s.burst), audiences: make(map[string]time.Time)}
		s.callers[uid] = c
	}
	if until, ok := c.audiences[audience]; ok && now.Before(until) {
		return 0, true
	}
	if cached {
		return 0, true
	}
	var soonest time.Time
	for a, until := range c.audiences {
		switch {
		case !now.Before(until):
			delete(c.audiences, a)
		case soonest.IsZero() || until.Before(soonest):
			soonest = until
		}
	}
	if len(c.audiences) >= s.max {
		return soonest.Sub(now), false
	}
	r := c.newAudiences.ReserveN(now, 1)
	if d := r.DelayFrom(now); d > 0 {
		r.CancelAt(now)
		return d, false
	}
	c.audiences[audience] = now.Add(pendingFor)
	return 0, true
}

// issued records that uid got a token for audience, valid until expiry;
// failed forgets an admitted audience that got none.
func (s *issuance) issued(uid uint32, audience string, expiry time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if c := s.callers[uid]; c != nil {
		if _, ok := c.audiences[audience]; ok {
			c.audiences[audience] = expiry
		}
	}
}

func (s *issuance) failed(uid uint32, audience string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if c := s.callers[uid]; c != nil {
		delete(c.audiences, audience)
	}
}

// forgetIdle drops, once there are many callers, those that hold no
// audience and whose bucket is full: they would start afresh anyway.
func (s *issuance) forgetIdle(now time.Time) {
	if len(s.callers) < maxIdleCallers {
		return
	}
	for uid, c := range s.callers {
		live := false
		for _, until := range c.audiences {
			live = live || now.Before(until)
		}
		if !live && c.newAudiences.TokensAt(now) >= float64(s.burst) {
			delete(s.callers, uid)
		}
	}
}
