// Package heaproom gives a busy sidecar's heap room to grow before the
// garbage collector runs again, and takes it back once the sidecar is quiet.
//
// Why: a sidecar's live heap is small (1–2 MiB under 1000 HTTP requests a
// second here), so with the runtime's defaults its heap goal is the 4 MiB
// minimum, and at the 10–14 KB an HTTP request allocates per sidecar it
// collects six times a second. A collection's mark phase runs a millisecond
// or two beside the requests and slows the ones it meets: about 1% of them,
// which is exactly the p99. With room of 16 MiB the same load collects about
// once a second, and the p99 of the HTTP mode falls by about a quarter
// (bench/README.md, "Room for the heap while busy"). The price is memory:
// up to Room more heap while busy, which the runtime returns to the system
// after the sidecar goes quiet and the default goal is back.
//
// Busy means allocating fast, not using CPU: the L4 relay at the same
// request rate allocates under 2 KB per request and is left alone.
//
// An operator who sets GOGC in the environment has decided: the controller
// then does nothing. A GOMEMLIMIT set there still bounds the heap, room or
// not.
package heaproom

import (
	"context"
	"log/slog"
	"os"
	"runtime/debug"
	"runtime/metrics"
	"time"
)

// Policy sets when the controller gives the heap room and how much. The zero
// value of a field takes its default.
type Policy struct {
	// Interval is how often the allocation rate is sampled (1s).
	Interval time.Duration
	// Busy: a sample allocating at or above this rate, in bytes per second,
	// gives the heap room (8 MiB/s: the rate at which the default goal would
	// collect about twice a second or more).
	Busy float64
	// Quiet: once every sample has allocated at or below this rate for
	// QuietAfter, the default goal is back (2 MiB/s, for 5s). Quiet is well
	// under Busy, so a steady load does not move back and forth.
	Quiet      float64
	QuietAfter time.Duration
	// Room is how far the heap may grow past the live heap before the next
	// collection while busy (16 MiB).
	Room uint64
}

func (p Policy) withDefaults() Policy {
	if p.Interval <= 0 {
		p.Interval = time.Second
	}
	if p.Busy <= 0 {
		p.Busy = 8 << 20
	}
	if p.Quiet <= 0 {
		p.Quiet = 2 << 20
	}
	if p.QuietAfter <= 0 {
		p.QuietAfter = 5 * time.Second
	}
	if p.Room == 0 {
		p.Room = 16 << 20
	}
	return p
}

// defaultPercent is GOGC's default, which the controller returns to.
const defaultPercent = 100

// runtimeMinimum is the Go runtime's minimum heap goal at GOGC=100; the
// runtime scales it with GOGC (4 MiB × GOGC/100), so a large GOGC over a
// small live heap would set the goal by it rather than by the live heap.
const runtimeMinimum = 4 << 20

// EnvSet reports whether GOGC is set in the environment, in which case Run
// leaves it alone.
func EnvSet() bool {
	_, ok := os.LookupEnv("GOGC")
	return ok
}

// Run adapts GOGC to the process's allocation rate until ctx ends, and then
// sets the default back. onChange, if not nil, is called with the new GOGC
// after each change. It returns at once if GOGC is set in the environment.
func Run(ctx context.Context, pol Policy, log *slog.Logger, onChange func(percent int)) {
	if EnvSet() {
		log.Debug("GOGC set in the environment: heap room not adapted")
		return
	}
	c := newController(pol, newGoRuntime())
	c.onChange = func(percent int) {
		log.Debug("garbage collector's heap goal changed", "gogc", percent)
		if onChange != nil {
			onChange(percent)
		}
	}
	c.run(ctx)
}

// hooks are what the controller reads and changes: the Go runtime, or a
// test's stand-in.
type hooks interface {
	read() (allocated, live uint64) // bytes allocated so far; live heap after the last collection
	setPercent(percent int)         // debug.SetGCPercent
}

type controller struct {
	pol      Policy
	rt       hooks
	onChange func(int)

	percent   int           // set by the controller; defaultPercent when not busy
	quietFor  time.Duration // how long every sample has been at or below Quiet
	lastAlloc uint64
	last      time.Time
}

func newController(pol Policy, rt hooks) *controller {
	return &controller{pol: pol.withDefaults(), rt: rt, percent: defaultPercent}
}

func (c *controller) run(ctx context.Context) {
	t := time.NewTicker(c.pol.Interval)
	defer t.Stop()
	c.last, c.lastAlloc = time.Now(), c.allocated()
	for {
		select {
		case <-ctx.Done():
			c.set(defaultPercent)
			return
		case now := <-t.C:
			alloc, live := c.rt.read()
			c.sample(now, alloc, live)
		}
	}
}

func (c *controller) allocated() uint64 {
	a, _ := c.rt.read()
	return a
}

// sample takes the bytes allocated so far and the live heap at now, and
// changes GOGC if the policy says so.
func (c *controller) sample(now time.Time, alloc, live uint64) {
	elapsed := now.Sub(c.last)
	if elapsed <= 0 {
		return
	}
	rate := float64(alloc-c.lastAlloc) / elapsed.Seconds()
	c.last, c.lastAlloc = now, alloc
	busy := c.percent != defaultPercent
	switch {
	case rate >= c.pol.Busy || (busy && rate > c.pol.Quiet):
		c.quietFor = 0
		if p := percentFor(live, c.pol.Room); !busy || p == defaultPercent || far(p, c.percent) {
			c.set(p)
		}
	case busy:
		c.quietFor += elapsed
		if c.quietFor >= c.pol.QuietAfter {
			c.quietFor = 0
			c.set(defaultPercent)
		}
	}
}

// percentFor is the GOGC whose heap goal is about live+room: the runtime's
// goal is the larger of live×(1+GOGC/100) and its minimum, 4 MiB×GOGC/100,
// so the smaller of the two percents that reach live+room is the one that
// does. Never below the default.
func percentFor(live, room uint64) int {
	target := live + room
	byMinimum := 100 * target / runtimeMinimum
	p := byMinimum
	if live > 0 {
		if byLive := 100 * room / live; byLive < p {
			p = byLive
		}
	}
	if p < defaultPercent {
		return defaultPercent
	}
	return int(p)
}

// far reports whether percent p differs from cur by more than an eighth:
// the live heap moves a little from one collection to the next, and the goal
// need not follow every move.
func far(p, cur int) bool {
	d := p - cur
	if d < 0 {
		d = -d
	}
	return d > cur/8
}

func (c *controller) set(percent int) {
	if percent == c.percent {
		return
	}
	c.percent = percent
	c.rt.setPercent(percent)
	if c.onChange != nil {
		c.onChange(percent)
	}
}

// goRuntime reads the Go runtime's allocation counters and sets its GOGC.
type goRuntime struct {
	samples []metrics.Sample
}

const (
	metricAllocated = "/gc/heap/allocs:bytes"
	metricLive      = "/gc/heap/live:bytes"
)

func newGoRuntime() *goRuntime {
	return &goRuntime{samples: []metrics.Sample{{Name: metricAllocated}, {Name: metricLive}}}
}

func (g *goRuntime) read() (allocated, live uint64) {
	metrics.Read(g.samples)
	return uint64Of(g.samples[0]), uint64Of(g.samples[1])
}

func uint64Of(s metrics.Sample) uint64 {
	if s.Value.Kind() != metrics.KindUint64 {
		return 0
	}
	return s.Value.Uint64()
}

func (g *goRuntime) setPercent(percent int) { debug.SetGCPercent(percent) }
