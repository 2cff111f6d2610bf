package quicmux_test

import (
	"context"
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/credflow/credflow/internal/testca"
	"github.com/credflow/credflow/proxy/mtls"
	"github.com/credflow/credflow/proxy/quicmux"
)

var td = spiffeid.RequireTrustDomainFromString("example.org")

type svidSource struct{ svid *x509svid.SVID }

func (s svidSource) GetX509SVID() (*x509svid.SVID, error) { return s.svid, nil }

// rig is a Server, with its TLS from the test CA, and what a Pool needs to
// reach it.
type rig struct {
	ca      *testca.CA
	bundles *x509bundle.Set
	srv     *quicmux.Server
}

func newRig(t *testing.T, lim quicmux.Limits, retried func()) *rig {
	t.Helper()
	ca := testca.New(t, td)
	r := &rig{ca: ca, bundles: x509bundle.NewSet(ca.Bundle())}
	anyone := func(spiffeid.ID) bool { return true }
	tlsConf := mtls.Config{SVIDs: svidSource{ca.Issue(t, spiffeid.RequireFromPath(td, "/backend"))}, Bundles: r.bundles, Authorize: anyone}.Server()
	srv, err := quicmux.Listen("127.0.0.1:0", quicmux.ServerConfig{TLS: tlsConf, Limits: lim, Retried: retried})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Close)
	r.srv = srv
	return r
}

// pool returns a Pool to addr (default the rig's server) whose handshakes
// are sent on the returned channel.
func (r *rig) pool(t *testing.T, addr string, lim quicmux.Limits) (*quicmux.Pool, chan quicmux.Handshake) {
	t.Helper()
	if addr == "" {
		addr = r.srv.Addr().String()
	}
	svids := svidSource{r.ca.Issue(t, spiffeid.RequireFromPath(td, "/frontend"))}
	anyone := func(spiffeid.ID) bool { return true }
	hs := make(chan quicmux.Handshake, 10)
	p, err := quicmux.NewPool(quicmux.PoolConfig{
		Addr: addr, Target: "app", SVIDs: svids, Limits: lim,
		TLS:        mtls.Config{SVIDs: svids, Bundles: r.bundles, Authorize: anyone}.Client(),
		Handshaken: func(h quicmux.Handshake) { hs <- h },
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	return p, hs
}

// serve accepts connections and handles each stream with handle, until
// the test ends.
func (r *rig) serve(t *testing.T, handle func(*quicmux.Stream)) {
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	t.Cleanup(func() { cancel(); r.srv.StopAccepting(); wg.Wait() })
	wg.Go(func() {
		for {
			c, err := r.srv.Accept(ctx)
			if err != nil {
				return
			}
			wg.Go(func() {
				for {
					s, err := c.AcceptStream(ctx)
					if err != nil {
						return
					}
					wg.Go(func() { handle(s) })
				}
			})
		}
	})
}

// echo answers a stream whose header names "app" with what it reads.
func echo(s *quicmux.Stream) {
	if target, err := s.ReadHeader(time.Now().Add(5 * time.Second)); err != nil || target != "app" {
		s.Refuse(quicmux.CodeBadHeader)
		return
	}
	io.Copy(s, s)
	s.CloseWrite()
	s.Close()
}

func roundTrip(t *testing.T, s *quicmux.Stream, msg string) string {
	t.Helper()
	defer s.Close()
	s.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := s.Write([]byte(msg)); err != nil {
		t.Fatal(err)
	}
	s.CloseWrite()
	got, err := io.ReadAll(s)
	if err != nil {
		t.Fatalf("reading the answer: %v", err)
	}
	return string(got)
}

func handshake(t *testing.T, hs chan quicmux.Handshake) quicmux.Handshake {
	t.Helper()
	select {
	case h := <-hs:
		return h
	case <-time.After(10 * time.Second):
		t.Fatal("no handshake reported")
		return quicmux.Handshake{}
	}
}

// TestPoolStreams: app connections to one upstream are streams of one
// connection, which the pool reports once, with the server's certificate.
func TestPoolStreams(t *testing.T) {
	r := newRig(t, quicmux.Limits{}, nil)
	r.serve(t, echo)
	p, hs := r.pool(t, "", quicmux.Limits{})
	var conns []*quicmux.Conn
	for _, msg := range []string{"one", "two", "three"} {
		s, err := p.Open(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, s.Conn())
		if got := roundTrip(t, s, msg); got != msg {
			t.Fatalf("sent %q, got %q back", msg, got)
		}
	}
	h := handshake(t, hs)
	if h.Err != nil || h.Conn == nil || h.Backoff != 0 {
		t.Fatalf("handshake: %+v", h)
	}
	if id, _ := x509svid.IDFromCert(h.Conn.TLS().PeerCertificates[0]); id.Path() != "/backend" {
		t.Fatalf("the pool's connection is to %v", id)
	}
	for i, c := range conns {
		if c != h.Conn {
			t.Fatalf("stream %d rode another connection than the one reported", i)
		}
	}
	select {
	case h := <-hs:
		t.Fatalf("a second handshake: %+v", h)
	default:
	}
}

// TestRefuse: a stream the server refuses is reset with the code it gave.
func TestRefuse(t *testing.T) {
	r := newRig(t, quicmux.Limits{}, nil)
	r.serve(t, func(s *quicmux.Stream) { s.Refuse(quicmux.CodeDraining) })
	p, _ := r.pool(t, "", quicmux.Limits{})
	s, err := p.Open(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	s.SetDeadline(time.Now().Add(10 * time.Second))
	_, err = s.Read(make([]byte, 1))
	var se *quic.StreamError
	if !errors.As(err, &se) || !se.Remote || se.ErrorCode != quicmux.CodeDraining {
		t.Fatalf("read %v, want a reset with code %d", err, quicmux.CodeDraining)
	}
}

// TestPoolRefusedAfterHandshake: a server that refuses the client's
// certificate does so after the client's side of the handshake is done, so
// the dial may return a connection that is already closed. Open reports the
// refusal (a crypto error) after one handshake rather than dialing again.
// The pool's hook waits for the refusal to arrive before the dial returns,
// the order that made the pool dial again, and again.
func TestPoolRefusedAfterHandshake(t *testing.T) {
	ca := testca.New(t, td)
	bundles := x509bundle.NewSet(ca.Bundle())
	nobody := func(spiffeid.ID) bool { return false }
	srvTLS := mtls.Config{SVIDs: svidSource{ca.Issue(t, spiffeid.RequireFromPath(td, "/backend"))}, Bundles: bundles, Authorize: nobody}.Server()
	srv, err := quicmux.Listen("127.0.0.1:0", quicmux.ServerConfig{TLS: srvTLS})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Close)
	go func() {
		for {
			if _, err := srv.Accept(t.Context()); err != nil {
				return
			}
		}
	}()

	svids := svidSource{ca.Issue(t, spiffeid.RequireFromPath(td, "/frontend"))}
	var dials atomic.Int32
	p, err := quicmux.NewPool(quicmux.PoolConfig{
		Addr: srv.Addr().String(), Target: "app", SVIDs: svids,
		TLS: mtls.Config{SVIDs: svids, Bundles: bundles, Authorize: func(spiffeid.ID) bool { return true }}.Client(),
		Handshaken: func(h quicmux.Handshake) {
			dials.Add(1)
			if h.Conn != nil {
				select {
				case <-h.Conn.Context().Done():
				case <-time.After(5 * time.Second):
				}
			}
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)

	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	_, err = p.Open(ctx)
	var te *quic.TransportError
	if !errors.As(err, &te) || !te.ErrorCode.IsCryptoError() {
		t.Errorf("Open: %v, want the server's refusal (a crypto error)", err)
	}
	if n := dials.Load(); n != 1 {
		t.Errorf("%d handshakes for one Open, want 1", n)
	}
}

// TestPoolRecentlyFailed: after a handshake that fails (nothing answers),
// the pool reports a backoff and fails at once until it passes.
func TestPoolRecentlyFailed(t *testing.T) {
	r := newRig(t, quicmux.Limits{}, nil)
	dead, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := dead.LocalAddr().String()
	dead.Close()
	p, hs := r.pool(t, addr, quicmux.Limits{HandshakeTimeout: 300 * time.Millisecond})
	if _, err := p.Open(t.Context()); err == nil || errors.Is(err, quicmux.ErrRecentlyFailed) {
		t.Fatalf("first Open: %v, want the handshake's error", err)
	}
	if h := handshake(t, hs); h.Err == nil || h.Conn != nil || h.Backoff != 30*time.Second {
		t.Fatalf("handshake: %+v", h)
	}
	if _, err := p.Open(t.Context()); !errors.Is(err, quicmux.ErrRecentlyFailed) {
		t.Fatalf("second Open: %v, want ErrRecentlyFailed", err)
	}
}

// TestRetireAndRevoke: a retired connection takes no new stream and closes
// when its last one ends; a revoked one closes at once, and the server
// sees why.
func TestRetireAndRevoke(t *testing.T) {
	r := newRig(t, quicmux.Limits{}, nil)
	closed := make(chan error, 10)
	ctx := t.Context()
	go func() {
		for {
			c, err := r.srv.Accept(ctx)
			if err != nil {
				return
			}
			go func() {
				go func() {
					for {
						s, err := c.AcceptStream(ctx)
						if err != nil {
							return
						}
						go echo(s)
					}
				}()
				<-c.Context().Done()
				closed <- context.Cause(c.Context())
			}()
		}
	}()
	p, hs := r.pool(t, "", quicmux.Limits{})
	held, err := p.Open(ctx)
	if err != nil {
		t.Fatal(err)
	}
	first := handshake(t, hs).Conn
	first.Retire()
	s, err := p.Open(ctx)
	if err != nil {
		t.Fatal(err)
	}
	second := handshake(t, hs).Conn
	if s.Conn() != second || second == first {
		t.Fatal("a stream rode the retired connection")
	}
	if first.Context().Err() != nil {
		t.Fatal("the retired connection closed with a stream still open")
	}
	if got := roundTrip(t, held, "last"); got != "last" {
		t.Fatalf("the retired connection's stream: %q", got)
	}
	wantClose(t, closed, quicmux.CodeRetired)

	// The server has accepted the second connection before it is revoked:
	// its echo answers on s. A connection that closes before the server's
	// side of the handshake is done is never accepted there, so revoking
	// at once would leave nothing to see close (under load, it did).
	s.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := s.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(s, make([]byte, 1)); err != nil {
		t.Fatalf("the second connection's echo: %v", err)
	}
	second.Revoke()
	if _, err := s.Read(make([]byte, 1)); err == nil {
		t.Fatal("a stream of a revoked connection still reads")
	}
	s.Close()
	wantClose(t, closed, quicmux.CodeRevoked)
}

func wantClose(t *testing.T, closed chan error, code quic.ApplicationErrorCode) {
	t.Helper()
	select {
	case err := <-closed:
		var ae *quic.ApplicationError
		if !errors.As(err, &ae) || !ae.Remote || ae.ErrorCode != code {
			t.Fatalf("the server's connection closed with %v, want code %d from the peer", err, code)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("the server's connection did not close (want code %d)", code)
	}
}

// TestServerRetry: past HandshakeRate new connections a second, each
// attempt is answered with a Retry, which the client follows.
func TestServerRetry(t *testing.T) {
	var retries atomic.Int64
	r := newRig(t, quicmux.Limits{HandshakeRate: 1}, func() { retries.Add(1) })
	r.serve(t, echo)
	for i := range 3 {
		p, _ := r.pool(t, "", quicmux.Limits{})
		s, err := p.Open(t.Context())
		if err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
		if got := roundTrip(t, s, "hi"); got != "hi" {
			t.Fatalf("connection %d: %q", i, got)
		}
	}
	if retries.Load() == 0 {
		t.Fatal("three connections at once past a rate of one a second, and no Retry")
	}
}

// TestServerCloseFreesPort: once a Server is closed, its UDP address can be
// bound again (a proxy restarted in the same process takes it back).
func TestServerCloseFreesPort(t *testing.T) {
	r := newRig(t, quicmux.Limits{}, nil)
	addr := r.srv.Addr().String()
	r.srv.Close()
	c, err := net.ListenPacket("udp", addr)
	if err != nil {
		t.Fatalf("%s after Close: %v", addr, err)
	}
	c.Close()
}
