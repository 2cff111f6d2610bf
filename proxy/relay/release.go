package relay

import (
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"
)

// Releasing: what relays give up goes back to the system.
//
// A relay that parks or ends frees its goroutines' stacks (8 KiB or more
// each, grown by TLS) and drops its buffers, but only the next collection
// frees them, and an idle process collects only every two minutes; even
// then the runtime keeps freed pages up to its heap goal, about twice the
// live heap. So a sidecar whose connections all went quiet, or closed, at
// once would keep the memory of their busy moment. Once a wave of
// directions has parked or ended (at least releaseAfter since the last
// release, however long that took) and that has then stopped for
// releaseQuiet, the process collects and returns its free
// memory (debug.FreeOSMemory), at most once per releaseEvery. A sidecar
// whose relays park, wake, start and end all the time never sees the wave
// stop, and never pays for a release: it costs one collection and, later,
// the page faults of memory used again.
const (
	releaseAfter = 512 // directions: at least 4 MiB of stacks freed
	releaseQuiet = time.Second
	releaseEvery = 10 * time.Second
)

// theReleaser is the process's; see retire.
var theReleaser = sync.OnceValue(newReleaser)

// retire counts n directions parked or ended.
func retire(n int) { theReleaser().retired(n) }

// releaser counts retired directions and releases memory after a wave of
// them.
type releaser struct {
	after int           // directions that make a wave
	quiet time.Duration // how long retiring must have stopped
	every time.Duration // the least time between two releases
	free  func()        // debug.FreeOSMemory, but for tests

	mu       sync.Mutex
	n        int       // retired since the last release
	lastSeen time.Time // the last retirement counted
	last     time.Time // the last release
	t        *time.Timer
	armed    bool

	done atomic.Int64 // releases made
}

func newReleaser() *releaser {
	return &releaser{after: releaseAfter, quiet: releaseQuiet, every: releaseEvery, free: debug.FreeOSMemory}
}

// retired counts n directions parked or ended, and arms the release once
// the wave is large enough.
func (r *releaser) retired(n int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.n += n
	r.lastSeen = time.Now()
	if r.n < r.after || r.armed {
		return
	}
	r.armed = true
	if r.t == nil {
		r.t = time.AfterFunc(r.wait(r.lastSeen), r.fire)
	} else {
		r.t.Reset(r.wait(r.lastSeen))
	}
}

// wait is how long from now the release may come at the earliest. r.mu is
// held.
func (r *releaser) wait(now time.Time) time.Duration {
	at := r.lastSeen.Add(r.quiet)
	if !r.last.IsZero() {
		at = later(at, r.last.Add(r.every))
	}
	return at.Sub(now)
}

// fire runs on the timer: it releases if retiring has stopped for
// r.quiet, or waits again.
func (r *releaser) fire() {
	r.mu.Lock()
	now := time.Now()
	if r.n < r.after {
		r.armed = false // the wave was counted off meanwhile (tests)
		r.mu.Unlock()
		return
	}
	if d := r.wait(now); d > 0 {
		r.t.Reset(d)
		r.mu.Unlock()
		return
	}
	r.armed = false
	r.n = 0
	r.last = now
	r.mu.Unlock()
	r.free()
	r.done.Add(1)
}

func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

// Releases returns how many times this process has returned the memory
// of parked and ended relays to the system.
func Releases() int64 { return theReleaser().done.Load() }
