package proxy_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/credflow/credflow/internal/sidecartest"
	"github.com/credflow/credflow/internal/testca"
	"github.com/credflow/credflow/pqc"
	"github.com/credflow/credflow/proxy"
	"github.com/credflow/credflow/proxy/limit"
	"github.com/credflow/credflow/proxy/quicmux"
)

// quicPair is an inbound proxy with TCP and QUIC in front of an echo app,
// and an outbound proxy that reaches it over QUIC.
type quicPair struct {
	in, out   *inbound
	outAddr   string
	inTCP     string
	inQUIC    string
	outClient string
}

type quicOpts struct {
	allow      string
	inKex      pqc.Policy
	outKex     pqc.Policy
	maxStreams int64
	quicAddr   string // outbound QUIC upstream; default the inbound's
	handshake  time.Duration
	client     string       // outbound SVID path
	limits     limit.Config // the inbound listener's
}

func startProxy(t testing.TB, cfg proxy.Config) (*proxy.Proxy, *prometheus.Registry) {
	t.Helper()
	reg := prometheus.NewRegistry()
	cfg.Metrics = proxy.NewMetrics(reg)
	p, err := proxy.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Listen(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Serve(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	return p, reg
}

func startQUICPair(t *testing.T, ca *testca.CA, o quicOpts) *quicPair {
	t.Helper()
	echo, err := sidecartest.Echo(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	bundles := x509bundle.NewSet(ca.Bundle())
	if o.allow == "" {
		o.allow = "spiffe://example.org/frontend"
	}
	if o.client == "" {
		o.client = "/frontend"
	}
	inP, inReg := startProxy(t, proxy.Config{
		SVIDs:       static{svid: ca.Issue(t, spiffeid.RequireFromPath(td, "/backend"))},
		Bundles:     bundles,
		Inbound:     []proxy.Inbound{{Name: "app", Listen: "127.0.0.1:0", App: echo, Allow: policy(t, o.allow), QUICListen: "127.0.0.1:0", Limits: o.limits}},
		KeyExchange: o.inKex,
		QUIC:        quicmux.Limits{MaxStreams: o.maxStreams},
	})
	qp := &quicPair{in: &inbound{p: inP, reg: inReg, addr: inP.Addr("app").String()}, inTCP: inP.Addr("app").String(), inQUIC: inP.QUICAddr("app").String()}
	upstream := qp.inQUIC
	if o.quicAddr != "" {
		upstream = o.quicAddr
	}
	outP, outReg := startProxy(t, proxy.Config{
		SVIDs:   static{svid: ca.Issue(t, spiffeid.RequireFromPath(td, o.client))},
		Bundles: bundles,
		Outbound: []proxy.Outbound{{Name: "up", Listen: "127.0.0.1:0", Upstream: qp.inTCP, Expect: policy(t, "spiffe://example.org/backend"),
			QUICUpstream: upstream}},
		KeyExchange: o.outKex,
		QUIC:        quicmux.Limits{HandshakeTimeout: o.handshake},
	})
	qp.out = &inbound{p: outP, reg: outReg}
	qp.outAddr = outP.Addr("up").String()
	return qp
}

func roundTrip(t *testing.T, addr string, payload []byte) []byte {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(20 * time.Second))
	errc := make(chan error, 1)
	go func() {
		_, err := c.Write(payload)
		c.(*net.TCPConn).CloseWrite()
		errc <- err
	}()
	got, _ := io.ReadAll(c)
	<-errc
	return got
}

func TestQUICPayloadsAndOneConnection(t *testing.T) {
	ca := testca.New(t, td)
	qp := startQUICPair(t, ca, quicOpts{})
	for _, size := range []int{1, 64 << 10, 10 << 20} {
		payload := make([]byte, size)
		rand.Read(payload)
		if got := roundTrip(t, qp.outAddr, payload); !bytes.Equal(got, payload) {
			t.Fatalf("%d bytes: %d came back", size, len(got))
		}
	}
	// 100 concurrent app connections.
	var wg sync.WaitGroup
	for i := range 100 {
		wg.Go(func() {
			msg := []byte{byte(i), 'x', 'y'}
			if got := roundTrip(t, qp.outAddr, msg); !bytes.Equal(got, msg) {
				t.Errorf("connection %d: %q", i, got)
			}
		})
	}
	wg.Wait()
	qp.out.waitMetric(t, 1, "credflow_quic_connections_total", "direction=outbound")
	qp.in.waitMetric(t, 1, "credflow_quic_connections_total", "direction=inbound")
	qp.in.waitMetric(t, 103, "credflow_quic_streams_total")
	qp.in.waitMetric(t, 103, "credflow_tls_connections_total", "group=X25519MLKEM768")
	if n := qp.out.metric(t, "credflow_quic_fallbacks_total"); n != 0 {
		t.Fatalf("%v fallbacks to TCP", n)
	}
	if n := qp.in.metric(t, "credflow_connections_total", "result=allowed"); n != 103 {
		t.Fatalf("inbound allowed = %v", n)
	}
}

func TestQUICWrongIdentityRefused(t *testing.T) {
	ca := testca.New(t, td)
	qp := startQUICPair(t, ca, quicOpts{client: "/intruder"})
	if got := roundTrip(t, qp.outAddr, []byte("let me in")); len(got) != 0 {
		t.Fatalf("the intruder got %q", got)
	}
	// Refused in the QUIC handshake, the connection does not go on to
	// TCP. On a starved machine the QUIC handshake can time out first:
	// then it does, counted as a fallback, and TCP refuses it as well.
	fallbacks := qp.out.metric(t, "credflow_quic_fallbacks_total")
	if fallbacks > 0 {
		t.Logf("%v fallbacks to TCP (the QUIC handshake did not finish in time)", fallbacks)
	}
	qp.in.waitMetric(t, 1+fallbacks, "credflow_refusals_total", "reason=unauthorized")
	if n := qp.in.metric(t, "credflow_connections_total", "result=allowed"); n != 0 {
		t.Fatalf("allowed = %v", n)
	}
}

func TestQUICHybridRequired(t *testing.T) {
	ca := testca.New(t, td)
	qp := startQUICPair(t, ca, quicOpts{inKex: pqc.Policy{Mode: pqc.HybridRequired}, outKex: pqc.Policy{Mode: pqc.Classical}})
	if got := roundTrip(t, qp.outAddr, []byte("x")); len(got) != 0 {
		t.Fatalf("a classical client got %q through hybrid-required", got)
	}
	qp.in.waitMetric(t, 1, "credflow_refusals_total", "reason=pq_required")
}

// TestQUICFallback: with nothing listening on the QUIC port, app traffic
// falls back to TCP within the handshake timeout, and the metric shows it.
func TestQUICFallback(t *testing.T) {
	ca := testca.New(t, td)
	closed, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := closed.LocalAddr().String()
	closed.Close()
	qp := startQUICPair(t, ca, quicOpts{quicAddr: dead, handshake: time.Second})
	start := time.Now()
	if got := roundTrip(t, qp.outAddr, []byte("hello")); string(got) != "hello" {
		t.Fatalf("fallback: %q", got)
	}
	t.Logf("fallback after %s with a 1s QUIC handshake timeout", time.Since(start))
	qp.out.waitMetric(t, 1, "credflow_quic_fallbacks_total", "reason=timeout")
	// The next connection does not wait for QUIC again: it falls back at
	// once, counted as such, and the timeout count stays at one. (Counts,
	// not durations: a wall-clock bound would measure the scheduler.)
	if got := roundTrip(t, qp.outAddr, []byte("again")); string(got) != "again" {
		t.Fatalf("second connection: %q", got)
	}
	qp.out.waitMetric(t, 1, "credflow_quic_fallbacks_total", "reason=recently_failed")
	qp.out.waitMetric(t, 1, "credflow_quic_fallbacks_total", "reason=timeout")
}

// TestQUICStreamLimit is L6's stream limit: past the peer's limit, new app
// connections are not queued forever but go over TCP, counted.
func TestQUICStreamLimit(t *testing.T) {
	ca := testca.New(t, td)
	qp := startQUICPair(t, ca, quicOpts{maxStreams: 3, handshake: 500 * time.Millisecond})
	var open []net.Conn
	for range 3 {
		c, err := net.Dial("tcp", qp.outAddr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.Write([]byte("hold"))
		buf := make([]byte, 4)
		c.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.ReadFull(c, buf); err != nil {
			t.Fatal(err)
		}
		open = append(open, c)
	}
	if got := roundTrip(t, qp.outAddr, []byte("fourth")); string(got) != "fourth" {
		t.Fatalf("the fourth connection: %q", got)
	}
	qp.out.waitMetric(t, 1, "credflow_quic_fallbacks_total", "reason=stream_limit")
	qp.in.waitMetric(t, 3, "credflow_quic_streams_total")
}

// TestQUICConnectionLimits: a stream is an app connection, and the inbound
// listener's connection limits apply to it as to a TCP one: past the
// peer's burst of new connections, a stream is refused (rate_limited),
// counted and logged.
func TestQUICConnectionLimits(t *testing.T) {
	ca := testca.New(t, td)
	qp := startQUICPair(t, ca, quicOpts{limits: limit.Config{Connections: limit.Limits{PerIdentity: limit.Rate{PerSecond: slow, Burst: 3}}}})
	for i := range 3 {
		if got := roundTrip(t, qp.outAddr, []byte("hello")); string(got) != "hello" {
			t.Fatalf("app connection %d of a burst of 3: %q", i+1, got)
		}
	}
	if got := roundTrip(t, qp.outAddr, []byte("hello")); len(got) != 0 {
		t.Errorf("a fourth app connection past the burst of 3: %q echoed", got)
	}
	qp.in.waitMetric(t, 1, "credflow_refusals_total", "reason=rate_limited")
	if n := qp.in.metric(t, "credflow_quic_streams_total"); n != 3 {
		t.Errorf("credflow_quic_streams_total = %v; want the 3 admitted", n)
	}
}
