package relay

import (
	"sync"
	"time"
)

// watchdog enforces the idle timeout of one Copy with one timer and no
// goroutine of its own.
//
// The copy loops already count the bytes they write in atomic counters (for
// Result); the watchdog samples their sum every idle/4. A sum that changed
// restarts the quiet period at that sample; a quiet period of idle fails the
// session with ErrIdle. So the copy loops pay nothing per chunk for idle
// detection (no clock read, no deadline, no syscall), the timer fires four
// times per IdleTimeout, and a relay is closed between IdleTimeout and
// 1.25×IdleTimeout after its last byte, never earlier.
type watchdog struct {
	s          *session
	idle, tick time.Duration

	mu         sync.Mutex
	t          *time.Timer
	stopped    bool
	seen       int64     // byte count at the last sample
	quietSince time.Time // sample at which seen last changed
}

func startWatchdog(s *session, idle time.Duration) *watchdog {
	w := &watchdog{s: s, idle: idle, tick: max(idle/4, time.Millisecond), quietSince: time.Now()}
	w.mu.Lock()
	defer w.mu.Unlock()
	s.wg.Add(1)
	w.t = time.AfterFunc(w.tick, w.check)
	return w
}

// check runs in the timer's goroutine. Each arming of the timer adds one to
// the session's WaitGroup and each run, or a successful Stop, takes it off,
// so Copy can wait for a check that is already running.
func (w *watchdog) check() {
	defer w.s.wg.Done()
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.stopped {
		return
	}
	now := time.Now()
	if n := w.s.moved[0].Load() + w.s.moved[1].Load(); n != w.seen {
		w.seen, w.quietSince = n, now
	} else if now.Sub(w.quietSince) >= w.idle {
		w.s.fail(ErrIdle)
		return
	}
	w.s.wg.Add(1)
	w.t.Reset(w.tick)
}

// stop disarms the timer. A check already started is waited for by Copy
// through the session's WaitGroup.
func (w *watchdog) stop() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.stopped = true
	if w.t.Stop() {
		w.s.wg.Done()
	}
}
