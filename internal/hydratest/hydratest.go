// Package hydratest runs a real OAuth 2.0 authorization server, Ory Hydra
// (bin/hydra, built by `make hydra` from deploy/hydra), for the tests of
// credential injection: in memory, on free loopback ports, over plain HTTP
// (its --dev mode), with the admin calls those tests need: a client, a
// trust relationship for the jwt-bearer grant, token introspection.
package hydratest

import (
	"bytes"
	"context"
	"crypto"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/go-jose/go-jose/v4"

	"github.com/credflow/credflow/internal/freeport"
	"github.com/credflow/credflow/internal/spiretest"
)

// GrantJWTBearer is the jwt-bearer grant type (RFC 7523).
const GrantJWTBearer = "urn:ietf:params:oauth:grant-type:jwt-bearer"

// Hydra is a running server.
type Hydra struct {
	// Public and Admin are the base URLs of its public and admin ports.
	Public, Admin string
	cmd           *exec.Cmd
	done          chan struct{}
	log           *lockedBuffer
}

// TokenURL is the token endpoint, the audience of jwt-bearer assertions.
func (h *Hydra) TokenURL() string { return h.Public + "/oauth2/token" }

// Start runs bin/hydra (binDir, or bin/ at the module's root when empty)
// until Close. Access tokens live ttl.
func Start(ctx context.Context, binDir string, ttl time.Duration) (*Hydra, error) {
	if binDir == "" {
		var err error
		if binDir, err = spiretest.DefaultBinDir(); err != nil {
			return nil, err
		}
	}
	bin := filepath.Join(binDir, "hydra")
	if _, err := os.Stat(bin); err != nil {
		return nil, fmt.Errorf("hydratest: %w (make hydra builds it)", err)
	}
	public, admin := freePort(), freePort()
	if public == 0 || admin == 0 {
		return nil, errors.New("hydratest: no free port")
	}
	h := &Hydra{
		Public: fmt.Sprintf("http://127.0.0.1:%d", public),
		Admin:  fmt.Sprintf("http://127.0.0.1:%d", admin),
		done:   make(chan struct{}),
		log:    &lockedBuffer{},
	}
	cmd := exec.Command(bin, "serve", "all", "--dev", "--sqa-opt-out")
	cmd.Env = append(os.Environ(),
		"DSN=memory",
		"SECRETS_SYSTEM=credflow-tests-system-secret",
		"URLS_SELF_ISSUER="+h.Public,
		fmt.Sprintf("SERVE_PUBLIC_PORT=%d", public), "SERVE_PUBLIC_HOST=127.0.0.1",
		fmt.Sprintf("SERVE_ADMIN_PORT=%d", admin), "SERVE_ADMIN_HOST=127.0.0.1",
		"OAUTH2_GRANT_JWT_JTI_OPTIONAL=true", // JWT-SVIDs carry no jti
		"TTL_ACCESS_TOKEN="+ttl.String(),
		"LOG_LEVEL=warn",
	)
	cmd.Stdout, cmd.Stderr = h.log, h.log
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("hydratest: %w", err)
	}
	h.cmd = cmd
	go func() { cmd.Wait(); close(h.done) }()
	if err := h.waitReady(ctx); err != nil {
		h.Close()
		return nil, err
	}
	return h, nil
}

func (h *Hydra) waitReady(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	for {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, h.Admin+"/health/ready", nil)
		if resp, err := http.DefaultClient.Do(req); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case <-h.done:
			return fmt.Errorf("hydratest: hydra exited: %s", h.log.tail())
		case <-ctx.Done():
			return fmt.Errorf("hydratest: not ready: %w: %s", ctx.Err(), h.log.tail())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// Close stops the server.
func (h *Hydra) Close() {
	if h.cmd != nil && h.cmd.Process != nil {
		h.cmd.Process.Kill()
		<-h.done
	}
}

// Log is the server's output so far.
func (h *Hydra) Log() string { return h.log.String() }

// CreatePublicClient registers a client that authenticates with nothing
// but its id (token_endpoint_auth_method none) and may use the jwt-bearer
// grant for scopes.
func (h *Hydra) CreatePublicClient(ctx context.Context, id string, scopes []string) error {
	return h.admin(ctx, http.MethodPost, "/admin/clients", map[string]any{
		"client_id":                  id,
		"grant_types":                []string{GrantJWTBearer},
		"token_endpoint_auth_method": "none",
		"scope":                      strings.Join(scopes, " "),
	}, nil)
}

// CreateConfidentialClient registers a client that authenticates with a
// client secret (client_secret_basic) and may use the client credentials
// grant for scopes.
func (h *Hydra) CreateConfidentialClient(ctx context.Context, id, secret string, scopes []string) error {
	return h.admin(ctx, http.MethodPost, "/admin/clients", map[string]any{
		"client_id":                  id,
		"client_secret":              secret,
		"grant_types":                []string{"client_credentials"},
		"token_endpoint_auth_method": "client_secret_basic",
		"scope":                      strings.Join(scopes, " "),
	}, nil)
}

// RotateClientSecret gives client id a new secret; the old one is refused
// from then on.
func (h *Hydra) RotateClientSecret(ctx context.Context, id, secret string) error {
	return h.admin(ctx, http.MethodPatch, "/admin/clients/"+url.PathEscape(id), []map[string]any{
		{"op": "replace", "path": "/client_secret", "value": secret},
	}, nil)
}

// TrustJWTIssuer trusts assertions issued by issuer for subject, signed
// with key, for scopes, until expires.
func (h *Hydra) TrustJWTIssuer(ctx context.Context, issuer, subject string, key spiretest.JWTKey, scopes []string, expires time.Time) error {
	jwk := jose.JSONWebKey{Key: key.Public, KeyID: key.KeyID, Use: "sig", Algorithm: algorithmOf(key.Public)}
	return h.admin(ctx, http.MethodPost, "/admin/trust/grants/jwt-bearer/issuers", map[string]any{
		"issuer":     issuer,
		"subject":    subject,
		"scope":      scopes,
		"jwk":        jwk,
		"expires_at": expires.UTC().Format(time.RFC3339),
	}, nil)
}

func algorithmOf(pub crypto.PublicKey) string {
	jwk := jose.JSONWebKey{Key: pub}
	if b, err := jwk.MarshalJSON(); err == nil && bytes.Contains(b, []byte(`"kty":"RSA"`)) {
		return string(jose.RS256)
	}
	return string(jose.ES256)
}

// Introspection is what the admin introspection endpoint says of a token.
type Introspection struct {
	Active   bool   `json:"active"`
	Subject  string `json:"sub"`
	ClientID string `json:"client_id"`
	Scope    string `json:"scope"`
	Exp      int64  `json:"exp"`
}

// Introspect asks the server about an access token.
func (h *Hydra) Introspect(ctx context.Context, token string) (Introspection, error) {
	var in Introspection
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, h.Admin+"/admin/oauth2/introspect",
		strings.NewReader(url.Values{"token": {token}}.Encode()))
	if err != nil {
		return in, err
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return in, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 1024))
		return in, fmt.Errorf("hydratest: introspect: %s: %s", resp.Status, b)
	}
	return in, json.NewDecoder(resp.Body).Decode(&in)
}

func (h *Hydra) admin(ctx context.Context, method, path string, body, out any) error {
	b, err := json.Marshal(body)
	if err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, method, h.Admin+path, bytes.NewReader(b))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("hydratest: %s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	rb, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("hydratest: %s %s: %s: %s", method, path, resp.Status, rb)
	}
	if out != nil {
		return json.Unmarshal(rb, out)
	}
	return nil
}

func freePort() int {
	p, _ := freeport.Port() // 0 on error: the server then fails to start, and says so
	return p
}

// lockedBuffer is the server's output, written by the process's copy
// goroutines and read by the test.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func (b *lockedBuffer) tail() string {
	s := b.String()
	if len(s) > 2000 {
		s = s[len(s)-2000:]
	}
	return s
}
