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
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/credflow/credflow/internal/logkey"
	"github.com/credflow/credflow/proxy/authz"
	"github.com/credflow/credflow/proxy/edge"
	"github.com/credflow/credflow/proxy/relay"
	"github.com/credflow/credflow/proxy/route"
	"github.com/credflow/credflow/proxy/txn"
)

// Headers the sidecar sets, or strips when they come from outside.
const (
	// PeerHeader carries the verified peer SPIFFE ID to the app. Any value
	// a peer sends is replaced.
	PeerHeader = "X-Credflow-Peer-Id"
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
	// PassJWT forwards the validated token to the app; by default it is
	// stripped.
	PassJWT bool
	// AppH2C speaks HTTP/2 without TLS to the app (gRPC servers); default
	// HTTP/1.1.
	AppH2C bool
	// TxnMinters, when it allows anyone, turns on transaction tokens: a
	// Txn-Token header must verify against the X.509 bundles, be minted by
	// a workload TxnMinters allows, and name this trust domain in its
	// audience, or the request is refused. Without it, a Txn-Token header
	// is stripped: the app never sees one its sidecar has not verified.
	TxnMinters authz.Policy
	// RequireTxn refuses requests that carry no transaction token.
	RequireTxn bool
	// ResponseHeaderTimeout bounds the wait for the app's response headers
	// once a request is sent to it; past it the request is answered 504
	// with the reason "app_timeout". Zero, the default, waits as long as
	// the peer does (its cancellation reaches the app), since long polls
	// and gRPC streams may hold their headers back.
	ResponseHeaderTimeout time.Duration
}

// OutboundHTTP makes an outbound listener HTTP-aware: app requests (HTTP/1.1
// or h2c, gRPC included) are multiplexed over a small pool of HTTP/2 mTLS
// connections to the upstream sidecar, each with a JWT-SVID attached.
type OutboundHTTP struct {
	// JWTAudience is the audience of the JWT-SVID attached to each request;
	// default: the expected server ID when the listener expects exactly
	// one; none otherwise (no token attached).
	JWTAudience string
	// TokenHeader is the header the token goes in when the app has set its
	// own Authorization; default X-Credflow-Jwt-Svid.
	TokenHeader string
	// Pool is the number of HTTP/2 connections kept to the upstream;
	// default 2. A request waits at most DialTimeout+HandshakeTimeout for
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
	cfg   InboundHTTP
	txn   *txn.Verifier // nil: transaction tokens are stripped
	ln    *chanListener
	srv   *http.Server
	proxy *httputil.ReverseProxy

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
}

// httpConnKey is the context key of a request's *httpConn.
type httpConnKey struct{}

func (p *Proxy) newHTTPInbound(l *listener, cfg InboundHTTP) *httpInbound {
	if cfg.TokenHeader == "" {
		cfg.TokenHeader = "Authorization"
	}
	tr := &http.Transport{
		DialContext:           (&net.Dialer{Timeout: p.cfg.DialTimeout}).DialContext,
		MaxIdleConnsPerHost:   64,
		IdleConnTimeout:       90 * time.Second,
		ResponseHeaderTimeout: cfg.ResponseHeaderTimeout,
	}
	if cfg.AppH2C {
		tr.Protocols = new(http.Protocols)
		tr.Protocols.SetUnencryptedHTTP2(true)
	}
	h := &httpInbound{cfg: cfg}
	if len(cfg.TxnMinters.Patterns()) > 0 {
		h.txn = txn.NewVerifier(p.cfg.Bundles, txn.VerifyConfig{Minters: cfg.TxnMinters.Allows})
	}
	h.proxy = &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.Out.URL.Scheme, pr.Out.URL.Host = "http", l.target
			pr.Out.Host = pr.In.Host
		},
		Transport:     tr,
		FlushInterval: -1,
		ErrorLog:      slog.NewLogLogger(p.log.Handler(), slog.LevelDebug),
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			if r.Context().Err() != nil {
				// The peer went away (stream reset, connection closed):
				// nobody to answer, and not the app's doing.
				p.m.refused(l.dir, "client_canceled", true)
				return
			}
			var oe *net.OpError
			if isTimeout(err) && !(errors.As(err, &oe) && oe.Op == "dial") {
				p.m.refused(l.dir, "app_timeout", true)
				deny(w, r, http.StatusGatewayTimeout, 4, "app_timeout")
				return
			}
			p.m.refused(l.dir, "app_unavailable", true)
			deny(w, r, http.StatusBadGateway, 14, "app_unavailable")
		},
	}
	h.srv = &http.Server{
		Handler:           http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { p.serveInboundHTTP(l, h, w, r) }),
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
	h.open = make(map[net.Conn]*httpConn)
	return h
}

// serveInboundHTTP authorizes one request and forwards it to the app.
func (p *Proxy) serveInboundHTTP(l *listener, h *httpInbound, w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	hc, _ := r.Context().Value(httpConnKey{}).(*httpConn)
	if hc != nil {
		hc.served.Store(true)
		if hc.c != nil && hc.c.retiring.Load() {
			// Past MaxConnectionAge: HTTP/1.1 closes after this response,
			// HTTP/2 sends GOAWAY and closes once its streams are done.
			w.Header().Set("Connection", "close")
		}
	}
	peer, err := x509svid.IDFromCert(r.TLS.PeerCertificates[0]) // verified in VerifyConnection
	if err != nil {
		deny(w, r, http.StatusForbidden, 7, "invalid_svid")
		return
	}
	refuse := func(status, grpcCode int, reason string) {
		p.m.refused(l.dir, reason, false)
		p.httpAccess(l, start, peer, r, "deny", reason, status)
		deny(w, r, status, grpcCode, reason)
	}
	if r.ProtoMajor == 2 && r.Header.Get("Host") != "" && !strings.EqualFold(r.Header.Get("Host"), r.Host) {
		refuse(http.StatusBadRequest, 3, "host_mismatch")
		return
	}
	path, err := route.Normalize(r.URL.EscapedPath())
	if err != nil {
		refuse(http.StatusBadRequest, 3, "bad_path")
		return
	}
	if !h.cfg.Routes.Allows(peer, r.Method, path) {
		refuse(http.StatusForbidden, 7, "route_denied")
		return
	}
	if h.cfg.RequireJWT {
		if reason := p.checkJWT(h.cfg.TokenHeader, r, peer); reason != "" {
			refuse(http.StatusUnauthorized, 16, reason)
			return
		}
		if !h.cfg.PassJWT {
			r.Header.Del(h.cfg.TokenHeader)
		}
	}
	if h.txn == nil {
		r.Header.Del(txn.Header)
	} else if reason := p.checkTxn(h, r); reason != "" {
		refuse(http.StatusUnauthorized, 16, reason)
		return
	}
	r.Header.Del(xfcc)
	r.Header.Del(PeerHeader)
	r.Header.Set(PeerHeader, peer.String())
	r.URL.Path, r.URL.RawPath = path, ""
	p.httpAccess(l, start, peer, r, "allow", "", 0)
	p.forward(l, hc, h.proxy, w, r, start)
}

// forward serves r with rp and counts it towards its connection's
// rapid-reset limit if the client cancels it early.
func (p *Proxy) forward(l *listener, hc *httpConn, rp http.Handler, w http.ResponseWriter, r *http.Request, start time.Time) {
	if hc == nil {
		rp.ServeHTTP(w, r)
		return
	}
	hc.forwarded.Add(1)
	rp.ServeHTTP(w, r) // a response cut off mid-body panics out of here
	if r.Context().Err() == nil || time.Since(start) >= prematureResetWindow {
		return
	}
	n := hc.premature.Add(1)
	if n < prematureResetMin || 2*n <= hc.forwarded.Load() || !hc.reset.CompareAndSwap(false, true) {
		return
	}
	p.m.closedBySidecar(l.dir, "rapid_reset")
	attrs := []any{slog.String(logkey.Listener, l.name), slog.String(logkey.Reason, "rapid_reset")}
	if hc.c == nil {
		p.log.Info("proxy: closing app connection", attrs...)
		hc.nc.Close()
		return
	}
	hc.c.closedBy.Store("rapid_reset")
	p.log.Info("proxy: closing connection", append(attrs, slog.String(logkey.PeerID, hc.c.peer.String()))...)
	hc.c.close()
}

// checkJWT validates the request's JWT-SVID: audience this workload,
// subject the mTLS peer. It returns a refusal reason or "".
func (p *Proxy) checkJWT(header string, r *http.Request, peer spiffeid.ID) string {
	vals := r.Header.Values(header)
	if len(vals) == 0 {
		return "missing_token"
	}
	if len(vals) > 1 {
		return "bad_token" // one token, not a choice of several
	}
	tok := vals[0]
	if strings.EqualFold(header, "Authorization") {
		var ok bool
		if tok, ok = cutPrefixFold(tok, "Bearer "); !ok {
			return "missing_token"
		}
	}
	if len(tok) > maxTokenSize {
		return "bad_token"
	}
	self, err := p.cfg.SVIDs.GetX509SVID()
	if err != nil || p.cfg.ValidateJWT == nil {
		return "no_identity"
	}
	svid, err := p.cfg.ValidateJWT(tok, self.ID.String())
	switch {
	case errors.Is(err, jwt.ErrExpired):
		return "token_expired"
	case errors.Is(err, jwt.ErrNotValidYet) || errors.Is(err, jwt.ErrIssuedInTheFuture):
		return "token_not_yet_valid"
	case err != nil:
		return "bad_token"
	}
	if svid.ID != peer {
		return "token_peer_mismatch"
	}
	p.m.token("validated")
	return ""
}

// checkTxn verifies the request's transaction token, if any, and requires
// one if so configured. It returns a refusal reason or "".
func (p *Proxy) checkTxn(h *httpInbound, r *http.Request) string {
	vals := r.Header.Values(txn.Header)
	switch {
	case len(vals) == 0 && h.cfg.RequireTxn:
		return "txn_missing"
	case len(vals) == 0:
		return ""
	case len(vals) > 1:
		return string(txn.ReasonMalformed)
	}
	self, err := p.cfg.SVIDs.GetX509SVID()
	if err != nil {
		return "no_identity"
	}
	if _, _, err := h.txn.Verify(vals[0], self.ID.TrustDomain()); err != nil {
		return string(txn.ReasonOf(err))
	}
	p.m.token("txn_verified")
	return ""
}

// maxTokenSize bounds the JWT-SVIDs the sidecar parses.
const maxTokenSize = 16 << 10

func cutPrefixFold(s, prefix string) (string, bool) {
	if len(s) >= len(prefix) && strings.EqualFold(s[:len(prefix)], prefix) {
		return s[len(prefix):], true
	}
	return s, false
}

// deny answers a refused request: an HTTP status with the reason, or, for
// gRPC, status 200 with grpcCode in the trailers.
func deny(w http.ResponseWriter, r *http.Request, status, grpcCode int, reason string) {
	w.Header().Set("X-Credflow-Reason", reason)
	if strings.HasPrefix(r.Header.Get("Content-Type"), "application/grpc") {
		// Status in trailers rather than a trailers-only response: a
		// proxy that flushes the headers first (the outbound sidecar
		// does, for streaming) would otherwise split them from the end
		// of the stream and the client would see no status.
		w.Header().Set("Content-Type", "application/grpc")
		w.WriteHeader(http.StatusOK)
		w.Header().Set(http.TrailerPrefix+"Grpc-Status", fmt.Sprint(grpcCode))
		w.Header().Set(http.TrailerPrefix+"Grpc-Message", "credflow: "+reason)
		return
	}
	http.Error(w, http.StatusText(status)+": "+reason, status)
}

// httpOutbound serves the HTTP side of an outbound listener.
type httpOutbound struct {
	cfg      OutboundHTTP
	srv      *http.Server
	pool     *upstreamPool
	audience string
}

func (p *Proxy) newHTTPOutbound(l *listener, cfg OutboundHTTP, expectOne spiffeid.ID) *httpOutbound {
	if cfg.TokenHeader == "" {
		cfg.TokenHeader = "X-Credflow-Jwt-Svid"
	}
	if cfg.Pool <= 0 {
		cfg.Pool = 2
	}
	h := &httpOutbound{cfg: cfg, audience: cfg.JWTAudience}
	if h.audience == "" && !expectOne.IsZero() {
		h.audience = expectOne.String()
	}
	tlsConf := l.tls.Clone()
	tlsConf.NextProtos = []string{"h2"}
	h.pool = newUpstreamPool(func(g *poolGen) *http.Transport {
		return &http.Transport{
			DialTLSContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
				return p.dialUpstream(ctx, l, tlsConf, g)
			},
			ForceAttemptHTTP2: true,
			MaxConnsPerHost:   cfg.Pool,
			IdleConnTimeout:   p.cfg.IdleTimeout,
		}
	})
	rp := &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.Out.URL.Scheme, pr.Out.URL.Host = "https", l.target
			pr.Out.Host = pr.In.Host
		},
		Transport:     connectBound{rt: h.pool, limit: p.cfg.DialTimeout + p.cfg.HandshakeTimeout},
		FlushInterval: -1,
		ErrorLog:      slog.NewLogLogger(p.log.Handler(), slog.LevelDebug),
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			if r.Context().Err() != nil {
				p.m.refused(l.dir, "client_canceled", true) // the app went away
				return
			}
			p.m.refused(l.dir, "upstream_unavailable", true)
			p.log.Debug("proxy: upstream request failed", slog.String(logkey.Listener, l.name), slog.String(logkey.Error, err.Error()))
			deny(w, r, http.StatusBadGateway, 14, "upstream_unavailable")
		},
	}
	protocols := new(http.Protocols)
	protocols.SetHTTP1(true)
	protocols.SetUnencryptedHTTP2(true)
	h.srv = &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			start := time.Now()
			if h.cfg.Exchange {
				if reason := p.exchange(r, h); reason != "" {
					p.m.refused(l.dir, reason, false)
					deny(w, r, http.StatusUnauthorized, 16, reason)
					return
				}
			}
			if err := p.attachJWT(r, h); err != nil {
				p.m.refused(l.dir, "no_token", true)
				deny(w, r, http.StatusServiceUnavailable, 14, "no_token")
				return
			}
			hc, _ := r.Context().Value(httpConnKey{}).(*httpConn)
			p.forward(l, hc, rp, w, r, start)
		}),
		Protocols:         protocols,
		ReadHeaderTimeout: p.cfg.HandshakeTimeout,
		IdleTimeout:       p.cfg.IdleTimeout,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          slog.NewLogLogger(p.log.Handler(), slog.LevelDebug),
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			return context.WithValue(ctx, httpConnKey{}, &httpConn{nc: c})
		},
	}
	return h
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

// exchange replaces the app's external bearer token with a transaction
// token. It returns a refusal reason or "".
func (p *Proxy) exchange(r *http.Request, h *httpOutbound) string {
	if p.cfg.Exchanger == nil {
		return "no_exchanger"
	}
	vals := r.Header.Values("Authorization")
	if len(vals) > 1 {
		return string(edge.ReasonMalformed)
	}
	external, ok := "", false
	if len(vals) == 1 {
		external, ok = cutPrefixFold(vals[0], "Bearer ")
	}
	if !ok || external == "" {
		return string(edge.ReasonMissing)
	}
	tok, c, err := p.cfg.Exchanger.Exchange(r.Context(), external)
	if err != nil {
		var refusal *edge.Error
		if errors.As(err, &refusal) {
			return string(refusal.Reason)
		}
		p.log.Warn("proxy: minting a transaction token failed", slog.String(logkey.Error, err.Error()))
		return "txn_mint_failed"
	}
	if !h.cfg.KeepExternal {
		r.Header.Del("Authorization")
	}
	r.Header.Set(txn.Header, tok)
	p.m.token("minted")
	p.log.Debug("proxy: transaction token minted", slog.String(logkey.Txn, c.Txn), slog.String(logkey.TokenID, c.ID))
	return ""
}

// attachJWT adds this workload's JWT-SVID for the upstream's audience: in
// Authorization when the app set none, else in the configured header.
func (p *Proxy) attachJWT(r *http.Request, h *httpOutbound) error {
	if h.audience == "" {
		return nil
	}
	if p.cfg.Tokens == nil {
		return errors.New("proxy: no token source")
	}
	svid, err := p.cfg.Tokens.FetchJWTSVID(r.Context(), h.audience)
	if err != nil {
		return err
	}
	if r.Header.Get("Authorization") == "" {
		r.Header.Set("Authorization", "Bearer "+svid.Marshal())
	} else {
		r.Header.Set(h.cfg.TokenHeader, svid.Marshal())
	}
	p.m.token("attached")
	return nil
}

// httpAccess writes the access-log line of one request. The path logged is
// the canonical one; no header value is logged.
func (p *Proxy) httpAccess(l *listener, start time.Time, peer spiffeid.ID, r *http.Request, decision, reason string, status int) {
	attrs := []slog.Attr{
		slog.String(logkey.Direction, string(l.dir)),
		slog.String(logkey.Listener, l.name),
		slog.String(logkey.Transport, "http"),
		slog.String(logkey.Decision, decision),
		slog.String(logkey.PeerID, peer.String()),
		slog.String(logkey.Method, r.Method),
		slog.String(logkey.Proto, r.Proto),
		slog.Float64(logkey.DurationMS, float64(time.Since(start).Microseconds())/1000),
	}
	if reason != "" {
		attrs = append(attrs, slog.String(logkey.Reason, reason), slog.Int(logkey.Status, status))
	}
	if path, err := route.Normalize(r.URL.EscapedPath()); err == nil && len(path) <= 256 {
		attrs = append(attrs, slog.String(logkey.Path, path))
	}
	p.acc.LogAttrs(context.Background(), slog.LevelInfo, "access", attrs...)
}

// serveHTTPConn hands an authorized mTLS connection to the listener's HTTP
// server and tracks it until the server closes it, so that revalidation
// can close it and its slot is held while it is open.
//
// The connection must bring a complete first request within the header
// timeout (HandshakeTimeout) or it is closed with the reason
// "header_timeout": net/http bounds HTTP/1 request headers itself, but not
// an HTTP/2 connection that never completes a header block.
func (p *Proxy) serveHTTPConn(l *listener, tc *tls.Conn, cs *tls.ConnectionState, peer spiffeid.ID, notAfter time.Time) {
	c := p.newConn(l, cs, func() { tc.Close() })
	c.retire = func() {} // from now on responses ask the client to close (serveInboundHTTP)
	p.mu.Lock()
	p.conns[c] = struct{}{}
	p.groups[GroupName(cs.CurveID)]++
	p.mu.Unlock()
	p.m.started(l.dir)
	p.m.established(l.dir, cs)
	hc := &httpConn{c: c, closed: make(chan struct{})}
	l.httpIn.track(tc, hc)
	start := time.Now()
	timer := time.AfterFunc(p.cfg.HandshakeTimeout, func() {
		if !hc.served.Load() {
			tc.Close()
		}
	})
	if !l.httpIn.ln.give(tc) {
		tc.Close()
		close(hc.closed)
	}
	<-hc.closed // the slot is held until the HTTP server closes the connection
	timer.Stop()
	if !hc.served.Load() && time.Since(start) >= p.cfg.HandshakeTimeout {
		// Closed by the timer, or by net/http's own header timeout.
		p.m.refused(l.dir, "header_timeout", false)
		p.access(l, start, peer, cs, "deny", "header_timeout", relay.Result{}, "http")
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
	if ok {
		close(hc.closed)
	}
}
