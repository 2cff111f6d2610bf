package proxy

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/credflow/credflow/internal/logkey"
	"github.com/credflow/credflow/proxy/limit"
	"github.com/credflow/credflow/reason"
)

// checkGlobal counts a hit against the global budget: it returns rate_limited and
// the wait until the service's window resets when the budget is spent,
// limit_unavailable when the service gave no answer and the failure mode
// is deny, "" otherwise. A listener that asks for global limits on a
// proxy without a service (config validation prevents it) is let through.
func (p *Proxy) checkGlobal(ctx context.Context, h limit.Hit) (reason.Reason, time.Duration) {
	if p.global == nil {
		return "", 0
	}
	kind := h.Kind
	v := p.global.Check(ctx, h)
	switch {
	case v.Err != nil:
		p.m.globalCheck(kind, "error")
		p.globalWarn.Do(func() {
			p.log.Warn("proxy: the global rate limit service gave no answer; its failure mode decides",
				slog.String(logkey.Error, v.Err.Error()), slog.Bool("allowed", v.OK))
		})
		if !v.OK {
			return reason.LimitUnavailable, 0
		}
	case !v.OK:
		p.m.globalCheck(kind, "over_limit")
		return reason.RateLimited, v.RetryAfter
	default:
		p.m.globalCheck(kind, "ok")
	}
	return "", 0
}

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
// outbound's upstream HTTP/2 pool twice over (a pool being replaced drains
// while its successor fills) and its HTTP/1.1 connections.
func sharedSockets(cfg Config) int {
	n := 0
	for _, in := range cfg.Inbound {
		if in.HTTP != nil {
			n += in.HTTP.withDefaults().AppConnections
		}
	}
	for _, out := range cfg.Outbound {
		if out.HTTP != nil {
			n += 2*out.HTTP.pool() + upstreamH1Conns
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

// budget holds the proxy's connection slots. Every relayed connection and
// QUIC stream takes one of all (MaxConnections); an inbound one also takes
// one of inbound (MaxConnections - OutboundReserve), so that connections
// from the network can never take the slots the app needs to call out.
// An inbound connection that has not finished its mTLS handshake also
// holds one of handshakes (MaxHandshakes) and counts against its source
// address (HandshakesPerSource), so that connections that send nothing,
// which cost their sender nothing, cannot crowd out real peers.
type budget struct {
	all        chan struct{}
	inbound    chan struct{}
	handshakes chan struct{}
	perSource  int

	mu      sync.Mutex
	sources map[netip.Addr]int // handshakes in progress by source address
}

func newBudget(cfg Config) *budget {
	return &budget{
		all:        make(chan struct{}, cfg.MaxConnections),
		inbound:    make(chan struct{}, cfg.MaxConnections-cfg.OutboundReserve),
		handshakes: make(chan struct{}, cfg.MaxHandshakes),
		perSource:  cfg.HandshakesPerSource,
		sources:    make(map[netip.Addr]int),
	}
}

// take takes a connection slot for a connection of direction dir, or
// reports that there is none.
func (b *budget) take(dir direction) bool {
	if dir == dirInbound {
		select {
		case b.inbound <- struct{}{}:
		default:
			return false
		}
	}
	select {
	case b.all <- struct{}{}:
		return true
	default:
		if dir == dirInbound {
			<-b.inbound
		}
		return false
	}
}

// release gives back a slot take took.
func (b *budget) release(dir direction) {
	<-b.all
	if dir == dirInbound {
		<-b.inbound
	}
}

// startHandshake admits a connection from src to its handshake; it returns
// the reason it is refused ("source_limit", "handshake_limit") or "".
// Every admission is ended by endHandshake.
func (b *budget) startHandshake(src netip.Addr) reason.Reason {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.sources[src] >= b.perSource {
		return reason.SourceLimit
	}
	select {
	case b.handshakes <- struct{}{}:
	default:
		return reason.HandshakeLimit
	}
	b.sources[src]++
	return ""
}

func (b *budget) endHandshake(src netip.Addr) {
	b.mu.Lock()
	defer b.mu.Unlock()
	<-b.handshakes
	if b.sources[src]--; b.sources[src] <= 0 {
		delete(b.sources, src)
	}
}

// sourceOf returns the IP address c comes from (IPv4-mapped IPv6 addresses
// as IPv4), or the zero Addr for a connection without one.
func sourceOf(c net.Conn) netip.Addr {
	if ap, err := netip.ParseAddrPort(c.RemoteAddr().String()); err == nil {
		return ap.Addr().Unmap().WithZone("")
	}
	return netip.Addr{}
}

// firstByteConn is an inbound connection whose read deadline, set at
// accept to Config.FirstByteTimeout, is lifted by the first byte read: a
// peer must start its ClientHello promptly, and then has the rest of
// HandshakeTimeout for the handshake.
type firstByteConn struct {
	net.Conn
	got atomic.Bool
}

func (c *firstByteConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	if n > 0 && c.got.CompareAndSwap(false, true) {
		c.Conn.SetReadDeadline(time.Time{})
	}
	return n, err
}

// NetConn returns the accepted connection, for relay.Copy to find the TCP
// connection under the TLS one.
func (c *firstByteConn) NetConn() net.Conn { return c.Conn }

// CloseWrite half-closes the connection, as relay expects of a TCP one.
func (c *firstByteConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}
