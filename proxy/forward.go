package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"maps"
	"mime"
	"net/http"
	"net/http/httptrace"
	"net/http/httputil"
	"net/textproto"
	"net/url"
	"os"
	"strings"
	"sync"
	"time"

	"golang.org/x/net/http/httpguts"
)

// forwarder relays a request to its transport and the response back, as
// httputil.ReverseProxy with a Rewrite function does, byte for byte
// (TestForwarderAsReverseProxy), with less work per request:
//   - the outgoing request's header is built once without the fields that
//     must not go on, instead of cloned whole and then pruned;
//   - a response of known length from h1.Client, whose body can say when
//     its next read may wait, is flushed then and only then, with no
//     timer: a short response's head and body leave in one write, and a
//     slow one's parts leave as they come;
//   - the 1xx relay goes into the request's one client trace, beside the
//     mode's own hooks.
//
// The profile of the HTTP path put ReverseProxy's own work (the request
// clone, the header copies, the flush timer per response) at about 7% of a
// sidecar's CPU; with the forwarder each sidecar used 9-12% less CPU per
// request (bench/README.md, "A forwarder of its own"). One difference is
// deliberate: fields set on the response before the forwarder runs survive
// an interim (1xx) response, which ReverseProxy clears.
//
// Requests that switch protocols (WebSocket, h2c upgrades) are relayed by
// tunnel, a ReverseProxy with the same hooks.
type forwarder struct {
	transport http.RoundTripper
	// rewrite adjusts out, the request that goes on, made from in. out's
	// URL is a copy, and its header a map of its own whose values are
	// shared with in's: replace a value, never edit one in place.
	rewrite func(out, in *http.Request)
	// modifyResponse, if set, may change the response before it is relayed;
	// an error fails the request through errorHandler.
	modifyResponse func(*http.Response) error
	// errorHandler answers a request that could not be relayed; it gets the
	// outgoing request.
	errorHandler func(http.ResponseWriter, *http.Request, error)
	// trace, if set, adds hooks to the outgoing request's client trace.
	trace    func(r *http.Request, t *httptrace.ClientTrace)
	errorLog *log.Logger

	tunnel *httputil.ReverseProxy
}

// newForwarder completes f with its tunnel.
func newForwarder(f *forwarder) *forwarder {
	f.tunnel = &httputil.ReverseProxy{
		BufferPool:     copyBuffers,
		Rewrite:        func(pr *httputil.ProxyRequest) { f.rewrite(pr.Out, pr.In) },
		ModifyResponse: f.modifyResponse,
		ErrorHandler:   f.errorHandler,
		Transport:      f.transport,
		FlushInterval:  responseFlush,
		ErrorLog:       f.errorLog,
	}
	return f
}

// exchange is the state of one forwarded request: its client trace, and
// whether interim (1xx) responses may still be relayed.
type exchange struct {
	trace httptrace.ClientTrace
	w     http.ResponseWriter
	mu    sync.Mutex
	final bool // the final response arrived: too late for a 1xx
}

// got1xx relays an interim response, until the final one has arrived. The
// transport may call it from a goroutine of its own (HTTP/2).
func (e *exchange) got1xx(code int, header textproto.MIMEHeader) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.final {
		return nil
	}
	// The interim response carries its own fields only, and the final
	// one those set for it before (Connection: close on a connection
	// being retired, say): ReverseProxy loses the latter.
	h := e.w.Header()
	kept := maps.Clone(h)
	clear(h)
	addHeader(h, http.Header(header), "")
	e.w.WriteHeader(code)
	clear(h)
	maps.Copy(h, kept)
	return nil
}

func (f *forwarder) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	if len(r.Header["Upgrade"]) > 0 || ctx.Done() == nil {
		// A protocol switch, or a context that cannot say the client left
		// (ReverseProxy watches CloseNotify then).
		if f.trace != nil {
			t := &httptrace.ClientTrace{}
			f.trace(r, t)
			r = r.WithContext(httptrace.WithClientTrace(ctx, t))
		}
		f.tunnel.ServeHTTP(w, r)
		return
	}
	e := &exchange{w: w}
	e.trace.Got1xxResponse = e.got1xx
	if f.trace != nil {
		f.trace(r, &e.trace)
	}
	out := r.WithContext(httptrace.WithClientTrace(ctx, &e.trace))
	u := *r.URL
	if u.User != nil {
		user := *u.User
		u.User = &user
	}
	out.URL = &u
	out.Header = requestHeader(r.Header)
	if r.Trailer != nil {
		out.Trailer = r.Trailer.Clone()
	}
	if r.ContentLength == 0 {
		out.Body = nil // as ReverseProxy: the Transport may then retry it
	}
	if out.Body != nil {
		// The transport may read the body after the handler returns.
		defer out.Body.Close()
	}
	out.Close = false
	out.URL.RawQuery = cleanQuery(out.URL.RawQuery)
	f.rewrite(out, r)
	if out.Method == http.MethodConnect {
		f.errorHandler(w, out, errors.New("client sent unsupported CONNECT request"))
		return
	}
	if _, ok := out.Header["User-Agent"]; !ok {
		// No User-Agent stays none: the transport would add its own.
		out.Header["User-Agent"] = []string{""}
	}

	res, err := f.transport.RoundTrip(out)
	e.mu.Lock()
	e.final = true
	e.mu.Unlock()
	if err != nil {
		f.errorHandler(w, out, err)
		return
	}
	if res.StatusCode == http.StatusSwitchingProtocols {
		// Not asked for (requests that ask go through tunnel).
		if f.modifyResponse != nil {
			if err := f.modifyResponse(res); err != nil {
				res.Body.Close()
				f.errorHandler(w, out, err)
				return
			}
		}
		res.Body.Close()
		f.errorHandler(w, out, fmt.Errorf("backend tried to switch protocol %q when %q was requested", res.Header.Get("Upgrade"), ""))
		return
	}
	removeHopByHop(res.Header)
	if f.modifyResponse != nil {
		if err := f.modifyResponse(res); err != nil {
			res.Body.Close()
			f.errorHandler(w, out, err)
			return
		}
	}
	h := w.Header()
	addHeader(h, res.Header, "")
	announced := len(res.Trailer)
	if announced > 0 {
		keys := make([]string, 0, announced)
		for k := range res.Trailer {
			keys = append(keys, k)
		}
		h.Add("Trailer", strings.Join(keys, ", "))
	}
	w.WriteHeader(res.StatusCode)

	if err := f.copyBody(w, res); err != nil {
		res.Body.Close()
		// The response is cut off: all that is left is to end the
		// connection (HTTP/1.1) or reset the stream (HTTP/2) so that the
		// client does not take it for whole.
		panic(http.ErrAbortHandler)
	}
	res.Body.Close() // which fills res.Trailer

	if len(res.Trailer) > 0 {
		// Trailers need a chunked response: flushing now keeps the server
		// from giving a short body a Content-Length instead.
		http.NewResponseController(w).Flush()
	}
	if len(res.Trailer) == announced {
		addHeader(h, res.Trailer, "")
		return
	}
	addHeader(h, res.Trailer, http.TrailerPrefix)
}

// addHeader adds the fields of src to dst, as Header.Add would, each name
// prefixed with prefix: under its canonical name (a hook may have set one
// that is not), after the values dst has. A field dst lacks takes src's
// values without a copy, capped so that an append copies them: src is
// this exchange's alone.
func addHeader(dst, src http.Header, prefix string) {
	for k, vv := range src {
		k = http.CanonicalHeaderKey(prefix + k)
		if have := dst[k]; len(have) > 0 {
			dst[k] = append(have, vv...)
		} else if len(vv) > 0 {
			dst[k] = vv[:len(vv):len(vv)]
		}
	}
}

// waiter is a response body that can tell whether its next Read may wait
// for the network (h1.Client's).
type waiter interface {
	Waiting() bool
}

// copyBody relays res's body to w. A body of known length that can tell
// when its next read may wait (h1.Client's) is flushed then, and only
// then: what has arrived leaves at once, and what arrives together leaves
// together (a short response's head and body in one write, and no timer).
// Any other body is flushed as ReverseProxy does: a stream (no length, or
// server-sent events) after every write and its head at once, the rest
// within responseFlush of a write.
func (f *forwarder) copyBody(w http.ResponseWriter, res *http.Response) error {
	stream := res.ContentLength == -1 || eventStream(res.Header.Get("Content-Type"))
	if res.Body == http.NoBody && !stream {
		return nil // nothing to copy, and no timer to start for it
	}
	flush := flusher(w)
	buf := copyBuffers.Get()
	defer copyBuffers.Put(buf)
	b, ok := res.Body.(waiter)
	if !ok || stream {
		// A chunked body's next read can wait with bytes buffered (a
		// chunk's size line without its data), so only a body of known
		// length can say.
		latency := responseFlush
		if stream {
			latency = -1
		}
		lw := newLatencyWriter(w, flush, latency)
		defer lw.stop()
		return f.copyTo(lw, res.Body, buf, nil)
	}
	if b.Waiting() {
		flush() // the head, while the body has yet to come
	}
	return f.copyTo(w, res.Body, buf, func() {
		if b.Waiting() {
			flush()
		}
	})
}

// copyTo copies src to dst through buf, calling wrote (if set) after each
// write.
func (f *forwarder) copyTo(dst io.Writer, src io.Reader, buf []byte, wrote func()) error {
	for {
		n, rerr := src.Read(buf)
		if n > 0 {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return werr
			}
			if wrote != nil {
				wrote()
			}
		}
		if rerr == io.EOF {
			return nil
		}
		if rerr != nil {
			f.readFailed(rerr)
			return rerr
		}
	}
}

// readFailed logs a failed read of a response body, unless the request
// was cancelled.
func (f *forwarder) readFailed(err error) {
	if f.errorLog != nil && !errors.Is(err, context.Canceled) {
		f.errorLog.Printf("proxy: reading a response body to relay: %v", err)
	}
}

// flusher returns the function that flushes w.
func flusher(w http.ResponseWriter) func() {
	if fl, ok := w.(http.Flusher); ok {
		return fl.Flush
	}
	rc := http.NewResponseController(w)
	return func() { rc.Flush() }
}

// eventStream reports whether contentType is text/event-stream, whose
// events are flushed as they come: mime.ParseMediaType's answer, asked
// only of a value that can be that.
func eventStream(contentType string) bool {
	const sse = "text/event-stream"
	ct := strings.TrimLeft(contentType, " \t")
	if len(ct) < len(sse) || !strings.EqualFold(ct[:len(sse)], sse) {
		return false
	}
	base, _, _ := mime.ParseMediaType(contentType)
	return base == sse
}

// latencyWriter flushes what is written to it within latency of the write,
// and the response's head within latency of its start; with a negative
// latency, after every write, and the head at once (from the timer's
// goroutine, as ReverseProxy: a first write that comes before it carries
// the head).
type latencyWriter struct {
	w       io.Writer
	flush   func()
	latency time.Duration

	mu      sync.Mutex
	t       *time.Timer
	pending bool // a flush is due
}

func newLatencyWriter(w io.Writer, flush func(), latency time.Duration) *latencyWriter {
	lw := &latencyWriter{w: w, flush: flush, latency: latency, pending: true}
	lw.t = time.AfterFunc(latency, lw.due)
	return lw
}

func (lw *latencyWriter) Write(p []byte) (int, error) {
	lw.mu.Lock()
	defer lw.mu.Unlock()
	n, err := lw.w.Write(p)
	if lw.latency < 0 {
		lw.flush()
		return n, err
	}
	if !lw.pending {
		lw.pending = true
		lw.t.Reset(lw.latency)
	}
	return n, err
}

func (lw *latencyWriter) due() {
	lw.mu.Lock()
	defer lw.mu.Unlock()
	if lw.pending {
		lw.flush()
		lw.pending = false
	}
}

func (lw *latencyWriter) stop() {
	lw.mu.Lock()
	defer lw.mu.Unlock()
	lw.pending = false
	lw.t.Stop()
}

// hopByHop are the fields that concern one connection only, whether or
// not Connection names them (RFC 9110, section 7.6.1, and those RFC 2616
// listed).
var hopByHop = [...]string{
	"Connection", "Proxy-Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization",
	"Te", "Trailer", "Transfer-Encoding", "Upgrade",
}

// requestHeader returns the header a forwarded request carries of h: all
// of h but its hop-by-hop fields, those Connection names and the
// forwarding fields a client may have made up (Forwarded and
// X-Forwarded-*), plus "Te: trailers" if h says it. The values are shared
// with h, capped so that an append to one copies it.
func requestHeader(h http.Header) http.Header {
	out := make(http.Header, len(h))
	var named [4]string
	conn := connectionNamed(h, named[:0])
	for k, vv := range h {
		if hopField(k) || forwardingField(k) || contains(conn, k) {
			continue
		}
		out[k] = vv[:len(vv):len(vv)]
	}
	if httpguts.HeaderValuesContainsToken(h["Te"], "trailers") {
		out["Te"] = []string{"trailers"}
	}
	return out
}

// removeHopByHop removes h's hop-by-hop fields, and those its Connection
// field names.
func removeHopByHop(h http.Header) {
	var named [4]string
	for _, k := range connectionNamed(h, named[:0]) {
		delete(h, k)
	}
	for _, k := range hopByHop {
		delete(h, k)
	}
}

// connectionNamed appends to dst the fields h's Connection field names,
// canonical.
func connectionNamed(h http.Header, dst []string) []string {
	for _, v := range h["Connection"] {
		for f := range strings.SplitSeq(v, ",") {
			if f = textproto.TrimString(f); f != "" {
				dst = append(dst, http.CanonicalHeaderKey(f))
			}
		}
	}
	return dst
}

func hopField(k string) bool {
	for _, h := range hopByHop {
		if k == h {
			return true
		}
	}
	return false
}

func forwardingField(k string) bool {
	switch k {
	case "Forwarded", "X-Forwarded-For", "X-Forwarded-Host", "X-Forwarded-Proto":
		return true
	}
	return false
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// cleanQuery returns the query q as ReverseProxy forwards it: re-encoded,
// without the parameters Go's URL parsing refuses, if it has any (a
// semicolon, a bad escape, more than maxQueryParams of them, or any at all
// when the operator set GODEBUG=urlmaxqueryparams), and as it is
// otherwise.
func cleanQuery(q string) string {
	reencode := func() string {
		v, _ := url.ParseQuery(q)
		return v.Encode()
	}
	if queryLimitSet || strings.Count(q, "&")+1 > maxQueryParams {
		return reencode()
	}
	for i := 0; i < len(q); {
		switch q[i] {
		case ';':
			return reencode()
		case '%':
			if i+2 >= len(q) || !isHex(q[i+1]) || !isHex(q[i+2]) {
				return reencode()
			}
			i += 3
		default:
			i++
		}
	}
	return q
}

// maxQueryParams is how many parameters net/url parses by default.
const maxQueryParams = 10000

// queryLimitSet reports whether GODEBUG in the environment sets net/url's
// limit on query parameters, in which case ReverseProxy re-encodes every
// query.
var queryLimitSet = func() bool {
	for s := range strings.SplitSeq(os.Getenv("GODEBUG"), ",") {
		if strings.HasPrefix(strings.TrimSpace(s), "urlmaxqueryparams=") {
			return true
		}
	}
	return false
}()

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}
