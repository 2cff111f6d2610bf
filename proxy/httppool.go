package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/credflow/credflow/pqc"
	"github.com/credflow/credflow/proxy/h1"
	"github.com/credflow/credflow/proxy/mtls"
	"github.com/credflow/credflow/proxy/rawio"
	"github.com/credflow/credflow/reason"
)

// upstreamPool is an HTTP outbound listener's client to its upstream
// sidecar: HTTP/2 over pooled mTLS connections. A pooled connection
// carries two certificates that expire, the SVID it presented and the
// peer's, and the peer closes it once ours has expired, failing whatever
// request is on it. So connections are replaced ahead of time, as QUIC
// connections are (quicmux.Pool): a transport takes new requests until the
// renewal point (renewAt) of the first of its connections; then a fresh
// transport (new connections, current certificates) takes over, and the
// old one's connections close as they fall idle.
type upstreamPool struct {
	build func(g *poolGen) *http.Transport
	conns sync.Map // *tls.Conn -> *upstreamConn, until closedKeep after it closed

	mu  sync.Mutex
	cur *poolGen
	old []*poolGen
}

// poolGen is one transport of an upstreamPool and what its dials saw.
type poolGen struct {
	tr *http.Transport

	mu      sync.Mutex
	open    int       // connections open
	renewAt time.Time // zero until the first connection
}

func newUpstreamPool(build func(g *poolGen) *http.Transport) *upstreamPool {
	u := &upstreamPool{build: build}
	u.cur = u.newGen()
	return u
}

func (u *upstreamPool) newGen() *poolGen {
	g := &poolGen{}
	g.tr = u.build(g)
	return g
}

// RoundTrip sends r on the current transport, replacing it first if it is
// due.
func (u *upstreamPool) RoundTrip(r *http.Request) (*http.Response, error) {
	u.mu.Lock()
	if g := u.cur; g.due(time.Now()) {
		u.old = append(u.old, g)
		u.cur = u.newGen()
		g.tr.CloseIdleConnections()
	}
	tr := u.cur.tr
	u.mu.Unlock()
	return tr.RoundTrip(r)
}

// upstreamH1Conns bounds an HTTP outbound listener's HTTP/1.1 connections
// to its upstream sidecar; a request finding them all in use goes over
// HTTP/2 instead.
const upstreamH1Conns = 64

// newUpstreamH1 is h's client for the requests of HTTP/1.1 apps: one
// request at a time per mTLS connection, written and read on the request's
// own goroutine. Compared with the HTTP/2 pool it saves, per request, the
// hand-offs between goroutines of both sidecars' HTTP/2 code (the
// inbound's server reads and writes frames on goroutines of its own) and
// the frame flushes, which were most of an HTTP sidecar's CPU
// (bench/README.md, "One connection per request in flight").
func (p *Proxy) newUpstreamH1(l *listener, h *httpOutbound) *h1.Client {
	conf := l.tls.Clone()
	conf.NextProtos = []string{"http/1.1"}
	return &h1.Client{
		Dial: func(ctx context.Context) (net.Conn, error) { return p.dialUpstream(ctx, l, h, conf, nil) },
		// The inbound sidecar closes a connection idle for IdleTimeout;
		// this side lets go of it first.
		IdleTimeout: p.cfg.IdleTimeout * 9 / 10,
		MaxConns:    upstreamH1Conns,
		NoWait:      true,
		Reuse: func(nc net.Conn) bool {
			uc := h.pool.conn(nc)
			now := time.Now()
			return uc != nil && !uc.retiring.Load() && now.Before(uc.renewAt) && h.offer.usable(now)
		},
	}
}

// upstreamRoute sends an HTTP outbound listener's requests upstream: those
// of HTTP/1.1 apps that h1 speaks over h1, the others (h2c and gRPC apps,
// upgrades, large or streamed bodies), and any that find h1 full, over the
// HTTP/2 pool.
//
// h1 opens a connection per request in flight, so it is used only once
// the upstream has said that it does not limit a caller's connections, and
// not for limitedHold after it said it does (ConnectionsHeader, connOffer);
// the first requests go over HTTP/2. An upstream that closes a new HTTP/1.1
// connection before answering on it all the same (an overload limit, say)
// sends every request over HTTP/2 for h1Pause; the request is sent there
// too if it may be sent again (h1.Resend), and fails otherwise.
type upstreamRoute struct {
	h1       http.RoundTripper // an *h1.Client, bounded (connectBound)
	h2       http.RoundTripper
	offer    *connOffer    // whether the upstream takes a connection per request in flight
	h1Paused *atomic.Int64 // until then (Unix ns), HTTP/2 only
}

// h1Pause is how long an HTTP outbound listener sends nothing over
// HTTP/1.1 after the upstream closed a new connection unanswered.
const h1Pause = 30 * time.Second

func (u upstreamRoute) RoundTrip(r *http.Request) (*http.Response, error) {
	if now := time.Now(); r.ProtoMajor != 1 || !u.offer.usable(now) || !h1.Eligible(r) || now.UnixNano() < u.h1Paused.Load() {
		return u.h2.RoundTrip(r)
	}
	// The body in memory, read before any wait for a connection (a slow
	// upload is not the upstream's delay), can go either way, and again.
	r, err := h1.InMemory(r)
	if err != nil {
		return nil, err
	}
	resp, err := u.h1.RoundTrip(r)
	switch {
	case errors.Is(err, h1.ErrFull):
		// At once, or once a first attempt on a reused connection had
		// failed where sending r again was safe.
		if again, rerr := h1.Rewind(r); rerr == nil {
			return u.h2.RoundTrip(again)
		}
	case errors.Is(err, h1.ErrNoResponse):
		u.h1Paused.Store(time.Now().Add(h1Pause).UnixNano())
		if again, ok := h1.Resend(r); ok {
			return u.h2.RoundTrip(again)
		}
	}
	return resp, err
}

// closedKeep is how long the record of a closed connection is kept: the
// HTTP/2 client keeps a connection that closed before its first request in
// its pool for up to 5 s, handing it to requests that then fail on it.
const closedKeep = 10 * time.Second

// conn returns the record of a connection the pool dialled, or nil.
func (u *upstreamPool) conn(c net.Conn) *upstreamConn {
	uc, _ := u.conns.Load(c)
	r, _ := uc.(*upstreamConn)
	return r
}

// sweep replaces the current transport if it is due (a pool no request
// has used since, its HTTP/1.1 apps' requests all going over h1, would
// keep its connection past its renewal point), closes the idle
// connections of replaced transports and forgets those with none left
// open, and the records of connections closed for closedKeep.
func (u *upstreamPool) sweep() {
	now := time.Now()
	u.conns.Range(func(c, uc any) bool {
		if at := uc.(*upstreamConn).closedAt(); !at.IsZero() && now.Sub(at) > closedKeep {
			u.conns.Delete(c)
		}
		return true
	})
	u.mu.Lock()
	defer u.mu.Unlock()
	if g := u.cur; g.due(now) {
		u.old = append(u.old, g)
		u.cur = u.newGen()
	}
	kept := u.old[:0]
	for _, g := range u.old {
		g.tr.CloseIdleConnections()
		if g.openConns() > 0 {
			kept = append(kept, g)
		}
	}
	clear(u.old[len(kept):])
	u.old = kept
}

// retire moves new requests off g's transport (a fresh one takes them) and
// closes its idle connections; the others close as they fall idle (sweep).
func (u *upstreamPool) retire(g *poolGen) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.cur == g {
		u.old = append(u.old, g)
		u.cur = u.newGen()
	}
	g.tr.CloseIdleConnections()
}

// closeIdle closes every idle connection, at shutdown.
func (u *upstreamPool) closeIdle() {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.cur.tr.CloseIdleConnections()
	for _, g := range u.old {
		g.tr.CloseIdleConnections()
	}
}

func (g *poolGen) due(now time.Time) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return !g.renewAt.IsZero() && !now.Before(g.renewAt)
}

func (g *poolGen) openConns() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.open
}

// dialed counts a new connection and returns raw wrapped to count its
// closing.
func (g *poolGen) dialed(raw net.Conn) *countedConn {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.open++
	return &countedConn{Conn: raw, g: g}
}

// countedConn tells its poolGen, if any, when it closes, and runs onClose
// if set.
type countedConn struct {
	net.Conn
	g       *poolGen
	onClose func() // set before the connection is handed to the transport
	once    sync.Once
}

// NetConn returns the socket, for h1's look at an idle connection.
func (c *countedConn) NetConn() net.Conn { return c.Conn }

func (c *countedConn) Close() error {
	c.once.Do(func() {
		if c.g != nil {
			c.g.mu.Lock()
			c.g.open--
			c.g.mu.Unlock()
		}
		if c.onClose != nil {
			c.onClose()
		}
	})
	return c.Conn.Close()
}

// upstreamConn is a pooled connection to the upstream sidecar. It is
// counted as an established connection (metrics, NegotiatedGroups) once a
// response has come over it, as a relayed TCP connection is once the
// peer has not refused it: in TLS 1.3 the server refuses a client
// certificate after the client's handshake has completed.
type upstreamConn struct {
	cs     *tls.ConnectionState
	peer   spiffeid.ID
	closed chan struct{}
	// h1 marks a connection of the HTTP/1.1 client; renewAt and retiring
	// end its reuse (h1.Client.Reuse).
	h1       bool
	renewAt  time.Time
	retiring atomic.Bool

	mu                 sync.Mutex
	confirmed, refused bool
	endedAt            time.Time // when it closed
}

// closedAt is when uc closed, or zero.
func (uc *upstreamConn) closedAt() time.Time {
	uc.mu.Lock()
	defer uc.mu.Unlock()
	return uc.endedAt
}

// closeGrace is how long a request that failed on a fresh pooled
// connection waits for the connection to close, to tell a refusal by the
// upstream from a failure of the request alone.
const closeGrace = time.Second

// refusedUs reports whether err, failing a request on uc, means that the
// upstream refused this side: a TLS alert from it, or, on a connection
// that never carried a response, a reset, a broken pipe (our write raced
// its close after the alert) or the connection closing. The HTTP/2 client
// reports a connection closed before its first request was sent only as
// "could not be established", and closes it just after. Like
// refusedByPeer for relayed connections.
func (uc *upstreamConn) refusedUs(err error) bool {
	if remoteAlert(err) {
		return true
	}
	if uc == nil || uc.wasConfirmed() {
		return false
	}
	if refusedByPeer(err) {
		return true
	}
	if uc.h1 {
		// An HTTP/1.1 connection reports the upstream's close as it is;
		// an end without an alert is the upstream failing the request.
		return false
	}
	t := time.NewTimer(closeGrace)
	defer t.Stop()
	select {
	case <-uc.closed:
		return !uc.wasConfirmed()
	case <-t.C:
		return false
	}
}

func (uc *upstreamConn) wasConfirmed() bool {
	uc.mu.Lock()
	defer uc.mu.Unlock()
	return uc.confirmed
}

// upstreamRefusal fails a request whose pooled connection could not be
// made for a reason of policy: this side refused the upstream's identity
// or key exchange, or the upstream refused this side.
type upstreamRefusal struct {
	why  reason.Reason
	peer spiffeid.ID // the refused upstream, if this side refused it
	err  error
}

func (e *upstreamRefusal) Error() string {
	return "proxy: upstream connection refused (" + string(e.why) + "): " + e.err.Error()
}

func (e *upstreamRefusal) Unwrap() error { return e.err }

// remoteAlert reports whether err is a TLS alert from the peer.
func remoteAlert(err error) bool {
	var oe *net.OpError
	return errors.As(err, &oe) && oe.Op == "remote error"
}

// upstreamResponded counts uc as established on the first response over
// it.
func (p *Proxy) upstreamResponded(l *listener, uc *upstreamConn) {
	uc.mu.Lock()
	first, ended := !uc.confirmed, !uc.endedAt.IsZero()
	uc.confirmed = true
	uc.mu.Unlock()
	if !first {
		return
	}
	p.mu.Lock()
	p.groups[GroupName(uc.cs.CurveID)]++
	p.mu.Unlock()
	if !ended {
		p.m.started(l.dir) // upstreamClosed ends it
	}
	p.m.established(l.dir, uc.cs)
	if p.cfg.KeyExchange.Classical(uc.cs.CurveID, uc.peer.TrustDomain()) {
		p.m.classicalAccepted(l.dir, uc.peer.TrustDomain().Name())
	}
}

// upstreamRefusedUs counts a refusal by the upstream, once per
// connection (uc, if known), and returns the upstream's ID if known.
func (p *Proxy) upstreamRefusedUs(l *listener, uc *upstreamConn) spiffeid.ID {
	if uc == nil {
		p.m.refused(l.dir, reason.PeerRefused, false)
		return spiffeid.ID{}
	}
	uc.mu.Lock()
	first := !uc.refused
	uc.refused = true
	uc.mu.Unlock()
	if first {
		p.m.refused(l.dir, reason.PeerRefused, false)
	}
	return uc.peer
}

// upstreamClosed ends uc's count as an active connection. It runs once.
func (p *Proxy) upstreamClosed(l *listener, uc *upstreamConn) {
	uc.mu.Lock()
	was := uc.confirmed
	uc.endedAt = time.Now()
	uc.mu.Unlock()
	close(uc.closed)
	if was {
		p.m.finished(l.dir, 0, 0)
	}
}

// dialUpstream dials an HTTP outbound listener's upstream and completes
// the mTLS handshake; g learns of the connection and its certificates'
// first expiry. The connection is tracked like any other: closed when the
// upstream no longer matches expect or its chain no longer verifies, and
// retired at MaxConnectionAge.
//
// With g nil the connection is one of h.h1's (HTTP/1.1): it is not reused
// past its renewal point, and retiring it closes it once idle.
func (p *Proxy) dialUpstream(ctx context.Context, l *listener, h *httpOutbound, conf *tls.Config, g *poolGen) (net.Conn, error) {
	raw, err := (&net.Dialer{Timeout: p.cfg.DialTimeout}).DialContext(ctx, "tcp", l.target)
	if err != nil {
		return nil, err // counted per request by the ErrorHandler
	}
	// tls.Client wraps the counted connection: net/http must see a
	// *tls.Conn to speak HTTP/2 on it.
	raw = rawio.Wrap(raw)
	counted := &countedConn{Conn: raw}
	if g != nil {
		counted = g.dialed(raw)
	}
	tc := tls.Client(counted, conf)
	cs, err := p.handshake(ctx, l, tc)
	if err != nil {
		counted.Close()
		fallback := reason.PeerRefused
		if l.kex == pqc.HybridRequired && remoteAlert(err) {
			// We offered hybrid groups only; a server that fails the
			// handshake on that has none of them.
			fallback = reason.PQRequired
		}
		p.refuse(l, time.Now(), err, fallback, "tcp")
		// The requests waiting for the connection learn why, when it is
		// policy; anything else (a timeout, garbage) is the upstream
		// being unavailable.
		var r *mtls.Refusal
		switch {
		case errors.As(err, &r):
			return nil, &upstreamRefusal{why: r.Reason, peer: r.Peer, err: err}
		case remoteAlert(err):
			return nil, &upstreamRefusal{why: fallback, err: err}
		}
		return nil, err
	}
	end := cs.PeerCertificates[0].NotAfter
	if svid, err := p.cfg.SVIDs.GetX509SVID(); err == nil && svid.Certificates[0].NotAfter.Before(end) {
		end = svid.Certificates[0].NotAfter
	}
	uc := &upstreamConn{cs: cs, closed: make(chan struct{}), h1: g == nil, renewAt: renewAt(end, time.Now())}
	uc.peer, _ = peerOf(cs)
	h.pool.conns.Store(tc, uc)
	// Tracked for revalidation (policy, trust, age) while open.
	c := p.newConn(l, cs, func() { tc.Close() })
	if g != nil {
		g.expires(end)
		c.retire = func() { h.pool.retire(g) }
	} else {
		c.retire = func() {
			uc.retiring.Store(true)
			h.h1.Evict(tc)
		}
	}
	p.track(c)
	counted.onClose = func() {
		p.untrack(c)
		p.upstreamClosed(l, uc)
	}
	return tc, nil
}

// renewPercent is the share of a pooled connection's lifetime after which
// it is replaced; the same as for QUIC connections.
const renewPercent = 80

// renewAt is when a connection should be replaced: after renewPercent of
// the time left until end, the first expiry of our certificate and the
// peer's, so that no request starts on a connection close to being cut.
func renewAt(end, now time.Time) time.Time {
	return now.Add(end.Sub(now) * renewPercent / 100)
}

// expires lowers the renewal point to that of a connection whose first
// certificate expiry is end.
func (g *poolGen) expires(end time.Time) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if at := renewAt(end, time.Now()); g.renewAt.IsZero() || at.Before(g.renewAt) {
		g.renewAt = at
	}
}
