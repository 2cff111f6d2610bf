// Package h1 is HTTP/1.1 without goroutine hand-offs: a client that runs
// each exchange on the calling goroutine (it writes the request, reads the
// response head and hands the body to the caller, who returns the
// connection to the pool by reading the body to its end), and a server
// that runs each request's handler on its connection's goroutine
// (server.go).
//
// net/http's Transport gives every connection a read loop and a write loop
// and passes each request and response between them and the caller over
// channels: two goroutine hand-offs per request, each of which may wake
// another thread. For a sidecar that forwards small requests, those
// hand-offs and the wake-ups they cause are a large share of its CPU. This
// client does the same exchange in line and costs one system call per
// reused connection instead (a non-blocking peek that finds a connection
// the server has closed while it was idle, which the Transport's read loop
// notices on its own).
//
// It speaks only what a forwarding proxy needs: no protocol upgrades, no
// "Expect: 100-continue", no proxies, no compression; the caller sends
// those requests another way (Eligible says which).
package h1

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/textproto"
	"sync"
	"time"
)

// Defaults of Client's fields.
const (
	DefaultIdleTimeout    = 90 * time.Second
	DefaultMaxHeaderBytes = 10 << 20 // as net/http's Transport
)

// Client is a pool of HTTP/1.1 connections to one server. Its zero value
// is not usable: Dial must be set. Safe for concurrent use.
type Client struct {
	// Dial opens a connection to the server; a *tls.Conn must have
	// completed its handshake (its state becomes each response's TLS).
	Dial func(ctx context.Context) (net.Conn, error)
	// MaxConns bounds the connections open at once, in use or idle; a
	// request waits for one until its context ends. Zero: no bound.
	MaxConns int
	// IdleTimeout is how long an idle connection is kept; default
	// DefaultIdleTimeout.
	IdleTimeout time.Duration
	// MaxHeaderBytes bounds the size of a response's head; default
	// DefaultMaxHeaderBytes.
	MaxHeaderBytes int64
	// Reuse, if set, is asked before a connection goes back to the pool,
	// before it is taken from it and by Sweep; false closes it (a
	// connection whose certificates are due for renewal, say). It must
	// not call the Client.
	Reuse func(net.Conn) bool
	// Full, if set, is called when a request or Hold finds MaxConns
	// connections in use and is about to wait: a chance to close idle
	// connections counted through Hold (another client's). It must not
	// wait for this Client.
	Full func()
	// NoWait makes a request that finds MaxConns connections in use fail
	// at once with ErrFull, for the caller to send another way, instead of
	// waiting for one.
	NoWait bool

	mu      sync.Mutex
	idle    []*conn // most recently used last
	open    int
	waiters []chan *conn // nil sent: a connection may be dialled
	closed  bool
	done    chan struct{} // closed by Close; made by the first waiter
}

// ErrClosed fails requests made after Close.
var ErrClosed = errors.New("h1: client closed")

// ErrFull fails a request of a NoWait client that finds every connection
// in use: nothing of it was sent, and its body is untouched; or, joined
// with the error of a first attempt that failed on a reused connection,
// when the request could be sent again but found no connection (Rewind
// gives it its body back).
var ErrFull = errors.New("h1: every connection in use")

// ErrNoResponse marks the failure of a request on a new connection that
// ended before any byte of a response: a server that closes connections
// it will not serve (over a connection limit, say) looks like this.
var ErrNoResponse = errors.New("h1: new connection ended without a response")

// errHeaderTooLarge fails a response whose head exceeds MaxHeaderBytes.
var errHeaderTooLarge = errors.New("h1: response header too large")

// MaxBody is the largest request body Eligible accepts.
const MaxBody = 16 << 10

// Eligible reports whether a Client should send r: a request that asks for
// no protocol switch and no "100 Continue", with no body or one of known
// length up to MaxBody. The client writes a request whole before it reads
// the response; a server that answers a large upload early, without
// reading it, could leave that write stuck where net/http's Transport
// would have read the answer.
func Eligible(r *http.Request) bool {
	if len(r.Header["Upgrade"]) > 0 || len(r.Header["Expect"]) > 0 || r.Method == http.MethodConnect {
		return false
	}
	return r.Body == nil || r.Body == http.NoBody || r.ContentLength > 0 && r.ContentLength <= MaxBody
}

// RoundTrip sends r and returns the response. The response body must be
// read to its end or closed: the first returns the connection to the
// pool, the second closes it unless the body was already read.
func (c *Client) RoundTrip(r *http.Request) (*http.Response, error) {
	ctx := r.Context()
	trace := httptrace.ContextClientTrace(ctx)
	pc, err := c.get(ctx)
	if err != nil {
		return nil, err // ErrFull included: r is untouched
	}
	if r, err = InMemory(r); err != nil {
		c.release(pc, true) // nothing was written on it
		return nil, err
	}
	for retried := false; ; retried = true {
		if retried {
			var again error
			if pc, again = c.get(ctx); again != nil {
				// The first attempt's failure says more; ErrFull says that
				// r may go another way (it may be sent again: Rewind).
				return nil, errors.Join(err, again)
			}
		}
		if trace != nil && trace.GotConn != nil {
			trace.GotConn(httptrace.GotConnInfo{Conn: pc.nc, Reused: pc.reused})
		}
		var (
			resp *http.Response
			sent bool
		)
		resp, sent, err = c.exchange(ctx, pc, r, trace)
		if err == nil {
			return resp, nil
		}
		c.discard(pc)
		if !pc.reused && pc.lr.got == 0 && ctx.Err() == nil {
			err = errors.Join(ErrNoResponse, err)
		}
		// A reused connection the server closed just as the request went
		// out: try once more on a fresh one if the request can be sent
		// again and the server cannot have acted on it.
		if retried || !pc.reused || pc.lr.got > 0 || ctx.Err() != nil || !(replayable(r) && (!sent || idempotent(r))) {
			return nil, err
		}
		again, rerr := Rewind(r)
		if rerr != nil {
			return nil, err
		}
		r = again
	}
}

// exchange writes r on pc and reads the response head; sent reports
// whether any byte of the request reached the connection.
func (c *Client) exchange(ctx context.Context, pc *conn, r *http.Request, trace *httptrace.ClientTrace) (resp *http.Response, sent bool, err error) {
	pc.lr.got = 0
	before := pc.cw.n
	stop := context.AfterFunc(ctx, func() { pc.nc.SetDeadline(aLongTimeAgo) })
	defer func() {
		if err != nil && !stop() {
			err = errors.Join(context.Cause(ctx), err)
		}
	}()
	if err := r.Write(pc.bw); err != nil {
		return nil, pc.cw.n > before, err
	}
	if err := pc.bw.Flush(); err != nil {
		return nil, pc.cw.n > before, err
	}
	for {
		pc.lr.n = c.maxHeaderBytes()
		resp, err = http.ReadResponse(pc.br, r)
		pc.lr.n = unlimited
		if err != nil {
			if pc.lr.hitLimit {
				err = errHeaderTooLarge
			}
			return nil, true, err
		}
		if resp.StatusCode >= 200 || resp.StatusCode == http.StatusSwitchingProtocols {
			break
		}
		// An interim response (103 Early Hints, a 100 not asked for): the
		// final one follows.
		if trace != nil && trace.Got1xxResponse != nil {
			if err := trace.Got1xxResponse(resp.StatusCode, textproto.MIMEHeader(resp.Header)); err != nil {
				return nil, true, err
			}
		}
	}
	resp.TLS = pc.tls
	reuse := !resp.Close && !r.Close && resp.StatusCode != http.StatusSwitchingProtocols
	if resp.Body == http.NoBody {
		if !stop() {
			// The context ended as the head arrived: the deadline is
			// set on the connection, which is not reused.
			reuse = false
		}
		c.release(pc, reuse)
		return resp, true, nil
	}
	resp.Body = &body{rc: resp.Body, c: c, pc: pc, stop: stop, reuse: reuse, left: resp.ContentLength}
	return resp, true, nil
}

// get returns an idle connection or a new one.
func (c *Client) get(ctx context.Context) (*conn, error) {
	for {
		c.mu.Lock()
		if c.closed {
			c.mu.Unlock()
			return nil, ErrClosed
		}
		if n := len(c.idle); n > 0 {
			pc := c.idle[n-1]
			c.idle[n-1] = nil
			c.idle = c.idle[:n-1]
			c.mu.Unlock()
			if c.reusable(pc) {
				pc.reused = true
				return pc, nil
			}
			c.discard(pc)
			continue
		}
		if c.MaxConns <= 0 || c.open < c.MaxConns {
			c.open++
			c.mu.Unlock()
			return c.dial(ctx)
		}
		if c.NoWait {
			c.mu.Unlock()
			return nil, ErrFull
		}
		pc, err := c.awaitLocked(ctx)
		switch {
		case err != nil:
			return nil, err
		case pc == nil:
			return c.dial(ctx) // a slot was handed over
		case c.reusable(pc):
			pc.reused = true
			return pc, nil
		}
		c.discard(pc)
	}
}

// awaitLocked queues for the next connection or slot given back (nil: a
// slot) and waits for it or for ctx to end. c.mu is held on entry, and
// released.
func (c *Client) awaitLocked(ctx context.Context) (*conn, error) {
	w := make(chan *conn, 1)
	c.waiters = append(c.waiters, w)
	if c.done == nil {
		c.done = make(chan struct{})
	}
	done := c.done
	c.mu.Unlock()
	if c.Full != nil {
		c.Full()
	}
	select {
	case pc := <-w:
		return pc, nil
	case <-ctx.Done():
		c.forget(w)
		return nil, context.Cause(ctx)
	case <-done:
		c.forget(w)
		return nil, ErrClosed
	}
}

// Hold takes a connection slot, within MaxConns, for a connection the
// caller opens some other way (a protocol switch this client does not
// speak, say), waiting for one as a request would; an idle connection is
// closed to make room when the pool is full. release gives the slot back;
// it must be called once.
func (c *Client) Hold(ctx context.Context) (release func(), err error) {
	release = sync.OnceFunc(c.dropSlot)
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil, ErrClosed
	}
	if c.MaxConns <= 0 || c.open < c.MaxConns {
		c.open++
		c.mu.Unlock()
		return release, nil
	}
	if n := len(c.idle); n > 0 {
		pc := c.idle[0] // the oldest
		c.idle = c.idle[1:]
		c.mu.Unlock()
		pc.nc.Close() // its slot is ours
		return release, nil
	}
	pc, err := c.awaitLocked(ctx)
	if err != nil {
		return nil, err
	}
	if pc != nil {
		pc.nc.Close() // its slot is ours
	}
	return release, nil
}

// forget removes the waiter w, passing on what it was handed meanwhile
// (handed under c.mu: if w is no longer queued, it is in w).
func (c *Client) forget(w chan *conn) {
	c.mu.Lock()
	for i, x := range c.waiters {
		if x == w {
			c.waiters = append(c.waiters[:i], c.waiters[i+1:]...)
			break
		}
	}
	c.mu.Unlock()
	select {
	case pc := <-w:
		if pc == nil {
			c.dropSlot()
		} else {
			c.release(pc, true)
		}
	default:
	}
}

// dial opens a connection in a slot already counted in c.open.
func (c *Client) dial(ctx context.Context) (*conn, error) {
	nc, err := c.Dial(ctx)
	if err != nil {
		c.dropSlot()
		if ctx.Err() != nil {
			err = errors.Join(context.Cause(ctx), err)
		}
		return nil, err
	}
	pc := &conn{nc: nc}
	if tc, ok := nc.(*tls.Conn); ok {
		cs := tc.ConnectionState()
		pc.tls = &cs
	}
	pc.lr = &limitedReader{r: nc, n: unlimited}
	pc.br = bufio.NewReader(pc.lr)
	pc.cw = &countWriter{w: nc}
	pc.bw = bufio.NewWriter(pc.cw)
	return pc, nil
}

// reusable reports whether the idle pc can carry another request.
func (c *Client) reusable(pc *conn) bool {
	if time.Since(pc.idleSince) > c.idleTimeout() || pc.br.Buffered() > 0 {
		return false // stale, or the server sent something unasked
	}
	if c.Reuse != nil && !c.Reuse(pc.nc) {
		return false
	}
	if pc.tls != nil && !tlsQuiet(pc) {
		return false
	}
	switch peek(pc.nc) {
	case sockOpen:
		return true
	case sockClosed:
		return false
	}
	// Bytes wait on the socket. On a plain connection that is a response
	// nobody asked for (a 408 before the server closes, say). Under TLS it
	// can be a session ticket, which changes nothing, or the server's
	// close_notify as it closes the connection: read, briefly, to tell.
	if pc.tls == nil {
		return false
	}
	pc.nc.SetReadDeadline(time.Now().Add(pendingWait))
	_, err := pc.br.Peek(1)
	pc.nc.SetReadDeadline(time.Time{})
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout() && pc.br.Buffered() == 0
}

// tlsQuiet reports whether crypto/tls holds nothing of pc's that came
// after its last response: plaintext past the response's end and records
// it read along with the last one are on no socket, and a close_notify it
// read with the last bytes is remembered as EOF. A read with a deadline in
// the past returns what it holds, or times out without a system call.
func tlsQuiet(pc *conn) bool {
	pc.nc.SetReadDeadline(aLongTimeAgo)
	_, err := pc.br.Peek(1)
	pc.nc.SetReadDeadline(time.Time{})
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout() && pc.br.Buffered() == 0
}

// pendingWait bounds the read that tells what waits on an idle TLS
// connection: a closing server's alert is there already, and a session
// ticket is consumed without waiting for more.
const pendingWait = time.Millisecond

// sockState is what an idle connection's socket holds.
type sockState int

const (
	sockOpen    sockState = iota // open, nothing waiting
	sockClosed                   // closed or reset by the server, or unusable
	sockPending                  // open, with bytes waiting
)

// release returns pc to the pool, or closes it.
func (c *Client) release(pc *conn, reuse bool) {
	if !reuse || c.Reuse != nil && !c.Reuse(pc.nc) {
		c.discard(pc)
		return
	}
	pc.idleSince = time.Now()
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		c.discard(pc)
		return
	}
	if len(c.waiters) > 0 {
		// Sent under the lock (the channel holds one, and gets one):
		// a waiter that gives up either is still queued or finds it.
		c.waiters[0] <- pc
		c.waiters = c.waiters[1:]
		c.mu.Unlock()
		return
	}
	c.idle = append(c.idle, pc)
	var stale []*conn
	limit := time.Now().Add(-c.idleTimeout())
	for len(c.idle) > 0 && c.idle[0].idleSince.Before(limit) {
		stale = append(stale, c.idle[0])
		c.idle = c.idle[1:]
	}
	c.mu.Unlock()
	for _, pc := range stale {
		c.discard(pc)
	}
}

// discard closes pc and frees its slot.
func (c *Client) discard(pc *conn) {
	pc.nc.Close()
	c.dropSlot()
}

// dropSlot frees a connection slot, handing it to a waiting request.
func (c *Client) dropSlot() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.waiters) > 0 {
		c.waiters[0] <- nil // under the lock, as in release
		c.waiters = c.waiters[1:]
		return
	}
	c.open--
}

// Evict closes nc if it is idle in the pool; a connection in use is
// closed when its response ends if Reuse then refuses it.
func (c *Client) Evict(nc net.Conn) {
	c.mu.Lock()
	var found *conn
	for i, pc := range c.idle {
		if pc.nc == nc {
			found = pc
			c.idle = append(c.idle[:i], c.idle[i+1:]...)
			break
		}
	}
	c.mu.Unlock()
	if found != nil {
		c.discard(found)
	}
}

// Sweep closes the idle connections past IdleTimeout, those Reuse
// refuses, and those the server has closed: otherwise they are looked at
// only when a request would take them. Call it now and then.
func (c *Client) Sweep() {
	now := time.Now()
	c.mu.Lock()
	var stale []*conn
	kept := c.idle[:0]
	for _, pc := range c.idle {
		if now.Sub(pc.idleSince) > c.idleTimeout() || c.Reuse != nil && !c.Reuse(pc.nc) || peek(pc.nc) == sockClosed {
			stale = append(stale, pc)
		} else {
			kept = append(kept, pc)
		}
	}
	clear(c.idle[len(kept):])
	c.idle = kept
	c.mu.Unlock()
	for _, pc := range stale {
		c.discard(pc)
	}
}

// CloseIdle closes the idle connections.
func (c *Client) CloseIdle() {
	c.mu.Lock()
	idle := c.idle
	c.idle = nil
	c.mu.Unlock()
	for _, pc := range idle {
		c.discard(pc)
	}
}

// Close closes the idle connections, fails the requests waiting for one
// and those made later; the connections in use close when their responses
// end.
func (c *Client) Close() {
	c.mu.Lock()
	if !c.closed {
		c.closed = true
		if c.done != nil {
			close(c.done)
		}
	}
	c.mu.Unlock()
	c.CloseIdle()
}

func (c *Client) idleTimeout() time.Duration {
	if c.IdleTimeout > 0 {
		return c.IdleTimeout
	}
	return DefaultIdleTimeout
}

func (c *Client) maxHeaderBytes() int64 {
	if c.MaxHeaderBytes > 0 {
		return c.MaxHeaderBytes
	}
	return DefaultMaxHeaderBytes
}

// conn is one connection of the pool.
type conn struct {
	nc        net.Conn
	tls       *tls.ConnectionState // a TLS connection's, as each response's TLS
	lr        *limitedReader
	br        *bufio.Reader
	cw        *countWriter // under bw
	bw        *bufio.Writer
	reused    bool
	idleSince time.Time
}

// body is a response body that returns its connection at its end.
type body struct {
	rc    io.ReadCloser
	c     *Client
	pc    *conn
	stop  func() bool
	reuse bool
	// Of the reader's: the bytes of the body still to read (-1: unknown),
	// and whether a Read has returned an error (EOF included).
	left  int64
	ended bool

	mu   sync.Mutex
	done bool
}

func (b *body) Read(p []byte) (int, error) {
	n, err := b.rc.Read(p)
	if b.left > 0 {
		b.left -= int64(n)
	}
	if err != nil {
		b.ended = true
		b.finish(err == io.EOF)
	}
	return n, err
}

// Waiting reports whether the next Read may wait for the server: true
// unless the body is of known length and either read to its end or with
// bytes of it buffered unread (the next Read then returns them at once).
// A relay that flushes what it has written when this is true, and only
// then, sends what arrived together together and keeps nothing back
// behind a read that blocks. (Bytes already in the kernel's or TLS's
// buffers are not seen: a body larger than the connection's read buffer
// may be flushed in more parts than it arrived in.) It must be called by
// the body's reader, and not after Close.
func (b *body) Waiting() bool {
	return b.left < 0 || !b.ended && b.left > 0 && b.pc.br.Buffered() == 0
}

// Close closes the connection unless the body was read to its end.
func (b *body) Close() error {
	b.finish(false)
	return nil
}

func (b *body) finish(complete bool) {
	b.mu.Lock()
	done := b.done
	b.done = true
	b.mu.Unlock()
	if done {
		return
	}
	// stop is false when the context ended first: the connection's
	// deadline is then set and it is not reused.
	b.c.release(b.pc, b.stop() && complete && b.reuse)
}

// limitedReader reads from r, and reports EOF once n bytes have been read
// while n is bounded (while a response head is read), and counts what it
// reads in got.
type limitedReader struct {
	r        io.Reader
	n        int64
	got      int64
	hitLimit bool
}

const unlimited = 1<<63 - 1

func (l *limitedReader) Read(p []byte) (int, error) {
	if l.n <= 0 {
		l.hitLimit = true
		return 0, io.EOF
	}
	if int64(len(p)) > l.n {
		p = p[:l.n]
	}
	n, err := l.r.Read(p)
	l.got += int64(n)
	if l.n != unlimited {
		l.n -= int64(n)
	}
	return n, err
}

// countWriter counts what it writes to w.
type countWriter struct {
	w io.Writer
	n int64
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// aLongTimeAgo is a deadline in the past: set on a connection, it fails
// its pending reads and writes at once.
var aLongTimeAgo = time.Unix(1, 0)

// replayable reports whether r's body can be sent again.
func replayable(r *http.Request) bool {
	return r.Body == nil || r.Body == http.NoBody || r.GetBody != nil
}

// idempotent reports whether r may be sent again after it was written
// whole: the rule of net/http's Transport, which leaves out PUT and DELETE
// (idempotent by RFC 9110, but not repeated unasked) unless the request
// carries an idempotency key.
func idempotent(r *http.Request) bool {
	switch r.Method {
	case "", http.MethodGet, http.MethodHead, http.MethodOptions, http.MethodTrace:
		return true
	}
	return len(r.Header["Idempotency-Key"]) > 0 || len(r.Header["X-Idempotency-Key"]) > 0
}

// InMemory returns r (a copy) with its body read into memory, and GetBody
// set, when the body is of known length up to MaxBody and r has no GetBody
// yet (a request with GetBody is taken to have its body at hand);
// otherwise r as it is. net/http sends a body it knows to be in memory
// with the head (its Transport and Request.Write alike: one write while
// both fit the connection's 4 KiB write buffer); any other body it sends
// after flushing the head on its own. And the request can then be sent
// again. RoundTrip does this itself.
func InMemory(r *http.Request) (*http.Request, error) {
	if r.GetBody != nil || r.Body == nil || r.Body == http.NoBody || r.ContentLength <= 0 || r.ContentLength > MaxBody {
		return r, nil
	}
	buf := make([]byte, r.ContentLength)
	if _, err := io.ReadFull(r.Body, buf); err != nil {
		return nil, err
	}
	out := new(http.Request)
	*out = *r
	out.Body = io.NopCloser(bytes.NewReader(buf))
	out.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(buf)), nil }
	return out, nil
}

// Resend returns r ready to be sent again, another way, after it failed
// with ErrNoResponse, if it may be: as this client itself sends a request
// again, when it is idempotent and its body is at hand (InMemory).
func Resend(r *http.Request) (*http.Request, bool) {
	if !replayable(r) || !idempotent(r) {
		return nil, false
	}
	again, err := Rewind(r)
	return again, err == nil
}

// Rewind returns r with a fresh copy of its body (GetBody), to be sent
// again: after a failure on a reused connection, or another way after
// ErrFull came once the first attempt had failed (InMemory gives a body
// GetBody).
func Rewind(r *http.Request) (*http.Request, error) {
	if r.Body == nil || r.Body == http.NoBody {
		return r, nil
	}
	b, err := r.GetBody()
	if err != nil {
		return nil, err
	}
	out := *r
	out.Body = b
	return &out, nil
}
