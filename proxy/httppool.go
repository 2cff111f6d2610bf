package proxy

import (
	"context"
	"crypto/tls"
	"net"
	"net/http"
	"sync"
	"time"
)

// upstreamPool is an HTTP outbound listener's client to its upstream
// sidecar: HTTP/2 over pooled mTLS connections. A pooled connection
// carries two certificates that expire, the SVID it presented and the
// peer's, and the peer closes it once ours has expired, failing whatever
// request is on it. So connections are replaced ahead of time, as QUIC
// connections are (renewAt): a transport takes new requests until the
// renewal point of the first of its connections; then a fresh transport
// (new connections, current certificates) takes over, and the old one's
// connections close as they fall idle.
type upstreamPool struct {
	build func(g *poolGen) *http.Transport

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

// sweep closes the idle connections of replaced transports and forgets
// those with none left open.
func (u *upstreamPool) sweep() {
	u.mu.Lock()
	defer u.mu.Unlock()
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

// countedConn tells its poolGen, and closed if set, when it closes.
type countedConn struct {
	net.Conn
	g      *poolGen
	once   sync.Once
	closed func() // set before the connection is handed out
}

func (c *countedConn) Close() error {
	c.once.Do(func() {
		c.g.mu.Lock()
		c.g.open--
		c.g.mu.Unlock()
		if c.closed != nil {
			c.closed()
		}
	})
	return c.Conn.Close()
}

// dialUpstream dials an HTTP outbound listener's upstream and completes
// the mTLS handshake; g learns of the connection and its certificates'
// first expiry. The connection is tracked like any other: closed when the
// upstream no longer matches expect or its chain no longer verifies, and
// retired at MaxConnectionAge.
func (p *Proxy) dialUpstream(ctx context.Context, l *listener, conf *tls.Config, g *poolGen) (net.Conn, error) {
	raw, err := (&net.Dialer{Timeout: p.cfg.DialTimeout}).DialContext(ctx, "tcp", l.target)
	if err != nil {
		return nil, err // counted per request by the ErrorHandler
	}
	// tls.Client wraps the counted connection: net/http must see a
	// *tls.Conn to speak HTTP/2 on it.
	counted := g.dialed(raw)
	tc := tls.Client(counted, conf)
	cs, err := p.handshake(ctx, l, tc)
	if err != nil {
		counted.Close()
		p.refuse(l, time.Now(), err, "peer_refused", "tcp")
		return nil, err
	}
	end := cs.PeerCertificates[0].NotAfter
	if svid, err := p.cfg.SVIDs.GetX509SVID(); err == nil && svid.Certificates[0].NotAfter.Before(end) {
		end = svid.Certificates[0].NotAfter
	}
	g.expires(end)
	c := p.newConn(l, cs, func() { tc.Close() })
	c.retire = func() { l.httpOut.pool.retire(g) }
	p.track(c)
	counted.closed = func() { p.untrack(c) }
	return tc, nil
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
