package proxy_test

import (
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/credflow/credflow/internal/redistest"
	"github.com/credflow/credflow/internal/sidecartest"
	"github.com/credflow/credflow/internal/testca"
	"github.com/credflow/credflow/proxy"
	"github.com/credflow/credflow/proxy/revoke"
	"github.com/credflow/credflow/proxy/route"
	"github.com/credflow/credflow/token/txn"
)

// revocationDeadline is how soon a revocation must reach every sidecar.
const revocationDeadline = 5 * time.Second

// TestRevocationAcrossSidecars: three sidecars keep their deny lists from
// one Redis. An operator's revocation of an identity (RedisStore.Add, as
// `credflow revoke add` does) closes that identity's established
// connection on every sidecar within 5 s and refuses its new ones at the
// handshake; a revoked transaction-token jti is refused on every sidecar
// (txn_revoked); other identities and tokens are not affected; removing
// the entry lets the identity back. A revoked certificate serial refuses
// that certificate on outbound connections too.
func TestRevocationAcrossSidecars(t *testing.T) {
	srv := redistest.Start(t)
	client := redis.NewClient(&redis.Options{Addr: srv.Addr})
	t.Cleanup(func() { client.Close() })
	store := &revoke.RedisStore{Client: client}

	ca := testca.New(t, td)
	bundles := x509bundle.NewSet(ca.Bundle())
	edgeID := spiffeid.RequireFromPath(td, "/edge")
	echo, err := sidecartest.Echo(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	appLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	app := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, "ok") })}
	go app.Serve(appLn)
	t.Cleanup(func() { app.Close() })

	anyone := policy(t, "spiffe://example.org")
	all, _ := route.ParsePath("/*")
	var sidecars []*proxy.Proxy
	var svids []static
	var metrics []*inbound
	for range 3 {
		list := &revoke.List{}
		src := &revoke.RedisSource{Client: client, List: list}
		if err := src.Load(t.Context()); err != nil {
			t.Fatal(err)
		}
		done := make(chan struct{})
		go func() { defer close(done); src.Run(t.Context()) }()
		t.Cleanup(func() { <-done })
		svid := static{svid: ca.Issue(t, spiffeid.RequireFromPath(td, "/backend"))}
		p, reg := startProxy(t, proxy.Config{
			SVIDs:   svid,
			Bundles: bundles,
			Revoked: list,
			Inbound: []proxy.Inbound{
				{Name: "tcp", Listen: "127.0.0.1:0", App: echo, Allow: anyone},
				{Name: "app", Listen: "127.0.0.1:0", App: appLn.Addr().String(), Allow: anyone,
					HTTP: &proxy.InboundHTTP{Routes: route.Table{Rules: []route.Rule{{Peers: anyone, Paths: []route.Path{all}}}},
						TxnMinters: policy(t, edgeID.String())}},
			},
		})
		sidecars, svids, metrics = append(sidecars, p), append(svids, svid), append(metrics, &inbound{reg: reg})
	}
	frontTLS := clientConfig(ca.Issue(t, spiffeid.RequireFromPath(td, "/frontend")))
	reportsTLS := clientConfig(ca.Issue(t, spiffeid.RequireFromPath(td, "/reports")))
	edgeSVIDs := static{svid: ca.Issue(t, edgeID)}
	edgeHTTP := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{ForceAttemptHTTP2: true, TLSClientConfig: clientConfig(edgeSVIDs.svid)}}
	mint := func() (string, string) {
		m, err := txn.NewMinter(edgeSVIDs, txn.MintConfig{})
		if err != nil {
			t.Fatal(err)
		}
		tok, claims, err := m.Mint(txn.Request{Subject: "alice", SubjectIssuer: idpIssuer})
		if err != nil {
			t.Fatal(err)
		}
		return tok, claims.ID
	}
	withToken := func(i int, tok string) (int, string) {
		req, _ := http.NewRequest(http.MethodGet, "https://"+sidecars[i].Addr("app").String()+"/orders", nil)
		req.Header.Set(txn.Header, tok)
		resp, err := edgeHTTP.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode, resp.Header.Get("X-Credflow-Reason")
	}

	// Before: the frontend holds a connection open to each sidecar, and
	// both tokens are accepted everywhere.
	var open []*tls.Conn
	for i, p := range sidecars {
		c, err := tls.Dial("tcp", p.Addr("tcp").String(), frontTLS)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		if !echoOn(c, "before") {
			t.Fatalf("sidecar %d: the frontend's connection does not echo", i)
		}
		open = append(open, c)
	}
	bad, badJTI := mint()
	good, _ := mint()
	for i := range sidecars {
		if code, why := withToken(i, bad); code != http.StatusOK {
			t.Fatalf("sidecar %d, before revocation: %d %s", i, code, why)
		}
	}

	// The operator revokes the frontend and the token's jti.
	revoked := time.Now()
	if err := store.Add(t.Context(), revoke.Entry{Kind: revoke.SPIFFEID, Value: "spiffe://example.org/frontend", Reason: "incident 7"}); err != nil {
		t.Fatal(err)
	}
	if err := store.Add(t.Context(), revoke.Entry{Kind: revoke.JTI, Value: badJTI}); err != nil {
		t.Fatal(err)
	}
	for i, c := range open {
		c.SetReadDeadline(revoked.Add(revocationDeadline))
		_, err := c.Read(make([]byte, 1))
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			t.Fatalf("sidecar %d: the frontend's established connection still open %v after its revocation", i, revocationDeadline)
		}
		t.Logf("sidecar %d closed the frontend's connection %v after the revocation (%v)", i, time.Since(revoked).Round(time.Millisecond), err)
	}
	for i, p := range sidecars {
		deadline := revoked.Add(revocationDeadline)
		for {
			code, why := withToken(i, bad)
			if code == http.StatusUnauthorized && why == "txn_revoked" {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("sidecar %d: the revoked token still answered %d %q %v after its revocation", i, code, why, revocationDeadline)
			}
			time.Sleep(10 * time.Millisecond)
		}
		if code, why := withToken(i, good); code != http.StatusOK {
			t.Errorf("sidecar %d: a token not revoked: %d %s", i, code, why)
		}
		if echoes(t, p.Addr("tcp").String(), frontTLS) {
			t.Errorf("sidecar %d: a new connection of the revoked frontend echoed", i)
		}
		if !echoes(t, p.Addr("tcp").String(), reportsTLS) {
			t.Errorf("sidecar %d: reports, not revoked, refused", i)
		}
		if n := metrics[i].metric(t, "credflow_connections_closed_total", "reason=revoked"); n != 1 {
			t.Errorf("sidecar %d: credflow_connections_closed_total{reason=revoked} = %v, want 1", i, n)
		}
		metrics[i].waitMetric(t, 1, "credflow_refusals_total", "reason=revoked") // the refused handshake, counted after it
	}

	// Lifted: the frontend is back everywhere.
	if err := store.Remove(t.Context(), "spiffe_id:spiffe://example.org/frontend"); err != nil {
		t.Fatal(err)
	}
	for i, p := range sidecars {
		deadline := time.Now().Add(revocationDeadline)
		for !echoes(t, p.Addr("tcp").String(), frontTLS) {
			if time.Now().After(deadline) {
				t.Fatalf("sidecar %d: the frontend still refused %v after its entry was removed", i, revocationDeadline)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}

	// A certificate revoked by serial: an outbound listener refuses the
	// upstream presenting it (sidecar 2's), not another (sidecar 1's).
	out, outReg := startProxy(t, proxy.Config{
		SVIDs:   static{svid: ca.Issue(t, spiffeid.RequireFromPath(td, "/frontend"))},
		Bundles: bundles,
		Revoked: func() *revoke.List {
			l := &revoke.List{}
			if _, err := l.Replace([]revoke.Entry{{Kind: revoke.Serial, Value: svids[2].svid.Certificates[0].SerialNumber.Text(16)}}); err != nil {
				t.Fatal(err)
			}
			return l
		}(),
		Outbound: []proxy.Outbound{
			{Name: "one", Listen: "127.0.0.1:0", Upstream: sidecars[1].Addr("tcp").String(), Expect: policy(t, "spiffe://example.org/backend")},
			{Name: "two", Listen: "127.0.0.1:0", Upstream: sidecars[2].Addr("tcp").String(), Expect: policy(t, "spiffe://example.org/backend")},
		},
	})
	plain := func(addr string) bool {
		c, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		return echoOn(c, "ping")
	}
	if !plain(out.Addr("one").String()) {
		t.Error("outbound to an upstream whose certificate is not revoked: no echo")
	}
	if plain(out.Addr("two").String()) {
		t.Error("outbound to an upstream whose certificate serial is revoked: echoed")
	}
	// Counted just after the connection is closed.
	(&inbound{reg: outReg}).waitMetric(t, 1, "credflow_refusals_total", "direction=outbound", "reason=revoked")
}

// echoOn writes msg to c and reports whether c echoes it within 5 s.
func echoOn(c net.Conn, msg string) bool {
	c.SetDeadline(time.Now().Add(5 * time.Second))
	defer c.SetDeadline(time.Time{})
	if _, err := io.WriteString(c, msg); err != nil {
		return false
	}
	buf := make([]byte, len(msg))
	_, err := io.ReadFull(c, buf)
	return err == nil && string(buf) == msg
}
