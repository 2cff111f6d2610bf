package proxy

import (
	"errors"
	"net"
	"os"
	"sync"
	"syscall"
	"time"
)

// fdBudget is how many connections the process's file-descriptor limit
// can carry: a relayed connection holds two descriptors (the peer and the
// app or upstream), and a reserve is kept for listeners, the Workload API,
// the admin server and logs, so that /metrics and /readyz keep answering
// when the connection limit is reached, and for the shared sockets of HTTP
// listeners (extra), which no connection slot accounts for. It is 0 when
// the limit is unknown or unlimited.
func fdBudget(extra int) int {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil || rl.Cur == ^uint64(0) || rl.Cur > 1<<30 {
		return 0
	}
	return budgetFor(int(rl.Cur), extra)
}

// budgetFor is fdBudget for a limit of n descriptors.
func budgetFor(n, extra int) int {
	reserve := max(64, n/16)
	return max(1, (n-reserve-extra)/2)
}

// sharedSockets is how many sockets the HTTP listeners of cfg may hold
// outside connection slots: each inbound's app connections, and each
// outbound's upstream pool twice over (a pool being replaced drains while
// its successor fills).
func sharedSockets(cfg Config) int {
	n := 0
	for _, in := range cfg.Inbound {
		if in.HTTP != nil {
			n += in.HTTP.withDefaults().AppConnections
		}
	}
	for _, out := range cfg.Outbound {
		if out.HTTP != nil {
			n += 2 * out.HTTP.pool()
		}
	}
	return n
}

// isFDExhausted reports whether an accept failed for want of file
// descriptors, per process (EMFILE) or system-wide (ENFILE).
func isFDExhausted(err error) bool {
	return errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE)
}

// spareFD is one descriptor held back so that, when accept fails for want
// of descriptors, the connection waiting in the kernel's queue can still
// be accepted and closed at once, rather than left to the client's
// timeout.
type spareFD struct {
	mu     sync.Mutex
	f      *os.File
	closed bool
}

func newSpareFD() *spareFD {
	s := &spareFD{}
	s.f, _ = os.Open(os.DevNull)
	return s
}

// shed frees the spare descriptor, accepts one waiting connection from ln
// and closes it, then takes the spare back. It reports whether a
// connection was shed. Linux fails accept for want of a descriptor whether
// or not a connection is waiting, so shed waits at most a millisecond for
// one.
func (s *spareFD) shed(ln net.Listener) bool {
	dl, ok := ln.(interface{ SetDeadline(time.Time) error })
	if !ok {
		return false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.f != nil {
		s.f.Close()
		s.f = nil
	}
	defer func() {
		if !s.closed {
			s.f, _ = os.Open(os.DevNull)
		}
	}()
	dl.SetDeadline(time.Now().Add(time.Millisecond))
	c, err := ln.Accept()
	dl.SetDeadline(time.Time{})
	if err != nil {
		return false
	}
	c.Close()
	return true
}

func (s *spareFD) close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	if s.f != nil {
		s.f.Close()
		s.f = nil
	}
}
