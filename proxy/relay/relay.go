// Package relay is the data plane's copy path: [Copy] (or a [Relay], which
// is not waited for) moves bytes both ways between two connections until both
// directions have finished, and is the only place in CredentialFlow that
// does so. It serves inbound traffic (TLS
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
//     buffer only while data arrives faster than the small one can hold.
//     When both connections are TCP underneath (a sidecar's TLS connection
//     and the app's, on Linux), a relay quiet for Options.ParkAfter parks
//     (park.go): it gives up its goroutines and buffers until a connection
//     has something to read, so that thousands of idle connections cost
//     little memory.
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
	// ErrClosed is the error of a relay stopped with Relay.Close(nil).
	ErrClosed = errors.New("closed")
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

	// ParkAfter is the quiet period (no byte moved either way) after which
	// a relay between two TCP connections (TLS or not) parks: it gives up
	// its goroutines and buffers until a connection has something to read
	// (see park.go). A relay parks between ParkAfter and 1.5×ParkAfter
	// after its last byte, on Linux only. Zero means DefaultParkAfter (5s);
	// negative disables parking.
	ParkAfter time.Duration
}

// Result reports what [Copy] or a [Relay] moved.
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
// and b before returning. It is New and Start followed by waiting for the
// result.
//
// When a direction's source returns io.EOF, Copy half-closes the
// destination: CloseWrite for *net.TCPConn, *net.UnixConn and any connection
// with a CloseWrite() error method; close_notify followed by a TCP FIN for
// *tls.Conn. A destination without CloseWrite is closed entirely, which ends
// the other direction too. The other direction goes on until it ends as
// well or HalfCloseTimeout passes.
//
// Copy clears any deadline already set on a or b, and uses deadlines on both
// itself: callers must not set them while Copy runs. Cancelling ctx (or
// Relay.Close) is the way to stop it early: closing a or b from outside is
// noticed only by a direction that is reading, not by a parked one
// (Options.ParkAfter).
func Copy(ctx context.Context, a, b net.Conn, opts Options) Result {
	res := make(chan Result, 1)
	New(a, b, opts).Start(ctx, func(r Result) { res <- r })
	return <-res
}

// Relay is one relay between two connections, for callers that do not wait
// for it: New prepares it, Start runs it, Close stops it from any goroutine,
// before or after Start. It behaves as Copy does.
type Relay struct {
	s *session
}

// New prepares a relay between a and b. Nothing runs until Start.
func New(a, b net.Conn, opts Options) *Relay {
	s := &session{conns: [2]net.Conn{a, b}, lim: opts.limits()}
	ab := &direction{s: s, idx: 0, src: 0, dst: 1, name: "a->b"}
	ba := &direction{s: s, idx: 1, src: 1, dst: 0, name: "b->a"}
	s.dirs = [2]*direction{ab, ba}
	ab.run, ba.run = ab.copyBuffered, ba.copyBuffered
	ab.batch, ba.batch = batchOf(b), batchOf(a)
	s.spliced = useKernel(ab, ba)
	s.park = newParking(s, ab, ba, s.lim.park)
	return &Relay{s: s}
}

// Start runs the relay and returns; the relay calls done with its Result
// once both directions have ended and both connections are closed, on a
// goroutine of its own (or on the caller's, before Start returns, if ctx
// has already ended or Close was called). So a connection whose relay has
// parked costs no goroutine at all. Start must be called once.
//
// The relay runs one goroutine per direction while it moves bytes; the idle
// and park timers and the context callback run briefly in goroutines of
// their own when they fire. All have ended when done is called.
func (r *Relay) Start(ctx context.Context, done func(Result)) {
	s := r.s
	s.done = done
	if ctx.Err() != nil {
		s.fail(contextError(ctx))
	}
	if s.closed[0].Load() || s.closed[1].Load() {
		s.closeConn(0)
		s.closeConn(1)
		done(s.result())
		return
	}
	for _, c := range s.conns {
		c.SetDeadline(time.Time{}) // an error shows up on the first read or write
	}
	s.wg.Add(1)
	s.stopCtx = context.AfterFunc(ctx, func() {
		defer s.wg.Done()
		s.fail(contextError(ctx))
	})
	if s.lim.idle > 0 {
		s.watchdog = startWatchdog(s, s.lim.idle)
	}
	if s.park != nil {
		s.park.start()
	}
	s.live.Store(2)
	go s.dirs[0].loop()
	go s.dirs[1].loop()
}

// Close stops the relay as the end of its context would, and reports
// cause (ErrClosed if nil) in its Result, unless it has already ended. It
// closes both connections at once; the relay then ends as soon as its
// directions see that.
func (r *Relay) Close(cause error) {
	if cause == nil {
		cause = ErrClosed
	}
	r.s.fail(fmt.Errorf("relay: %w", cause))
}

// finish ends the session once both directions have: it stops the timers
// and the context callback, waits for any of them that is running, closes
// both connections and reports the result. It runs on the goroutine that
// ended the last direction, or on one of its own when that was a close
// from one of those callbacks.
func (s *session) finish() {
	s.finished.Store(true)
	if s.watchdog != nil {
		s.watchdog.stop()
	}
	if s.park != nil {
		s.park.stop()
	}
	if s.stopCtx() {
		s.wg.Done()
	}
	s.wg.Wait() // the context callback and the timers, if they fired
	s.closeConn(0)
	s.closeConn(1)
	retire(len(s.dirs))
	s.done(s.result())
}

// limits are Options with defaults applied; zero means disabled.
type limits struct {
	idle, write, halfClose, park time.Duration
}

func (o Options) limits() limits {
	return limits{
		idle:      orDefault(o.IdleTimeout, DefaultIdleTimeout),
		write:     orDefault(o.WriteTimeout, DefaultWriteTimeout),
		halfClose: orDefault(o.HalfCloseTimeout, DefaultHalfCloseTimeout),
		park:      orDefault(o.ParkAfter, DefaultParkAfter),
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
	dirs     [2]*direction // dirs[i] reads conns[i]
	live     atomic.Int32  // directions not yet ended
	done     func(Result)
	park     *parking // nil when the relay cannot park
	watchdog *watchdog
	stopCtx  func() bool
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
	// A parked reader would never see the close. closed[i], set above,
	// keeps the reader from parking from now on.
	if s.park != nil && s.park.p.end(s.dirs[i]) && s.live.Add(-1) == 0 {
		// Not here: the close may come from a callback finish waits for.
		go s.finish()
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
	run      func() (parked bool)
	batch    *batchConn // under a TLS destination built on Batching

	// Parking (park.go).
	state    atomic.Int32 // running, parked or ended
	tcp      *net.TCPConn // under the source
	fd       int32        // the source's descriptor, while parked
	parkReq  bool         // asked to park; under parking.mu
	deadline time.Time    // the source's read deadline to restore on waking; under parking.mu
}

// loop runs the direction until it ends or parks; a parked direction is
// carried on by a new goroutine when its source becomes readable.
func (d *direction) loop() {
	if d.run() {
		return
	}
	d.state.Store(ended)
	if d.s.live.Add(-1) == 0 {
		d.s.finish()
	}
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
	var bound time.Time
	switch {
	case errors.Is(err, errors.ErrUnsupported):
		d.s.closeConn(d.dst)
		return
	case errors.Is(err, syscall.ENOTCONN):
		// The destination's peer has already closed and reset the
		// connection (ghostunnel closes fully once it has answered): there
		// is no write side left to shut down, and nothing was lost that a
		// write had not already reported.
	case err != nil:
		d.failOn(d.dst, fmt.Errorf("relay: %s: close write: %w", d.name, err))
		return
	case d.s.lim.halfClose > 0:
		bound = time.Now().Add(d.s.lim.halfClose)
	}
	if k := d.s.park; k != nil {
		k.halfClosed(d.s.dirs[d.dst], bound)
	} else if !bound.IsZero() {
		dst.SetReadDeadline(bound) // an error shows up on the read
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
