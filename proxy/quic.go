package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"log/slog"
	"net"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/credflow/credflow/internal/logkey"
	"github.com/credflow/credflow/proxy/anomaly"
	"github.com/credflow/credflow/proxy/limit"
	"github.com/credflow/credflow/proxy/quicmux"
	"github.com/credflow/credflow/proxy/rawio"
	"github.com/credflow/credflow/proxy/relay"
	"github.com/credflow/credflow/reason"
)

// The proxy's side of QUIC between sidecars (the transport itself is
// package quicmux): the inbound listener's refusals, connections and
// streams are counted, logged and tracked like TCP ones, and each stream
// is relayed to the app; the outbound listener's pool reports its
// handshakes here (relayQUIC in modes.go uses its streams).

// listenQUIC binds an inbound listener's QUIC side on the UDP address
// addr.
func (p *Proxy) listenQUIC(l *listener, addr string) (*quicmux.Server, error) {
	tlsConf := l.tls.Clone()
	// quic-go completes handshakes itself: record refusals here.
	verify := tlsConf.VerifyConnection
	tlsConf.VerifyConnection = func(cs tls.ConnectionState) error {
		err := verify(cs)
		if err != nil {
			p.refuse(l, time.Now(), err, reason.HandshakeFailed, "quic")
		}
		return err
	}
	return quicmux.Listen(addr, quicmux.ServerConfig{TLS: tlsConf, Limits: p.cfg.QUIC, Retried: p.m.quicRetry})
}

// acceptQUIC accepts QUIC connections on an inbound listener.
func (p *Proxy) acceptQUIC(ctx context.Context, l *listener, srv *quicmux.Server) {
	for {
		qc, err := srv.Accept(ctx)
		if err != nil {
			if ctx.Err() == nil && !errors.Is(err, net.ErrClosed) {
				p.log.Warn("proxy: QUIC accept failed", slog.String(logkey.Listener, l.name), slog.String(logkey.Error, err.Error()))
			}
			return
		}
		p.wg.Go(func() { p.serveQUICConn(ctx, l, qc) })
	}
}

// serveQUICConn serves the streams of one authorized QUIC connection. The
// peer was verified and authorized in the handshake, once per connection.
func (p *Proxy) serveQUICConn(ctx context.Context, l *listener, qc *quicmux.Conn) {
	cs := qc.TLS()
	peer, _ := peerOf(cs)
	p.m.quicConn(l.dir)
	c := p.newConn(l, cs, qc.Revoke)
	p.track(c)
	defer p.untrack(c)
	for {
		s, err := qc.AcceptStream(ctx)
		if err != nil {
			return
		}
		if p.Draining() {
			s.Refuse(quicmux.CodeDraining)
			continue
		}
		if !p.slots.take(l.dir) {
			s.Refuse(quicmux.CodeAbort)
			p.m.refused(l.dir, reason.Limit, false)
			continue
		}
		l.conns.Add(1)
		p.wg.Go(func() {
			defer func() { p.slots.release(l.dir); l.conns.Done() }()
			release, ok := p.admitStream(ctx, l, cs, peer, s)
			if !ok {
				return
			}
			defer release()
			p.serveStream(ctx, l, cs, peer, s)
		})
	}
}

// admitStream applies the listener's connection limits to a stream, an
// app connection as a TCP one is: the peer's new connections per second,
// its open connections, the global budget. A stream refused is reset
// with CodeLimited. When it is admitted, release must be called once it
// ends.
func (p *Proxy) admitStream(ctx context.Context, l *listener, cs *tls.ConnectionState, peer spiffeid.ID, s *quicmux.Stream) (release func(), ok bool) {
	start := time.Now()
	lim := l.limiter.Load()
	if lim == nil {
		p.observe(l, anomaly.Observation{Subject: anomaly.Peer(peer), Time: start, Kind: anomaly.Connection, Route: l.name})
		return func() {}, true
	}
	release, _, ok = lim.Connect(peer, start)
	why := reason.Reason("")
	switch {
	case !ok:
		why = reason.RateLimited
	case lim.Config().Global.Connections:
		why, _ = p.checkGlobal(ctx, limit.Hit{Listener: l.name, Kind: limit.KindConnection, Peer: peer})
	}
	p.observe(l, anomaly.Observation{Subject: anomaly.Peer(peer), Time: start, Kind: anomaly.Connection, Route: l.name, Reason: why})
	if why == "" {
		return release, true
	}
	if ok {
		release()
	}
	s.Refuse(quicmux.CodeLimited)
	p.m.refused(l.dir, why, false)
	p.access(l, start, peer, cs, "deny", why, relay.Result{}, "quic")
	return nil, false
}

func (p *Proxy) serveStream(ctx context.Context, l *listener, cs *tls.ConnectionState, peer spiffeid.ID, s *quicmux.Stream) {
	start := time.Now()
	target, err := s.ReadHeader(time.Now().Add(p.cfg.HandshakeTimeout))
	if err != nil || (target != "" && target != l.name) {
		s.Refuse(quicmux.CodeBadHeader)
		p.m.refused(l.dir, reason.BadStreamHeader, false)
		p.access(l, start, peer, cs, "deny", reason.BadStreamHeader, relay.Result{}, "quic")
		return
	}
	p.m.quicStream(l.dir)
	app, err := (&net.Dialer{Timeout: p.cfg.DialTimeout}).DialContext(ctx, "tcp", l.target)
	if err != nil {
		s.Refuse(quicmux.CodeAppDown)
		p.m.refused(l.dir, reason.AppUnavailable, true)
		p.access(l, start, peer, cs, "error", reason.AppUnavailable, relay.Result{}, "quic")
		return
	}
	p.relay(ctx, l, start, peer, cs, s, rawio.Wrap(app), "quic")
}

// newQUICPool makes the QUIC pool of an outbound listener whose upstream
// listens for QUIC at addr.
func (p *Proxy) newQUICPool(l *listener, addr, target string) (*quicmux.Pool, error) {
	return quicmux.NewPool(quicmux.PoolConfig{
		Addr:          addr,
		Target:        target,
		TLS:           l.tls,
		SVIDs:         p.cfg.SVIDs,
		Limits:        p.cfg.QUIC,
		HeaderTimeout: p.cfg.HandshakeTimeout,
		Handshaken:    func(h quicmux.Handshake) { p.quicHandshaken(l, h) },
	})
}

// quicHandshaken records a handshake of an outbound listener's QUIC pool
// and tracks the connection it made.
func (p *Proxy) quicHandshaken(l *listener, h quicmux.Handshake) {
	p.m.quicHandshakeDone(l.dir, h.Took.Seconds())
	switch {
	case h.Err != nil && h.Backoff == 0:
		p.log.Debug("proxy: QUIC handshake refused", slog.String(logkey.Listener, l.name), slog.String(logkey.Error, h.Err.Error()))
	case h.Err != nil:
		p.log.Warn("proxy: QUIC handshake failed; using TCP", slog.String(logkey.Listener, l.name),
			slog.String(logkey.Error, h.Err.Error()), slog.Duration(logkey.Backoff, h.Backoff))
	default:
		p.m.quicConn(l.dir)
		// Checked again like any connection: revoked when the upstream no
		// longer matches expect or its chain no longer verifies, so that
		// no new stream rides on it; retired at MaxConnectionAge.
		qc := h.Conn
		c := p.newConn(l, qc.TLS(), qc.Revoke)
		c.retire = qc.Retire
		p.track(c)
		context.AfterFunc(qc.Context(), func() { p.untrack(c) })
	}
}
