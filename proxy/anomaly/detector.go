package anomaly

import (
	"hash/maphash"
	"math"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/golang-lru/v2/simplelru"
	"golang.org/x/time/rate"
)

// numShards is the number of independently locked parts the subjects are
// spread over, so that concurrent observations of different subjects
// seldom wait for each other.
const numShards = 16

// Options are a Detector's outputs.
type Options struct {
	// Quarantine receives the subjects of ActionQuarantine and
	// ActionRevoke events; nil: New makes one with the zero
	// QuarantineConfig (see (*Detector).Quarantine).
	Quarantine *Quarantine
	// Sinks receive every event in turn, on the goroutine that called
	// Observe, after the quarantine and OnRevoke. They must not block.
	Sinks []Sink
	// OnRevoke is called for each ActionRevoke event with the JTI of the
	// observation that fired it, empty when the caller passed none, for
	// the proxy to add it to its deny list (and, say, refuse the
	// subject's open streams). The Detector cannot revoke anything itself.
	// It runs on the goroutine that called Observe and must not block.
	OnRevoke func(e Event, jti string)
}

// A Detector watches observations and fires events. It is safe for
// concurrent use. A nil *Detector observes nothing.
type Detector struct {
	cfg  Config
	opts Options
	q    *Quarantine
	resp [numRules]Response

	refusals, tokens burstRule
	spike            spikeRule
	routes           map[string]uint64 // watched route → its bit
	start            atomic.Int64      // Unix nanoseconds of the first observation; 0 before it

	seed   maphash.Seed
	shards [numShards]*shard
}

// burstRule is RefusalBurst or TokenFailures, ready to use.
type burstRule struct {
	on    bool
	count int
	every rate.Limit
}

// spikeRule is RateSpike, ready to use.
type spikeRule struct {
	on       bool
	factor   float64
	minRate  float64
	interval int64   // nanoseconds
	seconds  float64 // interval in seconds
	decay    float64 // d = 2^(−Interval/HalfLife), the weight the baseline keeps per interval
	warmUp   int64   // nanoseconds
}

// shard holds the state of the subjects whose hash falls in it.
type shard struct {
	mu       sync.Mutex
	subjects *simplelru.LRU[Subject, *state]
	known    *simplelru.LRU[Subject, uint64] // NewCaller: the routes (bits) each subject called
}

// state is what is kept about one subject.
type state struct {
	refusals, tokens bucket
	rate             rateState
	quiet            [numRules]int64 // Unix nanoseconds before which each rule keeps quiet
}

// bucket is a subject's token bucket for a Burst rule.
type bucket struct {
	lim   *rate.Limiter // made on the subject's first refusal of the class
	count int           // refusals since the bucket was last full
	since time.Time     // the first of them
}

// rateState is a subject's rate for RateSpike.
type rateState struct {
	seen     bool    // a request was counted
	first    int64   // Unix nanoseconds of the first request
	interval int64   // index of the current interval
	n        int     // requests in the current interval
	baseline float64 // per second, of the intervals before the current one
}

// New returns a Detector for cfg, with its defaults applied, that sends
// its events to opts.
func New(cfg Config, opts Options) (*Detector, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.WithDefaults()
	d := &Detector{cfg: cfg, opts: opts, q: opts.Quarantine, resp: cfg.responses(), seed: maphash.MakeSeed()}
	if d.q == nil {
		d.q = NewQuarantine(QuarantineConfig{})
	}
	d.refusals = newBurstRule(cfg.RefusalBurst)
	d.tokens = newBurstRule(cfg.TokenFailures)
	if s := cfg.RateSpike; s.Factor > 0 {
		d.spike = spikeRule{
			on: true, factor: s.Factor, minRate: s.MinRate,
			interval: int64(s.Interval), seconds: s.Interval.Seconds(),
			decay:  math.Exp2(-s.Interval.Seconds() / s.HalfLife.Seconds()),
			warmUp: int64(s.WarmUp),
		}
	}
	if len(cfg.NewCaller.Routes) > 0 {
		d.routes = make(map[string]uint64, len(cfg.NewCaller.Routes))
		for i, r := range cfg.NewCaller.Routes {
			d.routes[r] = 1 << i
		}
	}
	for i := range d.shards {
		// NewLRU fails only on a size below 1.
		subjects, _ := simplelru.NewLRU[Subject, *state](max(1, cfg.MaxSubjects/numShards), nil)
		known, _ := simplelru.NewLRU[Subject, uint64](max(1, cfg.MaxCallers/numShards), nil)
		d.shards[i] = &shard{subjects: subjects, known: known}
	}
	return d, nil
}

func newBurstRule(b Burst) burstRule {
	if b.Count <= 0 {
		return burstRule{}
	}
	return burstRule{on: true, count: b.Count, every: rate.Limit(float64(b.Count) / b.Window.Seconds())}
}

// Config returns the detector's configuration, defaults applied.
func (d *Detector) Config() Config { return d.cfg }

// Quarantine returns the table the detector adds subjects to.
func (d *Detector) Quarantine() *Quarantine { return d.q }

// Tracked is the number of subjects whose state is kept. It is at most
// Config.MaxSubjects (or 16, the number of shards, when that is less): the
// cap is split evenly over the shards, each evicting on its own.
func (d *Detector) Tracked() int {
	n := 0
	for _, sh := range d.shards {
		sh.mu.Lock()
		n += sh.subjects.Len()
		sh.mu.Unlock()
	}
	return n
}

// Observe takes the outcome of a connection or a request and returns the
// most severe action of the events it fired, ActionNone when it fired
// none. Before returning it has applied them: quarantined the subject,
// called OnRevoke, handed the events to the sinks.
//
// Observations may come from many goroutines; each subject's are expected
// in about the order of their Times (one a little earlier than the last
// counts as the last's time).
func (d *Detector) Observe(o Observation) Action {
	if d == nil || o.Subject.IsZero() {
		return ActionNone
	}
	now := o.Time.UnixNano()
	if d.routes != nil && d.start.Load() == 0 {
		d.start.CompareAndSwap(0, now)
	}
	var burst *burstRule
	var which int
	switch Class(o.Reason) {
	case Access:
		burst, which = &d.refusals, iRefusal
	case Token:
		burst, which = &d.tokens, iToken
	}
	if burst != nil && !burst.on {
		burst = nil
	}
	spike := d.spike.on && o.Kind == Request
	var route uint64
	if o.Reason == "" && d.routes != nil {
		route = d.routes[o.Route]
	}
	if burst == nil && !spike && route == 0 {
		return ActionNone
	}

	var fired [numRules]Evidence
	var hits [numRules]bool
	sh := d.shards[d.shardOf(o.Subject)]
	sh.mu.Lock()
	var st *state // made only when a rule needs it
	if burst != nil || spike {
		st = sh.state(o.Subject)
	}
	if burst != nil {
		b := &st.refusals
		if which == iToken {
			b = &st.tokens
		}
		if b.refuse(o.Time, burst) && st.wake(which, now, d.resp[which].Cooldown) {
			hits[which] = true
			fired[which] = Evidence{Count: b.count, Limit: burst.count, Since: b.since,
				Window: d.cfg.RefusalBurst.Window, Route: o.Route, Reason: o.Reason}
			if which == iToken {
				fired[which].Window = d.cfg.TokenFailures.Window
			}
		}
	}
	if spike {
		if ev, ok := st.rate.count(now, &d.spike); ok && st.wake(iSpike, now, d.resp[iSpike].Cooldown) {
			hits[iSpike] = true
			ev.Route, ev.Reason = o.Route, o.Reason
			fired[iSpike] = ev
		}
	}
	if route != 0 {
		known, _ := sh.known.Get(o.Subject)
		if known&route == 0 {
			sh.known.Add(o.Subject, known|route)
			learning := now-d.start.Load() < int64(d.cfg.NewCaller.LearnFor)
			if !learning && st == nil {
				st = sh.state(o.Subject)
			}
			if !learning && st.wake(iNovel, now, d.resp[iNovel].Cooldown) {
				hits[iNovel] = true
				fired[iNovel] = Evidence{Route: o.Route}
			}
		}
	}
	sh.mu.Unlock()

	most := ActionNone
	for i, hit := range hits {
		if hit {
			if a := d.fire(i, o, fired[i]); a.severity() > most.severity() {
				most = a
			}
		}
	}
	return most
}

// fire applies the event of rule i about o.
func (d *Detector) fire(i int, o Observation, ev Evidence) Action {
	r := d.resp[i]
	e := Event{Detector: rules[i], Subject: o.Subject, Action: r.Action, Time: o.Time, Evidence: ev}
	if r.Action.quarantines() {
		e.Until = o.Time.Add(r.For)
	}
	// The token is revoked before the subject is quarantined: the
	// quarantine closes the subject's connections, and whoever sees them
	// closed must find the token revoked already.
	if r.Action == ActionRevoke && d.opts.OnRevoke != nil {
		d.opts.OnRevoke(e, o.JTI)
	}
	if r.Action.quarantines() {
		d.q.Add(o.Subject, e.Until, e.Detector)
	}
	for _, s := range d.opts.Sinks {
		s.Emit(e)
	}
	return r.Action
}

// shardOf is the index of s's shard.
func (d *Detector) shardOf(s Subject) uint64 {
	var h uint64
	if id, ok := s.Peer(); ok {
		h = maphash.String(d.seed, id.String())
	} else {
		b := s.addr.As16()
		h = maphash.Bytes(d.seed, b[:])
	}
	return h % numShards
}

// state returns s's state, made (evicting the least recently used) when
// there is none. The shard's lock is held.
func (sh *shard) state(s Subject) *state {
	if st, ok := sh.subjects.Get(s); ok {
		return st
	}
	st := new(state)
	sh.subjects.Add(s, st)
	return st
}

// wake reports whether rule i may fire at now, and if so starts its
// cooldown.
func (st *state) wake(i int, now int64, cooldown time.Duration) bool {
	if now < st.quiet[i] {
		return false
	}
	st.quiet[i] = now + int64(cooldown)
	return true
}

// refuse takes a token for a refusal at t and reports whether there was
// none left: the rule fires.
func (b *bucket) refuse(t time.Time, r *burstRule) bool {
	if b.lim == nil {
		b.lim = rate.NewLimiter(r.every, r.count)
	}
	if b.count == 0 || b.lim.TokensAt(t) >= float64(r.count) {
		b.count, b.since = 0, t
	}
	b.count++
	return !b.lim.AllowN(t, 1)
}

// count counts a request at now (Unix nanoseconds) and reports whether the
// current interval's rate is a spike, with its evidence.
func (rs *rateState) count(now int64, r *spikeRule) (Evidence, bool) {
	k := now / r.interval
	switch {
	case !rs.seen:
		rs.seen, rs.first, rs.interval = true, now, k
	case k > rs.interval:
		// Close the current interval, then the silent ones after it.
		rs.baseline = r.decay*rs.baseline + (1-r.decay)*float64(rs.n)/r.seconds
		if silent := k - rs.interval - 1; silent > 0 {
			rs.baseline *= math.Pow(r.decay, float64(silent))
		}
		rs.interval, rs.n = k, 0
	}
	rs.n++
	if now-rs.first < r.warmUp {
		return Evidence{}, false
	}
	rate := float64(rs.n) / r.seconds
	if rate <= r.minRate || rate <= r.factor*rs.baseline {
		return Evidence{}, false
	}
	return Evidence{Count: rs.n, Since: time.Unix(0, rs.interval*r.interval).UTC(), Window: time.Duration(r.interval),
		Rate: rate, Baseline: rs.baseline}, true
}
