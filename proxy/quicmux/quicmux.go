// Package quicmux is the QUIC transport between sidecars: app connections
// travel as the streams of one QUIC connection per upstream, authenticated
// both ways by the TLS configurations the caller builds from the SVIDs. A
// Server takes an inbound listener's connections on its UDP address,
// answering with a stateless Retry past a handshake rate; a Pool keeps an
// outbound listener's connection to its upstream and replaces it before
// its certificates expire. Each Stream is a net.Conn for the copy path.
// What a connection is allowed to do, and what is counted and logged about
// it, is the caller's business: the package hands out connections and
// streams and reports each handshake of a Pool.
//
// The wire protocol: the TLS application protocol is ALPN, and each stream
// starts with a header the outbound side writes:
//
//	byte 0     version, 1
//	byte 1     n, the length of the target (0-255)
//	n bytes    target: the name of the inbound listener to reach
//
// The inbound side answers nothing on success: the stream then carries the
// app's bytes both ways, with FIN for a half-close. On refusal it resets
// the stream with one of the stream error codes below. 0-RTT is off: its
// data could be replayed.
package quicmux

import (
	"fmt"
	"io"
	"time"

	"github.com/quic-go/quic-go"
)

// ALPN is the TLS application protocol of sidecar-to-sidecar QUIC.
const ALPN = "credflow/1"

// Stream error codes: why a stream was reset.
const (
	CodeOK        quic.StreamErrorCode = 0
	CodeBadHeader quic.StreamErrorCode = 1 // unknown version or target
	CodeAppDown   quic.StreamErrorCode = 3 // the app refused the connection
	CodeAbort     quic.StreamErrorCode = 4 // the relay ended on an error, or had no room to start
	CodeDraining  quic.StreamErrorCode = 5 // the inbound sidecar is draining
	CodeLimited   quic.StreamErrorCode = 6 // past the peer's connection limits (rate_limited)
)

// Connection error codes: why a connection was closed.
const (
	CodeRetired quic.ApplicationErrorCode = 0 // replaced, or the sidecar is shutting down
	CodeRevoked quic.ApplicationErrorCode = 2 // the peer is no longer allowed or trusted
)

const (
	// headerVersion is the stream header's version byte.
	headerVersion = 1
	// fallbackWindow is how long an upstream whose QUIC handshake failed
	// is not tried again.
	fallbackWindow = 30 * time.Second
	// renewPercent is the share of a connection's lifetime after which it
	// is replaced.
	renewPercent = 80
)

// readHeader reads a stream header and returns its target.
func readHeader(r io.Reader) (string, error) {
	var h [2]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		return "", err
	}
	if h[0] != headerVersion {
		return "", fmt.Errorf("quicmux: stream header version %d", h[0])
	}
	name := make([]byte, h[1])
	if _, err := io.ReadFull(r, name); err != nil {
		return "", err
	}
	return string(name), nil
}

// header is the stream header naming target, at most 255 bytes.
func header(target string) []byte {
	return append([]byte{headerVersion, byte(len(target))}, target...)
}

// Defaults of Limits.
const (
	DefaultMaxStreams       = 1000
	DefaultHandshakeTimeout = 3 * time.Second
	DefaultIdleTimeout      = 60 * time.Second
	DefaultStreamWindow     = 1 << 20 // initial; grows to 8x
	DefaultConnWindow       = 4 << 20 // initial; grows to 8x
	DefaultHandshakeRate    = 100
)

// Limits are the deliberate limits of QUIC connections. Zero fields select
// the defaults.
type Limits struct {
	// MaxStreams bounds the concurrent streams a peer may open on one
	// connection. Default 1000.
	MaxStreams int64
	// HandshakeTimeout bounds a QUIC handshake; an outbound connection
	// whose handshake does not finish in it falls back to TCP. It also
	// bounds the wait for a stream when the peer's MaxStreams are all
	// open. Default 3s.
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

// withDefaults returns l with its zero fields set to the defaults.
func (l Limits) withDefaults() Limits {
	if l.MaxStreams <= 0 {
		l.MaxStreams = DefaultMaxStreams
	}
	if l.HandshakeTimeout <= 0 {
		l.HandshakeTimeout = DefaultHandshakeTimeout
	}
	if l.IdleTimeout <= 0 {
		l.IdleTimeout = DefaultIdleTimeout
	}
	if l.HandshakeRate <= 0 {
		l.HandshakeRate = DefaultHandshakeRate
	}
	if l.StreamWindow == 0 {
		l.StreamWindow = DefaultStreamWindow
	}
	if l.ConnWindow == 0 {
		l.ConnWindow = DefaultConnWindow
	}
	return l
}

// Config returns the quic-go configuration of l, the same for both sides,
// with the defaults filled in.
func (l Limits) Config() *quic.Config {
	l = l.withDefaults()
	return &quic.Config{
		HandshakeIdleTimeout:           l.HandshakeTimeout,
		MaxIdleTimeout:                 l.IdleTimeout,
		KeepAlivePeriod:                l.IdleTimeout / 3,
		MaxIncomingStreams:             l.MaxStreams,
		MaxIncomingUniStreams:          -1,
		InitialStreamReceiveWindow:     l.StreamWindow,
		MaxStreamReceiveWindow:         8 * l.StreamWindow,
		InitialConnectionReceiveWindow: l.ConnWindow,
		MaxConnectionReceiveWindow:     8 * l.ConnWindow,
		Allow0RTT:                      false,
	}
}
