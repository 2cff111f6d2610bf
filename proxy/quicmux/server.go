package quicmux

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"

	"github.com/quic-go/quic-go"
	"golang.org/x/time/rate"
)

// ServerConfig configures a Server.
type ServerConfig struct {
	// TLS is the server's configuration. It must verify and authorize the
	// client: quic-go completes handshakes on its own, and Accept returns
	// the connections whose handshake succeeded. The server uses a clone
	// with ALPN as its only application protocol.
	TLS *tls.Config
	// Limits bound the connections; zero fields select the defaults.
	Limits Limits
	// Retried, if set, is called for each connection attempt answered with
	// a Retry, past Limits.HandshakeRate.
	Retried func()
}

// Server is an inbound listener's QUIC side: it takes connections from
// peer sidecars on one UDP address.
type Server struct {
	udp net.PacketConn
	tr  *quic.Transport
	ln  *quic.Listener
}

// Listen binds a Server on the UDP address addr.
//
// Up to Limits.HandshakeRate new connections a second (with a second's
// worth as a burst) are taken at once; past that, each attempt is first
// answered with a Retry, which validates the client's address and holds
// no state on the server.
func Listen(addr string, cfg ServerConfig) (*Server, error) {
	udp, err := net.ListenPacket("udp", addr)
	if err != nil {
		return nil, fmt.Errorf("quicmux: %w", err)
	}
	lim := cfg.Limits.withDefaults()
	gate := rate.NewLimiter(rate.Limit(lim.HandshakeRate), max(1, int(lim.HandshakeRate)))
	tr := &quic.Transport{Conn: udp, VerifySourceAddress: func(net.Addr) bool {
		if gate.Allow() {
			return false
		}
		if cfg.Retried != nil {
			cfg.Retried()
		}
		return true
	}}
	tlsConf := cfg.TLS.Clone()
	tlsConf.NextProtos = []string{ALPN}
	ln, err := tr.Listen(tlsConf, lim.Config())
	if err != nil {
		udp.Close()
		return nil, fmt.Errorf("quicmux: %w", err)
	}
	return &Server{udp: udp, tr: tr, ln: ln}, nil
}

// Addr returns the server's UDP address.
func (s *Server) Addr() net.Addr { return s.udp.LocalAddr() }

// Accept returns the next connection whose handshake succeeded. Once the
// server has stopped accepting, the error is net.ErrClosed.
func (s *Server) Accept(ctx context.Context) (*Conn, error) {
	qc, err := s.ln.Accept(ctx)
	if err != nil {
		if errors.Is(err, quic.ErrServerClosed) {
			return nil, fmt.Errorf("quicmux: %w", net.ErrClosed)
		}
		return nil, err
	}
	return &Conn{qc: qc, cs: qc.ConnectionState().TLS}, nil
}

// StopAccepting takes no new connection; established ones keep working.
func (s *Server) StopAccepting() { s.ln.Close() }

// Close closes the server, every connection it accepted and its UDP
// socket (quic-go leaves a socket it was given open).
func (s *Server) Close() {
	s.ln.Close()
	s.tr.Close()
	s.udp.Close()
}
