package quicmux

import (
	"context"
	"crypto/tls"
	"net"
	"sync"
	"time"

	"github.com/quic-go/quic-go"
)

// Conn is a QUIC connection between sidecars, verified at its handshake:
// one a Server accepted, or one a Pool dialed.
type Conn struct {
	qc   *quic.Conn
	cs   tls.ConnectionState
	pool *Pool // nil for a connection a Server accepted

	// The pool's bookkeeping, under pool.mu.
	renewAt  time.Time
	streams  int  // streams open, or being opened
	retiring bool // no new streams; closed when the last one ends
}

// TLS returns the state of the connection's handshake. It is the same
// value for the connection's life; callers must not modify it.
func (c *Conn) TLS() *tls.ConnectionState { return &c.cs }

// Context is done when the connection is closed.
func (c *Conn) Context() context.Context { return c.qc.Context() }

// AcceptStream returns the next stream the peer opens. Its header is not
// read yet: see Stream.ReadHeader.
func (c *Conn) AcceptStream(ctx context.Context) (*Stream, error) {
	s, err := c.qc.AcceptStream(ctx)
	if err != nil {
		return nil, err
	}
	return &Stream{s: s, conn: c}, nil
}

// Revoke closes the connection at once, streams and all, with CodeRevoked:
// the peer is no longer allowed or trusted. A Pool opens no stream on it
// from then on.
func (c *Conn) Revoke() {
	if c.pool != nil {
		c.pool.drop(c)
		return
	}
	c.qc.CloseWithError(CodeRevoked, "peer no longer allowed")
}

// Retire winds down a connection of a Pool: no new stream is opened on
// it, new ones go to a new connection, and it is closed with CodeRetired
// when its last stream ends. On a connection a Server accepted, whose
// streams the peer opens, it does nothing.
func (c *Conn) Retire() {
	if c.pool == nil {
		return
	}
	c.pool.mu.Lock()
	defer c.pool.mu.Unlock()
	c.pool.retireLocked(c)
}

// Stream is one app connection carried over a QUIC connection, as a
// net.Conn for the copy path: CloseWrite sends FIN; Close after a FIN only
// stops reading, and Close without one resets the stream both ways with
// CodeAbort, so an aborted app connection is seen as aborted by the peer.
// A stream a Pool opened gives its place on the connection back at its
// first Close.
type Stream struct {
	s    *quic.Stream
	conn *Conn

	mu       sync.Mutex
	finished bool // FIN sent
	closed   bool
}

var _ net.Conn = (*Stream)(nil)

// Conn returns the connection that carries s.
func (s *Stream) Conn() *Conn { return s.conn }

// ReadHeader reads the stream's header, by deadline, and returns its
// target: the name of the inbound listener the peer wants to reach, or ""
// for the one whose QUIC address the stream came in on. Whether that is
// acceptable is the caller's to decide (Refuse with CodeBadHeader if not).
func (s *Stream) ReadHeader(deadline time.Time) (string, error) {
	s.s.SetReadDeadline(deadline)
	target, err := readHeader(s.s)
	s.s.SetReadDeadline(time.Time{})
	return target, err
}

// Refuse resets the stream both ways with code, before it carries
// anything.
func (s *Stream) Refuse(code quic.StreamErrorCode) {
	s.s.CancelRead(code)
	s.s.CancelWrite(code)
}

func (s *Stream) Read(b []byte) (int, error)  { return s.s.Read(b) }
func (s *Stream) Write(b []byte) (int, error) { return s.s.Write(b) }

// LocalAddr and RemoteAddr are those of the stream's connection.
func (s *Stream) LocalAddr() net.Addr  { return s.conn.qc.LocalAddr() }
func (s *Stream) RemoteAddr() net.Addr { return s.conn.qc.RemoteAddr() }

func (s *Stream) SetDeadline(t time.Time) error      { return s.s.SetDeadline(t) }
func (s *Stream) SetReadDeadline(t time.Time) error  { return s.s.SetReadDeadline(t) }
func (s *Stream) SetWriteDeadline(t time.Time) error { return s.s.SetWriteDeadline(t) }

// CloseWrite sends FIN: the peer reads EOF once it has the bytes written.
func (s *Stream) CloseWrite() error {
	s.mu.Lock()
	s.finished = true
	s.mu.Unlock()
	return s.s.Close()
}

// Close stops reading, and resets the stream unless CloseWrite ended it.
func (s *Stream) Close() error {
	s.mu.Lock()
	finished, first := s.finished, !s.closed
	s.closed = true
	s.mu.Unlock()
	if !finished {
		s.s.CancelWrite(CodeAbort)
	}
	s.s.CancelRead(CodeAbort)
	if first && s.conn.pool != nil {
		s.conn.pool.release(s.conn)
	}
	return nil
}
