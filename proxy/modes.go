package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/credflow/credflow/internal/logkey"
	"github.com/credflow/credflow/pqc"
	"github.com/credflow/credflow/proxy/authz"
	"github.com/credflow/credflow/proxy/capture"
	"github.com/credflow/credflow/proxy/quicmux"
	"github.com/credflow/credflow/proxy/rawio"
	"github.com/credflow/credflow/proxy/relay"
	"github.com/credflow/credflow/reason"
)

// mode is what a listener does with its socket, one type per listener
// mode: tcpInbound, httpInbound, tcpOutbound, httpOutbound, httpEgress
// and captureOutbound. The Proxy does, once for all of them, what they share:
// accepting under the connection budget, the mTLS handshake, tracking and
// revalidation, the access log and the metrics.
type mode interface {
	// bind binds the listener's sockets: l.ln, and any of the mode's own.
	bind(p *Proxy, l *listener) error
	// serve starts, in wg, the goroutines that take the listener's work
	// until ctx ends or its sockets close.
	serve(ctx context.Context, p *Proxy, l *listener, wg *sync.WaitGroup)
	// drain stops the mode's own sockets from taking new work and adds to
	// wg what must finish first (the Proxy closes l.ln and waits for the
	// listener's connections).
	drain(ctx context.Context, wg *sync.WaitGroup)
	// close closes what bind and serve opened, beyond l.ln.
	close()
	// swept runs after each revalidation of the established connections.
	swept()
}

// inboundMode serves the connections an inbound listener accepted, once
// the handshake has verified and authorized the peer.
type inboundMode interface {
	mode
	serveConn(ctx context.Context, p *Proxy, l *listener, tc *tls.Conn, cs *tls.ConnectionState, start time.Time)
}

// outboundMode serves the app connections an outbound listener accepted.
type outboundMode interface {
	mode
	serveApp(ctx context.Context, p *Proxy, l *listener, app net.Conn, start time.Time)
}

// bindTCP binds l.ln on l.addr.
func bindTCP(l *listener) (err error) {
	l.ln, err = net.Listen("tcp", l.addr)
	return err
}

// tcpInbound relays each authorized connection to the app, byte for byte;
// with a QUIC address, the streams of QUIC connections too.
type tcpInbound struct {
	quicAddr string
	quic     *quicmux.Server // once bound
}

func (m *tcpInbound) bind(p *Proxy, l *listener) (err error) {
	if err := bindTCP(l); err != nil {
		return err
	}
	if m.quicAddr != "" {
		m.quic, err = p.listenQUIC(l, m.quicAddr)
	}
	return err
}

func (m *tcpInbound) serve(ctx context.Context, p *Proxy, l *listener, wg *sync.WaitGroup) {
	wg.Go(func() { p.accept(ctx, l, l.ln) })
	if m.quic != nil {
		wg.Go(func() { p.acceptQUIC(ctx, l, m.quic) })
	}
}

func (m *tcpInbound) drain(context.Context, *sync.WaitGroup) {
	if m.quic != nil {
		m.quic.StopAccepting() // no new QUIC connections; new streams are refused
	}
}

func (m *tcpInbound) close() {
	if m.quic != nil {
		m.quic.Close()
	}
}

func (m *tcpInbound) swept() {}

func (m *tcpInbound) serveConn(ctx context.Context, p *Proxy, l *listener, tc *tls.Conn, cs *tls.ConnectionState, start time.Time) {
	peer, _ := peerOf(cs)
	app, err := (&net.Dialer{Timeout: p.cfg.DialTimeout}).DialContext(ctx, "tcp", l.target)
	if err != nil {
		tc.Close()
		p.m.refused(l.dir, reason.AppUnavailable, true)
		p.access(l, start, peer, cs, "error", reason.AppUnavailable, relay.Result{}, "tcp")
		p.log.Warn("proxy: app unreachable", slog.String(logkey.Listener, l.name), slog.String(logkey.Error, err.Error()))
		return
	}
	// a = the peer (TLS), b = the app: AToB is to_app, BToA from_app.
	p.relay(ctx, l, start, peer, cs, tc, rawio.Wrap(app), "tcp")
}

// httpInbound's mode: authorized connections go to the listener's HTTP
// server, which authorizes each request (http.go).

func (h *httpInbound) bind(p *Proxy, l *listener) error {
	if err := bindTCP(l); err != nil {
		return err
	}
	h.ln = newChanListener(l.ln.Addr())
	return nil
}

func (h *httpInbound) serve(ctx context.Context, p *Proxy, l *listener, wg *sync.WaitGroup) {
	wg.Go(func() { h.srv.Serve(h.ln) })
	wg.Go(func() { p.accept(ctx, l, l.ln) })
}

func (h *httpInbound) drain(ctx context.Context, wg *sync.WaitGroup) {
	h.own.Shutdown()                      // in-flight requests finish
	wg.Go(func() { h.srv.Shutdown(ctx) }) // likewise
}

func (h *httpInbound) close() {
	h.own.Close()
	h.srv.Close()
	if h.ln != nil {
		h.ln.Close()
	}
	h.app.Close()
}

func (h *httpInbound) swept() { h.app.Sweep() }

func (h *httpInbound) serveConn(_ context.Context, p *Proxy, l *listener, tc *tls.Conn, cs *tls.ConnectionState, _ time.Time) {
	p.serveHTTPConn(l, h, tc, cs)
}

// tcpOutbound relays each app connection to the upstream over mTLS: over a
// stream of a pooled QUIC connection when the listener has a QUIC
// upstream and it answers, else over TCP.
type tcpOutbound struct {
	quicUpstream, quicTarget string
	quic                     *quicmux.Pool // once bound
}

func (m *tcpOutbound) bind(p *Proxy, l *listener) (err error) {
	if err := bindTCP(l); err != nil {
		return err
	}
	if m.quicUpstream != "" {
		m.quic, err = p.newQUICPool(l, m.quicUpstream, m.quicTarget)
	}
	return err
}

func (m *tcpOutbound) serve(ctx context.Context, p *Proxy, l *listener, wg *sync.WaitGroup) {
	wg.Go(func() { p.accept(ctx, l, l.ln) })
}

func (m *tcpOutbound) drain(context.Context, *sync.WaitGroup) {}

func (m *tcpOutbound) close() {
	if m.quic != nil {
		m.quic.Close()
	}
}

func (m *tcpOutbound) swept() {}

func (m *tcpOutbound) serveApp(ctx context.Context, p *Proxy, l *listener, app net.Conn, start time.Time) {
	if p.refuseCaller(l, app, netip.AddrPort{}, start) {
		return
	}
	app = rawio.Wrap(app)
	if m.quic != nil && p.relayQUIC(ctx, l, m.quic, app, start) {
		return
	}
	p.originate(ctx, l, app, l.target, nil, start)
}

// relayQUIC relays app over a stream of the QUIC pool and reports whether
// it is done with app: false when QUIC is unavailable and TCP should be
// tried.
func (p *Proxy) relayQUIC(ctx context.Context, l *listener, pool *quicmux.Pool, app net.Conn, start time.Time) bool {
	s, err := pool.Open(ctx)
	if err == nil {
		cs := s.Conn().TLS()
		peer, _ := peerOf(cs)
		p.relay(ctx, l, start, peer, cs, app, s, "quic") // closing s gives its place on the connection back
		return true
	}
	var te *quic.TransportError
	if errors.As(err, &te) && te.ErrorCode.IsCryptoError() {
		// The TLS handshake itself failed: one side refused the other,
		// and TCP, under the same policy, would fare no better.
		app.Close()
		fallback := reason.PeerRefused
		if l.kex == pqc.HybridRequired && te.Remote {
			fallback = reason.PQRequired
		}
		p.refuse(l, start, err, fallback, "quic")
		return true
	}
	why := reason.HandshakeFailed
	switch {
	case errors.Is(err, quicmux.ErrRecentlyFailed):
		why = reason.RecentlyFailed
	case errors.Is(err, quicmux.ErrStreamLimit):
		why = reason.StreamLimit
	case errors.Is(err, context.DeadlineExceeded) || isTimeout(err):
		why = reason.Timeout
	}
	p.m.quicFallback(why)
	p.log.Debug("proxy: QUIC unavailable, using TCP", slog.String(logkey.Listener, l.name),
		slog.String(logkey.Reason, string(why)), slog.String(logkey.Error, err.Error()))
	return false
}

// httpOutbound's mode: the listener's HTTP server takes the app's
// connections and sends their requests over a pool of HTTP/2 mTLS
// connections (http.go, httppool.go).

func (h *httpOutbound) bind(_ *Proxy, l *listener) error {
	if err := bindTCP(l); err != nil {
		return err
	}
	h.rest = newChanListener(l.ln.Addr())
	return nil
}

func (h *httpOutbound) serve(_ context.Context, p *Proxy, l *listener, wg *sync.WaitGroup) {
	wg.Go(func() { h.srv.Serve(h.rest) })
	wg.Go(func() { h.serveApps(p, l) })
}

func (h *httpOutbound) drain(context.Context, *sync.WaitGroup) {}

func (h *httpOutbound) close() {
	h.own.Close()
	h.srv.Close()
	if h.rest != nil {
		h.rest.Close()
	}
	h.pool.closeIdle()
	h.h1.Close()
}

func (h *httpOutbound) swept() {
	h.pool.sweep()
	h.h1.Sweep()
}

// captureOutbound takes the connections the netfilter rules of `credflow
// init` redirect to it, on both address families' loopback, and relays
// each to its original destination, expecting there the identities its
// destination rules name.
type captureOutbound struct {
	capture *capture.Capture
	twin    net.Listener // the other family's loopback address (capture.Listen)
	// egress are the egress listeners destinations name (Destination.Egress).
	egress map[string]*httpEgress
}

func (m *captureOutbound) bind(_ *Proxy, l *listener) (err error) {
	l.ln, m.twin, err = capture.Listen(l.addr)
	return err
}

func (m *captureOutbound) serve(ctx context.Context, p *Proxy, l *listener, wg *sync.WaitGroup) {
	wg.Go(func() { p.accept(ctx, l, l.ln) })
	if m.twin != nil {
		wg.Go(func() { p.accept(ctx, l, m.twin) })
	}
}

func (m *captureOutbound) drain(context.Context, *sync.WaitGroup) {}

func (m *captureOutbound) close() {
	if m.twin != nil {
		m.twin.Close()
	}
}

func (m *captureOutbound) swept() {}

func (m *captureOutbound) serveApp(ctx context.Context, p *Proxy, l *listener, app net.Conn, start time.Time) {
	dst, err := capture.Target(app, l.ln.Addr())
	if err != nil {
		app.Close()
		p.m.refused(l.dir, reason.NoOriginalDestination, false)
		p.access(l, start, spiffeid.ID{}, nil, "deny", reason.NoOriginalDestination, relay.Result{}, "tcp")
		return
	}
	// The app's socket is connected to the original destination, not to
	// this listener.
	if p.refuseCaller(l, app, dst, start) {
		return
	}
	d := m.capture.Match(ctx, dst)
	if d != nil && d.Egress != "" {
		m.egress[d.Egress].serveCaptured(ctx, app, dst)
		return
	}
	self, err := p.cfg.SVIDs.GetX509SVID()
	if err != nil {
		app.Close()
		p.m.refused(l.dir, reason.NoIdentity, true)
		return
	}
	pol := capture.Policy(d, *l.policy.Load(), self.ID.TrustDomain())
	p.originate(context.WithValue(ctx, expectKey{}, &pol), l, app, dst.String(), &pol, start)
}

// originate dials target, makes the mTLS handshake as l's client and relays
// app to it. expect, for a captured connection, is the identities its
// destination accepts (the handshake verified the chain only).
func (p *Proxy) originate(ctx context.Context, l *listener, app net.Conn, target string, expect *authz.Policy, start time.Time) {
	raw, err := (&net.Dialer{Timeout: p.cfg.DialTimeout}).DialContext(ctx, "tcp", target)
	if err != nil {
		app.Close()
		p.m.refused(l.dir, reason.UpstreamUnavailable, true)
		p.access(l, start, spiffeid.ID{}, nil, "error", reason.UpstreamUnavailable, relay.Result{}, "tcp")
		p.log.Warn("proxy: upstream unreachable", slog.String(logkey.Listener, l.name), slog.String(logkey.Error, err.Error()))
		return
	}
	app = rawio.Wrap(app)
	tc := tls.Client(relay.Batching(rawio.Wrap(raw)), l.tls)
	cs, err := p.handshake(ctx, l, tc)
	if err != nil {
		tc.Close()
		app.Close()
		fallback := reason.PeerRefused
		if l.kex == pqc.HybridRequired && refusedByPeer(err) {
			// We offered hybrid groups only; a server that fails the
			// handshake on that has none of them.
			fallback = reason.PQRequired
		}
		p.refuse(l, start, err, fallback, "tcp")
		return
	}
	peer, _ := peerOf(cs)
	if expect != nil && !expect.Allows(peer) {
		tc.Close()
		app.Close()
		p.m.refused(l.dir, reason.Unauthorized, false)
		p.access(l, start, peer, cs, "deny", reason.Unauthorized, relay.Result{}, "tcp")
		return
	}
	// a = the app, b = the peer (TLS): AToB is from_app, BToA to_app.
	p.relay(ctx, l, start, peer, cs, app, tc, "tcp")
}

// The running settings of a listener's mode, for Apply's comparison with a
// new configuration.

func (l *listener) quicListen() string {
	if m, ok := l.mode.(*tcpInbound); ok {
		return m.quicAddr
	}
	return ""
}

func (l *listener) quicUpstream() (addr, target string) {
	if m, ok := l.mode.(*tcpOutbound); ok {
		return m.quicUpstream, m.quicTarget
	}
	return "", ""
}

func (l *listener) httpIn() *httpInbound {
	h, _ := l.mode.(*httpInbound)
	return h
}

func (l *listener) httpOut() *httpOutbound {
	h, _ := l.mode.(*httpOutbound)
	return h
}

func (l *listener) egress() bool {
	_, ok := l.mode.(*httpEgress)
	return ok
}

func (l *listener) captures() bool {
	_, ok := l.mode.(*captureOutbound)
	return ok
}

// errNotBound names a listener Serve was given before Listen.
func errNotBound(l *listener) error {
	return fmt.Errorf("proxy: listener %q is not bound; call Listen", l.name)
}
