package e2e_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"

	"github.com/credflow/credflow/internal/sidecartest"
)

const uidMiddle = 1004

// externalIDP stands for an OIDC provider outside the mesh: an ES256 key
// whose JWKS the edge reads from a file.
type externalIDP struct {
	key *ecdsa.PrivateKey
	kid string
}

func newExternalIDP(t *testing.T) *externalIDP {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return &externalIDP{key: key, kid: "idp-2026"}
}

func (p *externalIDP) writeJWKS(t *testing.T, path string) {
	set := jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: p.key.Public(), KeyID: p.kid, Algorithm: "ES256", Use: "sig"}}}
	data, _ := json.Marshal(set)
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
}

func (p *externalIDP) token(t *testing.T, aud string, exp time.Time) string {
	t.Helper()
	s, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: p.key}, (&jose.SignerOptions{}).WithType("JWT").WithHeader("kid", p.kid))
	if err != nil {
		t.Fatal(err)
	}
	tok, err := jwt.Signed(s).Claims(map[string]any{"iss": "https://login.example.com", "sub": "alice@example.com", "aud": aud,
		"exp": exp.Unix(), "iat": time.Now().Unix(), "scope": "orders.read orders.write admin"}).Serialize()
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// claimsOf decodes a JWT's payload without verifying it (the sidecar did).
func claimsOf(tok string) map[string]any {
	c := map[string]any{}
	if parts := strings.Split(tok, "."); len(parts) == 3 {
		b, _ := base64.RawURLEncoding.DecodeString(parts[1])
		json.Unmarshal(b, &c)
	}
	return c
}

// TestE2EEdgeExchange: three workloads on real SPIRE. An external token
// becomes a transaction token at the edge's sidecar, crosses the middle
// workload (its app passes the Txn-Token header on) and is verified at the
// backend. Expired, forged, alg=none and wrong-audience external tokens are
// refused at the edge; a transaction token minted by a workload the backend
// does not allow to mint is refused at the backend. The edge's RFC 8693
// endpoint exchanges a subject token too. With debug logging, no token
// appears in any log, page or body.
func TestE2EEdgeExchange(t *testing.T) {
	s, bin, _ := startWorkloads(t, 0, map[int]string{uidFrontend: "/edge", uidMiddle: "/middle", uidBackend: "/backend", uidIntruder: "/rogue"})
	ctx := t.Context()
	idp := newExternalIDP(t)
	idpDir := filepath.Join(s.Dir(), "idp")
	if err := os.MkdirAll(idpDir, 0o755); err != nil {
		t.Fatal(err)
	}
	jwks := filepath.Join(idpDir, "jwks.json")
	idp.writeJWKS(t, jwks)

	addrs := make([]string, 6)
	for i := range addrs {
		var err error
		if addrs[i], err = sidecartest.FreeAddr(); err != nil {
			t.Fatal(err)
		}
	}
	edgeOut, inMiddle, middleOut, inBackend, rogueOut, tokenEndpoint := addrs[0], addrs[1], addrs[2], addrs[3], addrs[4], addrs[5]

	// The backend app reports what reached it; the middle app calls the
	// backend through its sidecar, passing the Txn-Token header on.
	backendApp := serveApp(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c := claimsOf(r.Header.Get("Txn-Token"))
		fmt.Fprintf(w, "peer=%s sub=%v sub_iss=%v iss=%v act=%v scope=%q external=%v",
			r.Header.Get("X-Credflow-Peer-Id"), c["sub"], c["sub_iss"], c["iss"], c["act"], c["scope"],
			strings.Contains(r.Header.Get("Authorization"), "login.example.com"))
	}))
	middleApp := serveApp(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		req, _ := http.NewRequestWithContext(r.Context(), "GET", "http://"+middleOut+r.URL.Path, nil)
		req.Header.Set("Txn-Token", r.Header.Get("Txn-Token"))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		defer resp.Body.Close()
		w.Header().Set("X-Credflow-Reason", resp.Header.Get("X-Credflow-Reason"))
		w.WriteHeader(resp.StatusCode)
		io.Copy(w, resp.Body)
	}))

	common := fmt.Sprintf("workload_api: %s\nadmin: \"{{admin}}\"\nlog: {level: debug}\n", s.AgentAddr())
	edgeSection := fmt.Sprintf(`edge:
  issuers:
    - issuer: https://login.example.com
      audiences: [orders-api]
      algorithms: [ES256]
      jwks_file: %q
  txn_token: {ttl: 60s, scopes: [orders.read, orders.write]}
`, jwks)
	httpOut := func(name, listen, upstream, expect string, exchange bool) string {
		return fmt.Sprintf("  - name: %s\n    listen: %q\n    upstream: %q\n    protocol: http\n    exchange: %v\n    expect: [%s]\n",
			name, listen, upstream, exchange, expect)
	}
	httpIn := func(listen, app, peers string) string {
		return fmt.Sprintf(`  - name: app
    listen: %q
    app: %q
    protocol: http
    allow: [spiffe://example.org]
    routes: [{peers: [%s], paths: [/orders/*]}]
    txn_token: {require: true, minters: [spiffe://example.org/edge]}
`, listen, app, peers)
	}
	start := func(uid int, name, cfg string) *sidecartest.Sidecar { return startSidecar(t, s, bin, uid, name, cfg) }
	backend := start(uidBackend, "backend", common+"inbound:\n"+httpIn(inBackend, backendApp, "spiffe://example.org/middle, spiffe://example.org/rogue"))
	middle := start(uidMiddle, "middle", common+"inbound:\n"+httpIn(inMiddle, middleApp, "spiffe://example.org/edge")+
		"outbound:\n"+httpOut("backend", middleOut, inBackend, "spiffe://example.org/backend", false))
	edge := start(uidFrontend, "edge", common+edgeSection+fmt.Sprintf("token_endpoint: %q\n", tokenEndpoint)+
		"outbound:\n"+httpOut("middle", edgeOut, inMiddle, "spiffe://example.org/middle", true))
	rogue := start(uidIntruder, "rogue", common+edgeSection+"outbound:\n"+httpOut("backend", rogueOut, inBackend, "spiffe://example.org/backend", true))

	get := func(addr, token string) (int, string, string) {
		req, _ := http.NewRequestWithContext(ctx, "GET", "http://"+addr+"/orders/42", nil)
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, resp.Header.Get("X-Credflow-Reason"), string(b)
	}
	good := idp.token(t, "orders-api", time.Now().Add(5*time.Minute))
	code, _, body := get(edgeOut, good)
	want := `peer=spiffe://example.org/middle sub=alice@example.com sub_iss=https://login.example.com iss=spiffe://example.org/edge ` +
		`act=map[sub:spiffe://example.org/edge] scope="orders.read orders.write" external=false`
	if code != 200 || body != want {
		t.Fatalf("edge → middle → backend: %d\n got %s\nwant %s", code, body, want)
	}

	payload := strings.Split(good, ".")[1]
	algNone := base64.RawURLEncoding.EncodeToString([]byte(`{"alg":"none","kid":"idp-2026"}`)) + "." + payload + "."
	refused := []struct{ name, token, reason string }{
		{"expired", idp.token(t, "orders-api", time.Now().Add(-time.Minute)), "external_expired"},
		{"forged (another key, the same kid)", newExternalIDP(t).token(t, "orders-api", time.Now().Add(time.Minute)), "external_bad_signature"},
		{"alg none", algNone, "external_bad_alg"},
		{"wrong audience", idp.token(t, "billing-api", time.Now().Add(time.Minute)), "external_wrong_audience"},
		{"none at all", "", "external_missing"},
	}
	for _, tc := range refused {
		if code, reason, body := get(edgeOut, tc.token); code != 401 || reason != tc.reason {
			t.Errorf("%s external token: %d %s %s, want 401 %s", tc.name, code, reason, body, tc.reason)
		}
	}
	// The rogue workload validates the same external token and mints a
	// transaction token of its own; the backend does not let it mint.
	if code, reason, body := get(rogueOut, good); code != 401 || reason != "txn_not_minter" {
		t.Errorf("a transaction token from a workload not allowed to mint: %d %s %s", code, reason, body)
	}

	// The edge's token endpoint: a subject token in, a transaction token
	// out; a malformed request gets invalid_request.
	post := func(form url.Values) (int, map[string]any) {
		resp, err := http.PostForm("http://"+tokenEndpoint+"/token", form)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		out := map[string]any{}
		json.NewDecoder(resp.Body).Decode(&out)
		return resp.StatusCode, out
	}
	grant := "urn:ietf:params:oauth:grant-type:token-exchange"
	code, out := post(url.Values{"grant_type": {grant}, "subject_token": {good}, "subject_token_type": {"urn:ietf:params:oauth:token-type:jwt"}})
	minted, _ := out["access_token"].(string)
	if c := claimsOf(minted); code != 200 || out["issued_token_type"] != "urn:ietf:params:oauth:token-type:txn_token" ||
		c["sub"] != "alice@example.com" || c["iss"] != "spiffe://example.org/edge" {
		t.Fatalf("token endpoint subject exchange: %d %v %v", code, out, c)
	}
	if code, out := post(url.Values{"grant_type": {grant}, "subject_token": {good}}); code != 400 || out["error"] != "invalid_request" {
		t.Fatalf("token endpoint without subject_token_type: %d %v", code, out)
	}

	for _, m := range []struct {
		sc     *sidecartest.Sidecar
		name   string
		labels []string
		min    float64
	}{
		{edge, "credflow_jwt_tokens_total", []string{"op=minted"}, 1},
		{middle, "credflow_jwt_tokens_total", []string{"op=txn_verified"}, 1},
		{backend, "credflow_jwt_tokens_total", []string{"op=txn_verified"}, 1},
		{backend, "credflow_refusals_total", []string{"reason=txn_not_minter"}, 1},
		{edge, "credflow_refusals_total", []string{"reason=external_expired"}, 1},
		{edge, "credflow_jwks_refreshes_total", []string{"result=ok"}, 1},
	} {
		if n, err := m.sc.Metric(ctx, m.name, m.labels...); err != nil || n < m.min {
			t.Errorf("%s %s%v = %v (%v), want at least %v", m.sc.Name, m.name, m.labels, n, err, m.min)
		}
	}

	// B18 for the edge: no external or transaction token, key or
	// certificate in any log or admin page, at debug level.
	texts := map[string]string{}
	for _, sc := range []*sidecartest.Sidecar{edge, middle, backend, rogue} {
		b, _ := os.ReadFile(sc.Log)
		texts[sc.Name+" log"] = string(b)
		for _, page := range []string{"/metrics", "/debug/identity"} {
			_, body, err := sc.Get(ctx, page)
			if err != nil {
				t.Fatal(err)
			}
			texts[sc.Name+" "+page] = body
		}
	}
	for name, text := range texts {
		for _, secret := range []string{good[:40], minted[:40], "eyJ", "PRIVATE KEY", "BEGIN CERTIFICATE", "alice@example.com"} {
			if strings.Contains(text, secret) {
				t.Errorf("%s holds %q", name, secret)
			}
		}
	}
}

// serveApp serves h on a loopback port and returns its address.
func serveApp(t *testing.T, h http.Handler) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: h}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().String()
}
