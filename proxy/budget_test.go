package proxy_test

import (
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/credflow/credflow/internal/sidecartest"
	"github.com/credflow/credflow/internal/testca"
	"github.com/credflow/credflow/proxy"
)

// budgetRig is a sidecar ("front") with an inbound listener "in" in front
// of an echo app, allowing /peer, and an outbound listener "out" to
// another sidecar's inbound listener, in front of an echo app too.
type budgetRig struct {
	front    *inbound
	in, out  string
	outbound func() error
}

func startBudgetRig(t *testing.T, ca *testca.CA, cfg proxy.Config) *budgetRig {
	t.Helper()
	echo, err := sidecartest.Echo(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	backend, _ := startProxy(t, proxy.Config{
		SVIDs:   static{svid: ca.Issue(t, spiffeid.RequireFromPath(td, "/backend"))},
		Bundles: x509bundle.NewSet(ca.Bundle()),
		Inbound: []proxy.Inbound{{Name: "app", Listen: "127.0.0.1:0", App: echo, Allow: policy(t, "spiffe://example.org/frontend")}},
	})
	cfg.SVIDs = static{svid: ca.Issue(t, spiffeid.RequireFromPath(td, "/frontend"))}
	cfg.Bundles = x509bundle.NewSet(ca.Bundle())
	cfg.Inbound = []proxy.Inbound{{Name: "in", Listen: "127.0.0.1:0", App: echo, Allow: policy(t, "spiffe://example.org/peer")}}
	cfg.Outbound = []proxy.Outbound{{Name: "out", Listen: "127.0.0.1:0", Upstream: backend.Addr("app").String(), Expect: policy(t, "spiffe://example.org/backend")}}
	p, reg := startProxy(t, cfg)
	r := &budgetRig{front: &inbound{p: p, addr: p.Addr("in").String(), reg: reg}, in: p.Addr("in").String(), out: p.Addr("out").String()}
	r.outbound = func() error { return echoPlain(r.out, "the app calls out") }
	return r
}

// echoPlain sends msg as the app would, through an outbound listener to
// an echo app, and checks it comes back.
func echoPlain(addr, msg string) error {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, msg); err != nil {
		return err
	}
	c.(*net.TCPConn).CloseWrite()
	got, err := io.ReadAll(c)
	if string(got) != msg {
		return fmt.Errorf("echoed %q (%v): the connection was closed", got, err)
	}
	return nil
}

// TestOutboundReserve is S19-1's split budget: peers that fill every
// connection slot inbound ones may take leave the app's outbound calls
// their reserve (OutboundReserve, by default a tenth of MaxConnections),
// and the peer past the inbound share is refused with the reason "limit".
func TestOutboundReserve(t *testing.T) {
	ca := testca.New(t, td)
	r := startBudgetRig(t, ca, proxy.Config{MaxConnections: 10, HandshakeTimeout: 30 * time.Second})
	peer := clientConfig(ca.Issue(t, spiffeid.RequireFromPath(td, "/peer")))
	for range 9 {
		dialEcho(t, r.in, peer).roundTrip(t, "a peer's connection")
	}
	// The tenth peer, kept open: on its own it would fit in MaxConnections.
	c, tenth := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", r.in, peer)
	if tenth == nil {
		t.Cleanup(func() { c.Close() })
		c.SetDeadline(time.Now().Add(5 * time.Second))
		io.WriteString(c, "x")
		_, tenth = io.ReadFull(c, make([]byte, 1)) // relayed, or closed by the sidecar
	}
	if err := r.outbound(); err != nil {
		t.Fatalf("the app's call out with the inbound share full: %v (limit refusals: %v)", err,
			r.front.metric(t, "credflow_refusals_total", "reason=limit"))
	}
	if tenth == nil {
		t.Fatal("a tenth inbound connection was relayed: inbound connections took the outbound reserve")
	}
	r.front.waitMetric(t, 1, "credflow_refusals_total", "direction=inbound", "reason=limit")
}

// dialFrom opens a plain TCP connection to addr from the loopback address
// 127.0.0.last, and sends nothing.
func dialFrom(t *testing.T, last byte, addr string) net.Conn {
	t.Helper()
	d := net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, last)}}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// TestHandshakeBudget is S19-1's handshake pool: inbound connections that
// have not finished their handshake hold one of MaxHandshakes and count
// against their source address (HandshakesPerSource); past either they are
// closed at accept, with the reasons "source_limit" and "handshake_limit".
// A connection gives its handshake slot back once its handshake is done,
// and the slots of connections that go away are taken again.
func TestHandshakeBudget(t *testing.T) {
	ca := testca.New(t, td)
	r := startBudgetRig(t, ca, proxy.Config{
		HandshakeTimeout: 30 * time.Second, FirstByteTimeout: 30 * time.Second,
		MaxHandshakes: 3, HandshakesPerSource: 2,
	})
	m := r.front
	peer := clientConfig(ca.Issue(t, spiffeid.RequireFromPath(td, "/peer")))

	first := dialFrom(t, 1, r.in)
	dialFrom(t, 1, r.in)
	m.waitMetric(t, 2, "credflow_inbound_handshakes")
	if !closedSoon(dialFrom(t, 1, r.in), 5*time.Second) {
		t.Fatal("a third connection from 127.0.0.1 waiting for its handshake was not closed")
	}
	m.waitMetric(t, 1, "credflow_refusals_total", "direction=inbound", "reason=source_limit")
	if _, err := echoOnce(r.in, peer, "a real peer"); err == nil {
		t.Fatal("a peer from a source at its limit was relayed")
	}
	m.waitMetric(t, 2, "credflow_refusals_total", "direction=inbound", "reason=source_limit")

	dialFrom(t, 2, r.in)
	m.waitMetric(t, 3, "credflow_inbound_handshakes")
	if !closedSoon(dialFrom(t, 3, r.in), 5*time.Second) {
		t.Fatal("a connection past MaxHandshakes was not closed")
	}
	m.waitMetric(t, 1, "credflow_refusals_total", "direction=inbound", "reason=handshake_limit")
	if err := r.outbound(); err != nil {
		t.Fatalf("the app's call out with the handshake pool full: %v", err)
	}

	first.Close()
	m.waitMetric(t, 2, "credflow_inbound_handshakes")
	live := dialEcho(t, r.in, peer)
	live.roundTrip(t, "a real peer, once a slot is free")
	m.waitMetric(t, 2, "credflow_inbound_handshakes") // the peer's slot is back
	dialFrom(t, 4, r.in)
	m.waitMetric(t, 3, "credflow_inbound_handshakes")
	live.roundTrip(t, "still relaying")
	for _, reason := range []string{"limit", "first_byte_timeout", "handshake_timeout"} {
		if got := m.metric(t, "credflow_refusals_total", "reason="+reason); got != 0 {
			t.Errorf("%s refusals = %v, want 0", reason, got)
		}
	}
}

// TestFirstByteDeadline is S19-1's first-byte deadline: an inbound
// connection that sends nothing is closed at FirstByteTimeout with the
// reason "first_byte_timeout", while one that has started its ClientHello
// keeps the rest of HandshakeTimeout. The silent connection is opened
// after the talkative one, so once it is closed the talkative one's
// first-byte deadline has passed too.
func TestFirstByteDeadline(t *testing.T) {
	ca := testca.New(t, td)
	r := startBudgetRig(t, ca, proxy.Config{HandshakeTimeout: time.Minute, FirstByteTimeout: 500 * time.Millisecond})
	talkative := dialFrom(t, 1, r.in)
	if _, err := talkative.Write(partialClientHello); err != nil {
		t.Fatal(err)
	}
	silent := dialFrom(t, 1, r.in)
	if !closedSoon(silent, 30*time.Second) {
		t.Fatal("a silent connection was not closed at the first-byte deadline")
	}
	r.front.waitMetric(t, 1, "credflow_refusals_total", "direction=inbound", "reason=first_byte_timeout")
	if closedSoon(talkative, 100*time.Millisecond) {
		t.Fatal("a connection that had started its ClientHello was closed at the first-byte deadline")
	}
	if got := r.front.metric(t, "credflow_inbound_handshakes"); got != 1 {
		t.Errorf("credflow_inbound_handshakes = %v, want 1 (the talkative connection)", got)
	}
	talkative.Close()
	r.front.waitMetric(t, 0, "credflow_inbound_handshakes")
	if got := r.front.metric(t, "credflow_refusals_total", "reason=first_byte_timeout"); got != 1 {
		t.Errorf("first_byte_timeout refusals = %v, want 1 (a connection closed by its client is not one)", got)
	}
}
