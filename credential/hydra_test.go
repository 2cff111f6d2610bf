package credential_test

import (
	"context"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/credflow/credflow/agent"
	"github.com/credflow/credflow/credential"
	"github.com/credflow/credflow/internal/hydratest"
	"github.com/credflow/credflow/internal/spiretest"
	"github.com/credflow/credflow/internal/testenv"
)

// issuer is the jwt_issuer of the test's SPIRE server.
const issuer = "https://spire.example.org"

// counting counts a Source's fetches.
type counting struct {
	credential.Source
	n atomic.Int64
}

func (c *counting) Fetch(ctx context.Context) (credential.Credential, error) {
	c.n.Add(1)
	return c.Source.Fetch(ctx)
}

// TestOAuth2AgainstHydra: on real SPIRE and a real Hydra, the workload
// obtains an access token with nothing but its JWT-SVID (the jwt-bearer
// grant, a public client), the token introspects as active for the
// workload's SPIFFE ID and the scopes asked for, concurrent callers on a
// cold cache cause one token request, and an assertion Hydra does not
// accept is refused with its reason and without the assertion.
func TestOAuth2AgainstHydra(t *testing.T) {
	testenv.NeedsSPIRE(t)
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()

	s, err := spiretest.Start(ctx, spiretest.Options{JWTIssuer: issuer, JWTSVIDTTL: 5 * time.Minute, Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	id := s.ID("/frontend")
	if _, err := s.Register(ctx, spiretest.Entry{ID: id, UID: currentUID()}); err != nil {
		t.Fatal(err)
	}
	src := runSource(t, s)

	hydra, err := hydratest.Start(ctx, "", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if t.Failed() {
			t.Log(hydra.Log())
		}
		hydra.Close()
	}()
	scopes := []string{"payments:read", "payments:write"}
	if err := hydra.CreatePublicClient(ctx, id.String(), scopes); err != nil {
		t.Fatal(err)
	}
	keys, err := s.JWTKeys(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range keys {
		if err := hydra.TrustJWTIssuer(ctx, issuer, id.String(), k, scopes, time.Now().Add(time.Hour)); err != nil {
			t.Fatal(err)
		}
	}

	assertion := func(ctx context.Context, aud string) (string, error) {
		svid, err := src.FetchJWTSVID(ctx, aud)
		if err != nil {
			return "", err
		}
		return svid.Marshal(), nil
	}
	oauth := &credential.OAuth2{TokenURL: hydra.TokenURL(), Method: credential.GrantJWTBearer, ClientID: id.String(),
		Scopes: scopes, Assertion: assertion}
	src2 := &counting{Source: oauth}
	cache := &credential.Cache{Name: "payments", Source: src2}

	var wg sync.WaitGroup
	tokens := make([]string, 50)
	for i := range tokens {
		wg.Go(func() {
			cred, err := cache.Get(ctx)
			if err != nil {
				t.Error(err)
				return
			}
			tokens[i] = cred.Value.Reveal()
		})
	}
	wg.Wait()
	if n := src2.n.Load(); n != 1 {
		t.Errorf("%d token requests for 50 callers on a cold cache, want 1", n)
	}
	if t.Failed() {
		t.FailNow()
	}
	for _, tok := range tokens[1:] {
		if tok != tokens[0] {
			t.Fatal("callers got different tokens")
		}
	}
	in, err := hydra.Introspect(ctx, tokens[0])
	if err != nil {
		t.Fatal(err)
	}
	if !in.Active || in.Subject != id.String() || in.ClientID != id.String() || in.Scope != strings.Join(scopes, " ") {
		t.Errorf("introspection: %+v, want active for %s with scopes %v", in, id, scopes)
	}
	st := cache.State()
	if until := time.Until(st.Expires); until < 50*time.Minute || until > time.Hour {
		t.Errorf("the token expires in %v; Hydra issues them for an hour", until)
	}

	// An assertion for another audience than the token endpoint: Hydra
	// refuses the grant, and the error says so without the assertion.
	wrong := *oauth
	wrong.AssertionAudience = "https://elsewhere.example.org/token"
	_, err = wrong.Fetch(ctx)
	if err == nil || !strings.Contains(err.Error(), "invalid_grant") {
		t.Fatalf("an assertion for another audience: %v, want invalid_grant", err)
	}
	if strings.Contains(err.Error(), "eyJ") {
		t.Errorf("the error holds a JWT: %v", err)
	}
}

func runSource(t *testing.T, s *spiretest.SPIRE) *agent.Source {
	t.Helper()
	src, err := agent.New(agent.Config{Addr: s.AgentAddr(), Metrics: agent.NewMetrics(prometheus.NewRegistry()), MaxBackoff: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- src.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	deadline := time.Now().Add(time.Minute)
	for src.Ready() != nil {
		if time.Now().After(deadline) {
			t.Fatalf("the Workload API source is not ready: %v", src.Ready())
		}
		time.Sleep(100 * time.Millisecond)
	}
	return src
}

func currentUID() int { return os.Getuid() }

// TestOAuth2ClientSecretAgainstHydra: for a provider that knows no
// SPIFFE profile, a confidential client at a real Hydra: the client
// credentials grant with the secret read from its mounted file gives a
// token that introspects as active for the client; when the provider
// rotates the secret and the file follows, the next fetch uses the new
// one, and the old one is refused (invalid_client) without appearing in
// the error.
func TestOAuth2ClientSecretAgainstHydra(t *testing.T) {
	testenv.NeedsHydra(t)
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	hydra, err := hydratest.Start(ctx, "", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if t.Failed() {
			t.Log(hydra.Log())
		}
		hydra.Close()
	}()
	const id, first, second = "legacy-payments-client", "first-secret-7Qm2", "second-secret-Zx9p"
	if err := hydra.CreateConfidentialClient(ctx, id, first, []string{"payments:read"}); err != nil {
		t.Fatal(err)
	}
	path := t.TempDir() + "/client-secret"
	if err := os.WriteFile(path, []byte(first+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	src := &credential.OAuth2{TokenURL: hydra.TokenURL(), Method: credential.ClientSecret, ClientID: id,
		Scopes: []string{"payments:read"}, Secret: credential.File{Path: path}}
	check := func() {
		t.Helper()
		cred, err := src.Fetch(ctx)
		if err != nil {
			t.Fatal(err)
		}
		in, err := hydra.Introspect(ctx, cred.Value.Reveal())
		if err != nil || !in.Active || in.ClientID != id || in.Scope != "payments:read" {
			t.Fatalf("introspection: %+v, %v", in, err)
		}
	}
	check()

	if err := hydra.RotateClientSecret(ctx, id, second); err != nil {
		t.Fatal(err)
	}
	_, err = src.Fetch(ctx)
	if err == nil || !strings.Contains(err.Error(), "invalid_client") || strings.Contains(err.Error(), first) {
		t.Fatalf("the old secret after the provider rotated it: %v, want invalid_client without the secret", err)
	}
	if err := os.WriteFile(path, []byte(second+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	check()
}
