// Package relay is the data plane's copy path: [Copy] moves bytes both ways
// between two connections until both directions have finished, and is the
// only place in CredentialFlow that does so. It serves inbound traffic (TLS
// from a peer sidecar ⇄ plain TCP to the local app), outbound traffic (plain
// TCP from the app ⇄ TLS to a peer sidecar) and any other pair of net.Conn,
// such as QUIC streams wrapped as connections.
//
// Copy propagates half-closes (an EOF read on one side becomes a CloseWrite on
// the other), tears both connections down on the first error, enforces an
// idle timeout, a per-write timeout and a bound on half-closed connections,
// and always closes both connections before it returns.
//
// Two copy mechanisms sit behind the one function:
//
//   - Buffered: any pair of connections. Each direction reads into a small
//     pooled buffer while its connection is quiet, and moves to a large pooled
//     buffer only while data arrives faster than the small one can hold, so
//     that thousands of idle connections cost little memory.
//   - Kernel (Linux only): when both connections are *net.TCPConn, each
//     direction waits for its source to become readable and then hands the
//     bytes already queued to (*net.TCPConn).ReadFrom, which uses splice(2):
//     the payload never enters user space, and an idle connection holds
//     neither a buffer nor a splice pipe.
//
// Both mechanisms apply the same [Options] with the same meaning.
package relay

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// Defaults applied by [Copy] to zero fields of [Options].
const (
	// DefaultIdleTimeout is the idle timeout used when Options.IdleTimeout
	// is zero.
	DefaultIdleTimeout = time.Hour
	// DefaultWriteTimeout is the write timeout used when
	// Options.WriteTimeout is zero.
	DefaultWriteTimeout = 30 * time.Second
	// DefaultHalfCloseTimeout is the half-close timeout used when
	// Options.HalfCloseTimeout is zero.
	DefaultHalfCloseTimeout = 5 * time.Minute
)

// Errors reported in [Result.Err] for the ways Copy ends a relay on its own.
// Check them with errors.Is. Cancellation of the context passed to Copy is
// reported with the context's error (context.Canceled or
// context.DeadlineExceeded) and, when it differs, its cause.
var (
	// ErrIdle reports that no byte moved in either direction for
	// Options.IdleTimeout.
	ErrIdle = errors.New("relay: idle timeout")
	// ErrWriteTimeout reports that a write did not complete within
	// Options.WriteTimeout, typically because the peer stopped reading.
	ErrWriteTimeout = errors.New("relay: write timeout")
	// ErrHalfCloseTimeout reports that one direction was still open
	// Options.HalfCloseTimeout after the other had finished.
	ErrHalfCloseTimeout = errors.New("relay: half-close timeout")
)

// Options configures [Copy]. The zero value is valid; each field documents
// its default.
type Options struct {
	// IdleTimeout closes both connections when no byte has moved in either
	// direction for this long; Copy then reports ErrIdle. The relay notices
	// within a quarter of IdleTimeout after the limit, never before it.
	// Zero means DefaultIdleTimeout (1h); negative disables the limit.
	IdleTimeout time.Duration

	// WriteTimeout bounds a single write, so that a peer that stops reading
	// cannot pin a goroutine; Copy then reports ErrWriteTimeout. A single
	// write is at most 64 KiB on the buffered path and at most 256 KiB on
	// the kernel path. Zero means DefaultWriteTimeout (30s); negative
	// disables the limit.
	WriteTimeout time.Duration

	// HalfCloseTimeout bounds how long the other direction may keep going,
	// moving bytes or not, after one direction has finished (its source
	// returned EOF and the CloseWrite was propagated); Copy then reports
	// ErrHalfCloseTimeout. It is a hard bound, not an inactivity bound:
	// protocols that stream a long reply after the client half-closes need
	// a larger value or a negative one. Zero means DefaultHalfCloseTimeout
	// (5m); negative disables the limit.
	HalfCloseTimeout time.Duration
}

// Result reports what [Copy] moved.
type Result struct {
	// AToB and BToA are the bytes written to b and to a.
	AToB, BToA int64
	// Err is the first error other than a clean EOF or close, or nil when
	// both directions ended cleanly. See ErrIdle, ErrWriteTimeout and
	// ErrHalfCloseTimeout; context cancellation is reported with the
	// context's error.
	Err error

	// spliced records that both directions took the kernel path.
	spliced bool
}

// Copy relays a→b and b→a until both directions have finished, or an error,
// a timeout from opts or the end of ctx stops it. It always closes both a
// and b before returning. It runs one goroutine besides the caller's; the
// idle timer and the context callback run briefly in goroutines of their
// own when they fire. Copy joins all of them before returning.
//
// When a direction's source returns io.EOF, Copy half-closes the
// destination: CloseWrite for *net.TCPConn, *net.UnixConn and any connection
// with a CloseWrite() error method; close_notify followed by a TCP FIN for
// *tls.Conn. A destination without CloseWrite is closed entirely, which ends
// the other direction too. The other direction goes on until it ends as
// well or HalfCloseTimeout passes.
//
// Copy clears any deadline already set on a or b, and uses deadlines on both
// itself: callers must not set them while Copy runs. Closing both
// connections from outside (or cancelling ctx) is the way to stop it early.
func Copy(ctx context.Context, a, b net.Conn, opts Options) Result {
	s := &session{conns: [2]net.Conn{a, b}, lim: opts.limits()}
	ab := &direction{s: s, idx: 0, src: 0, dst: 1, name: "a->b"}
	ba := &direction{s: s, idx: 1, src: 1, dst: 0, name: "b->a"}
	ab.run, ba.run = ab.copyBuffered, ba.copyBuffered
	ab.batch, ba.batch = batchOf(b), batchOf(a)
	s.spliced = useKernel(ab, ba)
	if ctx.Err() != nil {
		s.fail(contextError(ctx))
		return s.result()
	}
	for _, c := range s.conns {
		c.SetDeadline(time.Time{}) // an error shows up on the first read or write
	}

	s.wg.Add(1)
	stopCtx := context.AfterFunc(ctx, func() {
		defer s.wg.Done()
		s.fail(contextError(ctx))
	})
	var w *watchdog
	if s.lim.idle > 0 {
		w = startWatchdog(s, s.lim.idle)
	}

	done := make(chan struct{})
	go func() {
		defer close(done)
		ba.run()
	}()
	ab.run()
	<-done

	s.finished.Store(true)
	if w != nil {
		w.stop()
	}
	if stopCtx() {
		s.wg.Done()
	}
	s.wg.Wait() // the context callback and the watchdog, if they fired
	s.closeConn(0)
	s.closeConn(1)
	return s.result()
}

// limits are Options with defaults applied; zero means disabled.
type limits struct {
	idle, write, halfClose time.Duration
}

func (o Options) limits() limits {
	return limits{
		idle:      orDefault(o.IdleTimeout, DefaultIdleTimeout),
		write:     orDefault(o.WriteTimeout, DefaultWriteTimeout),
		halfClose: orDefault(o.HalfCloseTimeout, DefaultHalfCloseTimeout),
	}
}

func orDefault(d, def time.Duration) time.Duration {
	switch {
	case d == 0:
		return def
	case d < 0:
		return 0
	}
	return d
}

// session is the state one Copy shares between its two directions, the
// watchdog and the context callback.
type session struct {
	conns    [2]net.Conn
	closed   [2]atomic.Bool  // set before the relay closes conns[i]
	moved    [2]atomic.Int64 // bytes written, indexed by direction (0 is a->b)
	finished atomic.Bool     // both directions have returned
	lim      limits
	spliced  bool
	wg       sync.WaitGroup // callbacks that may run outside the two directions

	mu  sync.Mutex
	err error
}

func (s *session) result() Result {
	s.mu.Lock()
	defer s.mu.Unlock()
	return Result{AToB: s.moved[0].Load(), BToA: s.moved[1].Load(), Err: s.err, spliced: s.spliced}
}

// fail records err unless an error is already recorded or both directions
// have already finished, and closes both connections so that blocked reads
// and writes return.
func (s *session) fail(err error) {
	s.mu.Lock()
	if s.err == nil && !s.finished.Load() {
		s.err = err
	}
	s.mu.Unlock()
	s.closeConn(0)
	s.closeConn(1)
}

// closeConn closes conns[i] once. A *tls.Conn is closed through its
// underlying connection: a clean end has already sent close_notify with
// CloseWrite, and an abort must not block sending one to a peer that does
// not read.
func (s *session) closeConn(i int) {
	if !s.closed[i].CompareAndSwap(false, true) {
		return
	}
	c := s.conns[i]
	if tc, ok := c.(*tls.Conn); ok {
		c = tc.NetConn()
	}
	c.Close() // nothing useful to do with an error from a connection being dropped
}

func contextError(ctx context.Context) error {
	err, cause := ctx.Err(), context.Cause(ctx)
	if cause == nil || cause == err {
		return fmt.Errorf("relay: %w", err)
	}
	return fmt.Errorf("relay: %w: %w", err, cause)
}

// direction is one way of a relay: it reads conns[src] and writes conns[dst].
type direction struct {
	s        *session
	idx      int // index into session.moved
	src, dst int
	name     string
	run      func()
	batch    *batchConn // under a TLS destination built on Batching
}

// write writes p to the destination, its TLS records in one system call
// when the destination batches.
func (d *direction) write(p []byte) (int, error) {
	dst := d.s.conns[d.dst]
	if d.batch == nil {
		return dst.Write(p)
	}
	d.batch.start()
	n, err := dst.Write(p)
	if ferr := d.batch.flush(); err == nil {
		err = ferr
	}
	return n, err
}

// writeDeadline arms the write timeout on the destination before a write and
// returns the deadline, zero when disabled.
func (d *direction) writeDeadline() time.Time {
	if d.s.lim.write <= 0 {
		return time.Time{}
	}
	t := time.Now().Add(d.s.lim.write)
	d.s.conns[d.dst].SetWriteDeadline(t) // an error shows up on the write
	return t
}

// readFailed ends the direction after its source failed with err. io.EOF
// is the clean end and is propagated as a half-close.
func (d *direction) readFailed(err error) {
	switch {
	case errors.Is(err, io.EOF):
		d.halfClose()
	case errors.Is(err, os.ErrDeadlineExceeded):
		// The only read deadline the relay sets is the half-close bound.
		d.failOn(d.src, fmt.Errorf("%w (%s): %w", ErrHalfCloseTimeout, d.name, err))
	default:
		d.failOn(d.src, fmt.Errorf("relay: %s: %w", d.name, err))
	}
}

// writeFailed ends the direction after a write to its destination failed.
func (d *direction) writeFailed(err error) {
	if errors.Is(err, os.ErrDeadlineExceeded) {
		err = fmt.Errorf("%w (%s): %w", ErrWriteTimeout, d.name, err)
	} else {
		err = fmt.Errorf("relay: %s: %w", d.name, err)
	}
	d.failOn(d.dst, err)
}

// failOn fails the session with err, unless connection i was closed by the
// relay itself, in which case err is a consequence of that close and the
// direction simply ends.
func (d *direction) failOn(i int, err error) {
	if d.s.closed[i].Load() {
		return
	}
	d.s.fail(err)
}

// halfClose propagates the end of the source to the destination and starts
// the half-close bound on the other direction, which reads the destination.
func (d *direction) halfClose() {
	dst := d.s.conns[d.dst]
	d.writeDeadline()
	err := closeWrite(dst)
	switch {
	case errors.Is(err, errors.ErrUnsupported):
		d.s.closeConn(d.dst)
	case errors.Is(err, syscall.ENOTCONN):
		// The destination's peer has already closed and reset the
		// connection (ghostunnel closes fully once it has answered): there
		// is no write side left to shut down, and nothing was lost that a
		// write had not already reported.
	case err != nil:
		d.failOn(d.dst, fmt.Errorf("relay: %s: close write: %w", d.name, err))
	case d.s.lim.halfClose > 0:
		dst.SetReadDeadline(time.Now().Add(d.s.lim.halfClose))
	}
}

// closeWriter is implemented by *net.TCPConn, *net.UnixConn, *tls.Conn and
// any other connection that can shut down its write side alone.
type closeWriter interface {
	CloseWrite() error
}

var (
	_ closeWriter = (*net.TCPConn)(nil)
	_ closeWriter = (*net.UnixConn)(nil)
	_ closeWriter = (*tls.Conn)(nil)
)

// closeWrite shuts down the write side of c, or reports
// errors.ErrUnsupported if c cannot do that.
func closeWrite(c net.Conn) error {
	switch c := c.(type) {
	case *tls.Conn:
		// CloseWrite refuses to run before the handshake completes; if the
		// other direction is still running it, wait for it.
		if err := c.Handshake(); err != nil {
			return err
		}
		if err := c.CloseWrite(); err != nil {
			return err
		}
		// close_notify ends the TLS stream; a FIN ends the TCP stream too,
		// for peers that watch the socket rather than the TLS records.
		if cw, ok := c.NetConn().(closeWriter); ok {
			return cw.CloseWrite()
		}
		return nil
	case closeWriter:
		return c.CloseWrite()
	}
	return errors.ErrUnsupported
}
