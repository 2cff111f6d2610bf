package anomaly

import (
	"errors"
	"fmt"
	"time"
)

// Defaults of Config's fields.
const (
	DefaultMaxSubjects = 10000
	DefaultMaxCallers  = 10000
	DefaultQuarantine  = 5 * time.Minute
	DefaultCooldown    = time.Minute
	DefaultWindow      = time.Minute
	DefaultInterval    = time.Second
	DefaultHalfLife    = time.Minute
	DefaultMinRate     = 10
	DefaultLearnFor    = 10 * time.Minute

	// MaxRoutes is the most routes NewCaller may watch.
	MaxRoutes = 64
)

// Response is what a detector does when it fires.
type Response struct {
	// Action is the action of the detector's events; default ActionAlert.
	Action Action
	// For is how long ActionQuarantine and ActionRevoke keep the subject
	// in quarantine; default DefaultQuarantine.
	For time.Duration
	// Cooldown is how long, after an event, the detector keeps quiet about
	// the same subject; default For when the action quarantines, else
	// DefaultCooldown.
	Cooldown time.Duration
}

func (r Response) withDefaults() Response {
	if r.Action == ActionNone {
		r.Action = ActionAlert
	}
	if r.For <= 0 {
		r.For = DefaultQuarantine
	}
	if r.Cooldown <= 0 {
		r.Cooldown = DefaultCooldown
		if r.Action.quarantines() {
			r.Cooldown = r.For
		}
	}
	return r
}

// Burst configures RefusalBurst and TokenFailures: more than Count
// refusals of the detector's class from one subject within Window fire.
//
// Each subject has a token bucket (golang.org/x/time/rate) of Count
// tokens, refilled continuously at Count per Window; each refusal takes a
// token, and the refusal that finds the bucket empty fires. Precisely: k
// refusals over a span t, starting with a full bucket, fire when
// k > Count + t·Count/Window. So Count+1 refusals close together fire at
// once; refusals at a steady rate fire only above Count per Window, after
// the first Count; and Count+1 refusals spread over a whole Window do
// not fire (it takes up to 2·Count within one Window). Allowed requests
// and refusals of other classes take no token.
type Burst struct {
	// Count is the refusals allowed in a burst; the detector is off when
	// it is 0.
	Count int
	// Window is the time in which the bucket refills Count tokens;
	// default DefaultWindow.
	Window time.Duration
	Response
}

// Spike configures RateSpike: a subject's request rate far above its own
// moving baseline.
//
// Time is cut into intervals of Interval (aligned on the Unix epoch).
// r_k = n_k / Interval is the rate of interval k, n_k its requests
// (observations of Kind Request, allowed or not). The baseline b is an
// exponentially weighted moving average of the rates of the completed
// intervals, with a half-life of HalfLife:
//
//	b ← d·b + (1−d)·r_k,   d = 2^(−Interval/HalfLife)
//
// and an interval with no request counts as r = 0, so after m silent
// intervals b is multiplied by d^m. b starts at 0 with the subject's first
// request. While the current interval runs, its rate so far r = n/Interval
// is compared with the baseline of the intervals before it: the detector
// fires when r > Factor·b and r > MinRate, and only once the subject has
// been observed for WarmUp (during which b climbs towards its rate: after
// two half-lives it is at 3/4 of a steady rate).
//
// A subject silent for many half-lives has a baseline near zero, so its
// return at more than MinRate counts as a spike; MinRate is the floor that
// keeps low volumes and such returns quiet, and should be above the rate a
// legitimate caller reaches from a standing start.
type Spike struct {
	// Factor is how many times the baseline the current rate must exceed;
	// the detector is off when it is 0, and it must be more than 1.
	Factor float64
	// MinRate is the rate per second below which the detector never
	// fires; default DefaultMinRate.
	MinRate float64
	// HalfLife is the half-life of the baseline; default DefaultHalfLife.
	HalfLife time.Duration
	// Interval is the length of the intervals whose rates are compared;
	// default DefaultInterval.
	Interval time.Duration
	// WarmUp is how long a subject is observed before the detector may
	// fire; default twice HalfLife.
	WarmUp time.Duration
	Response
}

// Novelty configures NewCaller: an allowed connection or request of a
// subject on a watched route it has not called before. During LearnFor,
// from the first observation the Detector receives, callers are recorded
// silently; after it, a subject new to a route fires once and is then
// known. Refused observations neither fire nor teach.
//
// The known callers are kept in a least-recently-used cache of
// Config.MaxCallers subjects, apart from the other state, so that a flood
// of refused connections does not evict them; a known caller evicted from
// it is new again when it next calls.
type Novelty struct {
	// Routes are the routes watched (the Route of observations: route
	// names, path patterns or, for connections, listener names), at most
	// MaxRoutes; the detector is off when there is none.
	Routes []string
	// LearnFor is the learning period; default DefaultLearnFor.
	LearnFor time.Duration
	Response
}

// Config is a Detector's configuration. The zero Config detects nothing;
// each detector is on when its own fields say so.
type Config struct {
	// RefusalBurst counts Access refusals (see Class).
	RefusalBurst Burst
	// TokenFailures counts Token refusals (see Class).
	TokenFailures Burst
	// RateSpike watches request rates.
	RateSpike Spike
	// NewCaller watches who calls which routes.
	NewCaller Novelty
	// MaxSubjects caps the subjects whose state (buckets, rate, cooldowns)
	// is kept, in least-recently-used order; default DefaultMaxSubjects. A
	// subject evicted and seen again starts afresh: full buckets, a new
	// warm-up, no cooldown.
	MaxSubjects int
	// MaxCallers caps the subjects NewCaller knows; default
	// DefaultMaxCallers.
	MaxCallers int
}

// WithDefaults returns c with its defaults applied.
func (c Config) WithDefaults() Config {
	for _, b := range []*Burst{&c.RefusalBurst, &c.TokenFailures} {
		if b.Window <= 0 {
			b.Window = DefaultWindow
		}
		b.Response = b.Response.withDefaults()
	}
	s := &c.RateSpike
	if s.MinRate <= 0 {
		s.MinRate = DefaultMinRate
	}
	if s.HalfLife <= 0 {
		s.HalfLife = DefaultHalfLife
	}
	if s.Interval <= 0 {
		s.Interval = DefaultInterval
	}
	if s.WarmUp <= 0 {
		s.WarmUp = 2 * s.HalfLife
	}
	s.Response = s.Response.withDefaults()
	if c.NewCaller.LearnFor <= 0 {
		c.NewCaller.LearnFor = DefaultLearnFor
	}
	c.NewCaller.Response = c.NewCaller.Response.withDefaults()
	if c.MaxSubjects <= 0 {
		c.MaxSubjects = DefaultMaxSubjects
	}
	if c.MaxCallers <= 0 {
		c.MaxCallers = DefaultMaxCallers
	}
	return c
}

// responses are the detectors' responses, in the order of rules.
func (c Config) responses() [numRules]Response {
	return [numRules]Response{c.RefusalBurst.Response, c.TokenFailures.Response, c.RateSpike.Response, c.NewCaller.Response}
}

// ErrConfig is the error of a Config that does not validate.
var ErrConfig = errors.New("anomaly: invalid config")

// Validate reports what is wrong with c, wrapping ErrConfig.
func (c Config) Validate() error {
	var errs []error
	bad := func(format string, args ...any) {
		errs = append(errs, fmt.Errorf("%w: "+format, append([]any{ErrConfig}, args...)...))
	}
	for i, r := range c.responses() {
		if r.Action.severity() < 0 {
			bad("%s: unknown action %q", rules[i], r.Action)
		}
	}
	if c.RefusalBurst.Count < 0 || c.TokenFailures.Count < 0 {
		bad("a burst count is negative")
	}
	if f := c.RateSpike.Factor; f != 0 && f <= 1 {
		bad("%s: factor %v is not more than 1", RateSpike, f)
	}
	if n := len(c.NewCaller.Routes); n > MaxRoutes {
		bad("%s: %d routes, at most %d", NewCaller, n, MaxRoutes)
	}
	return errors.Join(errs...)
}
