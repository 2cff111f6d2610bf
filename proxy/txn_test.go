package proxy_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/credflow/credflow/internal/testca"
	"github.com/credflow/credflow/proxy"
	"github.com/credflow/credflow/proxy/route"
	"github.com/credflow/credflow/token/edge"
	"github.com/credflow/credflow/token/txn"
)

// testIDP is an external identity provider: one ES256 key, its JWKS in a
// file.
type testIDP struct {
	key  *ecdsa.PrivateKey
	jwks string
}

const idpIssuer = "https://idp.example"

func newTestIDP(t *testing.T) *testIDP {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	set := jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: key.Public(), KeyID: "idp1", Algorithm: "ES256", Use: "sig"}}}
	data, _ := json.Marshal(set)
	path := filepath.Join(t.TempDir(), "jwks.json")
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return &testIDP{key: key, jwks: path}
}

func (p *testIDP) token(t *testing.T, sub, aud string, exp time.Time) string {
	t.Helper()
	s, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: p.key}, (&jose.SignerOptions{}).WithType("JWT").WithHeader("kid", "idp1"))
	if err != nil {
		t.Fatal(err)
	}
	tok, err := jwt.Signed(s).Claims(map[string]any{"iss": idpIssuer, "sub": sub, "aud": aud, "exp": exp.Unix(),
		"iat": time.Now().Unix(), "scope": "orders.read orders.write"}).Serialize()
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func (p *testIDP) exchanger(t *testing.T, svids static) *edge.Exchanger {
	ks, err := edge.NewKeySet(edge.KeySetConfig{File: p.jwks})
	if err != nil {
		t.Fatal(err)
	}
	v, err := edge.NewValidator([]edge.Issuer{{Issuer: idpIssuer, Audiences: []string{"orders"}, Algorithms: []string{"ES256"}, Keys: ks}}, 0)
	if err != nil {
		t.Fatal(err)
	}
	m, err := txn.NewMinter(svids, txn.MintConfig{Scopes: []string{"orders.read"}})
	if err != nil {
		t.Fatal(err)
	}
	return edge.NewExchanger(v, m)
}

// TestEdgeExchange runs the edge flow in process: an external token becomes
// a transaction token at the edge's outbound listener and is verified by the
// backend's inbound listener, which refuses tokens from workloads that may
// not mint and forged ones.
func TestEdgeExchange(t *testing.T) {
	ca := testca.New(t, td)
	idp := newTestIDP(t)
	bundles := x509bundle.NewSet(ca.Bundle())
	edgeID, rogueID := spiffeid.RequireFromPath(td, "/edge"), spiffeid.RequireFromPath(td, "/rogue")

	// The backend app reports the transaction token it got.
	appLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	verifier := txn.NewVerifier(bundles, txn.VerifyConfig{Minters: func(id spiffeid.ID) bool { return id == edgeID }})
	app := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, minter, err := verifier.Verify(r.Header.Get(txn.Header), spiffeid.RequireFromPath(td, "/backend"))
		if err != nil {
			fmt.Fprintf(w, "txn=invalid auth=%q", r.Header.Get("Authorization"))
			return
		}
		fmt.Fprintf(w, "sub=%s minter=%s scope=%q auth=%q", c.Subject, minter, c.Scope, r.Header.Get("Authorization"))
	})}
	go app.Serve(appLn)
	t.Cleanup(func() { app.Close() })

	all, _ := route.ParsePath("/*")
	in, inReg := startProxy(t, proxy.Config{
		SVIDs:   static{svid: ca.Issue(t, spiffeid.RequireFromPath(td, "/backend"))},
		Bundles: bundles,
		Inbound: []proxy.Inbound{{Name: "app", Listen: "127.0.0.1:0", App: appLn.Addr().String(), Allow: policy(t, "spiffe://example.org"),
			HTTP: &proxy.InboundHTTP{
				Routes:     route.Table{Rules: []route.Rule{{Peers: policy(t, "spiffe://example.org"), Paths: []route.Path{all}}}},
				TxnMinters: policy(t, edgeID.String()),
				RequireTxn: true,
			}}},
	})
	outbound := func(id spiffeid.ID, exchange bool) string {
		svids := static{svid: ca.Issue(t, id)}
		p, _ := startProxy(t, proxy.Config{
			SVIDs:   svids,
			Bundles: bundles,
			Outbound: []proxy.Outbound{{Name: "up", Listen: "127.0.0.1:0", Upstream: in.Addr("app").String(),
				Expect: policy(t, "spiffe://example.org/backend"), HTTP: &proxy.OutboundHTTP{Exchange: exchange}}},
			Exchanger: idp.exchanger(t, svids),
			Tokens:    source{j: newJWTIssuer(t), id: id},
		})
		return p.Addr("up").String()
	}
	edgeOut, rogueOut, plainOut := outbound(edgeID, true), outbound(rogueID, true), outbound(edgeID, false)

	get := func(addr string, headers http.Header) (int, string) {
		req, _ := http.NewRequestWithContext(context.Background(), "GET", "http://"+addr+"/orders", nil)
		for k, vs := range headers {
			for _, v := range vs {
				req.Header.Add(k, v)
			}
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var b strings.Builder
		_, _ = fmt.Fprint(&b, resp.Header.Get("X-Credflow-Reason"))
		buf := make([]byte, 4096)
		n, _ := resp.Body.Read(buf)
		return resp.StatusCode, b.String() + " " + string(buf[:n])
	}
	bearer := func(tok string) http.Header { return http.Header{"Authorization": {"Bearer " + tok}} }
	good := idp.token(t, "alice", "orders", time.Now().Add(5*time.Minute))

	code, body := get(edgeOut, bearer(good))
	if code != 200 || !strings.Contains(body, "sub=alice minter="+edgeID.String()) || !strings.Contains(body, `scope="orders.read"`) ||
		strings.Contains(body, good) {
		t.Fatalf("exchanged request: %d %s", code, body)
	}

	minted, _, err := idp.exchanger(t, static{svid: ca.Issue(t, edgeID)}).Exchange(context.Background(), good)
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name    string
		addr    string
		headers http.Header
		code    int
		reason  string
	}{
		{"no external token", edgeOut, nil, 401, "external_missing"},
		{"expired external token", edgeOut, bearer(idp.token(t, "alice", "orders", time.Now().Add(-time.Minute))), 401, "external_expired"},
		{"wrong audience", edgeOut, bearer(idp.token(t, "alice", "billing", time.Now().Add(time.Minute))), 401, "external_wrong_audience"},
		{"forged external token", edgeOut, bearer(newTestIDP(t).token(t, "alice", "orders", time.Now().Add(time.Minute))), 401, "external_bad_signature"},
		{"minted by a workload not allowed to mint", rogueOut, bearer(good), 401, "txn_not_minter"},
		{"no transaction token", plainOut, nil, 401, "txn_missing"},
		{"made-up transaction token", plainOut, http.Header{txn.Header: {good}}, 401, "txn_bad_header"},
		// B3: a header a decision reads, sent twice or comma-joined, is
		// refused rather than read for one of its values.
		{"B3 two external tokens", edgeOut, http.Header{"Authorization": {"Bearer " + good, "Bearer " + good}}, 401, "external_malformed"},
		{"B3 comma-joined external tokens", edgeOut, http.Header{"Authorization": {"Bearer " + good + ", Bearer " + good}}, 401, "external_malformed"},
		{"B3 two transaction tokens", plainOut, http.Header{txn.Header: {minted, minted}}, 401, "txn_malformed"},
		{"B3 comma-joined transaction tokens", plainOut, http.Header{txn.Header: {minted + ", " + minted}}, 401, "txn_bad_header"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			code, body := get(tc.addr, tc.headers)
			if code != tc.code || !strings.HasPrefix(body, tc.reason+" ") {
				t.Fatalf("%d %q, want %d %s", code, body, tc.code, tc.reason)
			}
		})
	}
	// The transaction token passes through a plain outbound listener
	// unchanged: replaying the edge's token through it verifies.
	if code, body := get(plainOut, http.Header{txn.Header: {minted}}); code != 200 || !strings.Contains(body, "sub=alice") {
		t.Fatalf("propagated transaction token: %d %s", code, body)
	}
	inR := &inbound{reg: inReg}
	if n := inR.metric(t, "credflow_jwt_tokens_total", "op=txn_verified"); n != 2 {
		t.Errorf("txn_verified = %v, want 2", n)
	}
}

// TestTxnNextHopAndSingleUse: an inbound listener accepts a transaction
// token whose audience names its workload or its trust domain, not one
// minted for another workload; with txn_token.single_use it accepts each
// token once.
func TestTxnNextHopAndSingleUse(t *testing.T) {
	ca := testca.New(t, td)
	bundles := x509bundle.NewSet(ca.Bundle())
	edgeID, backendID := spiffeid.RequireFromPath(td, "/edge"), spiffeid.RequireFromPath(td, "/backend")
	appLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	app := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, "ok") })}
	go app.Serve(appLn)
	t.Cleanup(func() { app.Close() })
	all, _ := route.ParsePath("/*")
	in, _ := startProxy(t, proxy.Config{
		SVIDs:   static{svid: ca.Issue(t, backendID)},
		Bundles: bundles,
		Inbound: []proxy.Inbound{{Name: "app", Listen: "127.0.0.1:0", App: appLn.Addr().String(), Allow: policy(t, "spiffe://example.org"),
			HTTP: &proxy.InboundHTTP{
				Routes:       route.Table{Rules: []route.Rule{{Peers: policy(t, "spiffe://example.org"), Paths: []route.Path{all}}}},
				TxnMinters:   policy(t, edgeID.String()),
				RequireTxn:   true,
				TxnSingleUse: true,
			}}},
	})
	edgeSVIDs := static{svid: ca.Issue(t, edgeID)}
	out, _ := startProxy(t, proxy.Config{
		SVIDs:   edgeSVIDs,
		Bundles: bundles,
		Outbound: []proxy.Outbound{{Name: "up", Listen: "127.0.0.1:0", Upstream: in.Addr("app").String(),
			Expect: policy(t, backendID.String()), HTTP: &proxy.OutboundHTTP{}}},
		Tokens: source{j: newJWTIssuer(t), id: edgeID},
	})
	mint := func(aud ...string) string {
		m, err := txn.NewMinter(edgeSVIDs, txn.MintConfig{Audiences: aud})
		if err != nil {
			t.Fatal(err)
		}
		tok, _, err := m.Mint(txn.Request{Subject: "alice", SubjectIssuer: idpIssuer})
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	get := func(tok string) (int, string) {
		req, _ := http.NewRequestWithContext(context.Background(), "GET", "http://"+out.Addr("up").String()+"/orders", nil)
		req.Header.Set(txn.Header, tok)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode, resp.Header.Get("X-Credflow-Reason")
	}
	forBackend, forTD := mint(backendID.String()), mint()
	for _, tc := range []struct {
		name   string
		token  string
		code   int
		reason string
	}{
		{"minted for this workload", forBackend, 200, ""},
		{"minted for this workload, again", forBackend, 401, "txn_replayed"},
		{"minted for another workload", mint("spiffe://example.org/payments"), 401, "txn_wrong_audience"},
		{"minted for the trust domain", forTD, 200, ""},
		{"minted for the trust domain, again", forTD, 401, "txn_replayed"},
	} {
		if code, reason := get(tc.token); code != tc.code || reason != tc.reason {
			t.Errorf("%s: %d %q, want %d %q", tc.name, code, reason, tc.code, tc.reason)
		}
	}
}
