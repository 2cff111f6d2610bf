package proxy_test

import (
	"context"
	"crypto/tls"
	"io"
	"net"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/credflow/credflow/internal/testca"
	"github.com/credflow/credflow/pqc"
	"github.com/credflow/credflow/proxy"
)

var legacyTD = spiffeid.RequireTrustDomainFromString("legacy.example")

// TestDefaultNegotiatesHybrid: with the zero policy, an outbound and an
// inbound proxy negotiate X25519MLKEM768, and the metric shows it.
func TestDefaultNegotiatesHybrid(t *testing.T) {
	ca := testca.New(t, td)
	in := startInbound(t, ca, policy(t, "spiffe://example.org/frontend"), time.Second)
	out := startOutbound(t, ca, in.addr, "spiffe://example.org/backend", pqc.Policy{})
	if got := exchange(t, out.addr, "hello"); got != "hello" {
		t.Fatalf("relay: %q", got)
	}
	in.waitMetric(t, 1, "credflow_tls_connections_total", "direction=inbound", "group=X25519MLKEM768", "version=TLS 1.3")
	out.in.waitMetric(t, 1, "credflow_tls_connections_total", "direction=outbound", "group=X25519MLKEM768")

	// A Go client with its defaults negotiates it too (asserted from the
	// connection state).
	cs, err := echoOnce(in.addr, clientConfig(ca.Issue(t, spiffeid.RequireFromPath(td, "/frontend"))), "x")
	if err != nil || cs.CurveID != tls.X25519MLKEM768 {
		t.Fatalf("Go client: group %v, err %v", cs, err)
	}
}

// TestHybridRequiredInbound: a Go client restricted to X25519 is refused
// with pq_required; one offering hybrid is accepted.
func TestHybridRequiredInbound(t *testing.T) {
	ca := testca.New(t, td)
	in := startInboundWith(t, ca, policy(t, "spiffe://example.org"), time.Second,
		pqc.Policy{Mode: pqc.HybridRequired}, x509bundle.NewSet(ca.Bundle()))
	classical := clientConfig(ca.Issue(t, spiffeid.RequireFromPath(td, "/frontend")))
	classical.CurvePreferences = []tls.CurveID{tls.X25519}
	if _, err := echoOnce(in.addr, classical, "x"); err == nil {
		t.Fatal("an X25519-only client was accepted under hybrid-required")
	}
	in.waitMetric(t, 1, "credflow_refusals_total", "reason=pq_required")
	cs, err := echoOnce(in.addr, clientConfig(ca.Issue(t, spiffeid.RequireFromPath(td, "/frontend"))), "x")
	if err != nil || !pqc.IsHybrid(cs.CurveID) {
		t.Fatalf("a hybrid client: %v", err)
	}
}

// TestHybridRequiredOpenSSL: openssl s_client -groups X25519, presenting a
// valid SVID, is refused with pq_required.
func TestHybridRequiredOpenSSL(t *testing.T) {
	if _, err := exec.LookPath("openssl"); err != nil {
		t.Fatal("openssl is not installed: make test installs it (make deps)")
	}
	ca := testca.New(t, td)
	in := startInboundWith(t, ca, policy(t, "spiffe://example.org"), time.Second,
		pqc.Policy{Mode: pqc.HybridRequired}, x509bundle.NewSet(ca.Bundle()))
	dir := t.TempDir()
	cert, key := testca.WritePEM(t, dir, ca.Issue(t, spiffeid.RequireFromPath(td, "/frontend")))
	run := func(groups string) string {
		ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
		defer cancel()
		cmd := exec.CommandContext(ctx, "openssl", "s_client", "-connect", in.addr, "-tls1_3", "-groups", groups,
			"-cert", cert, "-key", key, "-quiet")
		cmd.Stdin = strings.NewReader("ping")
		out, _ := cmd.CombinedOutput()
		return string(out)
	}
	out := run("X25519")
	if strings.Contains(out, "ping") {
		t.Fatalf("openssl with X25519 got its data echoed:\n%s", out)
	}
	in.waitMetric(t, 1, "credflow_refusals_total", "reason=pq_required")
	if got := in.metric(t, "credflow_connections_total", "result=allowed"); got != 0 {
		t.Fatalf("allowed = %v", got)
	}
}

// TestKeyExchangeOverrides covers per-trust-domain overrides in both
// directions.
func TestKeyExchangeOverrides(t *testing.T) {
	ca := testca.New(t, td)
	legacy := testca.New(t, legacyTD)
	bundles := x509bundle.NewSet(ca.Bundle(), legacy.Bundle())

	t.Run("inbound by the client's trust domain", func(t *testing.T) {
		kex := pqc.Policy{Mode: pqc.HybridRequired, Overrides: map[spiffeid.TrustDomain]pqc.Mode{legacyTD: pqc.HybridPreferred}}
		in := startInboundWith(t, ca, policy(t, "spiffe://example.org", "spiffe://legacy.example"), time.Second, kex, bundles)
		fromLegacy := clientConfig(legacy.Issue(t, spiffeid.RequireFromPath(legacyTD, "/old")))
		fromLegacy.CurvePreferences = []tls.CurveID{tls.X25519}
		if cs, err := echoOnce(in.addr, fromLegacy, "x"); err != nil || cs.CurveID != tls.X25519 {
			t.Fatalf("classical client of the legacy trust domain: %v", err)
		}
		in.waitMetric(t, 1, "credflow_classical_connections_total", "trust_domain=legacy.example")
		fromOwn := clientConfig(ca.Issue(t, spiffeid.RequireFromPath(td, "/new")))
		fromOwn.CurvePreferences = []tls.CurveID{tls.X25519}
		if _, err := echoOnce(in.addr, fromOwn, "x"); err == nil {
			t.Fatal("a classical client of a hybrid-required trust domain was accepted")
		}
		in.waitMetric(t, 1, "credflow_refusals_total", "reason=pq_required")
	})

	t.Run("outbound by the server's trust domain", func(t *testing.T) {
		// A classical-only server of legacy.example.
		srv := classicalServer(t, legacy, spiffeid.RequireFromPath(legacyTD, "/db"))
		preferred := startOutbound(t, ca, srv, "spiffe://legacy.example/db", pqc.Policy{}, legacy)
		if got := exchange(t, preferred.addr, "hi"); got != "hi" {
			t.Fatalf("hybrid-preferred towards a classical server: %q", got)
		}
		preferred.in.waitMetric(t, 1, "credflow_classical_connections_total", "direction=outbound", "trust_domain=legacy.example")

		required := startOutbound(t, ca, srv, "spiffe://legacy.example/db",
			pqc.Policy{Overrides: map[spiffeid.TrustDomain]pqc.Mode{legacyTD: pqc.HybridRequired}}, legacy)
		if got := exchange(t, required.addr, "hi"); got != "" {
			t.Fatalf("hybrid-required towards a classical server relayed %q", got)
		}
		required.in.waitMetric(t, 1, "credflow_refusals_total", "direction=outbound", "reason=pq_required")
	})
}

type outbound struct {
	addr string
	in   *inbound // for its metric helpers
}

func startOutbound(t *testing.T, ca *testca.CA, upstream, expect string, kex pqc.Policy, others ...*testca.CA) *outbound {
	t.Helper()
	bundles := x509bundle.NewSet(ca.Bundle())
	for _, o := range others {
		bundles.Add(o.Bundle())
	}
	p, reg := startProxy(t, proxy.Config{
		SVIDs:       static{svid: ca.Issue(t, spiffeid.RequireFromPath(td, "/frontend"))},
		Bundles:     bundles,
		Outbound:    []proxy.Outbound{{Name: "up", Listen: "127.0.0.1:0", Upstream: upstream, Expect: policy(t, expect)}},
		KeyExchange: kex,
	})
	return &outbound{addr: p.Addr("up").String(), in: &inbound{reg: reg}}
}

func exchange(t *testing.T, addr, msg string) string {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	io.WriteString(c, msg)
	c.(*net.TCPConn).CloseWrite()
	b, _ := io.ReadAll(c)
	return string(b)
}

// classicalServer is a TLS 1.3 echo server that only does X25519 and asks
// for (but does not verify) a client certificate.
func classicalServer(t *testing.T, ca *testca.CA, id spiffeid.ID) string {
	t.Helper()
	cert := testca.TLSCertificate(ca.Issue(t, id))
	l, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{
		MinVersion:       tls.VersionTLS13,
		Certificates:     []tls.Certificate{cert},
		CurvePreferences: []tls.CurveID{tls.X25519},
		ClientAuth:       tls.RequireAnyClientCert,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				b, _ := io.ReadAll(c)
				c.Write(b)
			}()
		}
	}()
	return l.Addr().String()
}
