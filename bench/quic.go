package bench

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/credflow/credflow/proxy/mtls"
)

// QUICInitialResult counts what a QUIC client sends in Initial packets to
// complete a mutual-TLS handshake with one key-exchange group.
type QUICInitialResult struct {
	Group string `json:"group"`
	// InitialDatagrams is the client's first flight: its datagrams holding
	// an Initial packet before it received anything; InitialBytes their
	// total size.
	InitialDatagrams int     `json:"initial_datagrams"`
	InitialBytes     int     `json:"initial_bytes"`
	HandshakeMicros  float64 `json:"handshake_us"`
}

// countingPacketConn counts the client's first flight: the datagrams it
// writes before it has read anything whose first packet is a long-header
// Initial (QUIC v1: header form and fixed bits set, type 0). Later Initials
// only acknowledge the server's.
type countingPacketConn struct {
	net.PacketConn
	initials, bytes atomic.Int64
	read            atomic.Bool
}

func (c *countingPacketConn) ReadFrom(b []byte) (int, net.Addr, error) {
	n, addr, err := c.PacketConn.ReadFrom(b)
	if n > 0 {
		c.read.Store(true)
	}
	return n, addr, err
}

func (c *countingPacketConn) WriteTo(b []byte, addr net.Addr) (int, error) {
	if !c.read.Load() && len(b) > 0 && b[0]&0xf0 == 0xc0 {
		c.initials.Add(1)
		c.bytes.Add(int64(len(b)))
	}
	return c.PacketConn.WriteTo(b, addr)
}

// quicHandshakes is how many handshakes RunQUICInitial makes per group.
const quicHandshakes = 10

// RunQUICInitial runs QUIC handshakes per group over loopback UDP with
// the sidecar's TLS configurations and counts the client's Initial
// datagrams: hybrid ClientHellos are larger than a 1200-byte datagram.
func RunQUICInitial(ctx context.Context) ([]QUICInitialResult, error) {
	server, client, bundles, err := newIdentities()
	if err != nil {
		return nil, err
	}
	allow := func(spiffeid.ID) bool { return true }
	var out []QUICInitialResult
	for _, g := range KexGroups {
		sc := mtls.Config{SVIDs: staticSVID{server}, Bundles: bundles, Authorize: allow}.Server()
		cc := mtls.Config{SVIDs: staticSVID{client}, Bundles: bundles, Authorize: allow}.Client()
		sc.CurvePreferences, cc.CurvePreferences = []tls.CurveID{g}, []tls.CurveID{g}
		sc.NextProtos, cc.NextProtos = []string{"credflow-bench"}, []string{"credflow-bench"}
		cc.ClientSessionCache = nil
		// quic-go paces its packets, so the server's acknowledgement of
		// the first Initial can arrive before the client sends the second
		// and end the count early; the count can only be low, never high,
		// so the largest over several handshakes is the first flight.
		var best QUICInitialResult
		var times []float64
		for range quicHandshakes {
			r, err := quicHandshake(ctx, sc, cc)
			if err != nil {
				return out, fmt.Errorf("bench: quic %s: %w", g, err)
			}
			if r.InitialDatagrams > best.InitialDatagrams {
				best.InitialDatagrams, best.InitialBytes = r.InitialDatagrams, r.InitialBytes
			}
			times = append(times, r.HandshakeMicros)
		}
		slices.Sort(times)
		best.HandshakeMicros = times[len(times)/2]
		best.Group = g.String()
		out = append(out, best)
	}
	return out, nil
}

func quicHandshake(ctx context.Context, sc, cc *tls.Config) (QUICInitialResult, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	sconn, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		return QUICInitialResult{}, err
	}
	st := &quic.Transport{Conn: sconn}
	defer st.Close()
	ln, err := st.Listen(sc, &quic.Config{})
	if err != nil {
		return QUICInitialResult{}, err
	}
	defer ln.Close()
	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Go(func() {
		c, err := ln.Accept(ctx)
		if err == nil {
			<-c.HandshakeComplete()
			<-ctx.Done()
			c.CloseWithError(0, "")
		}
	})
	cconn, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		return QUICInitialResult{}, err
	}
	counting := &countingPacketConn{PacketConn: cconn}
	ct := &quic.Transport{Conn: counting}
	defer ct.Close()
	start := time.Now()
	c, err := ct.Dial(ctx, sconn.LocalAddr(), cc, &quic.Config{})
	if err != nil {
		return QUICInitialResult{}, err
	}
	elapsed := time.Since(start)
	r := QUICInitialResult{InitialDatagrams: int(counting.initials.Load()), InitialBytes: int(counting.bytes.Load()),
		HandshakeMicros: float64(elapsed.Microseconds())}
	c.CloseWithError(0, "")
	cancel()
	return r, nil
}
