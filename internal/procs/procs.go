// Package procs fits the number of threads that run Go code at once
// (GOMAXPROCS) to a sidecar's load: one while the process uses well under a
// core, the runtime's default (the container's CPU limit, or the machine's
// CPUs) once it needs more.
//
// Why: on the request path work moves between goroutines several times per
// request (the HTTP/2 server's read loop, the handler, its frame writer; the
// client's read loop; a relay's two directions). With more than one P each
// hand-off may wake another thread, which looks for work, finds little and
// sleeps again, and on a sidecar's typical load those wake-ups cost more
// than the work they hand over. With one P a hand-off is a run-queue entry.
// Measured with `make bench`'s mesh scenarios (bench/README.md, "One
// thread while the load is light"): 16–25% less CPU per HTTP request at 1000
// requests per second, and a lower p99. But one P carries at most a core's
// worth of bulk traffic and handshakes, so the controller hands the default
// back within one sampling period of the process nearing a full core, and
// takes one P again only after the load has stayed low for a while.
//
// An operator who sets GOMAXPROCS in the environment has decided: the
// controller then does nothing.
package procs

import (
	"context"
	"log/slog"
	"os"
	"runtime"
	"time"
)

// Policy sets when the controller changes the number of Ps. The zero value
// of a field takes its default.
type Policy struct {
	// Interval is how often the process's CPU time is sampled (100ms).
	Interval time.Duration
	// Up: at one P, a sample at or above this use (in cores) gives the
	// runtime its default back (0.75).
	Up float64
	// Down: at the default, once every sample has been at or below this use
	// (in cores) for DownAfter, the process goes to one P (0.4). Work costs
	// more CPU at several Ps, so Down is lower than Up by more than that
	// difference: a steady load does not move back and forth.
	Down float64
	// DownAfter is how long the use must stay at or below Down (3s).
	DownAfter time.Duration
}

func (p Policy) withDefaults() Policy {
	if p.Interval <= 0 {
		p.Interval = 100 * time.Millisecond
	}
	if p.Up <= 0 {
		p.Up = 0.75
	}
	if p.Down <= 0 {
		p.Down = 0.4
	}
	if p.DownAfter <= 0 {
		p.DownAfter = 3 * time.Second
	}
	return p
}

// EnvSet reports whether GOMAXPROCS is set in the environment, in which case
// Run leaves it alone.
func EnvSet() bool {
	_, ok := os.LookupEnv("GOMAXPROCS")
	return ok
}

// Run adapts GOMAXPROCS to the process's CPU use until ctx ends, and then
// gives the runtime its default back. onChange, if not nil, is called with
// the new number of Ps after each change. It returns at once if GOMAXPROCS
// is set in the environment, or where the process's CPU time is not read.
func Run(ctx context.Context, pol Policy, log *slog.Logger, onChange func(procs int)) {
	if !measured {
		return
	}
	if EnvSet() {
		log.Debug("GOMAXPROCS set in the environment: not adapted", "procs", runtime.GOMAXPROCS(0))
		return
	}
	c := newController(pol, goRuntime{})
	c.onChange = func(n int) {
		log.Debug("threads running Go code changed", "procs", n)
		if onChange != nil {
			onChange(n)
		}
	}
	c.run(ctx)
}

// hooks are what the controller reads and changes: the Go runtime, or a
// test's stand-in.
type hooks interface {
	cpuTime() time.Duration // the process's user and system CPU time so far
	procs() int             // the current GOMAXPROCS
	setOne()                // GOMAXPROCS(1)
	setDefault() int        // the runtime's default again; returns it
}

type controller struct {
	pol      Policy
	rt       hooks
	onChange func(int)

	lowered bool          // set to one P by the controller, not the default
	lowFor  time.Duration // how long every sample has been at or below Down
	lastCPU time.Duration
	last    time.Time
}

func newController(pol Policy, rt hooks) *controller {
	return &controller{pol: pol.withDefaults(), rt: rt}
}

func (c *controller) run(ctx context.Context) {
	t := time.NewTicker(c.pol.Interval)
	defer t.Stop()
	c.last, c.lastCPU = time.Now(), c.rt.cpuTime()
	for {
		select {
		case <-ctx.Done():
			if c.lowered {
				c.change(c.rt.setDefault())
			}
			return
		case now := <-t.C:
			c.sample(now, c.rt.cpuTime())
		}
	}
}

// sample takes the process's CPU time at now and changes GOMAXPROCS if the
// policy says so.
func (c *controller) sample(now time.Time, cpu time.Duration) {
	elapsed := now.Sub(c.last)
	if elapsed <= 0 {
		return
	}
	used := float64(cpu-c.lastCPU) / float64(elapsed)
	c.last, c.lastCPU = now, cpu
	switch {
	case c.lowered:
		if used >= c.pol.Up {
			c.lowered, c.lowFor = false, 0
			c.change(c.rt.setDefault())
		}
	case used > c.pol.Down:
		c.lowFor = 0
	case c.rt.procs() > 1:
		// At the default: with a default of one (a one-CPU limit) there
		// is nothing to lower. The runtime follows changes of the CPU
		// limit while its default is in force.
		c.lowFor += elapsed
		if c.lowFor >= c.pol.DownAfter {
			c.lowered, c.lowFor = true, 0
			c.rt.setOne()
			c.change(1)
		}
	}
}

func (c *controller) change(n int) {
	if c.onChange != nil {
		c.onChange(n)
	}
}

// goRuntime is the Go runtime.
type goRuntime struct{}

func (goRuntime) cpuTime() time.Duration { return processCPU() }
func (goRuntime) procs() int             { return runtime.GOMAXPROCS(0) }
func (goRuntime) setOne()                { runtime.GOMAXPROCS(1) }

func (goRuntime) setDefault() int {
	runtime.SetDefaultGOMAXPROCS()
	return runtime.GOMAXPROCS(0)
}
