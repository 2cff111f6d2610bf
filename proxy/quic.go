package proxy

import (
	"cmp"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/credflow/credflow/internal/logkey"
	"github.com/credflow/credflow/proxy/relay"
	"github.com/credflow/credflow/reason"
)

// QUIC carries app connections between sidecars as streams of one QUIC
// connection per upstream, authenticated both ways with the SVIDs and
// subject to the same authorization and key-exchange policy as TCP.
//
// Each stream starts with a header the outbound side writes:
//
//	byte 0     version, 1
//	byte 1     n, the length of the target (0-255)
//	n bytes    target: the name of the inbound listener to reach
//
// The inbound side answers nothing on success: the stream then carries the
// app's bytes both ways, with FIN for a half-close. On refusal it resets
// the stream with one of the application error codes below. 0-RTT is off:
// its data could be replayed.
const (
	// ALPN is the TLS application protocol of sidecar-to-sidecar QUIC.
	ALPN = "credflow/1"
	// streamHeaderVersion is the stream header's version byte.
	streamHeaderVersion = 1

	codeOK           quic.StreamErrorCode      = 0
	codeBadHeader    quic.StreamErrorCode      = 1 // unknown version or target
	codeAppDown      quic.StreamErrorCode      = 3 // the app refused the connection
	codeAbort        quic.StreamErrorCode      = 4 // the relay ended on an error
	codeDraining     quic.StreamErrorCode      = 5 // the inbound sidecar is draining
	codeConnRetired  quic.ApplicationErrorCode = 0
	codeConnRevoked  quic.ApplicationErrorCode = 2
	maxQUICFallback                            = 30 * time.Second // how long an upstream whose QUIC failed is not retried
	quicRenewPercent                           = 80               // replace a connection after this share of its lifetime
)

// Defaults of the QUIC limits.
const (
	DefaultQUICMaxStreams       = 1000
	DefaultQUICHandshakeTimeout = 3 * time.Second
	DefaultQUICIdleTimeout      = 60 * time.Second
	DefaultQUICStreamWindow     = 1 << 20 // initial; grows to 8x
	DefaultQUICConnWindow       = 4 << 20 // initial; grows to 8x
	DefaultQUICHandshakeRate    = 100
)

// QUICLimits are the deliberate limits of QUIC connections. Zero fields
// select the defaults.
type QUICLimits struct {
	// MaxStreams bounds the concurrent streams a peer may open on one
	// connection. Default 1000.
	MaxStreams int64
	// HandshakeTimeout bounds a QUIC handshake; an outbound connection
	// whose handshake does not finish in it falls back to TCP. Default 3s.
	HandshakeTimeout time.Duration
	// IdleTimeout closes a QUIC connection with no traffic. Default 60s
	// (keep-alives are sent at a third of it while streams are open).
	IdleTimeout time.Duration
	// HandshakeRate is how many new QUIC connections per second an
	// inbound listener takes without validating the client's address;
	// past it each attempt is first answered with a Retry, which holds no
	// state on the server, so a flood of Initial packets (spoofed or not)
	// cannot make it keep thousands of half-open handshakes. Default 100
	// (a sidecar holds one QUIC connection per peer sidecar).
	HandshakeRate float64
	// StreamWindow and ConnWindow are the initial flow-control windows;
	// each may grow to eight times its initial size. Defaults 1 MiB and
	// 4 MiB.
	StreamWindow, ConnWindow uint64
}

func (q QUICLimits) config() *quic.Config {
	if q.MaxStreams <= 0 {
		q.MaxStreams = DefaultQUICMaxStreams
	}
	q.HandshakeTimeout = orDefault(q.HandshakeTimeout, DefaultQUICHandshakeTimeout)
	q.IdleTimeout = orDefault(q.IdleTimeout, DefaultQUICIdleTimeout)
	if q.StreamWindow == 0 {
		q.StreamWindow = DefaultQUICStreamWindow
	}
	if q.ConnWindow == 0 {
		q.ConnWindow = DefaultQUICConnWindow
	}
	return &quic.Config{
		HandshakeIdleTimeout:           q.HandshakeTimeout,
		MaxIdleTimeout:                 q.IdleTimeout,
		KeepAlivePeriod:                q.IdleTimeout / 3,
		MaxIncomingStreams:             q.MaxStreams,
		MaxIncomingUniStreams:          -1,
		InitialStreamReceiveWindow:     q.StreamWindow,
		MaxStreamReceiveWindow:         8 * q.StreamWindow,
		InitialConnectionReceiveWindow: q.ConnWindow,
		MaxConnectionReceiveWindow:     8 * q.ConnWindow,
		Allow0RTT:                      false,
	}
}

// streamConn makes a QUIC stream a net.Conn for the relay: CloseWrite
// sends FIN; Close after a FIN only stops reading, and Close without one
// resets the stream both ways, so an aborted app connection is seen as
// aborted by the peer.
type streamConn struct {
	*quic.Stream
	conn     *quic.Conn
	mu       sync.Mutex
	finished bool // FIN sent
}

var _ net.Conn = (*streamConn)(nil)

func (s *streamConn) LocalAddr() net.Addr  { return s.conn.LocalAddr() }
func (s *streamConn) RemoteAddr() net.Addr { return s.conn.RemoteAddr() }

func (s *streamConn) CloseWrite() error {
	s.mu.Lock()
	s.finished = true
	s.mu.Unlock()
	return s.Stream.Close()
}

func (s *streamConn) Close() error {
	s.mu.Lock()
	finished := s.finished
	s.mu.Unlock()
	if !finished {
		s.Stream.CancelWrite(codeAbort)
	}
	s.Stream.CancelRead(codeAbort)
	return nil
}

// quicServer is an inbound listener's QUIC side.
type quicServer struct {
	addr string
	tr   *quic.Transport
	ln   *quic.Listener
}

// listenQUIC binds an inbound listener's QUIC side on the UDP address
// addr.
func (p *Proxy) listenQUIC(l *listener, addr string) (*quicServer, error) {
	udp, err := net.ListenPacket("udp", addr)
	if err != nil {
		return nil, fmt.Errorf("QUIC: %w", err)
	}
	gate := newRateGate(cmp.Or(p.cfg.QUIC.HandshakeRate, DefaultQUICHandshakeRate))
	tr := &quic.Transport{Conn: udp, VerifySourceAddress: func(net.Addr) bool {
		if gate.allow(time.Now()) {
			return false
		}
		p.m.quicRetry()
		return true
	}}
	tlsConf := l.tls.Clone()
	tlsConf.NextProtos = []string{ALPN}
	// quic-go completes handshakes itself: record refusals here.
	verify := tlsConf.VerifyConnection
	tlsConf.VerifyConnection = func(cs tls.ConnectionState) error {
		err := verify(cs)
		if err != nil {
			p.refuse(l, time.Now(), err, reason.HandshakeFailed, "quic")
		}
		return err
	}
	ln, err := tr.Listen(tlsConf, p.cfg.QUIC.config())
	if err != nil {
		udp.Close()
		return nil, fmt.Errorf("QUIC: %w", err)
	}
	return &quicServer{addr: addr, tr: tr, ln: ln}, nil
}

func (q *quicServer) close() {
	q.ln.Close()
	q.tr.Close()
}

// acceptQUIC accepts QUIC connections on an inbound listener.
func (p *Proxy) acceptQUIC(ctx context.Context, l *listener, srv *quicServer) {
	for {
		qc, err := srv.ln.Accept(ctx)
		if err != nil {
			if ctx.Err() == nil && !errors.Is(err, quic.ErrServerClosed) {
				p.log.Warn("proxy: QUIC accept failed", slog.String(logkey.Listener, l.name), slog.String(logkey.Error, err.Error()))
			}
			return
		}
		p.wg.Go(func() { p.serveQUICConn(ctx, l, qc) })
	}
}

// serveQUICConn serves the streams of one authorized QUIC connection. The
// peer was verified and authorized in the handshake, once per connection.
func (p *Proxy) serveQUICConn(ctx context.Context, l *listener, qc *quic.Conn) {
	cs := qc.ConnectionState().TLS
	peer, _ := peerOf(&cs)
	p.m.quicConn(l.dir)
	c := p.newConn(l, &cs, func() { qc.CloseWithError(codeConnRevoked, "peer no longer allowed") })
	p.track(c)
	defer p.untrack(c)
	for {
		s, err := qc.AcceptStream(ctx)
		if err != nil {
			return
		}
		if p.Draining() {
			s.CancelRead(codeDraining)
			s.CancelWrite(codeDraining)
			continue
		}
		if !p.slots.take(l.dir) {
			s.CancelRead(codeAbort)
			s.CancelWrite(codeAbort)
			p.m.refused(l.dir, reason.Limit, false)
			continue
		}
		l.conns.Add(1)
		p.wg.Go(func() {
			defer func() { p.slots.release(l.dir); l.conns.Done() }()
			p.serveStream(ctx, l, qc, &cs, peer, s)
		})
	}
}

func (p *Proxy) serveStream(ctx context.Context, l *listener, qc *quic.Conn, cs *tls.ConnectionState, peer spiffeid.ID, s *quic.Stream) {
	start := time.Now()
	sc := &streamConn{Stream: s, conn: qc}
	s.SetReadDeadline(time.Now().Add(p.cfg.HandshakeTimeout))
	target, err := readStreamHeader(s)
	s.SetReadDeadline(time.Time{})
	if err != nil || (target != "" && target != l.name) {
		s.CancelRead(codeBadHeader)
		s.CancelWrite(codeBadHeader)
		p.m.refused(l.dir, reason.BadStreamHeader, false)
		p.access(l, start, peer, cs, "deny", reason.BadStreamHeader, relay.Result{}, "quic")
		return
	}
	p.m.quicStream(l.dir)
	app, err := (&net.Dialer{Timeout: p.cfg.DialTimeout}).DialContext(ctx, "tcp", l.target)
	if err != nil {
		s.CancelRead(codeAppDown)
		s.CancelWrite(codeAppDown)
		p.m.refused(l.dir, reason.AppUnavailable, true)
		p.access(l, start, peer, cs, "error", reason.AppUnavailable, relay.Result{}, "quic")
		return
	}
	p.relay(ctx, l, start, peer, cs, sc, app, "quic")
}

func readStreamHeader(r io.Reader) (string, error) {
	var h [2]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		return "", err
	}
	if h[0] != streamHeaderVersion {
		return "", fmt.Errorf("proxy: stream header version %d", h[0])
	}
	name := make([]byte, h[1])
	if _, err := io.ReadFull(r, name); err != nil {
		return "", err
	}
	return string(name), nil
}

func streamHeader(target string) []byte {
	return append([]byte{streamHeaderVersion, byte(len(target))}, target...)
}

// quicPool keeps one QUIC connection to an outbound listener's upstream and
// replaces it before its certificates expire.
type quicPool struct {
	p       *Proxy
	l       *listener
	addr    string
	target  string
	tlsConf *tls.Config
	qconf   *quic.Config
	tr      *quic.Transport

	mu        sync.Mutex
	cur       *pooledConn
	dialing   chan struct{}
	dialErr   error
	downUntil time.Time
}

type pooledConn struct {
	qc       *quic.Conn
	cs       tls.ConnectionState
	renewAt  time.Time
	streams  int
	retiring bool
}

// errStreamLimit is returned when the peer's stream limit leaves no stream
// for a new app connection within the handshake timeout.
var errStreamLimit = errors.New("proxy: QUIC stream limit reached")

// errQUICDown is returned while an upstream whose QUIC handshake failed is
// not retried.
var errQUICDown = errors.New("proxy: QUIC to the upstream failed recently")

func (p *Proxy) newQUICPool(l *listener, addr, target string) (*quicPool, error) {
	udp, err := net.ListenPacket("udp", ":0")
	if err != nil {
		return nil, fmt.Errorf("proxy: listener %q QUIC: %w", l.name, err)
	}
	tlsConf := l.tls.Clone()
	tlsConf.NextProtos = []string{ALPN}
	return &quicPool{p: p, l: l, addr: addr, target: target, tlsConf: tlsConf, qconf: p.cfg.QUIC.config(), tr: &quic.Transport{Conn: udp}}, nil
}

// open returns a stream on the pooled connection, dialing one if needed.
func (q *quicPool) open(ctx context.Context) (*streamConn, *pooledConn, error) {
	pc, err := q.conn(ctx)
	if err != nil {
		return nil, nil, err
	}
	octx, cancel := context.WithTimeout(ctx, q.p.cfg.QUIC.HandshakeTimeout)
	defer cancel()
	s, err := pc.qc.OpenStreamSync(octx)
	if err != nil {
		q.release(pc)
		if octx.Err() != nil && ctx.Err() == nil {
			return nil, nil, fmt.Errorf("%w: no stream within %s", errStreamLimit, q.p.cfg.QUIC.HandshakeTimeout)
		}
		return nil, nil, fmt.Errorf("proxy: opening a QUIC stream: %w", err)
	}
	s.SetWriteDeadline(time.Now().Add(q.p.cfg.HandshakeTimeout))
	if _, err := s.Write(streamHeader(q.target)); err != nil {
		s.CancelWrite(codeAbort)
		s.CancelRead(codeAbort)
		q.release(pc)
		return nil, nil, fmt.Errorf("proxy: writing the stream header: %w", err)
	}
	s.SetWriteDeadline(time.Time{})
	return &streamConn{Stream: s, conn: pc.qc}, pc, nil
}

// conn returns a live connection with a stream reserved on it.
func (q *quicPool) conn(ctx context.Context) (*pooledConn, error) {
	for {
		q.mu.Lock()
		now := time.Now()
		if cur := q.cur; cur != nil {
			switch {
			case cur.qc.Context().Err() != nil:
				q.cur = nil
			case !now.Before(cur.renewAt):
				q.retireLocked(cur)
			default:
				cur.streams++
				q.mu.Unlock()
				return cur, nil
			}
		}
		if now.Before(q.downUntil) {
			q.mu.Unlock()
			return nil, errQUICDown
		}
		if q.dialing == nil {
			q.dialing = make(chan struct{})
			q.p.wg.Go(q.dial)
		}
		ch := q.dialing
		q.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		q.mu.Lock()
		err := q.dialErr
		q.mu.Unlock()
		if err != nil {
			return nil, err
		}
	}
}

func (q *quicPool) dial() {
	ctx, cancel := context.WithTimeout(context.Background(), q.p.cfg.QUIC.HandshakeTimeout)
	defer cancel()
	start := time.Now()
	udpAddr, err := net.ResolveUDPAddr("udp", q.addr)
	var qc *quic.Conn
	if err == nil {
		qc, err = q.tr.Dial(ctx, udpAddr, q.tlsConf, q.qconf)
	}
	q.p.m.quicHandshakeDone(q.l.dir, time.Since(start).Seconds())
	q.mu.Lock()
	defer q.mu.Unlock()
	q.dialErr = err
	var te *quic.TransportError
	switch {
	case errors.As(err, &te) && te.ErrorCode.IsCryptoError():
		// Refused by policy, not unreachable: the next connection tries
		// again rather than falling back to TCP.
		q.p.log.Debug("proxy: QUIC handshake refused", slog.String(logkey.Listener, q.l.name), slog.String(logkey.Error, err.Error()))
	case err != nil:
		q.downUntil = time.Now().Add(maxQUICFallback)
		q.p.log.Warn("proxy: QUIC handshake failed; using TCP", slog.String(logkey.Listener, q.l.name),
			slog.String(logkey.Error, err.Error()), slog.Duration(logkey.Backoff, maxQUICFallback))
	default:
		cs := qc.ConnectionState().TLS
		end := cs.PeerCertificates[0].NotAfter
		if svid, err := q.p.cfg.SVIDs.GetX509SVID(); err == nil && svid.Certificates[0].NotAfter.Before(end) {
			end = svid.Certificates[0].NotAfter
		}
		pc := &pooledConn{qc: qc, cs: cs, renewAt: renewAt(end, time.Now())}
		q.cur = pc
		q.p.m.quicConn(q.l.dir)
		// Checked again like any connection: dropped when the upstream no
		// longer matches expect or its chain no longer verifies, so that
		// no new stream rides on it; retired at MaxConnectionAge.
		c := q.p.newConn(q.l, &pc.cs, func() { q.drop(pc) })
		c.retire = func() {
			q.mu.Lock()
			defer q.mu.Unlock()
			q.retireLocked(pc)
		}
		q.p.track(c)
		context.AfterFunc(qc.Context(), func() { q.p.untrack(c) })
	}
	close(q.dialing)
	q.dialing = nil
}

// renewAt is when a connection should be replaced: after quicRenewPercent
// of the time left until end, the first expiry of our certificate and the
// peer's, so that no stream starts on a connection close to being cut.
func renewAt(end, now time.Time) time.Time {
	return now.Add(end.Sub(now) * quicRenewPercent / 100)
}

// retireLocked stops new streams on pc and closes it when its last stream
// ends. q.mu must be held.
func (q *quicPool) retireLocked(pc *pooledConn) {
	if q.cur == pc {
		q.cur = nil
	}
	pc.retiring = true
	if pc.streams == 0 {
		pc.qc.CloseWithError(codeConnRetired, "replaced")
	}
}

// drop closes pc at once, streams and all.
func (q *quicPool) drop(pc *pooledConn) {
	q.mu.Lock()
	if q.cur == pc {
		q.cur = nil
	}
	pc.retiring = true
	q.mu.Unlock()
	pc.qc.CloseWithError(codeConnRevoked, "upstream no longer trusted or expected")
}

// release ends a stream's reservation on pc.
func (q *quicPool) release(pc *pooledConn) {
	q.mu.Lock()
	defer q.mu.Unlock()
	pc.streams--
	if pc.retiring && pc.streams == 0 {
		pc.qc.CloseWithError(codeConnRetired, "replaced")
	}
}

func (q *quicPool) close() {
	q.mu.Lock()
	if q.cur != nil {
		q.cur.qc.CloseWithError(codeConnRetired, "shutting down")
	}
	q.mu.Unlock()
	q.tr.Close()
}

// rateGate is a token bucket of rate tokens per second, holding at most
// one second's worth.
type rateGate struct {
	mu     sync.Mutex
	rate   float64
	tokens float64
	last   time.Time
}

func newRateGate(rate float64) *rateGate {
	return &rateGate{rate: rate, tokens: rate, last: time.Now()}
}

// allow takes a token if there is one.
func (g *rateGate) allow(now time.Time) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.tokens = min(g.rate, g.tokens+now.Sub(g.last).Seconds()*g.rate)
	g.last = now
	if g.tokens < 1 {
		return false
	}
	g.tokens--
	return true
}
