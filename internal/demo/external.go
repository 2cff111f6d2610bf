package demo

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/credflow/credflow/internal/hydratest"
	"github.com/credflow/credflow/internal/sidecartest"
	"github.com/credflow/credflow/internal/spiretest"
)

const (
	// jwtIssuer is the demo SPIRE server's jwt_issuer, the issuer Hydra
	// trusts.
	jwtIssuer = "https://spire.example.org"
	// frontendID is the workload calling the external API.
	frontendID = "spiffe://example.org/frontend"
	// keyRefresh is how often the frontend's sidecar reads the mounted
	// API key again.
	keyRefresh = 2 * time.Second
)

// The API keys of the demo, and the labels it prints for them (it prints
// no key).
var apiKeys = map[string]string{"demo-api-key-7f3a": "key #1", "demo-api-key-c91e": "key #2"}

// external is the world outside the mesh: the payments API, Hydra, and the
// frontend's mounted secret and the API's CA file.
type external struct {
	hydra          *hydratest.Hydra
	api            *hydratest.API
	keyFile, caPEM string
}

// startExternal starts Hydra, trusting SPIRE's JWT signing keys for the
// frontend's JWT-SVIDs, and the payments API, which checks tokens by
// introspection at Hydra and honours key #1.
func startExternal(ctx context.Context, s *spiretest.SPIRE) (*external, error) {
	h, err := hydratest.Start(ctx, "", 10*time.Minute)
	if err != nil {
		return nil, err
	}
	e := &external{hydra: h}
	scopes := []string{"payments:write"}
	keys, err := s.JWTKeys(ctx)
	if err == nil {
		err = h.CreatePublicClient(ctx, frontendID, scopes)
	}
	for _, k := range keys {
		if err == nil {
			err = h.TrustJWTIssuer(ctx, jwtIssuer, frontendID, k, scopes, time.Now().Add(time.Hour))
		}
	}
	if err != nil {
		h.Close()
		return nil, err
	}
	e.api = hydratest.StartAPI(h, frontendID, "demo-api-key-7f3a")

	dir := filepath.Join(s.Dir(), "payments")
	e.keyFile, e.caPEM = filepath.Join(dir, "api-key"), filepath.Join(dir, "ca.pem")
	if err = os.MkdirAll(dir, 0o755); err == nil {
		err = replaceFile(e.keyFile, "demo-api-key-7f3a\n")
	}
	if err == nil {
		err = replaceFile(e.caPEM, string(e.api.CAPEM()))
	}
	if err != nil {
		e.close()
		return nil, err
	}
	return e, nil
}

func (e *external) close() {
	e.api.Close()
	e.hydra.Close()
}

// config is the frontend sidecar's egress listener at listen (one more
// outbound entry) and its two credential sources.
func (e *external) config(listen string) string {
	return fmt.Sprintf(`  - name: payments
    listen: %q
    upstream: %q
    egress:
      server_name: example.com
      ca_file: %s
      inject:
        - {credential: payments-token, as: bearer}
        - {credential: payments-key, as: header, name: X-Api-Key}
credentials:
  - name: payments-token
    oauth2:
      token_url: %s
      client_id: %s
      scopes: [payments:write]
  - name: payments-key
    file: {path: %s}
    refresh: %s
`, listen, e.api.Addr(), e.caPEM, e.hydra.TokenURL(), frontendID, e.keyFile, keyRefresh)
}

// story calls the payments API as the frontend app, with no credential,
// rotates the API key and shows the sidecar moving to it.
func (e *external) story(ctx context.Context, say func(string, ...any), frontend *sidecartest.Sidecar, egress string) error {
	say("\n== frontend app -> http://%s/v1/charges (no credential) -> frontend sidecar -> HTTPS -> payments API", egress)
	body, err := charge(ctx, egress)
	if err != nil {
		return err
	}
	for _, v := range e.api.Sent() {
		if strings.Contains(body, v) {
			return fmt.Errorf("the app received a credential the API was sent")
		}
	}
	say("   got 200 %s", body)
	say("   the API checked the bearer token at Hydra (introspection: active, sub %s);", frontendID)
	say("   the sidecar obtained it with its JWT-SVID as an RFC 7523 assertion: no client secret anywhere")
	say("   the API saw X-Api-Key %s, read by the sidecar from the mounted secret %s", apiKeys[e.api.LastKey()], e.keyFile)
	say("   the app sent no credential and its response holds none")

	say("== rotating the API key in the mounted secret (the API honours key #2 from now)")
	e.api.Honour("demo-api-key-c91e")
	rotated := time.Now()
	if err := replaceFile(e.keyFile, "demo-api-key-c91e\n"); err != nil {
		return err
	}
	for e.api.LastKey() != "demo-api-key-c91e" {
		if time.Since(rotated) > keyRefresh+10*time.Second {
			return fmt.Errorf("the rotated key is not used %v after its write", time.Since(rotated).Round(time.Millisecond))
		}
		time.Sleep(200 * time.Millisecond)
		if _, err := charge(ctx, egress); err != nil {
			return err
		}
	}
	e.api.Retire("demo-api-key-7f3a")
	say("   the next calls use %s (%v after the write; refresh %v), no restart, no failed call",
		apiKeys[e.api.LastKey()], time.Since(rotated).Round(100*time.Millisecond), keyRefresh)
	if _, err := charge(ctx, egress); err != nil {
		return fmt.Errorf("after the old key was retired: %w", err)
	}

	say("== the frontend sidecar's credentials (/debug/credentials: state, never a value)")
	_, dbg, err := frontend.Get(ctx, "/debug/credentials")
	if err != nil {
		return err
	}
	var states struct {
		Credentials []struct {
			Name, Status string
			Expires      time.Time
			Fetches      uint64
			Hits         uint64
		}
	}
	if err := json.Unmarshal([]byte(dbg), &states); err != nil {
		return fmt.Errorf("/debug/credentials: %w", err)
	}
	for _, c := range states.Credentials {
		line := fmt.Sprintf("   %-14s %-8s fetched %d, served from memory %d", c.Name, c.Status, c.Fetches, c.Hits)
		if !c.Expires.IsZero() {
			line += fmt.Sprintf(", expires in %s", time.Until(c.Expires).Round(time.Second))
		}
		say("%s", line)
	}
	lines := frontend.LogLines(`"listener":"payments"`)
	if len(lines) > 0 {
		say("   access log: %s", describe(lines[len(lines)-1]))
	}
	return nil
}

// charge is the frontend app's call: plain HTTP to its sidecar, no
// credential.
func charge(ctx context.Context, egress string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+egress+"/v1/charges", strings.NewReader(`{"amount":500}`))
	if err != nil {
		return "", err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("the call to the payments API: %s %s (reason %q)", resp.Status, strings.TrimSpace(string(b)), resp.Header.Get("X-Credflow-Reason"))
	}
	return string(b), nil
}

// replaceFile writes data to path by a rename, as the kubelet swaps a
// Secret volume's files.
func replaceFile(path, data string) error {
	tmp := path + ".new"
	if err := os.WriteFile(tmp, []byte(data), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}
