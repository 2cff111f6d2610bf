package quicmux

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// ErrStreamLimit is returned by Open when the peer's stream limit leaves
// no stream for a new app connection within Limits.HandshakeTimeout.
var ErrStreamLimit = errors.New("quicmux: QUIC stream limit reached")

// ErrRecentlyFailed is returned by Open while an upstream whose QUIC
// handshake failed is not tried again (Handshake.Backoff).
var ErrRecentlyFailed = errors.New("quicmux: QUIC to the upstream failed recently")

// PoolConfig configures a Pool.
type PoolConfig struct {
	// Addr is the upstream sidecar's UDP address.
	Addr string
	// Target names the inbound listener to reach there, at most 255
	// bytes; empty means the one whose QUIC address Addr is.
	Target string
	// TLS is the client's configuration, which verifies and authorizes
	// the upstream. The pool uses a clone with ALPN as its only
	// application protocol.
	TLS *tls.Config
	// SVIDs is the source of the certificate the client presents: a
	// connection is replaced after 80% of the time left until the first
	// expiry of that certificate and the upstream's. Without it, the
	// upstream's alone counts.
	SVIDs x509svid.Source
	// Limits bound the connections; zero fields select the defaults.
	Limits Limits
	// HeaderTimeout bounds writing a stream's header. Default
	// Limits.HandshakeTimeout.
	HeaderTimeout time.Duration
	// Handshaken, if set, is called after each handshake the pool makes,
	// from the goroutine that made it; a new connection carries no stream
	// before it returns.
	Handshaken func(Handshake)
}

// Handshake is the outcome of one of a Pool's handshakes.
type Handshake struct {
	// Conn is the new connection, or nil when Err is set.
	Conn *Conn
	// Took is how long the handshake took, successful or not.
	Took time.Duration
	// Err is why there is no connection.
	Err error
	// Backoff is how long the pool now answers Open with
	// ErrRecentlyFailed: 30s after a failure, 0 after a success or a
	// refusal (a TLS alert: one side refused the other, and the next app
	// connection tries again rather than going elsewhere).
	Backoff time.Duration
}

// Pool keeps one QUIC connection to an outbound listener's upstream,
// opens a stream on it for each app connection, and replaces it before
// its certificates expire.
type Pool struct {
	cfg   PoolConfig // defaults filled in
	tls   *tls.Config
	qconf *quic.Config
	tr    *quic.Transport
	ctx   context.Context // ends at Close
	stop  context.CancelFunc
	wg    sync.WaitGroup // handshakes

	mu        sync.Mutex
	cur       *Conn
	dialing   chan struct{}
	dialErr   error
	downUntil time.Time
	closed    bool
}

// NewPool binds the pool's UDP socket. It dials nothing until Open.
func NewPool(cfg PoolConfig) (*Pool, error) {
	if len(cfg.Target) > 255 {
		return nil, fmt.Errorf("quicmux: target %q is longer than 255 bytes", cfg.Target)
	}
	cfg.Limits = cfg.Limits.withDefaults()
	if cfg.HeaderTimeout <= 0 {
		cfg.HeaderTimeout = cfg.Limits.HandshakeTimeout
	}
	udp, err := net.ListenPacket("udp", ":0")
	if err != nil {
		return nil, fmt.Errorf("quicmux: %w", err)
	}
	tlsConf := cfg.TLS.Clone()
	tlsConf.NextProtos = []string{ALPN}
	p := &Pool{cfg: cfg, tls: tlsConf, qconf: cfg.Limits.Config(), tr: &quic.Transport{Conn: udp}}
	p.ctx, p.stop = context.WithCancel(context.Background())
	return p, nil
}

// Open returns a stream to the upstream's target on the pooled connection,
// dialing one if needed, its header written. It fails with
// ErrRecentlyFailed within Handshake.Backoff of a failed handshake, and
// with ErrStreamLimit when no stream comes within Limits.HandshakeTimeout;
// a refused handshake is a *quic.TransportError whose code is a crypto
// error.
func (p *Pool) Open(ctx context.Context) (*Stream, error) {
	c, err := p.conn(ctx)
	if err != nil {
		return nil, err
	}
	timeout := p.cfg.Limits.HandshakeTimeout
	octx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	s, err := c.qc.OpenStreamSync(octx)
	if err != nil {
		p.release(c)
		if octx.Err() != nil && ctx.Err() == nil {
			return nil, fmt.Errorf("%w: no stream within %s", ErrStreamLimit, timeout)
		}
		return nil, fmt.Errorf("quicmux: opening a QUIC stream: %w", err)
	}
	s.SetWriteDeadline(time.Now().Add(p.cfg.HeaderTimeout))
	if _, err := s.Write(header(p.cfg.Target)); err != nil {
		s.CancelWrite(CodeAbort)
		s.CancelRead(CodeAbort)
		p.release(c)
		return nil, fmt.Errorf("quicmux: writing the stream header: %w", err)
	}
	s.SetWriteDeadline(time.Time{})
	return &Stream{s: s, conn: c}, nil
}

// conn returns a live connection with a stream reserved on it.
func (p *Pool) conn(ctx context.Context) (*Conn, error) {
	waited := false // for a dial, in this call
	for {
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			return nil, fmt.Errorf("quicmux: pool: %w", net.ErrClosed)
		}
		now := time.Now()
		if cur := p.cur; cur != nil {
			switch {
			case cur.qc.Context().Err() != nil && waited:
				// The connection just dialed is already gone. A server
				// refuses the client's certificate or key exchange after
				// the client's side of the handshake has finished, so its
				// refusal can arrive after the dial returned: report it
				// (a crypto error) rather than dial again, which would
				// repeat for as long as the server refuses.
				p.cur = nil
				p.mu.Unlock()
				return nil, fmt.Errorf("quicmux: connection closed after its handshake: %w", context.Cause(cur.qc.Context()))
			case cur.qc.Context().Err() != nil:
				p.cur = nil
			case !now.Before(cur.renewAt):
				p.retireLocked(cur)
			default:
				cur.streams++
				p.mu.Unlock()
				return cur, nil
			}
		}
		if now.Before(p.downUntil) {
			p.mu.Unlock()
			return nil, ErrRecentlyFailed
		}
		if p.dialing == nil {
			p.dialing = make(chan struct{})
			p.wg.Go(p.dial)
		}
		ch := p.dialing
		p.mu.Unlock()
		select {
		case <-ch:
			waited = true
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		p.mu.Lock()
		err := p.dialErr
		p.mu.Unlock()
		if err != nil {
			return nil, err
		}
	}
}

// dial makes a handshake with the upstream, reports it, and makes the new
// connection the current one.
func (p *Pool) dial() {
	ctx, cancel := context.WithTimeout(p.ctx, p.cfg.Limits.HandshakeTimeout)
	defer cancel()
	start := time.Now()
	udpAddr, err := net.ResolveUDPAddr("udp", p.cfg.Addr)
	var qc *quic.Conn
	if err == nil {
		qc, err = p.tr.Dial(ctx, udpAddr, p.tls, p.qconf)
	}
	h := Handshake{Took: time.Since(start), Err: err}
	var te *quic.TransportError
	switch {
	case errors.As(err, &te) && te.ErrorCode.IsCryptoError():
		// Refused by policy, not unreachable: the next connection tries
		// again rather than falling back to TCP.
	case err != nil:
		h.Backoff = fallbackWindow
	default:
		h.Conn = p.newConn(qc)
	}
	if p.cfg.Handshaken != nil {
		p.cfg.Handshaken(h)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.dialErr = err
	if h.Backoff > 0 {
		p.downUntil = time.Now().Add(h.Backoff)
	}
	switch {
	case h.Conn == nil, h.Conn.retiring:
	case p.closed:
		h.Conn.qc.CloseWithError(CodeRetired, "shutting down")
	default:
		p.cur = h.Conn
	}
	close(p.dialing)
	p.dialing = nil
}

// newConn describes a connection the pool dialed, due for renewal after
// renewPercent of the time left until the first expiry of its
// certificates.
func (p *Pool) newConn(qc *quic.Conn) *Conn {
	cs := qc.ConnectionState().TLS
	end := cs.PeerCertificates[0].NotAfter
	if p.cfg.SVIDs != nil {
		if svid, err := p.cfg.SVIDs.GetX509SVID(); err == nil && svid.Certificates[0].NotAfter.Before(end) {
			end = svid.Certificates[0].NotAfter
		}
	}
	return &Conn{qc: qc, cs: cs, pool: p, renewAt: renewAt(end, time.Now())}
}

// renewAt is when a connection should be replaced: after renewPercent of
// the time left until end, the first expiry of our certificate and the
// peer's, so that no stream starts on a connection close to being cut.
func renewAt(end, now time.Time) time.Time {
	return now.Add(end.Sub(now) * renewPercent / 100)
}

// retireLocked stops new streams on c and closes it when its last stream
// ends. p.mu must be held.
func (p *Pool) retireLocked(c *Conn) {
	if p.cur == c {
		p.cur = nil
	}
	c.retiring = true
	if c.streams == 0 {
		c.qc.CloseWithError(CodeRetired, "replaced")
	}
}

// drop closes c at once, streams and all.
func (p *Pool) drop(c *Conn) {
	p.mu.Lock()
	if p.cur == c {
		p.cur = nil
	}
	c.retiring = true
	p.mu.Unlock()
	c.qc.CloseWithError(CodeRevoked, "upstream no longer trusted or expected")
}

// release ends a stream's reservation on c.
func (p *Pool) release(c *Conn) {
	p.mu.Lock()
	defer p.mu.Unlock()
	c.streams--
	if c.retiring && c.streams == 0 {
		c.qc.CloseWithError(CodeRetired, "replaced")
	}
}

// Close closes the pool's connection and socket and waits for a handshake
// under way to end. Open fails from then on.
func (p *Pool) Close() {
	p.mu.Lock()
	p.closed = true
	if p.cur != nil {
		p.cur.qc.CloseWithError(CodeRetired, "shutting down")
	}
	p.mu.Unlock()
	p.stop()
	p.tr.Close()
	p.wg.Wait()
	p.tr.Conn.Close() // quic-go leaves a socket it was given open
}
