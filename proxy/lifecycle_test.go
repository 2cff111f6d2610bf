package proxy_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/credflow/credflow/internal/sidecartest"
	"github.com/credflow/credflow/internal/testca"
	"github.com/credflow/credflow/pqc"
	"github.com/credflow/credflow/proxy"
	"github.com/credflow/credflow/proxy/quicmux"
	"github.com/credflow/credflow/proxy/route"
)

// twoAuthorities returns two CAs of td and a bundle that trusts both, as
// during an authority rotation in SPIRE.
func twoAuthorities(t *testing.T) (a, b *testca.CA, both *x509bundle.Bundle) {
	a, b = testca.New(t, td), testca.New(t, td)
	return a, b, x509bundle.FromX509Authorities(td, append(a.Roots(), b.Roots()...))
}

// waitAtLeast waits up to 5s for a metric to reach at least want.
func (in *inbound) waitAtLeast(t *testing.T, want float64, name string, labels ...string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for in.metric(t, name, labels...) < want {
		if time.Now().After(deadline) {
			t.Fatalf("%s%v = %v, want at least %v", name, labels, in.metric(t, name, labels...), want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// liveConn is an open connection through which the test echoes.
type liveConn struct {
	net.Conn
}

// dialLive opens a connection (TLS when cfg is set) and checks one echo.
func dialLive(t *testing.T, addr string, cfg *tls.Config) *liveConn {
	t.Helper()
	var c net.Conn
	var err error
	if cfg != nil {
		c, err = tls.DialWithDialer(&net.Dialer{Timeout: 3 * time.Second}, "tcp", addr, cfg)
	} else {
		c, err = net.DialTimeout("tcp", addr, 3*time.Second)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	lc := &liveConn{Conn: c}
	if err := lc.echo("hello"); err != nil {
		t.Fatalf("first echo: %v", err)
	}
	return lc
}

func (c *liveConn) echo(msg string) error {
	c.SetDeadline(time.Now().Add(5 * time.Second))
	defer c.SetDeadline(time.Time{})
	if _, err := io.WriteString(c, msg); err != nil {
		return err
	}
	buf := make([]byte, len(msg))
	if _, err := io.ReadFull(c, buf); err != nil {
		return err
	}
	if string(buf) != msg {
		return errors.New("echo mismatch: " + string(buf))
	}
	return nil
}

// closedWithin reports whether the peer closes c within d (a read returns
// EOF or an error other than the deadline).
func (c *liveConn) closedWithin(d time.Duration) bool {
	c.SetReadDeadline(time.Now().Add(d))
	defer c.SetReadDeadline(time.Time{})
	_, err := c.Read(make([]byte, 1))
	return err != nil && !isTimeout(err)
}

// TestTrustChangeClosesEstablished: when the bundle drops the authority
// that issued a peer's certificate, the established connections of that
// peer are closed ("untrusted"), inbound and outbound, while those of
// peers whose chain still verifies keep relaying.
func TestTrustChangeClosesEstablished(t *testing.T) {
	front := spiffeid.RequireFromPath(td, "/frontend")
	back := spiffeid.RequireFromPath(td, "/backend")

	t.Run("inbound", func(t *testing.T) {
		kept, dropped, both := twoAuthorities(t)
		backend := &swappable{}
		backendSVID := kept.Issue(t, back)
		backend.set(backendSVID, both)
		echo, err := sidecartest.Echo(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		p, reg := startProxy(t, proxy.Config{
			SVIDs:   backend,
			Bundles: backend,
			Inbound: []proxy.Inbound{{Name: "app", Listen: "127.0.0.1:0", App: echo, Allow: policy(t, front.String())}},
			// Long: the change of bundle, not the ticker, must trigger it.
			RevalidateInterval: time.Hour,
		})
		addr := p.Addr("app").String()
		good := dialLive(t, addr, clientConfig(kept.Issue(t, front)))
		stale := dialLive(t, addr, clientConfig(dropped.Issue(t, front)))

		backend.set(backendSVID, kept.Bundle())
		if !stale.closedWithin(5 * time.Second) {
			t.Fatal("a connection whose peer's authority left the bundle is still open")
		}
		(&inbound{reg: reg}).waitMetric(t, 1, "credflow_connections_closed_total", "direction=inbound", "reason=untrusted")
		if err := good.echo("still"); err != nil {
			t.Fatalf("a peer whose chain still verifies was cut: %v", err)
		}
	})

	t.Run("outbound", func(t *testing.T) {
		kept, dropped, both := twoAuthorities(t)
		echo, err := sidecartest.Echo(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		in, _ := startProxy(t, proxy.Config{
			SVIDs:   static{svid: dropped.Issue(t, back)},
			Bundles: x509bundle.NewSet(both),
			Inbound: []proxy.Inbound{{Name: "app", Listen: "127.0.0.1:0", App: echo, Allow: policy(t, front.String())}},
		})
		frontend := &swappable{}
		frontSVID := kept.Issue(t, front)
		frontend.set(frontSVID, both)
		out, reg := startProxy(t, proxy.Config{
			SVIDs:              frontend,
			Bundles:            frontend,
			Outbound:           []proxy.Outbound{{Name: "up", Listen: "127.0.0.1:0", Upstream: in.Addr("app").String(), Expect: policy(t, back.String())}},
			RevalidateInterval: time.Hour,
		})
		c := dialLive(t, out.Addr("up").String(), nil)
		frontend.set(frontSVID, kept.Bundle())
		if !c.closedWithin(5 * time.Second) {
			t.Fatal("a connection to an upstream whose authority left the bundle is still open")
		}
		(&inbound{reg: reg}).waitMetric(t, 1, "credflow_connections_closed_total", "direction=outbound", "reason=untrusted")
	})
}

// TestPooledHTTPFollowsExpectAndTrust: the HTTP/2 connections an HTTP
// outbound listener pools to its upstream are dropped when the upstream no
// longer matches expect, or its chain no longer verifies: requests then
// fail rather than ride a connection made under the old rules.
func TestPooledHTTPFollowsExpectAndTrust(t *testing.T) {
	front := spiffeid.RequireFromPath(td, "/frontend")
	back := spiffeid.RequireFromPath(td, "/backend")
	for _, change := range []string{"expect", "bundle"} {
		t.Run(change, func(t *testing.T) {
			kept, dropped, both := twoAuthorities(t)
			issuer := newJWTIssuer(t)
			appAddr := okApp(t)
			api, _ := route.ParsePath("/api/*")
			routes := route.Table{Rules: []route.Rule{{Peers: policy(t, front.String()), Methods: []string{"GET"}, Paths: []route.Path{api}}}}
			in, _ := startProxy(t, proxy.Config{
				SVIDs:       static{svid: dropped.Issue(t, back)},
				Bundles:     x509bundle.NewSet(both),
				Inbound:     []proxy.Inbound{{Name: "app", Listen: "127.0.0.1:0", App: appAddr, Allow: policy(t, front.String()), HTTP: &proxy.InboundHTTP{Routes: routes, RequireJWT: true}}},
				ValidateJWT: issuer.validate,
			})
			frontend := &swappable{}
			frontSVID := kept.Issue(t, front)
			frontend.set(frontSVID, both)
			out, reg := startProxy(t, proxy.Config{
				SVIDs:              frontend,
				Bundles:            frontend,
				Outbound:           []proxy.Outbound{{Name: "up", Listen: "127.0.0.1:0", Upstream: in.Addr("app").String(), Expect: policy(t, back.String()), HTTP: &proxy.OutboundHTTP{}}},
				Tokens:             source{j: issuer, id: front},
				RevalidateInterval: time.Hour,
			})
			client := &http.Client{Timeout: 5 * time.Second}
			url := "http://" + out.Addr("up").String() + "/api/x"
			get := func() int {
				resp, err := client.Get(url)
				if err != nil {
					t.Fatal(err)
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				return resp.StatusCode
			}
			if s := get(); s != 200 {
				t.Fatalf("before the change: %d", s)
			}
			reason := "policy_revoked"
			if change == "expect" {
				if err := out.SetPolicy("up", policy(t, "spiffe://example.org/someone-else")); err != nil {
					t.Fatal(err)
				}
			} else {
				reason = "untrusted"
				frontend.set(frontSVID, kept.Bundle())
			}
			(&inbound{reg: reg}).waitMetric(t, 1, "credflow_connections_closed_total", "direction=outbound", "reason="+reason)
			for i := range 3 {
				if s := get(); s == 200 {
					t.Fatalf("request %d after the %s change was answered by the old upstream", i, change)
				}
			}
		})
	}
}

// quicIdentity starts an inbound listener with TCP and QUIC before an echo
// app, for a backend whose identity (SVID, bundles) the test controls.
func quicInbound(t *testing.T, id *swappable, allow string, kex pqc.Policy) (*proxy.Proxy, *inbound) {
	t.Helper()
	echo, err := sidecartest.Echo(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	p, reg := startProxy(t, proxy.Config{
		SVIDs:              id,
		Bundles:            id,
		Inbound:            []proxy.Inbound{{Name: "app", Listen: "127.0.0.1:0", App: echo, Allow: policy(t, allow), QUICListen: "127.0.0.1:0"}},
		KeyExchange:        kex,
		RevalidateInterval: time.Hour,
	})
	return p, &inbound{p: p, reg: reg}
}

// TestQUICFollowsTrustAndExpect: QUIC connections between sidecars are
// re-verified too. The inbound side closes the connection of a peer whose
// authority left its bundle; the outbound side drops its pooled connection
// when the upstream no longer matches expect, so that no new stream rides
// on it.
func TestQUICFollowsTrustAndExpect(t *testing.T) {
	front := spiffeid.RequireFromPath(td, "/frontend")
	back := spiffeid.RequireFromPath(td, "/backend")
	for _, change := range []string{"inbound bundle", "outbound expect"} {
		t.Run(change, func(t *testing.T) {
			kept, dropped, both := twoAuthorities(t)
			backend := &swappable{}
			backendSVID := kept.Issue(t, back)
			backend.set(backendSVID, both)
			inP, in := quicInbound(t, backend, front.String(), pqc.Policy{})
			outP, outReg := startProxy(t, proxy.Config{
				SVIDs:   static{svid: dropped.Issue(t, front)},
				Bundles: x509bundle.NewSet(both),
				Outbound: []proxy.Outbound{{Name: "up", Listen: "127.0.0.1:0", Upstream: inP.Addr("app").String(), Expect: policy(t, back.String()),
					QUICUpstream: inP.QUICAddr("app").String()}},
				RevalidateInterval: time.Hour,
			})
			out := &inbound{reg: outReg}
			addr := outP.Addr("up").String()
			c := dialLive(t, addr, nil)
			in.waitMetric(t, 1, "credflow_quic_streams_total", "direction=inbound")

			if change == "inbound bundle" {
				backend.set(backendSVID, kept.Bundle())
				// The QUIC connection and the stream on it.
				in.waitAtLeast(t, 1, "credflow_connections_closed_total", "direction=inbound", "reason=untrusted")
			} else {
				if err := outP.SetPolicy("up", policy(t, "spiffe://example.org/someone-else")); err != nil {
					t.Fatal(err)
				}
				out.waitAtLeast(t, 1, "credflow_connections_closed_total", "direction=outbound", "reason=policy_revoked")
			}
			if !c.closedWithin(5 * time.Second) {
				t.Fatal("the stream is still open")
			}
			// The next app connection needs a new handshake, which the
			// change refuses, over QUIC and over TCP alike.
			if got := exchange(t, addr, "x"); got != "" {
				t.Fatalf("a new connection got through after the %s change: %q", change, got)
			}
			if n := in.metric(t, "credflow_quic_streams_total", "direction=inbound"); n != 1 {
				t.Fatalf("%v streams opened: one rode the old QUIC connection", n)
			}
		})
	}
}

// TestConnectionsOutliveRotation: an established connection is not cut
// when its peer's certificate expires (the peer has rotated long before;
// the connection's keys do not depend on the certificate), unless
// CloseOnPeerExpiry asks for it. A policy change still closes what it no
// longer allows.
//
// A canary connection, whose peer the policy change drops, tells when a
// revalidation pass that ran after the expiry has finished.
func TestConnectionsOutliveRotation(t *testing.T) {
	for _, closeOnExpiry := range []bool{false, true} {
		name := "default"
		if closeOnExpiry {
			name = "CloseOnPeerExpiry"
		}
		t.Run(name, func(t *testing.T) {
			ca := testca.New(t, td)
			front := spiffeid.RequireFromPath(td, "/frontend")
			canaryID := spiffeid.RequireFromPath(td, "/canary")
			echo, err := sidecartest.Echo(t.Context())
			if err != nil {
				t.Fatal(err)
			}
			p, reg := startProxy(t, proxy.Config{
				SVIDs:              static{svid: ca.Issue(t, spiffeid.RequireFromPath(td, "/backend"))},
				Bundles:            x509bundle.NewSet(ca.Bundle()),
				Inbound:            []proxy.Inbound{{Name: "app", Listen: "127.0.0.1:0", App: echo, Allow: policy(t, front.String(), canaryID.String())}},
				RevalidateInterval: 100 * time.Millisecond,
				CloseOnPeerExpiry:  closeOnExpiry,
			})
			in := &inbound{reg: reg}
			addr := p.Addr("app").String()
			now := time.Now()
			shortSVID := ca.Issue(t, front, testca.WithValidity(now.Add(-time.Minute), now.Add(1500*time.Millisecond)))
			short := dialLive(t, addr, clientConfig(shortSVID))
			canary := dialLive(t, addr, clientConfig(ca.Issue(t, canaryID)))

			for !time.Now().After(shortSVID.Certificates[0].NotAfter) {
				time.Sleep(50 * time.Millisecond)
			}
			if err := p.SetPolicy("app", policy(t, front.String())); err != nil {
				t.Fatal(err)
			}
			if !canary.closedWithin(5 * time.Second) {
				t.Fatal("the canary's peer left the policy and its connection is still open")
			}
			in.waitMetric(t, 1, "credflow_connections_closed_total", "reason=policy_revoked")
			if closeOnExpiry {
				if !short.closedWithin(5 * time.Second) {
					t.Fatal("CloseOnPeerExpiry: the connection outlived its peer's certificate")
				}
				in.waitMetric(t, 1, "credflow_connections_closed_total", "reason=peer_expired")
				return
			}
			for i := range 3 {
				if err := short.echo("after expiry"); err != nil {
					t.Fatalf("echo %d after the peer's certificate expired: %v", i, err)
				}
			}
			if n := in.metric(t, "credflow_connections_closed_total", "reason=peer_expired"); n != 0 {
				t.Fatalf("%v connections closed for peer expiry by default", n)
			}
		})
	}
}

// TestMaxConnectionAge: MaxConnectionAge closes a relayed connection that
// old, with the reason max_age, however busy it is.
func TestMaxConnectionAge(t *testing.T) {
	ca := testca.New(t, td)
	echo, err := sidecartest.Echo(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	p, reg := startProxy(t, proxy.Config{
		SVIDs:              static{svid: ca.Issue(t, spiffeid.RequireFromPath(td, "/backend"))},
		Bundles:            x509bundle.NewSet(ca.Bundle()),
		Inbound:            []proxy.Inbound{{Name: "app", Listen: "127.0.0.1:0", App: echo, Allow: policy(t, "spiffe://example.org/frontend")}},
		RevalidateInterval: 100 * time.Millisecond,
		MaxConnectionAge:   time.Second,
	})
	c := dialLive(t, p.Addr("app").String(), clientConfig(ca.Issue(t, spiffeid.RequireFromPath(td, "/frontend"))))
	start := time.Now()
	deadline := start.Add(10 * time.Second)
	for c.echo("busy") == nil {
		if time.Now().After(deadline) {
			t.Fatal("the connection outlived MaxConnectionAge by 9 s")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if age := time.Since(start); age < 900*time.Millisecond {
		t.Fatalf("closed after %s, before MaxConnectionAge", age)
	}
	(&inbound{reg: reg}).waitMetric(t, 1, "credflow_connections_closed_total", "reason=max_age")
}

// TestQUICRefusalAlerts: a refused QUIC peer learns why from the TLS alert
// in the CONNECTION_CLOSE (0x100 + alert): access_denied for the policy,
// unknown_ca for a chain the bundle does not anchor, certificate_expired,
// insufficient_security for a classical key exchange where hybrid is
// required; not bad_certificate for everything.
func TestQUICRefusalAlerts(t *testing.T) {
	ca := testca.New(t, td)
	other := testca.New(t, td)
	front := spiffeid.RequireFromPath(td, "/frontend")
	backend := &swappable{}
	backend.set(ca.Issue(t, spiffeid.RequireFromPath(td, "/backend")), ca.Bundle())
	_, in := quicInbound(t, backend, front.String(), pqc.Policy{Mode: pqc.HybridRequired})
	addr := in.p.QUICAddr("app").String()
	now := time.Now()
	tests := []struct {
		name   string
		svid   *x509svid.SVID
		curves []tls.CurveID
		alert  uint8
	}{
		{"policy", ca.Issue(t, spiffeid.RequireFromPath(td, "/intruder")), nil, 49},
		{"untrusted", other.Issue(t, front), nil, 48},
		{"expired", ca.Issue(t, front, testca.WithValidity(now.Add(-2*time.Hour), now.Add(-time.Hour))), nil, 45},
		{"classical", ca.Issue(t, front), []tls.CurveID{tls.X25519}, 71},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := clientConfig(tt.svid)
			cfg.NextProtos = []string{quicmux.ALPN}
			cfg.CurvePreferences = tt.curves
			ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
			defer cancel()
			qc, err := quic.DialAddr(ctx, addr, cfg, &quic.Config{HandshakeIdleTimeout: 3 * time.Second})
			if err == nil {
				// The client's handshake completes before the server has
				// checked its certificate; the refusal closes it then.
				select {
				case <-qc.Context().Done():
					err = context.Cause(qc.Context())
				case <-ctx.Done():
					t.Fatal("the refused connection stayed open")
				}
			}
			var te *quic.TransportError
			if !errors.As(err, &te) || !te.Remote {
				t.Fatalf("want a remote transport error, got %v", err)
			}
			if want := quic.TransportErrorCode(0x100 + uint64(tt.alert)); te.ErrorCode != want {
				t.Fatalf("alert %#x, want %#x (%v)", uint64(te.ErrorCode), uint64(want), err)
			}
		})
	}
}

// logBuffer collects JSON log lines.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

// lines returns the logged records whose msg is msg.
func (b *logBuffer) lines(t *testing.T, msg string) []map[string]any {
	t.Helper()
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []map[string]any
	for _, l := range strings.Split(strings.TrimSpace(b.buf.String()), "\n") {
		if l == "" {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			t.Fatalf("log line %q: %v", l, err)
		}
		if m["msg"] == msg {
			out = append(out, m)
		}
	}
	return out
}

// waitAccess waits for an access-log line with the given reason.
func (b *logBuffer) waitAccess(t *testing.T, reason string) map[string]any {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		for _, l := range b.lines(t, "access") {
			if l["reason"] == reason {
				return l
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no access line with reason %q in:\n%s", reason, b.buf.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestRefusalLogsClaimedID: the SPIFFE ID of a certificate that did not
// verify is logged as claimed_id, never as peer_id, which only a verified
// peer gets.
func TestRefusalLogsClaimedID(t *testing.T) {
	ca := testca.New(t, td)
	forger := testca.New(t, td)
	admin := spiffeid.RequireFromPath(td, "/admin")
	logs := &logBuffer{}
	echo, err := sidecartest.Echo(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	p, _ := startProxy(t, proxy.Config{
		SVIDs:     static{svid: ca.Issue(t, spiffeid.RequireFromPath(td, "/backend"))},
		Bundles:   x509bundle.NewSet(ca.Bundle()),
		Inbound:   []proxy.Inbound{{Name: "app", Listen: "127.0.0.1:0", App: echo, Allow: policy(t, "spiffe://example.org/frontend")}},
		AccessLog: slog.New(slog.NewJSONHandler(logs, nil)),
	})
	addr := p.Addr("app").String()
	if _, err := echoOnce(addr, clientConfig(forger.Issue(t, admin)), "hi"); err == nil {
		t.Fatal("a forged certificate got through")
	}
	forged := logs.waitAccess(t, "untrusted")
	if _, ok := forged["peer_id"]; ok {
		t.Errorf("a forged ID was logged as the peer: %v", forged)
	}
	if forged["claimed_id"] != admin.String() {
		t.Errorf("claimed_id = %v, want %s", forged["claimed_id"], admin)
	}
	stranger := spiffeid.RequireFromPath(td, "/stranger")
	if _, err := echoOnce(addr, clientConfig(ca.Issue(t, stranger)), "hi"); err == nil {
		t.Fatal("a peer outside the policy got through")
	}
	denied := logs.waitAccess(t, "unauthorized")
	if denied["peer_id"] != stranger.String() {
		t.Errorf("a verified but refused peer: peer_id = %v, want %s", denied["peer_id"], stranger)
	}
	if _, ok := denied["claimed_id"]; ok {
		t.Errorf("a verified peer was logged with claimed_id: %v", denied)
	}
}

// noSVID is an identity source before the Workload API's first answer.
type noSVID struct{ bundles *x509bundle.Set }

func (noSVID) GetX509SVID() (*x509svid.SVID, error) {
	return nil, errors.New("agent: not ready: no X.509-SVID received yet")
}
func (n noSVID) GetX509BundleForTrustDomain(t spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	return n.bundles.GetX509BundleForTrustDomain(t)
}

// TestNoSVIDYet: a sidecar that has no SVID yet records its failed
// handshakes as no_svid_yet, inbound and outbound, not as garbage from the
// peer (handshake_failed) or a refusal by it (peer_refused).
func TestNoSVIDYet(t *testing.T) {
	ca := testca.New(t, td)
	bundles := x509bundle.NewSet(ca.Bundle())
	echo, err := sidecartest.Echo(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	inP, inReg := startProxy(t, proxy.Config{
		SVIDs:   noSVID{bundles},
		Bundles: bundles,
		Inbound: []proxy.Inbound{{Name: "app", Listen: "127.0.0.1:0", App: echo, Allow: policy(t, "spiffe://example.org/frontend")}},
	})
	if _, err := echoOnce(inP.Addr("app").String(), clientConfig(ca.Issue(t, spiffeid.RequireFromPath(td, "/frontend"))), "hi"); err == nil {
		t.Fatal("a sidecar without an SVID completed a handshake")
	}
	(&inbound{reg: inReg}).waitMetric(t, 1, "credflow_refusals_total", "direction=inbound", "reason=no_svid_yet")

	up := startInbound(t, ca, policy(t, "spiffe://example.org/frontend"), time.Second)
	outP, outReg := startProxy(t, proxy.Config{
		SVIDs:    noSVID{bundles},
		Bundles:  bundles,
		Outbound: []proxy.Outbound{{Name: "up", Listen: "127.0.0.1:0", Upstream: up.addr, Expect: policy(t, "spiffe://example.org/backend")}},
	})
	if got := exchange(t, outP.Addr("up").String(), "x"); got != "" {
		t.Fatalf("relayed %q without an SVID", got)
	}
	(&inbound{reg: outReg}).waitMetric(t, 1, "credflow_refusals_total", "direction=outbound", "reason=no_svid_yet")
}

// TestMaxConnectionAgeHTTPIsGraceful: an inbound HTTP/2 connection past
// MaxConnectionAge is wound down, not cut: the response carries the close
// (a GOAWAY), the outbound sidecar moves to a new connection, and no
// request fails.
func TestMaxConnectionAgeHTTPIsGraceful(t *testing.T) {
	ca := testca.New(t, td)
	issuer := newJWTIssuer(t)
	appAddr := okApp(t)
	front := spiffeid.RequireFromPath(td, "/frontend")
	api, _ := route.ParsePath("/api/*")
	routes := route.Table{Rules: []route.Rule{{Peers: policy(t, front.String()), Methods: []string{"GET"}, Paths: []route.Path{api}}}}
	bundles := x509bundle.NewSet(ca.Bundle())
	in, inReg := startProxy(t, proxy.Config{
		SVIDs:              static{svid: ca.Issue(t, spiffeid.RequireFromPath(td, "/backend"))},
		Bundles:            bundles,
		Inbound:            []proxy.Inbound{{Name: "app", Listen: "127.0.0.1:0", App: appAddr, Allow: policy(t, front.String()), HTTP: &proxy.InboundHTTP{Routes: routes, RequireJWT: true}}},
		ValidateJWT:        issuer.validate,
		RevalidateInterval: 100 * time.Millisecond,
		MaxConnectionAge:   time.Second,
	})
	out, _ := startProxy(t, proxy.Config{
		SVIDs:    static{svid: ca.Issue(t, front)},
		Bundles:  bundles,
		Outbound: []proxy.Outbound{{Name: "up", Listen: "127.0.0.1:0", Upstream: in.Addr("app").String(), Expect: policy(t, "spiffe://example.org/backend"), HTTP: &proxy.OutboundHTTP{Pool: 1}}},
		Tokens:   source{j: issuer, id: front},
	})
	m := &inbound{reg: inReg}
	client := &http.Client{Timeout: 5 * time.Second}
	url := "http://" + out.Addr("up").String() + "/api/x"
	deadline := time.Now().Add(10 * time.Second)
	var n int
	for m.metric(t, "credflow_tls_connections_total", "direction=inbound") < 2 {
		if time.Now().After(deadline) {
			t.Fatalf("after %d requests over 10 s the first connection is still in use", n)
		}
		resp, err := client.Get(url)
		if err != nil {
			t.Fatalf("request %d: %v", n, err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || string(body) != "ok" {
			t.Fatalf("request %d: %d %q", n, resp.StatusCode, body)
		}
		n++
		time.Sleep(20 * time.Millisecond)
	}
	if c := m.metric(t, "credflow_connections_closed_total", "reason=max_age"); c != 0 {
		t.Errorf("%v connections cut at max_age: they should have been wound down", c)
	}
}

// okApp serves "ok" over HTTP/1.1 on loopback until the test ends and
// returns its address.
func okApp(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") })}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().String()
}
