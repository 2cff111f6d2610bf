package proxy_test

import (
	"crypto/tls"
	"crypto/x509"
	"io"
	"net"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/credflow/credflow/internal/sidecartest"
	"github.com/credflow/credflow/internal/testca"
	"github.com/credflow/credflow/pqc"
	"github.com/credflow/credflow/proxy"
	"github.com/credflow/credflow/proxy/authz"
	"github.com/credflow/credflow/proxy/capture"
)

var td = spiffeid.RequireTrustDomainFromString("example.org")

// static is an identity that does not change: one SVID and a bundle set.
type static struct {
	svid    *x509svid.SVID
	bundles *x509bundle.Set
}

func (s static) GetX509SVID() (*x509svid.SVID, error) { return s.svid, nil }
func (s static) GetX509BundleForTrustDomain(t spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	return s.bundles.GetX509BundleForTrustDomain(t)
}

func policy(t testing.TB, patterns ...string) authz.Policy {
	t.Helper()
	p, err := authz.ParsePolicy(patterns)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// inbound runs a proxy with one inbound listener ("app", in front of an
// echo server) for backend, allowing allow.
type inbound struct {
	p    *proxy.Proxy
	addr string
	reg  *prometheus.Registry
}

func startInbound(t *testing.T, ca *testca.CA, allow authz.Policy, revalidate time.Duration) *inbound {
	t.Helper()
	return startInboundWith(t, ca, allow, revalidate, pqc.Policy{}, x509bundle.NewSet(ca.Bundle()))
}

func startInboundWith(t *testing.T, ca *testca.CA, allow authz.Policy, revalidate time.Duration, kex pqc.Policy, bundles *x509bundle.Set) *inbound {
	t.Helper()
	echo, err := sidecartest.Echo(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	p, reg := startProxy(t, proxy.Config{
		SVIDs:              static{svid: ca.Issue(t, spiffeid.RequireFromPath(td, "/backend"))},
		Bundles:            bundles,
		Inbound:            []proxy.Inbound{{Name: "app", Listen: "127.0.0.1:0", App: echo, Allow: allow}},
		HandshakeTimeout:   2 * time.Second,
		RevalidateInterval: revalidate,
		KeyExchange:        kex,
	})
	return &inbound{p: p, addr: p.Addr("app").String(), reg: reg}
}

func (in *inbound) metric(t *testing.T, name string, labels ...string) float64 {
	t.Helper()
	mfs, err := in.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var total float64
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	series:
		for _, m := range mf.Metric {
			for _, l := range labels {
				k, v, _ := strings.Cut(l, "=")
				found := false
				for _, lp := range m.Label {
					if lp.GetName() == k && lp.GetValue() == v {
						found = true
					}
				}
				if !found {
					continue series
				}
			}
			total += m.GetCounter().GetValue() + m.GetGauge().GetValue() + float64(m.GetHistogram().GetSampleCount())
		}
	}
	return total
}

// waitMetric waits up to 3s for a metric to reach want.
func (in *inbound) waitMetric(t *testing.T, want float64, name string, labels ...string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for in.metric(t, name, labels...) != want {
		if time.Now().After(deadline) {
			t.Fatalf("%s%v = %v, want %v", name, labels, in.metric(t, name, labels...), want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// clientConfig presents svid and checks nothing of the server: these tests
// are about what the server accepts.
func clientConfig(svid *x509svid.SVID) *tls.Config {
	cert := testca.TLSCertificate(svid)
	return &tls.Config{
		MinVersion:         tls.VersionTLS13,
		InsecureSkipVerify: true,
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			return &cert, nil
		},
	}
}

// echoOnce dials addr with cfg, writes msg and reads it back.
func echoOnce(addr string, cfg *tls.Config, msg string) (*tls.ConnectionState, error) {
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 2 * time.Second}, "tcp", addr, cfg)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(3 * time.Second))
	if _, err := io.WriteString(c, msg); err != nil {
		return nil, err
	}
	buf := make([]byte, len(msg))
	if _, err := io.ReadFull(c, buf); err != nil {
		return nil, err
	}
	cs := c.ConnectionState()
	return &cs, nil
}

// TestInboundRefusesBadPeers covers B4-B8 and expiry: each certificate is
// refused at the handshake with a stable reason that the metric shows.
func TestInboundRefusesBadPeers(t *testing.T) {
	ca := testca.New(t, td)
	other := testca.New(t, spiffeid.RequireTrustDomainFromString("other.org"))
	front := spiffeid.RequireFromPath(td, "/frontend")
	in := startInbound(t, ca, policy(t, "spiffe://example.org/frontend", "spiffe://example.org/ns/a/*"), time.Second)

	if _, err := echoOnce(in.addr, clientConfig(ca.Issue(t, front)), "hi"); err != nil {
		t.Fatalf("the allowed peer failed: %v", err)
	}
	now := time.Now()
	tests := []struct {
		name   string
		svid   *x509svid.SVID
		reason string
	}{
		{"B4 similar ID", ca.Issue(t, spiffeid.RequireFromPath(td, "/frontendX")), "unauthorized"},
		{"B4 child of exact ID", ca.Issue(t, spiffeid.RequireFromPath(td, "/frontend/x")), "unauthorized"},
		{"B4 sibling of prefix", ca.Issue(t, spiffeid.RequireFromPath(td, "/ns/ab")), "unauthorized"},
		{"B4 upper-case trust domain", ca.Issue(t, front, testca.WithURIs("spiffe://EXAMPLE.org/frontend")), "invalid_svid"},
		{"B4 empty segment", ca.Issue(t, front, testca.WithURIs("spiffe://example.org//frontend")), "invalid_svid"},
		{"B4 trailing slash", ca.Issue(t, front, testca.WithURIs("spiffe://example.org/frontend/")), "invalid_svid"},
		{"B5 no URI SAN", ca.Issue(t, spiffeid.ID{}, testca.WithURIs()), "invalid_svid"},
		{"B5 two URI SANs", ca.Issue(t, front, testca.WithURIs(front.String(), "spiffe://example.org/admin")), "invalid_svid"},
		{"B5 https URI", ca.Issue(t, front, testca.WithURIs("https://example.org/frontend")), "invalid_svid"},
		{"B5 ID only in a DNS SAN", ca.Issue(t, spiffeid.ID{}, testca.WithURIs(), testca.WithDNSNames(front.String())), "invalid_svid"},
		{"B6 NUL in the URI SAN", ca.Issue(t, front, testca.WithURIs("spiffe://example.org/frontend\x00.evil")), "handshake_failed"},
		{"B10 CR/LF in the URI SAN", ca.Issue(t, front, testca.WithURIs("spiffe://example.org/frontend\r\nX-Credflow-Peer-Id: spiffe://example.org/admin")), "handshake_failed"},
		{"B7 no clientAuth EKU", ca.Issue(t, front, testca.WithExtKeyUsage(x509.ExtKeyUsageServerAuth)), "bad_eku"},
		{"B7 leaf is a CA", ca.Issue(t, front, testca.WithCA()), "invalid_svid"},
		{"B8 signed by another trust domain", ca.Issue(t, front, testca.WithSigner(other)), "untrusted"},
		{"expired", ca.Issue(t, front, testca.WithValidity(now.Add(-2*time.Hour), now.Add(-time.Hour))), "expired"},
		{"not yet valid", ca.Issue(t, front, testca.WithValidity(now.Add(time.Hour), now.Add(2*time.Hour))), "not_yet_valid"},
	}
	t.Run("no client certificate", func(t *testing.T) {
		cfg := &tls.Config{MinVersion: tls.VersionTLS13, InsecureSkipVerify: true}
		if _, err := echoOnce(in.addr, cfg, "hi"); err == nil {
			t.Fatal("a client without a certificate was let through")
		}
		in.waitMetric(t, 1, "credflow_refusals_total", "direction=inbound", "reason=no_peer_cert")
	})
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := in.metric(t, "credflow_refusals_total", "direction=inbound", "reason="+tt.reason)
			if _, err := echoOnce(in.addr, clientConfig(tt.svid), "hi"); err == nil {
				t.Fatal("the peer was let through")
			}
			in.waitMetric(t, before+1, "credflow_refusals_total", "direction=inbound", "reason="+tt.reason)
		})
	}
	if got := in.metric(t, "credflow_connections_total", "result=allowed"); got != 1 {
		t.Fatalf("allowed connections = %v, want only the first", got)
	}
}

// TestInboundJunk is B21: garbage, plain HTTP and a TLS 1.2-only client are
// refused cleanly and leave no goroutine behind.
func TestInboundJunk(t *testing.T) {
	ca := testca.New(t, td)
	in := startInbound(t, ca, policy(t, "spiffe://example.org"), time.Second)
	good := clientConfig(ca.Issue(t, spiffeid.RequireFromPath(td, "/frontend")))
	if _, err := echoOnce(in.addr, good, "warm-up"); err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond) // the listeners' goroutines are all running
	g0 := runtime.NumGoroutine()
	for _, junk := range []string{"\x00\x01garbage\r\n\r\n", "GET / HTTP/1.1\r\nHost: x\r\n\r\n"} {
		c, err := net.Dial("tcp", in.addr)
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(3 * time.Second))
		io.WriteString(c, junk)
		if b, _ := io.ReadAll(c); strings.Contains(string(b), "HTTP/1.1 200") {
			t.Fatalf("junk %q was answered with %q", junk, b)
		}
		c.Close()
	}
	tls12 := clientConfig(ca.Issue(t, spiffeid.RequireFromPath(td, "/frontend")))
	tls12.MinVersion, tls12.MaxVersion = tls.VersionTLS12, tls.VersionTLS12
	if _, err := echoOnce(in.addr, tls12, "hi"); err == nil {
		t.Fatal("a TLS 1.2 client was accepted")
	}
	in.waitMetric(t, 3, "credflow_refusals_total", "reason=handshake_failed")
	deadline := time.Now().Add(3 * time.Second)
	for runtime.NumGoroutine() > g0 {
		if time.Now().After(deadline) {
			t.Fatalf("goroutines %d -> %d", g0, runtime.NumGoroutine())
		}
		time.Sleep(20 * time.Millisecond)
	}
	// A silent client is cut at the first-byte deadline (by default 2s,
	// the handshake timeout here too).
	c, err := net.Dial("tcp", in.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err == nil || isTimeout(err) {
		t.Fatalf("a silent client was not disconnected by the 2s first-byte deadline: %v", err)
	}
	in.waitMetric(t, 1, "credflow_refusals_total", "reason=first_byte_timeout")
}

func isTimeout(err error) bool {
	ne, ok := err.(net.Error)
	return ok && ne.Timeout()
}

// TestResumptionAfterPolicyChange is F7: a full handshake, a resumed one,
// then the policy stops allowing the peer and resumption is refused.
func TestResumptionAfterPolicyChange(t *testing.T) {
	ca := testca.New(t, td)
	in := startInbound(t, ca, policy(t, "spiffe://example.org/frontend"), time.Second)
	cfg := clientConfig(ca.Issue(t, spiffeid.RequireFromPath(td, "/frontend")))
	cfg.ClientSessionCache = tls.NewLRUClientSessionCache(4)

	cs, err := echoOnce(in.addr, cfg, "first")
	if err != nil || cs.DidResume {
		t.Fatalf("full handshake: resumed=%v err=%v", cs != nil && cs.DidResume, err)
	}
	cs, err = echoOnce(in.addr, cfg, "second")
	if err != nil || !cs.DidResume {
		t.Fatalf("the second connection did not resume (err=%v): the test would prove nothing", err)
	}
	if err := in.p.SetPolicy("app", policy(t, "spiffe://example.org/someone-else")); err != nil {
		t.Fatal(err)
	}
	if cs, err := echoOnce(in.addr, cfg, "third"); err == nil {
		t.Fatalf("resumed after the peer was denied (resumed=%v)", cs.DidResume)
	}
	in.waitMetric(t, 1, "credflow_refusals_total", "reason=unauthorized")
}

// TestLongLivedConnections is F8: an established connection is closed when
// the policy stops allowing its peer, and, with CloseOnPeerExpiry, when its
// peer certificate expires (TestConnectionsOutliveRotation: not by
// default).
func TestLongLivedConnections(t *testing.T) {
	ca := testca.New(t, td)
	front := spiffeid.RequireFromPath(td, "/frontend")
	echo, err := sidecartest.Echo(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	p, reg := startProxy(t, proxy.Config{
		SVIDs:              static{svid: ca.Issue(t, spiffeid.RequireFromPath(td, "/backend"))},
		Bundles:            x509bundle.NewSet(ca.Bundle()),
		Inbound:            []proxy.Inbound{{Name: "app", Listen: "127.0.0.1:0", App: echo, Allow: policy(t, "spiffe://example.org/frontend")}},
		HandshakeTimeout:   2 * time.Second,
		RevalidateInterval: 500 * time.Millisecond,
		CloseOnPeerExpiry:  true,
		ParkAfter:          50 * time.Millisecond,
	})
	in := &inbound{p: p, addr: p.Addr("app").String(), reg: reg}

	open := func(svid *x509svid.SVID) *tls.Conn {
		c, err := tls.Dial("tcp", in.addr, clientConfig(svid))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		if _, err := io.WriteString(c, "ping"); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 4)
		if _, err := io.ReadFull(c, buf); err != nil {
			t.Fatal(err)
		}
		return c
	}
	closedWithin := func(c *tls.Conn, d time.Duration) {
		t.Helper()
		c.SetReadDeadline(time.Now().Add(d))
		_, err := c.Read(make([]byte, 1))
		if err == nil || isTimeout(err) {
			t.Fatalf("connection still open after %s: %v", d, err)
		}
	}

	now := time.Now()
	short := open(ca.Issue(t, front, testca.WithValidity(now.Add(-time.Minute), now.Add(1500*time.Millisecond))))
	closedWithin(short, 4*time.Second)
	in.waitMetric(t, 1, "credflow_connections_closed_total", "reason=peer_expired")

	// Idle long enough for its relay to park (no goroutine reads it): the
	// revocation still ends the relay, not only the sockets.
	in.waitMetric(t, 0, "credflow_active_connections", "direction=inbound") // short's relay has ended
	parked := in.metric(t, "credflow_parked_relay_directions")
	c := open(ca.Issue(t, front))
	waitAtLeast(t, func() float64 { return in.metric(t, "credflow_parked_relay_directions") }, parked+2)
	if err := in.p.SetPolicy("app", policy(t, "spiffe://example.org/other")); err != nil {
		t.Fatal(err)
	}
	closedWithin(c, 2*time.Second)
	in.waitMetric(t, 1, "credflow_connections_closed_total", "reason=policy_revoked")
	in.waitMetric(t, 0, "credflow_active_connections", "direction=inbound")
}

// waitAtLeast waits up to 10 s for f to reach want.
func waitAtLeast(t *testing.T, f func() float64, want float64) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for f() < want {
		if time.Now().After(deadline) {
			t.Fatalf("%v after 10s, want at least %v", f(), want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestOutboundChecksServerIdentity: the outbound side refuses a server
// whose SPIFFE ID is not the one expected, and relays to the right one.
func TestOutboundChecksServerIdentity(t *testing.T) {
	ca := testca.New(t, td)
	in := startInbound(t, ca, policy(t, "spiffe://example.org/frontend"), time.Second)
	start := func(expect string) (string, *prometheus.Registry) {
		p, reg := startProxy(t, proxy.Config{
			SVIDs:    static{svid: ca.Issue(t, spiffeid.RequireFromPath(td, "/frontend"))},
			Bundles:  x509bundle.NewSet(ca.Bundle()),
			Outbound: []proxy.Outbound{{Name: "up", Listen: "127.0.0.1:0", Upstream: in.addr, Expect: policy(t, expect)}},
		})
		return p.Addr("up").String(), reg
	}
	good, _ := start("spiffe://example.org/backend")
	bad, badReg := start("spiffe://example.org/not-backend")
	exchange := func(addr string) string {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(3 * time.Second))
		io.WriteString(c, "hello")
		c.(*net.TCPConn).CloseWrite()
		b, _ := io.ReadAll(c)
		return string(b)
	}
	if got := exchange(good); got != "hello" {
		t.Fatalf("through the right server: %q", got)
	}
	if got := exchange(bad); got != "" {
		t.Fatalf("through a server with the wrong ID: %q", got)
	}
	waitRegistry(t, badReg, "credflow_refusals_total", "unauthorized")
}

func waitRegistry(t *testing.T, reg *prometheus.Registry, name, reason string) {
	t.Helper()
	in := &inbound{reg: reg}
	in.waitMetric(t, 1, name, "reason="+reason)
}

// TestNoResumption: by default a second outbound connection to the same
// upstream resumes; with NoResumption every connection is a full handshake,
// on both sides.
func TestNoResumption(t *testing.T) {
	ca := testca.New(t, td)
	for _, off := range []bool{false, true} {
		in := startInbound(t, ca, policy(t, "spiffe://example.org/frontend"), time.Second)
		p, reg := startProxy(t, proxy.Config{
			SVIDs:        static{svid: ca.Issue(t, spiffeid.RequireFromPath(td, "/frontend"))},
			Bundles:      x509bundle.NewSet(ca.Bundle()),
			Outbound:     []proxy.Outbound{{Name: "up", Listen: "127.0.0.1:0", Upstream: in.addr, Expect: policy(t, "spiffe://example.org/backend")}},
			NoResumption: off,
		})
		for range 3 {
			if got := exchange(t, p.Addr("up").String(), "x"); got != "x" {
				t.Fatalf("echo %q", got)
			}
		}
		out := &inbound{reg: reg}
		out.waitMetric(t, 3, "credflow_tls_connections_total")
		resumed := out.metric(t, "credflow_tls_connections_total", "resumed=true")
		if off && resumed != 0 || !off && resumed != 2 {
			t.Errorf("NoResumption=%v: %v of 3 connections resumed", off, resumed)
		}
	}
}

// TestCaptureWithoutOriginalDestination: a connection made to a capture
// listener directly (not redirected by the capture rules) has no original
// destination and is refused, rather than relayed back to the listener.
func TestCaptureWithoutOriginalDestination(t *testing.T) {
	ca := testca.New(t, td)
	p, reg := startProxy(t, proxy.Config{
		SVIDs:    static{svid: ca.Issue(t, spiffeid.RequireFromPath(td, "/frontend"))},
		Bundles:  x509bundle.NewSet(ca.Bundle()),
		Outbound: []proxy.Outbound{{Name: "capture", Listen: "127.0.0.1:0", Capture: &capture.Capture{}}},
	})
	c, err := net.Dial("tcp", p.Addr("capture").String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	c.Write([]byte("hello"))
	if n, err := c.Read(make([]byte, 8)); err == nil {
		t.Fatalf("read %d bytes from a capture listener dialled directly", n)
	}
	(&inbound{reg: reg}).waitMetric(t, 1, "credflow_refusals_total", "reason=no_original_destination")
}
