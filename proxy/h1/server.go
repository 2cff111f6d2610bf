package h1

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/net/http/httpguts"
)

// Server serves HTTP/1.1 requests on connections handed to it, each on the
// goroutine that hands it over: it reads a request, runs the handler and
// writes the response in line, with no goroutine per request.
//
// net/http's server starts a goroutine per request to notice a client that
// goes away while the handler runs (a read that finds nothing, a deadline
// set to wake it, a wake-up): for a sidecar forwarding small requests a
// large share of its CPU. This server watches only a request that is still
// running after WatchAfter, which a sidecar's requests seldom are.
//
// It serves only plain requests: HTTP/1.1, in origin form, with one valid
// Host, no "Expect", no "Upgrade", and a head that fits its read buffer.
// On any other, or one it cannot parse, it stops and returns the
// connection with what it has read of it unread, for net/http's server to
// serve (and answer as it does: a malformed request gets net/http's
// error), so that what a client sees is net/http's behaviour either way.
// The response is written as net/http writes it: the same framing,
// headers and connection handling.
type Server struct {
	// Handler serves each request.
	Handler http.Handler
	// ReadHeaderTimeout bounds the reading of a request's head, from its
	// first byte (the connection's start for its first request).
	ReadHeaderTimeout time.Duration
	// IdleTimeout is how long a connection may wait for its next request.
	IdleTimeout time.Duration
	// WatchAfter is how long a request runs before the server starts
	// watching for its client going away (its context is then cancelled):
	// between one and two WatchAfter; default DefaultWatchAfter.
	WatchAfter time.Duration
	// ErrorLog receives the handlers' panics; nil: the log package's.
	ErrorLog *log.Logger

	mu       sync.Mutex
	conns    map[*serverConn]struct{}
	closing  bool // Shutdown or Close was called
	scanning bool // scan runs
}

// DefaultWatchAfter is Server.WatchAfter's default.
const DefaultWatchAfter = 10 * time.Millisecond

const (
	// readBufferSize is the size of a connection's read buffer: a
	// request whose head does not fit goes to net/http.
	readBufferSize = 4 << 10
	// maxHeaderLines bounds a request's header lines, as net/http's
	// DefaultMaxHeaderValueCount does.
	maxHeaderLines = 500
	// maxPostHandlerReadBytes is how much of a request body the handler
	// left unread the server reads to keep the connection (net/http's).
	maxPostHandlerReadBytes = 256 << 10
	// bufferBeforeChunkingSize is how much of a response's body is held
	// back before its head is written, so that a short response whose
	// handler set no length is sent with one (net/http's).
	bufferBeforeChunkingSize = 2048
)

// ServeConn serves c's requests until c closes, a response ends it, a
// timeout, Shutdown or Close. It returns nil when it is done with c and
// has closed it, or, when it met a request it leaves to net/http, a
// connection that reads from that request on, for the caller to hand to
// net/http's server. cs is c's TLS state, or nil; ctx is each request's
// context's parent.
func (s *Server) ServeConn(ctx context.Context, c net.Conn, cs *tls.ConnectionState) (rest net.Conn) {
	ctx = context.WithValue(ctx, http.LocalAddrContextKey, c.LocalAddr())
	sc := &serverConn{s: s, c: c, cs: cs, remote: c.RemoteAddr().String()}
	sc.src.c = c
	sc.br = bufio.NewReaderSize(&sc.src, readBufferSize)
	if !s.track(sc) {
		c.Close()
		return nil
	}
	defer s.untrack(sc)
	first := true
	for {
		if first {
			if s.ReadHeaderTimeout > 0 {
				c.SetReadDeadline(time.Now().Add(s.ReadHeaderTimeout))
			}
		} else if s.IdleTimeout > 0 {
			c.SetReadDeadline(time.Now().Add(s.IdleTimeout))
		}
		if _, err := sc.br.Peek(1); err != nil || !s.busy(sc) {
			c.Close()
			return nil
		}
		if !first && s.ReadHeaderTimeout > 0 {
			c.SetReadDeadline(time.Now().Add(s.ReadHeaderTimeout))
		}
		first = false
		req, ok, err := sc.readRequest()
		if err != nil {
			// Closed, reset, or timed out within the head: net/http
			// closes such a connection without an answer too.
			c.Close()
			return nil
		}
		if !ok {
			c.SetReadDeadline(time.Time{})
			s.untrack(sc)
			return sc.rest()
		}
		c.SetReadDeadline(time.Time{})
		if !sc.serve(ctx, req) {
			c.Close()
			return nil
		}
		if !s.idle(sc) {
			c.Close()
			return nil
		}
	}
}

// Shutdown closes the idle connections at once and the others after their
// responses, which ask their clients to close.
func (s *Server) Shutdown() { s.closeConns(true) }

// Close closes every connection.
func (s *Server) Close() { s.closeConns(false) }

// closeConns closes the idle connections, or all, outside the lock: a TLS
// connection's Close may wait to send its close_notify.
func (s *Server) closeConns(idleOnly bool) {
	s.mu.Lock()
	s.closing = true
	var close []net.Conn
	for sc := range s.conns {
		// A connection yet to bring its first request is spared, as
		// net/http's server spares it: that request may be on its
		// way; it is served, with "Connection: close".
		if !idleOnly || sc.idle && sc.served {
			close = append(close, sc.c)
		}
	}
	s.mu.Unlock()
	for _, c := range close {
		c.Close()
	}
}

func (s *Server) track(sc *serverConn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closing {
		return false
	}
	if s.conns == nil {
		s.conns = make(map[*serverConn]struct{})
	}
	s.conns[sc] = struct{}{}
	sc.idle = true
	return true
}

func (s *Server) untrack(sc *serverConn) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.conns, sc)
}

// busy marks sc as serving a request, unless the server is closing (a
// connection's first request is served all the same).
func (s *Server) busy(sc *serverConn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	sc.idle = false
	first := !sc.served
	sc.served = true
	if !s.scanning {
		s.scanning = true
		go s.scan()
	}
	return !s.closing || first
}

// scan looks at the requests running every WatchAfter, and starts
// watching those that have run that long, until no connection is busy.
// One ticker for all requests: a timer per request, set and stopped
// each time, cost more than the rest of the server (each setting may
// wake the network poller's thread).
func (s *Server) scan() {
	d := s.WatchAfter
	if d <= 0 {
		d = DefaultWatchAfter
	}
	t := time.NewTicker(d)
	defer t.Stop()
	var busy []*serverConn
	for now := range t.C {
		busy = busy[:0]
		s.mu.Lock()
		for sc := range s.conns {
			if !sc.idle {
				busy = append(busy, sc)
			}
		}
		if len(busy) == 0 {
			s.scanning = false
			s.mu.Unlock()
			return
		}
		s.mu.Unlock()
		for _, sc := range busy {
			sc.watch.check(sc, now, d)
		}
	}
}

// idle marks sc as waiting for a request, unless the server is closing.
func (s *Server) idle(sc *serverConn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	sc.idle = true
	return !s.closing
}

func (s *Server) closingNow() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closing
}

func (s *Server) logf(format string, args ...any) {
	if s.ErrorLog != nil {
		s.ErrorLog.Printf(format, args...)
		return
	}
	log.Printf(format, args...)
}

// serverConn is a connection of a Server.
type serverConn struct {
	s      *Server
	c      net.Conn
	cs     *tls.ConnectionState
	remote string
	src    connReader
	br     *bufio.Reader
	bw     *bufio.Writer
	idle   bool // waiting for a request (Server.mu)
	served bool // it has begun a request (Server.mu)

	lastPOST bool   // the last request was a POST
	head     []byte // the last request's head, as read

	watch watch
}

// connReader reads c, after the byte a watch read, if any.
type connReader struct {
	c       net.Conn
	pending []byte // 0 or 1 byte
	one     [1]byte
}

func (r *connReader) Read(p []byte) (int, error) {
	if len(r.pending) > 0 && len(p) > 0 {
		p[0] = r.pending[0]
		r.pending = nil
		return 1, nil
	}
	return r.c.Read(p)
}

// rest returns the connection from the last request's head on, unread.
func (sc *serverConn) rest() net.Conn {
	rc := &restConn{Conn: sc.c, r: io.MultiReader(bytes.NewReader(sc.head), sc.br)}
	if sc.cs != nil {
		return &restTLSConn{restConn: rc, cs: sc.cs}
	}
	return rc
}

// restConn is a connection whose first reads come from r.
type restConn struct {
	net.Conn
	r io.Reader
}

func (c *restConn) Read(p []byte) (int, error) { return c.r.Read(p) }

// CloseWrite ends the connection's sending side, if it has one to end
// (net/http's server does before closing a connection with request bytes
// unread).
func (c *restConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

// restTLSConn is a restConn of a TLS connection: net/http's server takes
// each request's TLS state from ConnectionState.
type restTLSConn struct {
	*restConn
	cs *tls.ConnectionState
}

func (c *restTLSConn) ConnectionState() tls.ConnectionState { return *c.cs }

// readRequest reads the next request; ok is false when it is one the
// server leaves to net/http (sc.head then holds its head as read).
func (sc *serverConn) readRequest() (req *http.Request, ok bool, err error) {
	if sc.lastPOST {
		// RFC 9112 section 2.2: a client may send CRLF after a POST's
		// body; net/http skips up to four such bytes.
		peek, _ := sc.br.Peek(4)
		n := 0
		for n < len(peek) && (peek[n] == '\r' || peek[n] == '\n') {
			n++
		}
		sc.br.Discard(n)
	}
	h, err := sc.peekHead()
	if err != nil {
		return nil, false, err
	}
	sc.head = append(sc.head[:0], h.raw...)
	if !h.plain() {
		sc.br.Discard(len(h.raw))
		return nil, false, nil
	}
	buffered := sc.br.Buffered()
	req, err = http.ReadRequest(sc.br)
	if err != nil || !plainRequest(req) {
		// The head was all buffered, so ReadRequest read from the
		// buffer only, and no further than the head's end.
		sc.br.Discard(len(h.raw) - (buffered - sc.br.Buffered()))
		return nil, false, nil
	}
	sc.lastPOST = req.Method == http.MethodPost
	req.RemoteAddr = sc.remote
	req.TLS = sc.cs
	return req, true, nil
}

// head is what peekHead saw of a request's head.
type head struct {
	raw     []byte // the head, with its empty line; nil if it does not fit
	lines   int
	hosts   int
	special bool // an Expect or Upgrade header
}

// plain reports whether the head may be one the server serves.
func (h *head) plain() bool {
	return h.raw != nil && h.lines <= maxHeaderLines && h.hosts == 1 && !h.special
}

// peekHead waits until a request's head is in the read buffer, or the
// buffer is full, and returns it unread. Lines end in LF or CRLF, as
// net/http reads them.
func (sc *serverConn) peekHead() (head, error) {
	var h head
	scanned := 0 // the bytes of whole lines already looked at
	for {
		buf, _ := sc.br.Peek(sc.br.Buffered())
		for {
			i := bytes.IndexByte(buf[scanned:], '\n')
			if i < 0 {
				break
			}
			line := buf[scanned : scanned+i]
			scanned += i + 1
			line = bytes.TrimSuffix(line, []byte("\r"))
			if len(line) == 0 && h.lines > 0 {
				h.raw = buf[:scanned]
				return h, nil
			}
			h.lines++
			if len(line) == 0 {
				// An empty first line: net/http refuses it.
				h.raw = buf[:scanned]
				h.special = true
				return h, nil
			}
			switch name, _, _ := bytes.Cut(line, []byte(":")); {
			case asciiEqualFold(name, "Host"):
				h.hosts++
			case asciiEqualFold(name, "Expect"), asciiEqualFold(name, "Upgrade"):
				h.special = true
			}
		}
		if len(buf) == readBufferSize {
			return head{raw: buf}, nil // too long to be served here
		}
		if _, err := sc.br.Peek(len(buf) + 1); err != nil {
			if len(buf) > 0 && !isTimeout(err) {
				// What came before the end: net/http answers it.
				return head{raw: buf}, nil
			}
			return h, err
		}
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

func asciiEqualFold(b []byte, s string) bool {
	return len(b) == len(s) && strings.EqualFold(string(b), s)
}

// plainRequest reports whether the server serves req itself.
func plainRequest(req *http.Request) bool {
	if req.ProtoMajor != 1 || req.ProtoMinor != 1 || req.Method == http.MethodConnect ||
		req.RequestURI == "*" || req.URL.Host != "" || !httpguts.ValidHostHeader(req.Host) {
		return false
	}
	for k, vv := range req.Header {
		if !httpguts.ValidHeaderFieldName(k) {
			return false
		}
		for _, v := range vv {
			if !httpguts.ValidHeaderFieldValue(v) {
				return false
			}
		}
	}
	return true
}

// serve runs the handler on req and writes its response; false: the
// connection is done.
func (sc *serverConn) serve(parent context.Context, req *http.Request) (keep bool) {
	ctx, cancel := context.WithCancel(parent)
	defer cancel()
	req = req.WithContext(ctx)
	w := &response{sc: sc, req: req, header: make(http.Header), contentLength: -1,
		wantsClose: req.Close, cancel: cancel}
	w.w = bodyBuffers.Get().(*bufio.Writer)
	w.w.Reset(chunkWriter{w})
	if req.Body != http.NoBody {
		w.body = &requestBody{r: req.Body, left: req.ContentLength}
		req.Body = w.body
	}
	if sc.bw == nil {
		sc.bw = bufio.NewWriterSize(sc.c, 4<<10)
	}
	sc.watch.start(sc, w, cancel)
	done := sc.run(w)
	if sc.watch.stop(sc) {
		w.closeAfterReply = true
	}
	cancel() // as net/http's server: the request ends with its handler
	if !done {
		// What reached the connection's buffer goes, as with
		// net/http's server: the client sees the response cut off.
		sc.bw.Flush()
		return false
	}
	if !w.finish() {
		return false
	}
	keep = !w.closeAfterReply && w.reusable()
	if w.body != nil {
		w.body.close()
		if !keep && !w.body.atEOF() {
			sc.closeWriteAndWait()
		}
	}
	return keep
}

// rstAvoidanceDelay is how long a connection closed with request bytes
// unread waits after its response (net/http's): closing it at once would
// send the client a reset, which can destroy the response before the
// client reads it.
const rstAvoidanceDelay = 500 * time.Millisecond

// closeWriteAndWait ends the connection's sending side and waits
// rstAvoidanceDelay before it is closed.
func (sc *serverConn) closeWriteAndWait() {
	if cw, ok := sc.c.(interface{ CloseWrite() error }); ok {
		cw.CloseWrite()
	}
	time.Sleep(rstAvoidanceDelay)
}

// run runs the handler; false if it panicked (with http.ErrAbortHandler,
// or anything else, which is logged).
func (sc *serverConn) run(w *response) (done bool) {
	defer func() {
		if err := recover(); err != nil && err != http.ErrAbortHandler {
			const size = 64 << 10
			buf := make([]byte, size)
			buf = buf[:runtime.Stack(buf, false)]
			sc.s.logf("http: panic serving %v: %v\n%s", sc.remote, err, buf)
		}
	}()
	sc.s.Handler.ServeHTTP(w, w.req)
	return true
}

// watch notices a client that goes away while its request runs: after
// WatchAfter, if the request's body has been read, a read of the
// connection that ends in an error cancels the request. A byte it reads
// (a pipelined request) is kept for the next request.
type watch struct {
	mu      sync.Mutex
	req     *response // the request being watched for; nil: none
	since   time.Time // its start
	due     bool      // it has run WatchAfter (Server.scan said so)
	cancel  context.CancelFunc
	reading bool
	done    chan struct{}
	gone    bool
}

func (wt *watch) start(sc *serverConn, w *response, cancel context.CancelFunc) {
	wt.mu.Lock()
	wt.req, wt.since, wt.due, wt.cancel, wt.gone = w, time.Now(), false, cancel, false
	wt.mu.Unlock()
}

// check fires the watch if its request has run d by now.
func (wt *watch) check(sc *serverConn, now time.Time, d time.Duration) {
	wt.mu.Lock()
	w := wt.req
	due := w != nil && !wt.due && now.Sub(wt.since) >= d
	wt.due = wt.due || due
	wt.mu.Unlock()
	if due {
		wt.fire(sc, w)
	}
}

// fire starts the read if w's request still runs, once its body is
// read.
func (wt *watch) fire(sc *serverConn, w *response) {
	wt.mu.Lock()
	defer wt.mu.Unlock()
	if wt.req != w || wt.reading {
		return
	}
	if w.body != nil && !w.body.whenEOF(func() { wt.fire(sc, w) }) {
		return
	}
	if sc.br.Buffered() > 0 {
		return // a pipelined request: the client is there
	}
	wt.reading = true
	wt.done = make(chan struct{})
	go func() {
		defer close(wt.done)
		var b [1]byte
		n, err := sc.c.Read(b[:])
		if n > 0 {
			sc.src.pending = sc.src.one[:1]
			sc.src.one[0] = b[0]
			return
		}
		if err != nil && !isTimeout(err) {
			wt.mu.Lock()
			wt.gone = true
			cancel := wt.cancel
			wt.mu.Unlock()
			cancel()
		}
	}()
}

// stop ends the watch of the request that ended and reports whether its
// client went away.
func (wt *watch) stop(sc *serverConn) (gone bool) {
	wt.mu.Lock()
	wt.req = nil
	reading := wt.reading
	wt.mu.Unlock()
	if reading {
		sc.c.SetReadDeadline(aLongTimeAgo)
		<-wt.done
		sc.c.SetReadDeadline(time.Time{})
		wt.mu.Lock()
		wt.reading = false
		wt.mu.Unlock()
	}
	wt.mu.Lock()
	defer wt.mu.Unlock()
	return wt.gone
}

// requestBody is a request's body as the handler sees it. The body
// http.ReadRequest made is never closed: its Close reads to the end,
// however long.
//
// Two locks: reading holds read, for as long as the client takes; the
// state is under mu, which no one holds across a read, so that the
// server and its watch can look at the body while a read waits.
type requestBody struct {
	read sync.Mutex // held while r is read
	r    io.ReadCloser

	mu     sync.Mutex
	left   int64 // bytes left, if the length is known (else -1)
	eof    bool
	onEOF  func() // run once when eof is reached
	closed bool   // by the handler (or its transport): later reads fail
	ended  bool   // by the server: later reads fail
}

func (b *requestBody) Read(p []byte) (int, error) {
	b.read.Lock()
	defer b.read.Unlock()
	b.mu.Lock()
	closed, eof := b.closed || b.ended, b.eof
	b.mu.Unlock()
	if closed {
		return 0, http.ErrBodyReadAfterClose
	}
	if eof {
		return 0, io.EOF
	}
	n, err := b.r.Read(p)
	b.counted(int64(n), err == io.EOF)
	return n, err
}

// counted records n bytes read, and the end if eof, running onEOF then.
func (b *requestBody) counted(n int64, eof bool) {
	b.mu.Lock()
	if b.left > 0 {
		b.left -= n
	}
	var onEOF func()
	if eof && !b.eof {
		b.eof = true
		onEOF, b.onEOF = b.onEOF, nil
	}
	b.mu.Unlock()
	if onEOF != nil {
		onEOF() // outside the lock: it takes the watch's
	}
}

// whenEOF reports whether the body has been read to its end, and if not,
// arranges for f to run when it is.
func (b *requestBody) whenEOF(f func()) (atEOF bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.eof {
		b.onEOF = f
	}
	return b.eof
}

// Close ends the body for the handler, reading what is left of it, up to
// maxPostHandlerReadBytes, so that the connection may be kept (as
// net/http's server does).
func (b *requestBody) Close() error {
	b.read.Lock()
	defer b.read.Unlock()
	b.mu.Lock()
	done := b.closed || b.ended
	b.closed = true
	discard := !done && !b.eof && b.left <= maxPostHandlerReadBytes
	b.mu.Unlock()
	if discard {
		b.discard()
	}
	return nil
}

// discard reads up to maxPostHandlerReadBytes of what is left, and
// records whether that reached the end (as net/http's server: the end
// counts if it comes within that many bytes). b.read must be held.
func (b *requestBody) discard() {
	n, err := io.CopyN(io.Discard, b.r, maxPostHandlerReadBytes+1)
	b.counted(n, err == io.EOF && n <= maxPostHandlerReadBytes)
}

func (b *requestBody) atEOF() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.eof
}

// state returns whether the body was closed (by the handler or the
// server) before its end, and whether it is known to have at least
// maxPostHandlerReadBytes left.
func (b *requestBody) state() (closedEarly, tooBig bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return (b.closed || b.ended) && !b.eof, !b.eof && b.left >= maxPostHandlerReadBytes
}

// close ends the body for the handler's transport, which may still hold
// it; once it returns, no read of the connection is under way through
// the body.
func (b *requestBody) close() {
	b.read.Lock()
	defer b.read.Unlock()
	b.mu.Lock()
	defer b.mu.Unlock()
	b.ended = true
}

// response is a request's http.ResponseWriter.
type response struct {
	sc     *serverConn
	req    *http.Request
	body   *requestBody // nil: no body
	cancel context.CancelFunc

	header      http.Header // the handler's
	sent        http.Header // the header as of WriteHeader
	status      int
	wroteHeader bool // a final status was set
	headWritten bool // the head is in sc.bw
	handlerDone bool

	w               *bufio.Writer // the body, held back before the head is written
	contentLength   int64         // declared, or -1
	written         int64
	chunking        bool
	trailers        []string
	wantsClose      bool
	closeAfterReply bool
	err             error // a write to the connection failed
}

func (w *response) Header() http.Header { return w.header }

func (w *response) WriteHeader(code int) {
	if w.wroteHeader {
		w.sc.s.logf("http: superfluous response.WriteHeader call")
		return
	}
	if code < 100 || code > 999 {
		panic(fmt.Sprintf("invalid WriteHeader code %v", code))
	}
	if code >= 100 && code <= 199 && code != http.StatusSwitchingProtocols {
		// An interim response, written now with the current header
		// (RFC 8297: the header is not cleared).
		bw := w.sc.bw
		writeStatusLine(bw, code)
		w.header.WriteSubset(bw, excludedHeadersNoBody)
		bw.WriteString("\r\n")
		w.noteErr(bw.Flush())
		return
	}
	w.wroteHeader = true
	w.status = code
	w.sent = w.header.Clone()
	if cl := w.sent.Get("Content-Length"); cl != "" {
		v, err := strconv.ParseInt(cl, 10, 64)
		if err == nil && v >= 0 {
			w.contentLength = v
		} else {
			w.sc.s.logf("http: invalid Content-Length of %q", cl)
			w.header.Del("Content-Length")
		}
	}
}

func (w *response) Write(p []byte) (int, error) {
	if !w.wroteHeader {
		w.WriteHeader(http.StatusOK)
	}
	if len(p) == 0 {
		return 0, nil
	}
	if !bodyAllowedForStatus(w.status) {
		return 0, http.ErrBodyNotAllowed
	}
	w.written += int64(len(p))
	if w.contentLength != -1 && w.written > w.contentLength {
		return 0, http.ErrContentLength
	}
	return w.w.Write(p)
}

func (w *response) Flush() { w.FlushError() }

func (w *response) FlushError() error {
	if !w.wroteHeader {
		w.WriteHeader(http.StatusOK)
	}
	err := w.w.Flush()
	if !w.headWritten {
		w.writeHead(nil)
	}
	if err2 := w.sc.bw.Flush(); err == nil {
		err = err2
	}
	w.noteErr(err)
	return err
}

// noteErr records the first error writing to the connection, which also
// ends the request (as net/http's server does: the client cannot get its
// response).
func (w *response) noteErr(err error) {
	if err != nil && w.err == nil {
		w.err = err
		w.cancel()
	}
}

// chunkWriter is what a response's body buffer writes to: it writes the
// head before the first bytes, then the bytes, framed as chunks when the
// response is chunked.
type chunkWriter struct{ w *response }

func (cw chunkWriter) Write(p []byte) (int, error) {
	w := cw.w
	if !w.headWritten {
		w.writeHead(p)
	}
	if w.req.Method == http.MethodHead {
		return len(p), nil // no body
	}
	bw := w.sc.bw
	if w.chunking {
		bw.WriteString(strconv.FormatInt(int64(len(p)), 16))
		bw.WriteString("\r\n")
	}
	n, err := bw.Write(p)
	if w.chunking && err == nil {
		_, err = bw.WriteString("\r\n")
	}
	if err != nil {
		w.noteErr(err)
		w.sc.c.Close()
	}
	return n, err
}

// finish ends the response after the handler returned; false if the
// connection failed.
func (w *response) finish() bool {
	w.handlerDone = true
	if !w.wroteHeader {
		w.WriteHeader(http.StatusOK)
	}
	w.noteErr(w.w.Flush())
	bodyBuffers.Put(w.w)
	w.w = nil
	if !w.headWritten {
		w.writeHead(nil)
	}
	bw := w.sc.bw
	if w.chunking {
		bw.WriteString("0\r\n")
		if t := w.finalTrailers(); t != nil {
			t.Write(bw)
		}
		bw.WriteString("\r\n")
	}
	w.noteErr(bw.Flush())
	return w.err == nil
}

// bodyBuffers holds the responses' body buffers between responses.
var bodyBuffers = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, bufferBeforeChunkingSize) }}

// reusable reports whether the connection may serve another request.
func (w *response) reusable() bool {
	if w.req.Method != http.MethodHead && w.contentLength != -1 && bodyAllowedForStatus(w.status) && w.contentLength != w.written {
		return false // did not write what it declared
	}
	return w.err == nil
}

func (w *response) finalTrailers() http.Header {
	var t http.Header
	for k, vv := range w.header {
		if kk, found := strings.CutPrefix(k, http.TrailerPrefix); found {
			if t == nil {
				t = make(http.Header)
			}
			t[kk] = vv
		}
	}
	for _, k := range w.trailers {
		if t == nil {
			t = make(http.Header)
		}
		for _, v := range w.header[k] {
			t.Add(k, v)
		}
	}
	return t
}

// writeHead writes the response's status line and header, settling its
// framing as net/http's server does; p is the start of the body.
func (w *response) writeHead(p []byte) {
	w.headWritten = true
	header := w.sent
	isHEAD := w.req.Method == http.MethodHead
	var exclude map[string]bool
	del := func(k string) {
		if _, ok := header[k]; !ok {
			return
		}
		if exclude == nil {
			exclude = make(map[string]bool)
		}
		exclude[k] = true
	}
	var extra struct {
		contentType, connection, transferEncoding string
		contentLength                             int64 // -1: none
	}
	extra.contentLength = -1

	trailers := false
	for k := range header {
		if strings.HasPrefix(k, http.TrailerPrefix) {
			del(k)
			trailers = true
		}
	}
	for _, v := range header["Trailer"] {
		trailers = true
		for _, f := range strings.Split(v, ",") {
			if f = textprotoTrim(f); f != "" {
				if k := http.CanonicalHeaderKey(f); httpguts.ValidTrailerHeader(k) {
					w.trailers = append(w.trailers, k)
				}
			}
		}
	}
	te := header.Get("Transfer-Encoding")
	hasTE := te != ""
	_, hasCLHeader := header["Content-Length"]
	if w.handlerDone && !trailers && !hasTE && bodyAllowedForStatus(w.status) && !hasCLHeader && (!isHEAD || len(p) > 0) {
		w.contentLength = int64(len(p))
		extra.contentLength = w.contentLength
	}
	keepAlives := !w.sc.s.closingNow()
	if w.wantsClose || hasToken(header.Get("Connection"), "close") || !keepAlives {
		w.closeAfterReply = true
	}
	if w.body != nil && !w.closeAfterReply {
		closedEarly, tooBig := w.body.state()
		switch {
		case closedEarly:
			w.closeAfterReply = true
		case tooBig:
			w.closeAfterReply = true
			del("Connection")
			extra.connection = "close"
		default:
			// As net/http's server: the handler cannot read the body
			// once its response has begun.
			w.body.Close()
			if !w.body.atEOF() {
				w.closeAfterReply = true
			}
		}
	}
	code := w.status
	if bodyAllowedForStatus(code) {
		_, haveType := header["Content-Type"]
		if header.Get("Content-Encoding") == "" && !haveType && !hasTE && len(p) > 0 {
			extra.contentType = http.DetectContentType(p)
		}
	} else {
		for _, k := range suppressedHeaders(code) {
			del(k)
		}
	}
	_, hasDate := header["Date"]
	hasCL := w.contentLength != -1
	if hasCL && hasTE && te != "identity" {
		w.sc.s.logf("http: WriteHeader called with both Transfer-Encoding of %q and a Content-Length of %d", te, w.contentLength)
		del("Content-Length")
		hasCL = false
	}
	switch {
	case isHEAD || !bodyAllowedForStatus(code) || code == http.StatusNoContent:
		del("Transfer-Encoding")
	case hasCL:
		del("Transfer-Encoding")
	case hasTE && te == "identity":
		w.closeAfterReply = true
		del("Transfer-Encoding")
	default:
		w.chunking = true
		extra.transferEncoding = "chunked"
		if hasTE && te == "chunked" {
			del("Transfer-Encoding")
		}
	}
	if w.chunking {
		del("Content-Length")
	}
	if w.closeAfterReply && (!keepAlives || !hasToken(header.Get("Connection"), "close")) {
		del("Connection")
		extra.connection = "close"
	}

	bw := w.sc.bw
	writeStatusLine(bw, code)
	header.WriteSubset(bw, exclude)
	if !hasDate {
		var buf [len(http.TimeFormat)]byte
		bw.WriteString("Date: ")
		bw.Write(time.Now().UTC().AppendFormat(buf[:0], http.TimeFormat))
		bw.WriteString("\r\n")
	}
	if extra.contentLength >= 0 {
		var buf [20]byte
		bw.WriteString("Content-Length: ")
		bw.Write(strconv.AppendInt(buf[:0], extra.contentLength, 10))
		bw.WriteString("\r\n")
	}
	for _, kv := range [...][2]string{{"Content-Type", extra.contentType}, {"Connection", extra.connection}, {"Transfer-Encoding", extra.transferEncoding}} {
		if kv[1] != "" {
			bw.WriteString(kv[0])
			bw.WriteString(": ")
			bw.WriteString(kv[1])
			bw.WriteString("\r\n")
		}
	}
	bw.WriteString("\r\n")
}

func writeStatusLine(bw *bufio.Writer, code int) {
	bw.WriteString("HTTP/1.1 ")
	if text := http.StatusText(code); text != "" {
		bw.WriteString(strconv.Itoa(code))
		bw.WriteByte(' ')
		bw.WriteString(text)
		bw.WriteString("\r\n")
		return
	}
	fmt.Fprintf(bw, "%03d status code %d\r\n", code, code)
}

var excludedHeadersNoBody = map[string]bool{"Content-Length": true, "Transfer-Encoding": true}

func suppressedHeaders(status int) []string {
	switch {
	case status == 304:
		return []string{"Content-Type", "Content-Length", "Transfer-Encoding"}
	case !bodyAllowedForStatus(status):
		return []string{"Content-Length", "Transfer-Encoding"}
	}
	return nil
}

func bodyAllowedForStatus(status int) bool {
	switch {
	case status >= 100 && status <= 199:
		return false
	case status == 204, status == 304:
		return false
	}
	return true
}

// hasToken reports whether the comma-separated list v holds token, in any
// case.
func hasToken(v, token string) bool {
	for f := range strings.SplitSeq(v, ",") {
		if strings.EqualFold(textprotoTrim(f), token) {
			return true
		}
	}
	return false
}

func textprotoTrim(s string) string { return strings.Trim(s, " \t") }
