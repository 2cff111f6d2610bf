package e2e_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
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
	api := hydratest.StartAPI(hydra, id, "key-one")
	defer api.Close()
	writeFile(caFile, string(api.CAPEM()))

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
`, s.AgentAddr(), hydra.TokenURL(), id, keyFile, refresh, egress, api.Addr(), caFile))

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
	api.Honour("key-two")
	rotated := time.Now()
	writeFile(keyFile, "key-two\n")
	deadline := rotated.Add(refresh + 5*time.Second)
	var movedAfter time.Duration
	for {
		if api.LastKey() == "key-two" {
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
	api.Retire("key-one")
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
	if tokens := api.Tokens(); tokens < 3 {
		t.Errorf("the API saw %d distinct tokens, want at least 3", tokens)
	}

	// The app never held or received a credential: none of the tokens and
	// keys the API was sent is in what the app got back.
	recvMu.Lock()
	got := received.String()
	recvMu.Unlock()
	for _, v := range api.Sent() {
		if strings.Contains(got, v) {
			t.Errorf("the app received a credential the API was sent (%d bytes)", len(v))
		}
	}

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
