package e2e_test

import (
	"context"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/credflow/credflow/internal/hydratest"
	"github.com/credflow/credflow/internal/sidecartest"
	"github.com/credflow/credflow/internal/spiretest"
)

// jwtIssuer is the jwt_issuer of the credential tests' SPIRE server.
const jwtIssuer = "https://spire.example.org"

// paymentsAPI is an external HTTPS API outside the mesh. It accepts a
// request when its bearer token introspects active at Hydra for the
// expected workload (each token is introspected once, then held to its
// exp) and its X-Api-Key is one of the keys it currently honours.
type paymentsAPI struct {
	srv     *httptest.Server
	hydra   *hydratest.Hydra
	subject string

	mu     sync.Mutex
	tokens map[string]int64 // introspected active tokens: their exp
	keys   map[string]bool  // the API keys honoured
	seen   []string         // the X-Api-Key of each accepted request, in order
	issued map[string]bool  // every token and key the API was sent
}

func startPaymentsAPI(t *testing.T, hydra *hydratest.Hydra, subject string, keys ...string) *paymentsAPI {
	api := &paymentsAPI{hydra: hydra, subject: subject, tokens: map[string]int64{}, keys: map[string]bool{}, issued: map[string]bool{}}
	for _, k := range keys {
		api.keys[k] = true
	}
	api.srv = httptest.NewUnstartedServer(http.HandlerFunc(api.serve))
	api.srv.EnableHTTP2 = true
	api.srv.StartTLS()
	t.Cleanup(api.srv.Close)
	return api
}

func (a *paymentsAPI) serve(w http.ResponseWriter, r *http.Request) {
	tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	key := r.Header.Get("X-Api-Key")
	a.mu.Lock()
	a.issued[tok], a.issued[key] = true, true
	exp, known := a.tokens[tok]
	a.mu.Unlock()
	if !ok || tok == "" {
		http.Error(w, "no bearer token", http.StatusUnauthorized)
		return
	}
	if !known {
		in, err := a.hydra.Introspect(r.Context(), tok)
		if err != nil || !in.Active || in.Subject != a.subject {
			http.Error(w, fmt.Sprintf("token not active for %s: %+v %v", a.subject, in, err), http.StatusUnauthorized)
			return
		}
		exp = in.Exp
		a.mu.Lock()
		a.tokens[tok] = exp
		a.mu.Unlock()
	}
	if time.Now().Unix() >= exp {
		http.Error(w, "token expired", http.StatusUnauthorized)
		return
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if !a.keys[key] {
		http.Error(w, "unknown API key", http.StatusForbidden)
		return
	}
	a.seen = append(a.seen, key)
	fmt.Fprintf(w, `{"charge":"ch_1","path":%q}`, r.URL.Path)
}

// TestE2ECredentialInjection is issue 16's end to end on real SPIRE and a
// real Ory Hydra: an app with no credential of its own calls an external
// HTTPS API through its sidecar's egress listener and succeeds; the API
// saw a token Hydra introspects as active for the workload (obtained with
// the workload's JWT-SVID and nothing else) and the API key from the
// mounted secret; the app's responses hold neither. Then, under steady
// load: the OAuth token (15 s of life) is replaced ahead of its expiry and
// the API key rotated in its file is used within refresh, with no failed
// request; and 1000 concurrent requests cost no token request of their
// own.
func TestE2ECredentialInjection(t *testing.T) {
	s, bin, _ := startWorkloadsOn(t, spiretest.Options{JWTIssuer: jwtIssuer, JWTSVIDTTL: 5 * time.Minute}, 0,
		map[int]string{uidFrontend: "/frontend"})
	ctx, cancel := context.WithTimeout(t.Context(), 4*time.Minute)
	defer cancel()

	const tokenTTL = 15 * time.Second
	hydra, err := hydratest.Start(ctx, "", tokenTTL)
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if t.Failed() {
			t.Log(hydra.Log())
		}
		hydra.Close()
	}()
	id := s.ID("/frontend").String()
	scopes := []string{"payments:write"}
	if err := hydra.CreatePublicClient(ctx, id, scopes); err != nil {
		t.Fatal(err)
	}
	keys, err := s.JWTKeys(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range keys {
		if err := hydra.TrustJWTIssuer(ctx, jwtIssuer, id, k, scopes, time.Now().Add(time.Hour)); err != nil {
			t.Fatal(err)
		}
	}

	// The mounted secret (a Kubernetes Secret volume) and the external
	// API's CA, readable by the sidecar's user.
	dir := filepath.Join(s.Dir(), "payments")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	keyFile, caFile := filepath.Join(dir, "api-key"), filepath.Join(dir, "ca.pem")
	writeFile := func(path, data string) {
		tmp := path + ".new"
		if err := os.WriteFile(tmp, []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, path); err != nil { // as the kubelet swaps a volume's files
			t.Fatal(err)
		}
	}
	writeFile(keyFile, "key-one\n")
	api := startPaymentsAPI(t, hydra, id, "key-one")
	writeFile(caFile, string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: api.srv.Certificate().Raw})))

	egress, err := sidecartest.FreeAddr()
	if err != nil {
		t.Fatal(err)
	}
	const refresh = 2 * time.Second
	sc := startSidecar(t, s, bin, uidFrontend, "frontend", fmt.Sprintf(`workload_api: %s
admin: "{{admin}}"
credentials:
  - name: payments-token
    oauth2:
      token_url: %s
      client_id: %s
      scopes: [payments:write]
  - name: payments-key
    file: {path: %s}
    refresh: %s
outbound:
  - name: payments
    listen: %q
    upstream: %q
    egress:
      server_name: example.com
      ca_file: %s
      inject:
        - {credential: payments-token, as: bearer}
        - {credential: payments-key, as: header, name: X-Api-Key}
`, s.AgentAddr(), hydra.TokenURL(), id, keyFile, refresh, egress, api.srv.Listener.Addr(), caFile))

	// The app: plain HTTP to its sidecar, no credential.
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}, Timeout: 30 * time.Second}
	var received strings.Builder
	var recvMu sync.Mutex
	call := func(ctx context.Context) (int, error) {
		req, _ := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+egress+"/v1/charges", strings.NewReader(`{"amount":5}`))
		resp, err := client.Do(req)
		if err != nil {
			return 0, err
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		recvMu.Lock()
		fmt.Fprintf(&received, "%v\n%s\n", resp.Header, body)
		recvMu.Unlock()
		if resp.StatusCode != http.StatusOK {
			return resp.StatusCode, fmt.Errorf("%d %s (%s)", resp.StatusCode, body, resp.Header.Get("X-Credflow-Reason"))
		}
		return resp.StatusCode, nil
	}
	if _, err := call(ctx); err != nil {
		t.Fatalf("the app's first call: %v", err)
	}

	// 1000 concurrent requests: one token request in all (the sidecar's
	// first, made at start or by the first of them).
	var wg sync.WaitGroup
	var failed atomic.Int64
	burst := &http.Client{Transport: &http.Transport{MaxConnsPerHost: 100, MaxIdleConnsPerHost: 100}, Timeout: time.Minute}
	for range 1000 {
		wg.Go(func() {
			req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+egress+"/v1/balance", nil)
			resp, err := burst.Do(req)
			if err != nil {
				failed.Add(1)
				return
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				failed.Add(1)
			}
		})
	}
	wg.Wait()
	if n := failed.Load(); n != 0 {
		t.Fatalf("%d of 1000 concurrent requests failed", n)
	}
	if n, err := sc.Metric(ctx, "credflow_credential_fetches_total", "credential=payments-token"); err != nil || n != 1 {
		t.Errorf("%v token requests after 1001 requests (%v), want 1", n, err)
	}

	// Steady load across a token's life and a key rotation.
	loadCtx, stopLoad := context.WithCancel(ctx)
	var ok, bad atomic.Int64
	var firstErr atomic.Value
	var load sync.WaitGroup
	for range 4 {
		load.Go(func() {
			for loadCtx.Err() == nil {
				if _, err := call(loadCtx); err != nil {
					if loadCtx.Err() != nil {
						return
					}
					bad.Add(1)
					firstErr.CompareAndSwap(nil, err)
				} else {
					ok.Add(1)
				}
				time.Sleep(20 * time.Millisecond)
			}
		})
	}
	time.Sleep(3 * time.Second)
	// Rotate the key: the API honours both while clients move over, as an
	// API provider does; the sidecar must move within refresh.
	api.mu.Lock()
	api.keys["key-two"] = true
	api.mu.Unlock()
	rotated := time.Now()
	writeFile(keyFile, "key-two\n")
	deadline := rotated.Add(refresh + 5*time.Second)
	var movedAfter time.Duration
	for {
		api.mu.Lock()
		last := ""
		if n := len(api.seen); n > 0 {
			last = api.seen[n-1]
		}
		api.mu.Unlock()
		if last == "key-two" {
			movedAfter = time.Since(rotated)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the rotated key is not used %v after its write", time.Since(rotated))
		}
		time.Sleep(50 * time.Millisecond)
	}
	// Retire the old key once the sidecar moved: a request still carrying
	// it now fails, and is counted.
	api.mu.Lock()
	delete(api.keys, "key-one")
	api.mu.Unlock()
	// Run on past the first token's expiry and a second token's refresh.
	time.Sleep(2*tokenTTL - time.Since(rotated))
	stopLoad()
	load.Wait()
	t.Logf("steady load: %d requests, %d failed; the rotated key used %v after its write", ok.Load(), bad.Load(), movedAfter.Round(time.Millisecond))
	if n := bad.Load(); n != 0 {
		t.Errorf("%d requests failed under load, want 0; the first: %v", n, firstErr.Load())
	}
	fetches, _ := sc.Metric(ctx, "credflow_credential_fetches_total", "credential=payments-token")
	if fetches < 3 {
		t.Errorf("%v token requests over %v of tokens living %v: not refreshed ahead", fetches, 2*tokenTTL, tokenTTL)
	}
	api.mu.Lock()
	tokens := len(api.tokens)
	api.mu.Unlock()
	if tokens < 3 {
		t.Errorf("the API saw %d distinct tokens, want at least 3", tokens)
	}

	// The app never held or received a credential: none of the tokens and
	// keys the API was sent is in what the app got back.
	recvMu.Lock()
	got := received.String()
	recvMu.Unlock()
	api.mu.Lock()
	for v := range api.issued {
		if v != "" && strings.Contains(got, v) {
			t.Errorf("the app received a credential the API was sent (%d bytes)", len(v))
		}
	}
	api.mu.Unlock()

	// /debug/credentials shows each source's state, without its value.
	_, body, err := sc.Get(ctx, "/debug/credentials")
	if err != nil {
		t.Fatal(err)
	}
	var dbg struct {
		Credentials []struct {
			Name, Status string
			Usable       bool
		}
	}
	if err := json.Unmarshal([]byte(body), &dbg); err != nil || len(dbg.Credentials) != 2 || !dbg.Credentials[0].Usable || !dbg.Credentials[1].Usable {
		t.Errorf("/debug/credentials: %v %s", err, body)
	}
	if strings.Contains(body, "key-two") || strings.Contains(body, "eyJ") {
		t.Errorf("/debug/credentials shows a value: %s", body)
	}
	if lines := sc.LogLines(`"credential":"payments-token,payments-key"`); len(lines) == 0 {
		t.Errorf("no access-log line names the credentials injected")
	}
}
