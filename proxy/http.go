package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/http/httputil"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"

	"github.com/credflow/credflow/audit"
	"github.com/credflow/credflow/internal/logkey"
	"github.com/credflow/credflow/internal/peercred"
	"github.com/credflow/credflow/proxy/anomaly"
	"github.com/credflow/credflow/proxy/authz"
	"github.com/credflow/credflow/proxy/h1"
	"github.com/credflow/credflow/proxy/rawio"
	"github.com/credflow/credflow/proxy/relay"
	"github.com/credflow/credflow/proxy/route"
	"github.com/credflow/credflow/reason"
	"github.com/credflow/credflow/token/txn"
)

// Headers the sidecar sets, or strips when they come from outside.
const (
	// PeerHeader carries the verified peer SPIFFE ID to the app. Any value
	// a peer sends is replaced.
	PeerHeader = "X-Credflow-Peer-Id"
	// ConnectionsHeader is how an inbound HTTP listener tells a caller's
	// sidecar whether it limits the connections a caller may hold:
	// "limited", on every final response while its limits do, or
	// "per-request" (one connection per request in flight is welcome), on
	// the first final response of each connection otherwise. A caller's
	// sidecar opens HTTP/1.1 connections to it only when told the second,
	// and removes the header from what reaches its app; the inbound
	// removes any the app sets on a final response.
	ConnectionsHeader = "X-Credflow-Connections"
	// xfcc is stripped: only the sidecar speaks for the peer's identity.
	xfcc = "X-Forwarded-Client-Cert"
)

// InboundHTTP makes an inbound listener HTTP-aware (HTTP/1.1 and HTTP/2,
// gRPC included): every request is authorized by route and, if required,
// by a JWT-SVID bound to the mTLS peer.
type InboundHTTP struct {
	// Routes allow requests by peer, method and canonical path; a request
	// no rule allows is refused (403, or gRPC PermissionDenied).
	Routes route.Table
	// RequireJWT refuses requests without a valid JWT-SVID whose audience
	// is this workload and whose subject is the mTLS peer.
	RequireJWT bool
	// TokenHeader is the header the JWT-SVID comes in; default
	// Authorization ("Bearer <token>").
	TokenHeader string
	// PassJWT forwards the token header to the app (validated, when
	// RequireJWT); by default it is stripped, required or not: the
	// caller's JWT-SVID is a bearer credential for this workload.
	PassJWT bool
	// AppH2C speaks HTTP/2 without TLS to the app (gRPC servers); default
	// HTTP/1.1.
	AppH2C bool
	// TxnMinters, when it allows anyone, turns on transaction tokens: a
	// Txn-Token header must verify against the X.509 bundles, be minted by
	// a workload TxnMinters allows, and name this workload or its trust
	// domain in its audience, or the request is refused. Without it, a
	// Txn-Token header is stripped: the app never sees one its sidecar has
	// not verified.
	TxnMinters authz.Policy
	// RequireTxn refuses requests that carry no transaction token.
	RequireTxn bool
	// TxnLeeway is the clock skew tolerated on a transaction token's iat
	// and exp; default jwt.DefaultLeeway (txn.VerifyConfig.Leeway).
	TxnLeeway time.Duration
	// TxnSingleUse accepts each transaction token once
	// (txn.VerifyConfig.SingleUse).
	TxnSingleUse bool
	// ResponseHeaderTimeout bounds the wait for the app's response headers
	// once a request is authorized, the wait for a free app connection
	// included: past it the request is answered 504 with the reason
	// "app_timeout", or 503 "app_busy" if it never got an app connection.
	// Zero selects DefaultAppResponseTimeout; a negative value waits as
	// long as the peer does (its cancellation reaches the app), for apps
	// whose long polls or gRPC streams hold their headers back longer.
	ResponseHeaderTimeout time.Duration
	// AppConnections caps the TCP connections to the app (in use, idle or
	// being dialled) that the listener's requests share, whatever the
	// number of peers or streams; a request finding them all busy waits
	// for one, within ResponseHeaderTimeout. They are taken from the
	// file-descriptor budget (see Config.MaxConnections). Zero selects
	// DefaultAppConnections.
	AppConnections int
	// MaxConcurrentStreams caps the HTTP/2 streams one peer connection may
	// have open at once; it is announced in SETTINGS_MAX_CONCURRENT_STREAMS
	// and a stream past it is reset. Zero selects
	// DefaultMaxConcurrentStreams.
	MaxConcurrentStreams int
	// Filters run on every request after the listener's own (shape,
	// route, JWT-SVID, transaction token), in order, before it is
	// forwarded to the app; the first refusal answers the request.
	Filters []Filter
}

// Defaults of InboundHTTP.
const (
	// DefaultAppResponseTimeout is long enough for a request the app
	// answers at all, and for the common long polls (20-30 s); a gRPC
	// server stream or long poll that sends no headers for longer must
	// raise it or turn it off. It matches nginx's proxy_read_timeout.
	DefaultAppResponseTimeout = 60 * time.Second
	// DefaultAppConnections bounds the app connections of one listener.
	DefaultAppConnections = 64
	// DefaultMaxConcurrentStreams is the HTTP/2 streams one peer
	// connection may have open; RFC 9113 recommends no less than 100, and
	// net/http's own default is 250.
	DefaultMaxConcurrentStreams = 100
)

// withDefaults returns c with every zero field set to its default.
func (c InboundHTTP) withDefaults() InboundHTTP {
	if c.TokenHeader == "" {
		c.TokenHeader = "Authorization"
	}
	if c.ResponseHeaderTimeout == 0 {
		c.ResponseHeaderTimeout = DefaultAppResponseTimeout
	}
	if c.AppConnections <= 0 {
		c.AppConnections = DefaultAppConnections
	}
	if c.MaxConcurrentStreams <= 0 {
		c.MaxConcurrentStreams = DefaultMaxConcurrentStreams
	}
	return c
}

// OutboundHTTP makes an outbound listener HTTP-aware: app requests (HTTP/1.1
// or h2c, gRPC included) go to the upstream sidecar over pooled mTLS
// connections, each with a JWT-SVID attached: over HTTP/1.1, one at a time
// per connection, those of HTTP/1.1 apps that proxy/h1 carries
// (upstreamRoute); the others multiplexed over a small pool of HTTP/2
// ones.
type OutboundHTTP struct {
	// JWTAudience is the audience of the JWT-SVID attached to each request;
	// default: the expected server ID when the listener expects exactly
	// one; none otherwise (no token attached).
	JWTAudience string
	// TokenHeader is the header the token goes in when the app has set its
	// own Authorization; default X-Credflow-Jwt-Svid.
	TokenHeader string
	// Pool is the number of HTTP/2 connections kept to the upstream;
	// default 2 (the HTTP/1.1 ones are up to 64, one per request in
	// flight). A request waits at most DialTimeout+HandshakeTimeout for
	// one of them, then is answered 502 upstream_unavailable.
	Pool int
	// Exchange makes this listener the edge of the mesh: the app's
	// "Authorization: Bearer" token is validated as an external token and
	// replaced by a transaction token (Txn-Token header) minted by
	// Config.Exchanger. A request without a valid external token is
	// refused with 401.
	Exchange bool
	// KeepExternal forwards the external token too (the JWT-SVID then goes
	// in TokenHeader); by default it is dropped.
	KeepExternal bool
	// Filters run on every request after the listener's own (local
	// caller, edge exchange, JWT-SVID), in order, before it is forwarded
	// upstream; the first refusal answers the request.
	Filters []Filter
}

// Exchanger exchanges an external token for a transaction token
// (edge.Exchanger does). A refusal is an *edge.Error.
type Exchanger interface {
	Exchange(ctx context.Context, external string) (string, *txn.Claims, error)
}

// TokenSource mints JWT-SVIDs for this workload (agent.Source does).
type TokenSource interface {
	FetchJWTSVID(ctx context.Context, audience string) (*jwtsvid.SVID, error)
}

// TokenValidator validates a JWT-SVID for an audience against the JWT
// bundles (agent.ValidateJWTSVID does).
type TokenValidator func(token, audience string) (*jwtsvid.SVID, error)

// chanListener hands connections that the proxy accepted and authorized to
// an http.Server.
type chanListener struct {
	addr   net.Addr
	conns  chan net.Conn
	closed chan struct{}
	once   sync.Once
}

func newChanListener(addr net.Addr) *chanListener {
	return &chanListener{addr: addr, conns: make(chan net.Conn), closed: make(chan struct{})}
}

func (c *chanListener) Accept() (net.Conn, error) {
	select {
	case conn := <-c.conns:
		return conn, nil
	case <-c.closed:
		return nil, net.ErrClosed
	}
}

func (c *chanListener) Close() error {
	c.once.Do(func() { close(c.closed) })
	return nil
}

func (c *chanListener) Addr() net.Addr { return c.addr }

// give hands conn to the server; false if it is closed.
func (c *chanListener) give(conn net.Conn) bool {
	select {
	case c.conns <- conn:
		return true
	case <-c.closed:
		return false
	}
}

// httpInbound serves the HTTP side of an inbound listener.
type httpInbound struct {
	// settings is replaced as one value (SetHTTP); a request loads it
	// once, so it sees the old settings or the new, never a mix.
	settings atomic.Pointer[httpSettings]
	ln       *chanListener
	srv      *http.Server // HTTP/2, and the HTTP/1.1 requests own does not serve
	own      *h1.Server   // HTTP/1.1
	proxy    *forwarder
	app      *h1.Client // the proxy's, to the app; its slots bound the Transport's too

	mu   sync.Mutex
	open map[net.Conn]*httpConn
}

// A client connection of an HTTP listener (inbound or outbound) on which
// at least prematureResetMin forwarded requests, and more than half of
// all it forwarded, were cancelled by the client within
// prematureResetWindow of their arrival and before a response, is closed
// with the reason "rapid_reset": HTTP/2 rapid reset (CVE-2023-44487) makes
// the app or the upstream do work the client never waits for. net/http
// already caps each connection's concurrent streams and handlers.
const (
	prematureResetMin    = 100
	prematureResetWindow = time.Second
)

// httpConn is a client connection of a listener's HTTP server: an mTLS
// connection of an inbound listener, or an app connection of an outbound
// one.
type httpConn struct {
	c         *conn         // inbound: the tracked connection
	nc        net.Conn      // outbound: the app's connection
	closed    chan struct{} // inbound: closed when the server is done with it
	served    atomic.Bool   // a request has reached the handler
	forwarded atomic.Int64  // requests forwarded
	premature atomic.Int64  // of those, cancelled early by the client
	reset     atomic.Bool   // closed for rapid reset
	hijacked  atomic.Bool   // inbound: taken over by an upgrade tunnel
	caller    connCaller    // outbound: the owner of the app's socket
}

// httpConnKey is the context key of a request's *httpConn.
type httpConnKey struct{}

// connectionsOffer is what an inbound HTTP listener says in
// ConnectionsHeader on a response, first telling whether it is its
// connection's first: "limited" on every response while its limits bound
// a peer's connections (a caller opening one per request in flight would
// be refused past them, and its identity's replicas share them; said on
// every response so that a caller learns of limits a reload added on the
// connections it holds), "per-request" on a connection's first otherwise,
// and "" (nothing to say).
func connectionsOffer(l *listener, first bool) string {
	if lim := l.limiter.Load(); lim != nil && lim.Config().LimitsConnections() {
		return "limited"
	}
	if first {
		return "per-request"
	}
	return ""
}

// offerKey is the context key of the ConnectionsHeader value a request's
// response carries, when it carries one.
type offerKey struct{}

// setOffer puts the ConnectionsHeader value r's response carries, if any,
// in h.
func setOffer(h http.Header, r *http.Request) {
	if offer, _ := r.Context().Value(offerKey{}).(string); offer != "" {
		h.Set(ConnectionsHeader, offer)
	}
}

// peerKey is the context key of an authorized request's peer ID, which
// the reverse proxy's Rewrite sets as PeerHeader.
type peerKey struct{}

// errUnaskedUpgrade fails a 101 response to a request that asked for no
// protocol switch: relaying it would open a tunnel no route allowed.
var errUnaskedUpgrade = errors.New("proxy: the app switched protocols unasked")

// httpSettings is the request policy of an HTTP inbound listener.
type httpSettings struct {
	cfg     InboundHTTP
	txn     *txn.Verifier // nil: transaction tokens are stripped
	filters pipeline
}

// newHTTPSettings makes the request policy of cfg. prev, the settings it
// replaces (nil at start), lends its transaction-token verifier when the
// verifier's own settings are unchanged: a reload that changes routes
// must not empty the single-use record and so accept a replay.
func (p *Proxy) newHTTPSettings(l *listener, cfg InboundHTTP, prev *httpSettings) *httpSettings {
	cfg = cfg.withDefaults()
	if cfg.TokenHeader == "" {
		cfg.TokenHeader = "Authorization"
	}
	s := &httpSettings{cfg: cfg}
	switch {
	case prev != nil && prev.txn != nil && sameTxnVerifier(prev.cfg, cfg):
		s.txn = prev.txn
	case len(cfg.TxnMinters.Patterns()) > 0:
		s.txn = txn.NewVerifier(p.cfg.Bundles, txn.VerifyConfig{Minters: cfg.TxnMinters.Allows, Leeway: cfg.TxnLeeway,
			SingleUse: cfg.TxnSingleUse})
	}
	s.filters = p.inboundPipeline(l, s)
	return s
}

func (p *Proxy) newHTTPInbound(l *listener, cfg InboundHTTP) *httpInbound {
	cfg = cfg.withDefaults()
	dialer := &net.Dialer{Timeout: p.cfg.DialTimeout}
	app := &h1.Client{
		Dial: func(ctx context.Context) (net.Conn, error) {
			c, err := dialer.DialContext(ctx, "tcp", l.target)
			if err != nil {
				return nil, err
			}
			return rawio.Wrap(c), nil
		},
		MaxConns:    cfg.AppConnections,
		IdleTimeout: appIdleTimeout,
	}
	// net/http's Transport carries what app does not speak: h2c, and
	// requests that switch protocols (WebSocket) or expect 100-continue.
	// Its connections take their slots from app, so that AppConnections
	// bounds both together.
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			// The Transport dials apart from the request, under a context
			// the request's end does not end: the wait is bounded here.
			if cfg.ResponseHeaderTimeout > 0 {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, cfg.ResponseHeaderTimeout)
				defer cancel()
			}
			release, err := app.Hold(ctx)
			if err != nil {
				return nil, err
			}
			c, err := app.Dial(ctx)
			if err != nil {
				release()
				return nil, err
			}
			return &heldConn{Conn: c, release: release}, nil
		},
		MaxConnsPerHost:     cfg.AppConnections,
		MaxIdleConnsPerHost: cfg.AppConnections,
		IdleConnTimeout:     appIdleTimeout,
	}
	app.Full = tr.CloseIdleConnections // its idle connections hold slots too
	var toApp http.RoundTripper = tr
	if cfg.AppH2C {
		tr.Protocols = new(http.Protocols)
		tr.Protocols.SetUnencryptedHTTP2(true)
	} else {
		toApp = appRoute{h1: app, other: tr}
	}
	h := &httpInbound{app: app}
	h.settings.Store(p.newHTTPSettings(l, cfg, nil))
	h.proxy = newForwarder(&forwarder{
		rewrite: func(out, in *http.Request) {
			out.URL.Scheme, out.URL.Host = "http", l.target
			out.Host = in.Host
			// Set here, after the headers the Connection header names are
			// gone, so that nothing removes it.
			out.Header.Del(PeerHeader)
			if peer, ok := in.Context().Value(peerKey{}).(spiffeid.ID); ok {
				out.Header.Set(PeerHeader, peer.String())
			}
		},
		modifyResponse: func(res *http.Response) error {
			res.Header.Del(ConnectionsHeader) // the sidecar's to say
			setOffer(res.Header, res.Request)
			if res.StatusCode == http.StatusSwitchingProtocols && len(res.Request.Header.Values("Upgrade")) == 0 {
				return errUnaskedUpgrade
			}
			return nil
		},
		transport: p.traced(l, appBound{rt: toApp, limit: cfg.ResponseHeaderTimeout}, "credflow inbound "+l.name+" to app"),
		errorLog:  slog.NewLogLogger(p.log.Handler(), slog.LevelDebug),
		errorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			if r.Context().Err() != nil {
				// The peer went away (stream reset, connection closed):
				// nobody to answer, and not the app's doing.
				p.m.refused(l.dir, reason.ClientCanceled, true)
				abortClientGone()
			}
			setOffer(w.Header(), r)
			if errors.Is(err, errUnaskedUpgrade) {
				p.m.refused(l.dir, reason.AppBadUpgrade, true)
				deny(w, r, reason.AppBadUpgrade)
				return
			}
			if errors.Is(err, errAppBusy) {
				p.m.refused(l.dir, reason.AppBusy, true)
				deny(w, r, reason.AppBusy)
				return
			}
			var oe *net.OpError
			if errors.Is(err, errAppTimeout) || isTimeout(err) && !(errors.As(err, &oe) && oe.Op == "dial") {
				p.m.refused(l.dir, reason.AppTimeout, true)
				deny(w, r, reason.AppTimeout)
				return
			}
			p.m.refused(l.dir, reason.AppUnavailable, true)
			deny(w, r, reason.AppUnavailable)
		},
	})
	h.srv = &http.Server{
		Handler:           http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { p.serveInboundHTTP(l, h, w, r) }),
		HTTP2:             &http.HTTP2Config{MaxConcurrentStreams: cfg.MaxConcurrentStreams},
		ReadHeaderTimeout: p.cfg.HandshakeTimeout,
		IdleTimeout:       p.cfg.IdleTimeout,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          slog.NewLogLogger(p.log.Handler(), slog.LevelDebug),
		ConnState:         h.connState,
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			h.mu.Lock()
			defer h.mu.Unlock()
			return context.WithValue(ctx, httpConnKey{}, h.open[c])
		},
	}
	h.own = &h1.Server{
		Handler:           h.srv.Handler,
		ReadHeaderTimeout: p.cfg.HandshakeTimeout,
		IdleTimeout:       p.cfg.IdleTimeout,
		ErrorLog:          h.srv.ErrorLog,
	}
	h.open = make(map[net.Conn]*httpConn)
	return h
}

// appIdleTimeout is how long an idle connection to the app is kept.
const appIdleTimeout = 90 * time.Second

// appRoute sends the requests h1 speaks (h1.Eligible) with it, the others
// with other.
type appRoute struct {
	h1    *h1.Client
	other http.RoundTripper
}

func (a appRoute) RoundTrip(r *http.Request) (*http.Response, error) {
	if h1.Eligible(r) {
		return a.h1.RoundTrip(r)
	}
	return a.other.RoundTrip(r)
}

// heldConn is a connection that gives its slot back when it closes.
type heldConn struct {
	net.Conn
	release func() // once only: h1.Client.Hold's
}

func (c *heldConn) Close() error {
	c.release()
	return c.Conn.Close()
}

// responseFlush is the ReverseProxy's FlushInterval in every HTTP mode:
// how long the bytes of a response of known length may wait in the
// sidecar's write buffer before they are flushed (they also go when the
// buffer fills, and when the response ends). A short response's header
// and body so leave in one write. Flushing after every write (-1) sent the
// header on its own, from a goroutine started per response, and then the
// body: two TLS records, two system calls, and on HTTP/2 two frames
// flushed, per response. A response of unknown length (gRPC, chunked
// streams) and server-sent events are flushed after every write whatever
// this is: ReverseProxy sees to that.
const responseFlush = time.Millisecond

// serveInboundHTTP authorizes one request and forwards it to the app.
func (p *Proxy) serveInboundHTTP(l *listener, h *httpInbound, w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	_, span := p.serverSpan(l, r)
	hc, _ := r.Context().Value(httpConnKey{}).(*httpConn)
	// Set on the final response only (an interim one would carry it, and
	// clear it from the final).
	offer := connectionsOffer(l, hc != nil && !hc.served.Swap(true))
	if hc != nil {
		defer func() {
			if hc.hijacked.Load() {
				// The upgrade tunnel ended: the connection's slot and
				// tracking end with it (see connState).
				close(hc.closed)
			}
		}()
		if hc.c != nil && hc.c.retiring.Load() {
			// Past MaxConnectionAge: HTTP/1.1 closes after this response,
			// HTTP/2 sends GOAWAY and closes once its streams are done.
			w.Header().Set("Connection", "close")
		}
	}
	s := h.settings.Load()
	peer, err := requestPeer(hc, r)
	if err != nil {
		if offer != "" {
			w.Header().Set(ConnectionsHeader, offer)
		}
		deny(w, r, reason.InvalidSVID)
		return
	}
	req := &Request{HTTP: r, Listener: l.name, Peer: peer}
	why := s.filters.run(req)
	p.observe(l, anomaly.Observation{Subject: anomaly.Peer(peer), Time: start, Kind: anomaly.Request, Route: req.Route, Reason: why, JTI: req.JTI})
	if span != nil {
		var buf [1]attribute.KeyValue
		group := buf[:0]
		if r.TLS != nil {
			group = append(group, attrGroup.String(GroupName(r.TLS.CurveID)))
		}
		status := 0
		if why != "" {
			status = why.Info().Status
		}
		defer endServerSpan(span, l, r.Method, peer, req.Route, why, status, group...)
	}
	if why != "" {
		isError := why.Info().Status >= 500
		p.m.refused(l.dir, why, isError)
		p.httpAccess(l, start, peer, r, decisionOf(isError), why, why.Info().Status, req.Attrs...)
		if req.RetryAfter > 0 {
			w.Header().Set("Retry-After", strconv.Itoa(int((req.RetryAfter+time.Second-1)/time.Second)))
		}
		if offer != "" {
			w.Header().Set(ConnectionsHeader, offer)
		}
		deny(w, r, why)
		return
	}
	ctx := req.HTTP.Context()
	if span != nil {
		// The filters kept the request's context or derived theirs
		// from it: the span goes into theirs.
		ctx = trace.ContextWithSpan(ctx, span)
	}
	ctx = context.WithValue(ctx, peerKey{}, peer)
	if offer != "" {
		// For the app's response (ModifyResponse) or the answer to its
		// failure (ErrorHandler).
		ctx = context.WithValue(ctx, offerKey{}, offer)
	}
	r = req.HTTP.WithContext(ctx)
	p.httpAccess(l, start, peer, r, "allow", "", 0, req.Attrs...)
	p.forward(l, hc, h.proxy, w, r, start)
}

// abortClientGone ends a request whose client has gone away (its context
// ended: a stream reset, a closed connection, or an HTTP/1.1 client that
// half-closed, which net/http takes for gone) without an answer: returning
// from the handler would have net/http send "200 OK" with an empty body to
// a client that may still read, for a request never delivered.
// http.ErrAbortHandler closes the HTTP/1.1 connection or resets the HTTP/2
// stream instead, and net/http logs nothing for it.
func abortClientGone() { panic(http.ErrAbortHandler) }

// forward serves r with rp and counts it towards its connection's
// rapid-reset limit if the client cancels it early.
func (p *Proxy) forward(l *listener, hc *httpConn, rp http.Handler, w http.ResponseWriter, r *http.Request, start time.Time) {
	if hc == nil {
		rp.ServeHTTP(w, r)
		return
	}
	hc.forwarded.Add(1)
	// Deferred: a response cut off mid-body, and a request its client gave
	// up on (abortClientGone), panic out of ServeHTTP, and the latter are
	// what is counted.
	defer p.countPremature(l, hc, r, start)
	rp.ServeHTTP(w, r)
}

// countPremature counts r towards its connection's rapid-reset budget if
// its client gave up on it early, and closes the connection once too many
// of its requests have ended that way.
func (p *Proxy) countPremature(l *listener, hc *httpConn, r *http.Request, start time.Time) {
	if r.Context().Err() == nil || time.Since(start) >= prematureResetWindow {
		return
	}
	n := hc.premature.Add(1)
	if n < prematureResetMin || 2*n <= hc.forwarded.Load() || !hc.reset.CompareAndSwap(false, true) {
		return
	}
	p.m.closedBySidecar(l.dir, reason.RapidReset)
	attrs := []any{slog.String(logkey.Listener, l.name), slog.String(logkey.Reason, string(reason.RapidReset))}
	if hc.c == nil {
		p.log.Info("proxy: closing app connection", attrs...)
		hc.nc.Close()
		return
	}
	hc.c.closedBy.Store(reason.RapidReset)
	p.log.Info("proxy: closing connection", append(attrs, slog.String(logkey.PeerID, hc.c.peer.String()))...)
	hc.c.close()
}

// sameTxnVerifier reports whether a and b configure the same
// transaction-token verifier.
func sameTxnVerifier(a, b InboundHTTP) bool {
	return slices.Equal(a.TxnMinters.Patterns(), b.TxnMinters.Patterns()) &&
		a.TxnLeeway == b.TxnLeeway && a.TxnSingleUse == b.TxnSingleUse
}

// copyBuffers lends the reverse proxies their body-copy buffers. Without
// a pool, httputil.ReverseProxy allocates 32 KiB per request, which was
// most of the HTTP path's allocated bytes.
var copyBuffers httputil.BufferPool = &bufferPool{}

type bufferPool struct{ p sync.Pool }

// copyBufferSize is httputil.ReverseProxy's own buffer size.
const copyBufferSize = 32 << 10

func (b *bufferPool) Get() []byte {
	if buf, ok := b.p.Get().(*[]byte); ok {
		return *buf
	}
	return make([]byte, copyBufferSize)
}

func (b *bufferPool) Put(buf []byte) {
	if cap(buf) == copyBufferSize {
		buf = buf[:copyBufferSize]
		b.p.Put(&buf)
	}
}

// decisionOf is the access-log decision of a refused request: "error"
// when the sidecar failed it (a 5xx reason: no token to attach, say),
// "deny" when its caller did.
func decisionOf(isError bool) string {
	if isError {
		return "error"
	}
	return "deny"
}

// deny answers a refused request with why's HTTP status and the reason,
// or, for gRPC, status 200 with why's gRPC code in the trailers.
func deny(w http.ResponseWriter, r *http.Request, why reason.Reason) {
	denyAs(w, r, why.Info(), why)
}

// denyAs is deny with the status and code of info: an upstream's refusal
// of this side's handshake is a 502 to the app, whatever its reason.
func denyAs(w http.ResponseWriter, r *http.Request, info reason.Info, why reason.Reason) {
	w.Header().Set("X-Credflow-Reason", string(why))
	if strings.HasPrefix(r.Header.Get("Content-Type"), "application/grpc") {
		// Status in trailers rather than a trailers-only response: a
		// proxy that flushes the headers first (the outbound sidecar
		// does, for streaming) would otherwise split them from the end
		// of the stream and the client would see no status.
		w.Header().Set("Content-Type", "application/grpc")
		w.WriteHeader(http.StatusOK)
		w.Header().Set(http.TrailerPrefix+"Grpc-Status", strconv.Itoa(int(info.Code)))
		w.Header().Set(http.TrailerPrefix+"Grpc-Message", "credflow: "+string(why))
		return
	}
	http.Error(w, http.StatusText(info.Status)+": "+string(why), info.Status)
}

// httpOutbound serves the HTTP side of an outbound listener.
type httpOutbound struct {
	cfg  OutboundHTTP
	own  *h1.Server   // the app's HTTP/1.1 requests
	srv  *http.Server // h2c, and the HTTP/1.1 requests own does not serve
	rest *chanListener
	// handed: the *httpConn of each connection own handed to srv.
	handed sync.Map
	pool   *upstreamPool
	h1     *h1.Client // HTTP/1.1 apps' requests, while it has room (upstreamRoute)
	// offer: what the upstream said about connections (ConnectionsHeader).
	offer    connOffer
	audience string
	filters  pipeline
}

// connOffer is what an HTTP outbound listener's upstream said in
// ConnectionsHeader.
type connOffer struct {
	perRequest   atomic.Bool  // it said "per-request"
	limitedUntil atomic.Int64 // Unix ns: "limited" said since limitedHold before
}

// limitedHold is how long an upstream that said "limited" gets no HTTP/1.1
// connections, whatever it says meanwhile: the replicas behind one
// upstream address can differ (a canary, a rollout of new limits), and
// one connection per request in flight is then for none of them.
const limitedHold = 10 * time.Minute

// take takes in offer, said at now; it reports whether HTTP/1.1
// connections stop being usable with it.
func (o *connOffer) take(offer string, now time.Time) (stop bool) {
	switch offer {
	case "per-request":
		o.perRequest.Store(true)
	case "limited":
		was := o.usable(now)
		o.limitedUntil.Store(now.Add(limitedHold).UnixNano())
		return was
	}
	return false
}

// usable reports whether HTTP/1.1 connections may be used at now.
func (o *connOffer) usable(now time.Time) bool {
	return o.perRequest.Load() && now.UnixNano() >= o.limitedUntil.Load()
}

// pool is c.Pool or its default.
func (c OutboundHTTP) pool() int {
	if c.Pool <= 0 {
		return 2
	}
	return c.Pool
}

func (p *Proxy) newHTTPOutbound(l *listener, cfg OutboundHTTP, expectOne spiffeid.ID) *httpOutbound {
	if cfg.TokenHeader == "" {
		cfg.TokenHeader = "X-Credflow-Jwt-Svid"
	}
	cfg.Pool = cfg.pool()
	h := &httpOutbound{cfg: cfg, audience: cfg.JWTAudience}
	if h.audience == "" && !expectOne.IsZero() {
		h.audience = expectOne.String()
	}
	h.filters = p.outboundPipeline(l, h)
	tlsConf := l.tls.Clone()
	tlsConf.NextProtos = []string{"h2"}
	h.pool = newUpstreamPool(func(g *poolGen) *http.Transport {
		return &http.Transport{
			DialTLSContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
				return p.dialUpstream(ctx, l, h, tlsConf, g)
			},
			ForceAttemptHTTP2: true,
			MaxConnsPerHost:   cfg.Pool,
			IdleConnTimeout:   p.cfg.IdleTimeout,
		}
	})
	h.h1 = p.newUpstreamH1(l, h)
	rp := newForwarder(&forwarder{
		rewrite: func(out, in *http.Request) {
			out.URL.Scheme, out.URL.Host = "https", l.target
			out.Host = in.Host
		},
		trace: func(r *http.Request, t *httptrace.ClientTrace) {
			if rec, ok := r.Context().Value(outboundRequestKey{}).(*outboundRequest); ok {
				t.GotConn = rec.gotConn
			}
		},
		transport: p.traced(l, upstreamRoute{
			h1:    connectBound{rt: h.h1, limit: p.cfg.DialTimeout + p.cfg.HandshakeTimeout},
			h2:    connectBound{rt: h.pool, limit: p.cfg.DialTimeout + p.cfg.HandshakeTimeout},
			offer: &h.offer, h1Paused: new(atomic.Int64),
		}, "credflow outbound "+l.name+" to "+l.target),
		errorLog: slog.NewLogLogger(p.log.Handler(), slog.LevelDebug),
		modifyResponse: func(resp *http.Response) error {
			if offer := resp.Header[ConnectionsHeader]; len(offer) > 0 {
				if h.offer.take(offer[0], time.Now()) {
					// Within the limits, but the identity's other
					// replicas share them; those in use close as they
					// end (Reuse).
					h.h1.CloseIdle()
				}
				resp.Header.Del(ConnectionsHeader)
			}
			if rec, ok := resp.Request.Context().Value(outboundRequestKey{}).(*outboundRequest); ok {
				rec.responded(p, l, resp)
				rec.respond(resp)
			}
			return nil
		},
		errorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			rec, _ := r.Context().Value(outboundRequestKey{}).(*outboundRequest)
			if r.Context().Err() != nil {
				p.m.refused(l.dir, reason.ClientCanceled, true) // the app went away
				rec.set("error", reason.ClientCanceled, 0, spiffeid.ID{})
				abortClientGone()
			}
			p.log.Debug("proxy: upstream request failed", slog.String(logkey.Listener, l.name), slog.String(logkey.Error, err.Error()))
			var refusal *upstreamRefusal
			switch {
			case errors.As(err, &refusal):
				// Counted once, with its connection, by dialUpstream.
				rec.set("deny", refusal.why, http.StatusBadGateway, refusal.peer)
				denyAs(w, r, reason.UpstreamUnavailable.Info(), refusal.why)
			case rec.upstream().refusedUs(err):
				// The upstream refused us after our side of the TLS 1.3
				// handshake had completed.
				peer := p.upstreamRefusedUs(l, rec.upstream())
				rec.set("deny", reason.PeerRefused, http.StatusBadGateway, peer)
				deny(w, r, reason.PeerRefused)
			default:
				p.m.refused(l.dir, reason.UpstreamUnavailable, true)
				rec.set("error", reason.UpstreamUnavailable, http.StatusBadGateway, spiffeid.ID{})
				deny(w, r, reason.UpstreamUnavailable)
			}
		},
	})
	protocols := new(http.Protocols)
	protocols.SetHTTP1(true)
	protocols.SetUnencryptedHTTP2(true)
	h.srv = &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			start := time.Now()
			rec := &outboundRequest{h: h, decision: "allow"}
			var ctx context.Context
			ctx, rec.span = p.serverSpan(l, r)
			r = r.WithContext(context.WithValue(ctx, outboundRequestKey{}, rec))
			defer func() { rec.log(p, l, start, r) }() // a response cut off mid-body panics
			req := &Request{HTTP: r, Listener: l.name}
			why := h.filters.run(req)
			rec.extra, rec.hooks = req.Attrs, req.responded
			if why != "" {
				isError := why.Info().Status >= 500
				p.m.refused(l.dir, why, isError)
				rec.set(decisionOf(isError), why, why.Info().Status, spiffeid.ID{})
				deny(w, r, why)
				return
			}
			r = req.HTTP
			hc, _ := r.Context().Value(httpConnKey{}).(*httpConn)
			p.forward(l, hc, rp, w, r, start)
		}),
		Protocols:         protocols,
		ReadHeaderTimeout: p.cfg.HandshakeTimeout,
		IdleTimeout:       p.cfg.IdleTimeout,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          slog.NewLogLogger(p.log.Handler(), slog.LevelDebug),
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			hc, ok := h.handed.LoadAndDelete(c)
			if !ok {
				hc = p.newAppConn(l, c)
			}
			return context.WithValue(ctx, httpConnKey{}, hc)
		},
	}
	h.own = &h1.Server{
		Handler:           h.srv.Handler,
		ReadHeaderTimeout: p.cfg.HandshakeTimeout,
		IdleTimeout:       p.cfg.IdleTimeout,
		ErrorLog:          h.srv.ErrorLog,
	}
	return h
}

// connContext is the context of the requests of hc, a connection an
// h1.Server serves for srv: it names srv as net/http's server does, which
// makes ReverseProxy end a response it cannot complete with
// http.ErrAbortHandler (the client then sees it cut off, not ended).
func connContext(srv *http.Server, hc *httpConn) context.Context {
	return context.WithValue(context.WithValue(context.Background(), http.ServerContextKey, srv), httpConnKey{}, hc)
}

// newAppConn returns the *httpConn of an app's connection to l.
func (p *Proxy) newAppConn(l *listener, c net.Conn) *httpConn {
	hc := &httpConn{nc: c}
	hc.caller.nc = c
	if !l.callers.Load().Any() {
		hc.caller.get() // while the app's socket is surely open
	}
	return hc
}

// serveApps takes the app's connections to l and serves each: its
// HTTP/1.1 requests with h.own, in line on the connection's goroutine,
// and the rest (h2c, and what own leaves) with h.srv.
func (h *httpOutbound) serveApps(p *Proxy, l *listener) {
	var wait time.Duration
	for {
		c, err := l.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// Out of descriptors, say: back off as net/http's server
			// does, rather than spin.
			wait = min(max(2*wait, 5*time.Millisecond), time.Second)
			p.log.Debug("proxy: accept failed", slog.String(logkey.Listener, l.name),
				slog.String(logkey.Error, err.Error()), slog.Duration("retry_in", wait))
			time.Sleep(wait)
			continue
		}
		wait = 0
		c = rawio.Wrap(c)
		go func() {
			hc := p.newAppConn(l, c)
			rest := h.own.ServeConn(connContext(h.srv, hc), c, nil)
			if rest == nil {
				return
			}
			h.handed.Store(rest, hc)
			if !h.rest.give(rest) {
				h.handed.Delete(rest)
				rest.Close()
			}
		}()
	}
}

// checkHTTPCaller returns the refusal reason of a request on an HTTP
// outbound listener whose connection's caller l does not allow, or "", and
// the access-log attributes naming the caller.
func (p *Proxy) checkHTTPCaller(l *listener, r *http.Request) (reason.Reason, []slog.Attr) {
	callers := l.callers.Load()
	if callers.Any() {
		return "", nil
	}
	var (
		cred peercred.Cred
		err  = errors.New("proxy: request without its connection")
	)
	if hc, ok := r.Context().Value(httpConnKey{}).(*httpConn); ok {
		cred, err = hc.caller.get()
	}
	why := checkCaller(callers, cred, err)
	if why != "" {
		p.logCallerRefused(l, why, cred, err)
	}
	return why, callerAttrs(cred, err)
}

// outboundRequest is what an HTTP outbound listener learns of one request
// on its way, for its access-log line: the pooled connection it took, the
// upstream it reached and the outcome.
type outboundRequest struct {
	h *httpOutbound

	mu       sync.Mutex
	conn     *upstreamConn
	peer     spiffeid.ID
	decision string
	why      reason.Reason
	status   int
	extra    []slog.Attr // set before the request goes on: the refused caller
	// responded are the filters' Request.OnResponse functions, set before
	// the request goes on.
	hooks []func(*http.Response)
	// span is the request's server span, ended with its access-log line;
	// nil without tracing.
	span trace.Span
}

// outboundRequestKey is the context key of a request's *outboundRequest.
type outboundRequestKey struct{}

// respond runs the filters' Request.OnResponse functions.
func (o *outboundRequest) respond(resp *http.Response) {
	for _, f := range o.hooks {
		f(resp)
	}
}

func (o *outboundRequest) gotConn(info httptrace.GotConnInfo) {
	uc := o.h.pool.conn(info.Conn)
	o.mu.Lock()
	defer o.mu.Unlock()
	o.conn = uc
}

// upstream returns the pooled connection the request took, if known.
func (o *outboundRequest) upstream() *upstreamConn {
	if o == nil {
		return nil
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.conn
}

// responded records the upstream's response, and counts the connection it
// came over as established.
func (o *outboundRequest) responded(p *Proxy, l *listener, resp *http.Response) {
	var peer spiffeid.ID
	if uc := o.upstream(); uc != nil {
		p.upstreamResponded(l, uc)
		peer = uc.peer
	} else if resp.TLS != nil && len(resp.TLS.PeerCertificates) > 0 {
		peer, _ = peerOf(resp.TLS)
	}
	o.set("allow", "", resp.StatusCode, peer)
}

func (o *outboundRequest) set(decision string, why reason.Reason, status int, peer spiffeid.ID) {
	if o == nil {
		return
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	o.decision, o.why, o.status, o.peer = decision, why, status, peer
}

// log writes the request's access-log line.
func (o *outboundRequest) log(p *Proxy, l *listener, start time.Time, r *http.Request) {
	o.mu.Lock()
	decision, why, status, peer, extra := o.decision, o.why, o.status, o.peer, o.extra
	o.mu.Unlock()
	p.httpAccess(l, start, peer, r, decision, why, status, extra...)
	if o.span != nil {
		var attrs []attribute.KeyValue
		for _, a := range extra {
			if a.Key == logkey.Credential {
				attrs = append(attrs, attrCred.String(a.Value.String()))
			}
		}
		endServerSpan(o.span, l, r.Method, peer, "", why, status, attrs...)
	}
}

// errNoUpstreamConn fails a request that got no upstream connection in
// time.
var errNoUpstreamConn = errors.New("proxy: no upstream connection in time")

// connectBound fails a request that has not got a connection from rt
// within limit: while the upstream is down or stuck, requests queued for
// the pool would otherwise wait a dial and handshake timeout each for
// every request ahead of them.
type connectBound struct {
	rt    http.RoundTripper
	limit time.Duration
}

func (b connectBound) RoundTrip(r *http.Request) (*http.Response, error) {
	// The context ends with the request's (its server ends it when the
	// handler returns), so the response body is read under it.
	ctx, cancel := context.WithCancelCause(r.Context())
	timer := time.AfterFunc(b.limit, func() { cancel(errNoUpstreamConn) })
	ctx = httptrace.WithClientTrace(ctx, &httptrace.ClientTrace{GotConn: func(httptrace.GotConnInfo) { timer.Stop() }})
	resp, err := b.rt.RoundTrip(r.WithContext(ctx))
	if err != nil {
		timer.Stop()
		if cause := context.Cause(ctx); errors.Is(cause, errNoUpstreamConn) {
			err = fmt.Errorf("%w: %w", cause, err)
		}
		cancel(nil)
	}
	return resp, err
}

// Causes of a request to the app that ran out of time.
var (
	errAppBusy    = errors.New("proxy: no app connection free in time")
	errAppTimeout = errors.New("proxy: no response headers from the app in time")
)

// appBound fails a request whose response headers have not come from rt
// within limit (none if limit is negative): with errAppBusy if it was
// still waiting for one of the listener's app connections, else with
// errAppTimeout. http.Transport's own ResponseHeaderTimeout starts only
// once the request is written, so it does not bound the wait for a
// connection.
type appBound struct {
	rt    http.RoundTripper
	limit time.Duration
}

func (b appBound) RoundTrip(r *http.Request) (*http.Response, error) {
	r, err := readSmallBody(r)
	if err != nil {
		return nil, err
	}
	if b.limit < 0 {
		return b.rt.RoundTrip(r)
	}
	// As in connectBound, the context ends with the request's, so the
	// response body is read under it.
	ctx, cancel := context.WithCancelCause(r.Context())
	var gotConn atomic.Bool
	timer := time.AfterFunc(b.limit, func() {
		if gotConn.Load() {
			cancel(errAppTimeout)
		} else {
			cancel(errAppBusy)
		}
	})
	ctx = httptrace.WithClientTrace(ctx, &httptrace.ClientTrace{GotConn: func(httptrace.GotConnInfo) { gotConn.Store(true) }})
	resp, err := b.rt.RoundTrip(r.WithContext(ctx))
	timer.Stop()
	if err != nil {
		if cause := context.Cause(ctx); errors.Is(cause, errAppBusy) || errors.Is(cause, errAppTimeout) {
			err = fmt.Errorf("%w: %w", cause, err)
		}
		cancel(nil)
	}
	return resp, err
}

// readSmallBody returns r with its body in memory (h1.InMemory) when the
// body is of known length up to h1.MaxBody (16 KiB) and no 100-continue is
// asked for; otherwise r as it is: a larger body, or one of unknown
// length, streams. net/http then sends the request's head and body in one
// write, rather than the head on its own first, and copies no body
// through a 32 KiB buffer allocated per request.
func readSmallBody(r *http.Request) (*http.Request, error) {
	if r.Header.Get("Expect") != "" {
		return r, nil
	}
	return h1.InMemory(r)
}

// httpAccess writes the access-log line of one request: inbound, when it
// is refused or forwarded to the app (status 0: not known yet); outbound,
// once answered, with the verified upstream as peer. The path logged is
// the canonical one; no header value is logged.
func (p *Proxy) httpAccess(l *listener, start time.Time, peer spiffeid.ID, r *http.Request, decision string, why reason.Reason, status int, extra ...slog.Attr) {
	attrs := []slog.Attr{
		slog.String(logkey.Direction, string(l.dir)),
		slog.String(logkey.Listener, l.name),
		slog.String(logkey.Transport, "http"),
		slog.String(logkey.Decision, decision),
		slog.String(logkey.Method, r.Method),
		slog.String(logkey.Proto, r.Proto),
		slog.Float64(logkey.DurationMS, float64(time.Since(start).Microseconds())/1000),
	}
	if !peer.IsZero() {
		attrs = append(attrs, slog.String(logkey.PeerID, peer.String()))
	}
	attrs = append(attrs, extra...)
	if why != "" {
		attrs = append(attrs, slog.String(logkey.Reason, string(why)))
	}
	if status != 0 {
		attrs = append(attrs, slog.Int(logkey.Status, status))
	}
	path, err := route.Normalize(r.URL.EscapedPath())
	if err != nil || len(path) > 256 {
		path = ""
	}
	if path != "" {
		attrs = append(attrs, slog.String(logkey.Path, path))
	}
	p.acc.LogAttrs(context.Background(), slog.LevelInfo, "access", attrs...)
	if p.cfg.Audit != nil && !l.unaudited {
		e := audit.Event{Type: audit.TypeDecision, Time: start, Listener: l.name, Direction: string(l.dir),
			Transport: "http", Decision: decision, Reason: string(why), Method: r.Method, Path: path}
		if !peer.IsZero() {
			e.PeerID = peer.String()
		}
		for _, a := range extra {
			if a.Key == logkey.Route {
				e.Route = a.Value.String()
			}
		}
		if r.TLS != nil {
			e.Group = GroupName(r.TLS.CurveID)
		}
		p.cfg.Audit.Write(e)
	}
}

// serveHTTPConn serves an authorized mTLS connection's requests, HTTP/1.1
// ones with the listener's own server (in line on this goroutine) and the
// rest with net/http's, and tracks it until it closes, so that
// revalidation can close it and its slot is held while it is open.
//
// The connection must bring a complete first request within the header
// timeout (HandshakeTimeout) or it is closed with the reason
// "header_timeout": the servers bound HTTP/1 request headers themselves,
// but not an HTTP/2 connection that never completes a header block.
func (p *Proxy) serveHTTPConn(l *listener, h *httpInbound, tc *tls.Conn, cs *tls.ConnectionState) {
	peer, _ := peerOf(cs)
	c := p.newConn(l, cs, func() { tc.Close() })
	c.retire = func() {} // from now on responses ask the client to close (serveInboundHTTP)
	p.mu.Lock()
	p.conns[c] = struct{}{}
	p.groups[GroupName(cs.CurveID)]++
	p.mu.Unlock()
	p.m.started(l.dir)
	p.m.established(l.dir, cs)
	hc := &httpConn{c: c, closed: make(chan struct{})}
	start := time.Now()
	timer := time.AfterFunc(p.cfg.HandshakeTimeout, func() {
		if !hc.served.Load() {
			tc.Close()
		}
	})
	var rest net.Conn = tc
	if cs.NegotiatedProtocol != "h2" {
		rest = h.own.ServeConn(connContext(h.srv, hc), tc, cs)
	}
	if rest != nil {
		h.track(rest, hc)
		if !h.ln.give(rest) {
			rest.Close()
			h.connState(rest, http.StateClosed)
		}
		<-hc.closed // the slot is held until the HTTP server closes the connection
	}
	timer.Stop()
	if !hc.served.Load() && time.Since(start) >= p.cfg.HandshakeTimeout {
		// Closed by the timer, or by a server's own header timeout.
		p.m.refused(l.dir, reason.HeaderTimeout, false)
		p.access(l, start, peer, cs, "deny", reason.HeaderTimeout, relay.Result{}, "http")
	}
	p.mu.Lock()
	delete(p.conns, c)
	p.mu.Unlock()
	p.m.finished(l.dir, 0, 0)
}

// track arranges for hc.closed to be closed when the server is done with c.
func (h *httpInbound) track(c net.Conn, hc *httpConn) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.open[c] = hc
}

func (h *httpInbound) connState(c net.Conn, s http.ConnState) {
	if s != http.StateClosed && s != http.StateHijacked {
		return
	}
	h.mu.Lock()
	hc, ok := h.open[c]
	delete(h.open, c)
	h.mu.Unlock()
	switch {
	case !ok:
	case s == http.StateHijacked:
		// An upgrade tunnel: ReverseProxy relays it inside the handler,
		// which closes hc.closed when the tunnel ends. Until then the
		// connection stays tracked: it holds its slot, revalidation
		// closes it, Drain waits for it.
		hc.hijacked.Store(true)
	default:
		close(hc.closed)
	}
}
