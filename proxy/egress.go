package proxy

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/credflow/credflow/credential"
	"github.com/credflow/credflow/internal/logkey"
	"github.com/credflow/credflow/proxy/rawio"
	"github.com/credflow/credflow/reason"
)

// Egress makes an outbound listener the app's way to an external HTTPS
// API, a server outside the mesh: the app speaks plain HTTP to the
// listener (HTTP/1.1 or h2c), and the sidecar originates TLS to the
// listener's Upstream (host:port), verifying the server's certificate for
// ServerName against RootCAs (never skipped), over HTTP/2 or HTTP/1.1 as
// the server offers. Each request goes with its method, its canonical path
// (a path with none is refused, bad_path) and its query; Filters (the
// credential rules) run on it first. TRACE is refused: the server would
// echo the injected credential to the app.
type Egress struct {
	// ServerName is the name the server's certificate must hold, sent as
	// SNI and as the Host of each request; default Upstream's host.
	ServerName string
	// RootCAs verify the server's certificate; nil means the system roots.
	RootCAs *x509.CertPool
	// Inject, if set, puts credentials into the app's requests: a request
	// that has no valid credential for a rule covering it is answered 503
	// credential_unavailable and not forwarded. The access log names the
	// credentials injected.
	Inject *credential.Injector
	// Filters run on every request after the listener's own (the local
	// caller, the path), in order; the first refusal answers it.
	Filters []Filter
}

// maxEgressIdleConns bounds the idle connections an egress listener keeps
// to its external server.
const maxEgressIdleConns = 16

// httpEgress serves an egress listener.
type httpEgress struct {
	cfg     Egress
	srv     *http.Server
	tr      *http.Transport
	filters pipeline
	// captured takes the connections a capture listener hands over: the
	// app called the external API's own address (capture.Destination's
	// Egress).
	captured *chanListener
}

func (p *Proxy) newHTTPEgress(l *listener, cfg Egress) (*httpEgress, error) {
	host, port, err := net.SplitHostPort(l.target)
	if err != nil {
		return nil, fmt.Errorf("proxy: listener %q: upstream %q is not host:port", l.name, l.target)
	}
	if cfg.ServerName == "" {
		cfg.ServerName = host
	}
	authority := cfg.ServerName
	if port != "443" {
		authority = net.JoinHostPort(cfg.ServerName, port)
	}
	e := &httpEgress{cfg: cfg, captured: newChanListener(nil)}
	e.filters = pipeline{callerFilter{p: p, l: l}, FilterFunc(egressRequest)}
	if cfg.Inject != nil {
		e.filters = append(e.filters, injectFilter{cfg.Inject})
	}
	e.filters = append(e.filters, cfg.Filters...)
	dialer := &net.Dialer{Timeout: p.cfg.DialTimeout}
	e.tr = &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			c, err := dialer.DialContext(ctx, network, addr)
			if err != nil {
				return nil, err
			}
			return rawio.Wrap(c), nil
		},
		TLSClientConfig: &tls.Config{
			ServerName: cfg.ServerName,
			RootCAs:    cfg.RootCAs,
			MinVersion: tls.VersionTLS12,
		},
		TLSHandshakeTimeout: p.cfg.HandshakeTimeout,
		ForceAttemptHTTP2:   true,
		MaxIdleConnsPerHost: maxEgressIdleConns,
		IdleConnTimeout:     p.cfg.IdleTimeout,
	}
	rp := &httputil.ReverseProxy{
		BufferPool: copyBuffers,
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.Out.URL.Scheme, pr.Out.URL.Host = "https", l.target
			pr.Out.Host = authority
		},
		Transport:     p.traced(l, connectBound{rt: e.tr, limit: p.cfg.DialTimeout + p.cfg.HandshakeTimeout}, "credflow egress "+l.name+" to "+l.target),
		FlushInterval: responseFlush,
		ErrorLog:      slog.NewLogLogger(p.log.Handler(), slog.LevelDebug),
		ModifyResponse: func(resp *http.Response) error {
			if rec, ok := resp.Request.Context().Value(outboundRequestKey{}).(*outboundRequest); ok {
				rec.set("allow", "", resp.StatusCode, spiffeid.ID{})
				rec.respond(resp)
			}
			return nil
		},
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			rec, _ := r.Context().Value(outboundRequestKey{}).(*outboundRequest)
			if r.Context().Err() != nil {
				p.m.refused(l.dir, reason.ClientCanceled, true)
				rec.set("error", reason.ClientCanceled, 0, spiffeid.ID{})
				abortClientGone()
			}
			why, isError := reason.UpstreamUnavailable, true
			if errors.As(err, new(*tls.CertificateVerificationError)) {
				why, isError = reason.UpstreamUntrusted, false
				p.log.Warn("proxy: external server's certificate does not verify", slog.String(logkey.Listener, l.name),
					slog.String(logkey.Upstream, l.target), slog.String(logkey.Error, err.Error()))
			} else {
				p.log.Debug("proxy: external request failed", slog.String(logkey.Listener, l.name), slog.String(logkey.Error, err.Error()))
			}
			p.m.refused(l.dir, why, isError)
			rec.set(decisionOf(isError), why, http.StatusBadGateway, spiffeid.ID{})
			deny(w, r, why)
		},
	}
	protocols := new(http.Protocols)
	protocols.SetHTTP1(true)
	protocols.SetUnencryptedHTTP2(true)
	upstream := slog.String(logkey.Upstream, l.target)
	e.srv = &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			start := time.Now()
			rec := &outboundRequest{decision: "allow"}
			var ctx context.Context
			ctx, rec.span = p.serverSpan(l, r)
			r = r.WithContext(context.WithValue(ctx, outboundRequestKey{}, rec))
			defer func() { rec.log(p, l, start, r) }() // a response cut off mid-body panics
			req := &Request{HTTP: r, Listener: l.name}
			why := e.filters.run(req)
			rec.extra, rec.hooks = append(req.Attrs, upstream), req.responded
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
			hc := &httpConn{nc: c}
			hc.caller.nc = c
			if !l.callers.Load().Any() {
				hc.caller.get() // while the app's socket is surely open
			}
			return context.WithValue(ctx, httpConnKey{}, hc)
		},
	}
	return e, nil
}

// egressRequest refuses what an egress listener does not forward (TRACE,
// a path with no canonical form) and sets the canonical path, which the
// credential rules judge and the request carries out.
func egressRequest(r *Request) reason.Reason {
	if r.HTTP.Method == http.MethodTrace {
		return reason.TraceRefused
	}
	if why := normalizePath(r); why != "" {
		return why
	}
	r.HTTP.URL.Path, r.HTTP.URL.RawPath = r.Path, ""
	return ""
}

// injectFilter puts the credentials of its rules into the request, and
// reports the upstream's answer to them (a 401 refreshes a credential).
type injectFilter struct{ inj *credential.Injector }

func (f injectFilter) Filter(r *Request) reason.Reason {
	in, why := f.inj.Inject(r.HTTP, r.Path)
	if why != "" {
		return why
	}
	if names := in.Names(); len(names) > 0 {
		r.Attrs = append(r.Attrs, slog.String(logkey.Credential, strings.Join(names, ",")))
		r.OnResponse(func(resp *http.Response) { in.Responded(resp.StatusCode) })
	}
	return ""
}

// httpEgress's mode: the listener's HTTP server takes the app's
// connections and sends their requests to the external server.

func (e *httpEgress) bind(_ *Proxy, l *listener) error {
	if err := bindTCP(l); err != nil {
		return err
	}
	e.captured.addr = l.ln.Addr()
	return nil
}

func (e *httpEgress) serve(_ context.Context, _ *Proxy, l *listener, wg *sync.WaitGroup) {
	wg.Go(func() { e.srv.Serve(rawio.Listener(l.ln)) })
	wg.Go(func() { e.srv.Serve(e.captured) })
}

func (e *httpEgress) drain(context.Context, *sync.WaitGroup) {}

func (e *httpEgress) close() {
	e.captured.Close()
	e.srv.Close()
	e.tr.CloseIdleConnections()
}

// serveCaptured serves a connection the capture listener took for the
// external API, as if the app had called the listener, and returns when
// it is closed: the capture listener's slot is held until then.
func (e *httpEgress) serveCaptured(ctx context.Context, app net.Conn, dst netip.AddrPort) {
	c := &capturedConn{Conn: rawio.Wrap(app), dst: dst, closed: make(chan struct{})}
	if !e.captured.give(c) {
		app.Close()
		return
	}
	select {
	case <-c.closed:
	case <-ctx.Done():
		c.Close()
	}
}

// capturedConn is a captured connection served by an egress listener: its
// caller is found by the original destination, and its closing is
// reported.
type capturedConn struct {
	net.Conn
	dst    netip.AddrPort
	once   sync.Once
	closed chan struct{}
}

func (c *capturedConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() { close(c.closed) })
	return err
}

func (e *httpEgress) swept() {}
