package edge

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/go-jose/go-jose/v4"

	"github.com/credflow/credflow/internal/jwstest"
	"github.com/credflow/credflow/reason"
)

const issuer = "https://idp.example"

// idp is a test identity provider: signing keys and a JWKS.
type idp struct {
	mu   sync.Mutex
	keys map[string]any // kid -> private key
}

func newIDP(t *testing.T) *idp {
	return &idp{keys: map[string]any{"rsa1": rsaKey(t), "ec1": ecKey(t)}}
}

func rsaKey(t *testing.T) *rsa.PrivateKey {
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func ecKey(t *testing.T) *ecdsa.PrivateKey {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func (p *idp) jwks() []byte {
	p.mu.Lock()
	defer p.mu.Unlock()
	var set jose.JSONWebKeySet
	for kid, k := range p.keys {
		var pub any
		switch k := k.(type) {
		case *rsa.PrivateKey:
			pub = k.Public()
		case *ecdsa.PrivateKey:
			pub = k.Public()
		}
		set.Keys = append(set.Keys, jose.JSONWebKey{Key: pub, KeyID: kid, Use: "sig"})
	}
	out, _ := json.Marshal(set)
	return out
}

func (p *idp) add(kid string, key any) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.keys[kid] = key
}

func (p *idp) key(kid string) any {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.keys[kid]
}

// claimSet returns valid claims, changed by edits (nil deletes).
func claimSet(edits map[string]any) map[string]any {
	now := time.Now()
	c := map[string]any{"iss": issuer, "sub": "alice", "aud": []string{"orders"}, "exp": now.Add(5 * time.Minute).Unix(),
		"iat": now.Unix(), "scope": "orders.read profile"}
	for k, v := range edits {
		if v == nil {
			delete(c, k)
		} else {
			c[k] = v
		}
	}
	return c
}

func signJWT(t *testing.T, alg jose.SignatureAlgorithm, key any, kid string, hdr map[string]any, c map[string]any) string {
	t.Helper()
	opts := (&jose.SignerOptions{}).WithType("JWT")
	if kid != "" {
		opts.WithHeader("kid", kid)
	}
	for k, v := range hdr {
		opts.WithHeader(jose.HeaderKey(k), v)
	}
	s, err := jose.NewSigner(jose.SigningKey{Algorithm: alg, Key: key}, opts)
	if err != nil {
		t.Fatal(err)
	}
	payload, _ := json.Marshal(c)
	obj, err := s.Sign(payload)
	if err != nil {
		t.Fatal(err)
	}
	out, err := obj.CompactSerialize()
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func newFileValidator(t *testing.T, p *idp, algs ...string) *Validator {
	path := filepath.Join(t.TempDir(), "jwks.json")
	if err := os.WriteFile(path, p.jwks(), 0o600); err != nil {
		t.Fatal(err)
	}
	ks, err := NewKeySet(KeySetConfig{File: path})
	if err != nil {
		t.Fatal(err)
	}
	v, err := NewValidator([]Issuer{{Issuer: issuer, Audiences: []string{"orders"}, Algorithms: algs, Keys: ks}}, 0)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func TestValidate(t *testing.T) {
	p := newIDP(t)
	v := newFileValidator(t, p)
	ctx := context.Background()
	good := signJWT(t, jose.RS256, p.key("rsa1"), "rsa1", nil, claimSet(nil))
	sub, err := v.Validate(ctx, good)
	if err != nil {
		t.Fatal(err)
	}
	if sub.Subject != "alice" || sub.Issuer != issuer || strings.Join(sub.Scopes, " ") != "orders.read profile" {
		t.Errorf("subject %+v", sub)
	}
	if _, err := v.Validate(ctx, signJWT(t, jose.ES256, p.key("ec1"), "ec1", nil, claimSet(map[string]any{"scope": nil, "scp": []string{"a", "b"}}))); err != nil {
		t.Errorf("ES256 with scp: %v", err)
	}

	// An HMAC token keyed with the RSA public key: the classic algorithm
	// confusion.
	pubDER := p.key("rsa1").(*rsa.PrivateKey).PublicKey.N.Bytes()
	noneTok := base64.RawURLEncoding.EncodeToString([]byte(`{"alg":"none","typ":"JWT"}`)) + "." +
		strings.Split(good, ".")[1] + "."
	other := rsaKey(t)
	parts := strings.Split(good, ".")
	changed, _ := json.Marshal(claimSet(map[string]any{"sub": "mallory"}))
	cases := []struct {
		name  string
		token string
		want  reason.Reason
	}{
		{"empty", "", reason.ExternalMissing},
		{"oversized", strings.Repeat("x", MaxTokenSize+1), reason.ExternalMalformed},
		{"not a JWS", "hello", reason.ExternalMalformed},
		{"alg none", noneTok, reason.ExternalBadAlg},
		{"HS256 keyed with the public key", signJWT(t, jose.HS256, pubDER, "rsa1", nil, claimSet(nil)), reason.ExternalBadAlg},
		{"alg the issuer does not use", signJWT(t, jose.PS256, p.key("rsa1"), "rsa1", nil, claimSet(nil)), reason.ExternalBadAlg},
		{"expired", signJWT(t, jose.RS256, p.key("rsa1"), "rsa1", nil, claimSet(map[string]any{"exp": time.Now().Add(-time.Minute).Unix()})), reason.ExternalExpired},
		{"not yet valid", signJWT(t, jose.RS256, p.key("rsa1"), "rsa1", nil, claimSet(map[string]any{"nbf": time.Now().Add(time.Hour).Unix()})), reason.ExternalExpired},
		{"no exp", signJWT(t, jose.RS256, p.key("rsa1"), "rsa1", nil, claimSet(map[string]any{"exp": nil})), reason.ExternalBadClaims},
		{"no sub", signJWT(t, jose.RS256, p.key("rsa1"), "rsa1", nil, claimSet(map[string]any{"sub": nil})), reason.ExternalBadClaims},
		{"wrong audience", signJWT(t, jose.RS256, p.key("rsa1"), "rsa1", nil, claimSet(map[string]any{"aud": "billing"})), reason.ExternalWrongAudience},
		{"unknown issuer", signJWT(t, jose.RS256, p.key("rsa1"), "rsa1", nil, claimSet(map[string]any{"iss": "https://evil.example"})), reason.ExternalUnknownIssuer},
		{"forged: another key, a known kid", signJWT(t, jose.RS256, other, "rsa1", nil, claimSet(nil)), reason.ExternalBadSignature},
		{"payload changed", parts[0] + "." + base64.RawURLEncoding.EncodeToString(changed) + "." + parts[2], reason.ExternalBadSignature},
		{"B14 expired and badly signed: the signature first", signJWT(t, jose.RS256, other, "rsa1", nil, claimSet(map[string]any{"exp": time.Now().Add(-time.Hour).Unix()})), reason.ExternalBadSignature},
		{"B16 1 MB of dots", strings.Repeat(".", 1<<20), reason.ExternalMalformed},
		{"unknown kid", signJWT(t, jose.RS256, other, "rsa9", nil, claimSet(nil)), reason.ExternalUnknownKey},
		{"jku header", signJWT(t, jose.RS256, p.key("rsa1"), "rsa1", map[string]any{"jku": "https://evil.example/jwks"}, claimSet(nil)), reason.ExternalBadHeader},
		{"embedded jwk", signJWT(t, jose.RS256, p.key("rsa1"), "rsa1", map[string]any{"jwk": map[string]any{"kty": "oct"}}, claimSet(nil)), reason.ExternalBadHeader},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := v.Validate(ctx, tc.token)
			if err == nil {
				t.Fatal("accepted")
			}
			if got := ReasonOf(err); got != tc.want {
				t.Fatalf("reason %s (%v), want %s", got, err, tc.want)
			}
		})
	}
}

func TestKeySetURLRefresh(t *testing.T) {
	p := newIDP(t)
	var hits atomic.Int32
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		w.Header().Set("Content-Type", "application/jwk-set+json")
		w.Write(p.jwks())
	}))
	defer srv.Close()
	var refreshes []error
	ks, err := NewKeySet(KeySetConfig{URL: srv.URL + "/jwks", TLS: srv.Client().Transport.(*http.Transport).TLSClientConfig,
		Refresh: time.Hour, OnRefresh: func(err error) { refreshes = append(refreshes, err) }})
	if err != nil {
		t.Fatal(err)
	}
	clock := time.Now()
	ks.now = func() time.Time { return clock }
	v, err := NewValidator([]Issuer{{Issuer: issuer, Audiences: []string{"orders"}, Keys: ks}}, 0)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if _, err := v.Validate(ctx, signJWT(t, jose.RS256, p.key("rsa1"), "rsa1", nil, claimSet(nil))); err != nil {
		t.Fatal(err)
	}
	if hits.Load() != 1 {
		t.Fatalf("%d fetches for the first token, want 1", hits.Load())
	}
	// The provider rotates in a new key. Tokens with it fail until the
	// refresh interval has passed since the last fetch, however many come.
	p.add("rsa2", rsaKey(t))
	rotated := signJWT(t, jose.RS256, p.key("rsa2"), "rsa2", nil, claimSet(nil))
	for range 50 {
		if _, err := v.Validate(ctx, rotated); ReasonOf(err) != reason.ExternalUnknownKey {
			t.Fatalf("err %v, want %s", err, reason.ExternalUnknownKey)
		}
	}
	if hits.Load() != 1 {
		t.Fatalf("%d fetches: unknown key IDs refreshed the set within the interval", hits.Load())
	}
	clock = clock.Add(time.Hour)
	if _, err := v.Validate(ctx, rotated); err != nil {
		t.Fatalf("after the interval, the rotated key: %v", err)
	}
	if hits.Load() != 2 || len(refreshes) != 2 || refreshes[0] != nil || refreshes[1] != nil {
		t.Fatalf("%d fetches, refreshes %v; want 2, both ok", hits.Load(), refreshes)
	}
	// The old key still works from the cache.
	if _, err := v.Validate(ctx, signJWT(t, jose.RS256, p.key("rsa1"), "rsa1", nil, claimSet(nil))); err != nil {
		t.Fatal(err)
	}
}

func TestKeySetConfig(t *testing.T) {
	for _, cfg := range []KeySetConfig{
		{},
		{File: "a", URL: "https://b"},
		{URL: "http://idp.example/jwks"},
		{URL: "https://"},
	} {
		if _, err := NewKeySet(cfg); err == nil {
			t.Errorf("%+v accepted", cfg)
		}
	}
	ks, _ := NewKeySet(KeySetConfig{File: "/nonexistent"})
	for _, issuers := range [][]Issuer{
		{{Audiences: []string{"a"}, Keys: ks}},
		{{Issuer: issuer, Keys: ks}},
		{{Issuer: issuer, Audiences: []string{"a"}}},
		{{Issuer: issuer, Audiences: []string{"a"}, Keys: ks, Algorithms: []string{"HS256"}}},
		{{Issuer: issuer, Audiences: []string{"a"}, Keys: ks}, {Issuer: issuer, Audiences: []string{"a"}, Keys: ks}},
	} {
		if _, err := NewValidator(issuers, 0); err == nil {
			t.Errorf("%+v accepted", issuers)
		}
	}
}

func TestKeySetFailedFetchKeepsKeys(t *testing.T) {
	p := newIDP(t)
	var fail atomic.Bool
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if fail.Load() {
			http.Error(w, "down", http.StatusServiceUnavailable)
			return
		}
		w.Write(p.jwks())
	}))
	defer srv.Close()
	ks, _ := NewKeySet(KeySetConfig{URL: srv.URL, TLS: srv.Client().Transport.(*http.Transport).TLSClientConfig, Refresh: time.Nanosecond})
	ctx := context.Background()
	if err := ks.Load(ctx); err != nil {
		t.Fatal(err)
	}
	fail.Store(true)
	if _, err := ks.Key(ctx, "rsa9", "RS256"); err == nil {
		t.Fatal("an unknown key was found")
	}
	if _, err := ks.Key(ctx, "rsa1", "RS256"); err != nil {
		t.Fatalf("a failed refresh dropped the cached keys: %v", err)
	}
}

func FuzzValidate(f *testing.F) {
	p := &idp{keys: map[string]any{}}
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	p.add("ec1", key)
	dir := f.TempDir()
	path := filepath.Join(dir, "jwks.json")
	os.WriteFile(path, p.jwks(), 0o600)
	ks, _ := NewKeySet(KeySetConfig{File: path})
	v, err := NewValidator([]Issuer{{Issuer: issuer, Audiences: []string{"orders"}, Keys: ks, Algorithms: []string{"ES256"}}}, 0)
	if err != nil {
		f.Fatal(err)
	}
	s, _ := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: key}, (&jose.SignerOptions{}).WithHeader("kid", "ec1"))
	payload, _ := json.Marshal(claimSet(nil))
	obj, _ := s.Sign(payload)
	good, _ := obj.CompactSerialize()
	f.Add(good)
	f.Add("")
	f.Add("eyJhbGciOiJub25lIn0.e30.")
	f.Add("a.b.c")
	f.Fuzz(func(t *testing.T, tok string) {
		sub, err := v.Validate(context.Background(), tok)
		if err == nil && (sub.Subject != "alice" || sub.Issuer != issuer) {
			t.Fatalf("accepted changed claims %+v from %q", sub, tok)
		}
	})
}

// FuzzJWKS: an issuer's key set as read from its file or URL. Loading
// never panics; a set that does not parse is refused; from one that does,
// a key is found only for a kid and algorithm it holds.
func FuzzJWKS(f *testing.F) {
	f.Add([]byte(`{"keys":[]}`), "k1", "ES256")
	f.Add([]byte(`{"keys":[{"kty":"EC","crv":"P-256","kid":"k1","x":"AA","y":"AA"}]}`), "k1", "ES256")
	f.Add([]byte(`{"keys":[{"kty":"oct","kid":"k1","k":"c2VjcmV0"}]}`), "k1", "HS256")
	f.Add([]byte(`{"keys":[{"kty":"RSA","kid":"","n":"AQAB","e":"AQAB"}]}`), "", "RS256")
	f.Add([]byte(`not json`), "k1", "ES256")
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, data []byte, kid, alg string) {
		path := filepath.Join(dir, "jwks.json")
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
		ks, err := NewKeySet(KeySetConfig{File: path})
		if err != nil {
			t.Fatal(err)
		}
		if ks.Load(context.Background()) != nil {
			return
		}
		k, err := ks.Key(context.Background(), kid, alg)
		if err != nil || k == nil {
			return
		}
		if kid != "" && k.KeyID != kid {
			t.Fatalf("asked for kid %q, got %q", kid, k.KeyID)
		}
		if _, ok := k.Key.([]byte); ok {
			t.Fatalf("a symmetric key was handed out for %s", alg)
		}
	})
}

// TestValidateHeaderMembers: the issuer's algorithm list cannot be
// sidestepped by naming a header member twice in different cases
// ({"alg":"PS256","Alg":"RS256"}: one reader sees PS256, another RS256), and
// case variants of the members that are refused are refused too.
func TestValidateHeaderMembers(t *testing.T) {
	p := newIDP(t)
	v := newFileValidator(t, p, "RS256")
	key := p.key("rsa1").(*rsa.PrivateKey)
	payload, _ := json.Marshal(claimSet(nil))
	ctx := context.Background()
	if _, err := v.Validate(ctx, jwstest.Sign(t, "RS256", key, `{"alg":"RS256","kid":"rsa1","typ":"JWT"}`, string(payload))); err != nil {
		t.Fatalf("the plain header: %v", err)
	}
	cases := []struct {
		alg, header string
		want        reason.Reason
	}{
		{"PS256", `{"alg":"PS256","kid":"rsa1","typ":"JWT","Alg":"RS256"}`, reason.ExternalBadHeader},
		{"PS256", `{"Alg":"RS256","alg":"PS256","kid":"rsa1"}`, reason.ExternalBadHeader},
		{"RS256", `{"alg":"RS256","kid":"rsa1","KID":"ec1"}`, reason.ExternalBadHeader},
		{"RS256", `{"alg":"RS256","kid":"rsa1","JKU":"https://evil.example/jwks"}`, reason.ExternalBadHeader},
		{"RS256", `{"alg":"RS256","kid":"rsa1","Jwk":{"kty":"RSA"}}`, reason.ExternalBadHeader},
		{"RS256", `{"alg":"RS256","kid":"rsa1","typ":"JWT","tYp":"at+jwt"}`, reason.ExternalBadHeader},
		{"PS256", `{"alg":"PS256","kid":"rsa1"}`, reason.ExternalBadAlg},
	}
	for _, tc := range cases {
		t.Run(tc.header, func(t *testing.T) {
			_, err := v.Validate(ctx, jwstest.Sign(t, tc.alg, key, tc.header, string(payload)))
			if err == nil {
				t.Fatal("accepted")
			}
			if got := ReasonOf(err); got != tc.want {
				t.Fatalf("reason %s (%v), want %s", got, err, tc.want)
			}
		})
	}
}

func (p *idp) remove(kid string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.keys, kid)
}

// TestKeySetRemovedKeyRefused: a key the provider removes from its JWKS is
// refused once the set is read again on its refresh interval, without
// waiting for a token with an unknown key ID or a restart.
func TestKeySetRemovedKeyRefused(t *testing.T) {
	p := newIDP(t)
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write(p.jwks()) }))
	defer srv.Close()
	ks, err := NewKeySet(KeySetConfig{URL: srv.URL, TLS: srv.Client().Transport.(*http.Transport).TLSClientConfig, Refresh: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	v, err := NewValidator([]Issuer{{Issuer: issuer, Audiences: []string{"orders"}, Keys: ks}}, 0)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	old := signJWT(t, jose.RS256, p.key("rsa1"), "rsa1", nil, claimSet(nil))
	if _, err := v.Validate(ctx, old); err != nil {
		t.Fatal(err)
	}
	p.add("rsa2", rsaKey(t))
	p.remove("rsa1")
	deadline := time.Now().Add(20 * time.Second)
	for {
		_, err := v.Validate(ctx, old)
		if ReasonOf(err) == reason.ExternalUnknownKey {
			break
		}
		if err != nil {
			t.Fatalf("the removed key: %v, want %s", err, reason.ExternalUnknownKey)
		}
		if time.Now().After(deadline) {
			t.Fatal("a key removed from the JWKS is still trusted after many refresh intervals")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if _, err := v.Validate(ctx, signJWT(t, jose.RS256, p.key("rsa2"), "rsa2", nil, claimSet(nil))); err != nil {
		t.Fatalf("the new key: %v", err)
	}
}

// TestKeySetFetchDoesNotBlock: while the JWKS is being fetched, tokens
// signed with a key already held validate without waiting for the fetch,
// and tokens naming unknown keys share that one fetch.
func TestKeySetFetchDoesNotBlock(t *testing.T) {
	p := newIDP(t)
	var (
		hits    atomic.Int32
		block   atomic.Bool
		started = make(chan struct{}, 1)
		release = make(chan struct{})
	)
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		if block.Load() {
			started <- struct{}{}
			<-release
		}
		w.Write(p.jwks())
	}))
	defer srv.Close()
	defer func() {
		select {
		case <-release:
		default:
			close(release)
		}
	}()
	var refreshes atomic.Int32
	ks, err := NewKeySet(KeySetConfig{URL: srv.URL, TLS: srv.Client().Transport.(*http.Transport).TLSClientConfig,
		Refresh: time.Hour, OnRefresh: func(error) { refreshes.Add(1) }})
	if err != nil {
		t.Fatal(err)
	}
	v, err := NewValidator([]Issuer{{Issuer: issuer, Audiences: []string{"orders"}, Keys: ks}}, 0)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := ks.Load(ctx); err != nil {
		t.Fatal(err)
	}
	// Past the refresh interval: the set is due to be read again.
	later := time.Now().Add(2 * time.Hour)
	ks.now = func() time.Time { return later }
	refreshes.Store(0)
	block.Store(true)

	unknown := signJWT(t, jose.RS256, rsaKey(t), "rsa9", nil, claimSet(nil))
	const n = 8
	unknownDone := make(chan error, n)
	for range n {
		go func() { _, err := v.Validate(ctx, unknown); unknownDone <- err }()
	}
	select {
	case <-started:
	case <-time.After(30 * time.Second):
		t.Fatal("no JWKS fetch for a token with an unknown key ID")
	}
	known := signJWT(t, jose.RS256, p.key("rsa1"), "rsa1", nil, claimSet(nil))
	knownDone := make(chan error, 1)
	go func() { _, err := v.Validate(ctx, known); knownDone <- err }()
	select {
	case err := <-knownDone:
		if err != nil {
			t.Fatalf("a known key during the fetch: %v", err)
		}
		if refreshes.Load() != 0 {
			t.Fatal("the token with a known key waited for the JWKS fetch to end")
		}
	case <-time.After(30 * time.Second):
		t.Fatal("a token with a known key is still waiting on the JWKS fetch")
	}
	close(release)
	for range n {
		if err := <-unknownDone; ReasonOf(err) != reason.ExternalUnknownKey {
			t.Fatalf("unknown key: %v, want %s", err, reason.ExternalUnknownKey)
		}
	}
	if got := hits.Load(); got != 2 {
		t.Fatalf("%d fetches, want 2 (the load, then one for all %d tokens with an unknown key)", got, n)
	}
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// TestKeySetCacheHeaders: a JWKS URL is read again on its refresh interval,
// sooner when its Cache-Control max-age or Expires says so, but never more
// often than MinRefresh; a failed read is retried after MinRefresh and keeps
// the keys. The clock is synctest's, the JWKS server an in-memory transport.
func TestKeySetCacheHeaders(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p := newIDP(t)
		var (
			mu    sync.Mutex
			hdr   http.Header
			fail  bool
			reads int
		)
		serve := func(h http.Header, f bool) {
			mu.Lock()
			defer mu.Unlock()
			hdr, fail = h, f
		}
		ks, err := NewKeySet(KeySetConfig{URL: "https://idp.example/jwks", Refresh: time.Hour})
		if err != nil {
			t.Fatal(err)
		}
		ks.client.Transport = roundTripFunc(func(r *http.Request) (*http.Response, error) {
			mu.Lock()
			defer mu.Unlock()
			reads++
			if fail {
				return &http.Response{StatusCode: http.StatusServiceUnavailable, Body: http.NoBody, Request: r}, nil
			}
			return &http.Response{StatusCode: http.StatusOK, Header: hdr.Clone(), Body: io.NopCloser(bytes.NewReader(p.jwks())), Request: r}, nil
		})
		ctx := context.Background()
		// use validates with a held key and returns the reads so far.
		use := func(after time.Duration) int {
			t.Helper()
			time.Sleep(after)
			if _, err := ks.Key(ctx, "rsa1", "RS256"); err != nil {
				t.Fatalf("the held key: %v", err)
			}
			mu.Lock()
			defer mu.Unlock()
			return reads
		}
		cc := func(v ...string) func() http.Header {
			return func() http.Header { return http.Header{"Cache-Control": v} }
		}
		steps := []struct {
			name   string
			header func() http.Header
			fail   bool
			before time.Duration // used this long after the read: no new read
			after  time.Duration // and this much later: read again
		}{
			{"no cache headers: the interval", func() http.Header { return nil }, false, time.Hour - time.Second, 2 * time.Second},
			{"max-age shorter than the interval", cc("public, max-age=120"), false, 119 * time.Second, 2 * time.Second},
			{"max-age minus Age", func() http.Header { return http.Header{"Cache-Control": {"max-age=120"}, "Age": {"60"}} }, false, 59 * time.Second, 2 * time.Second},
			{"max-age under the floor", cc("max-age=1"), false, MinRefresh - time.Second, 2 * time.Second},
			{"no-cache: the floor", cc("no-cache"), false, MinRefresh - time.Second, 2 * time.Second},
			{"max-age over the interval", cc("max-age=86400"), false, time.Hour - time.Second, 2 * time.Second},
			{"Expires", func() http.Header {
				return http.Header{"Expires": {time.Now().Add(90 * time.Second).UTC().Format(http.TimeFormat)}}
			}, false, 89 * time.Second, 2 * time.Second},
			{"a failed read keeps the keys and is retried after the floor", func() http.Header { return nil }, true, MinRefresh - time.Second, 2 * time.Second},
		}
		for _, st := range steps {
			serve(st.header(), st.fail)
			if err := ks.Load(ctx); (err != nil) != st.fail {
				t.Fatalf("%s: Load: %v", st.name, err)
			}
			n := use(0)
			if got := use(st.before); got != n {
				t.Fatalf("%s: read again after %v", st.name, st.before)
			}
			if got := use(st.after); got != n+1 {
				t.Fatalf("%s: not read again %v later (%d reads, want %d)", st.name, st.before+st.after, got, n+1)
			}
		}
	})
}

// TestValidateLeeway: the clock skew tolerated on exp, nbf and iat is a
// setting, by default go-jose's minute.
func TestValidateLeeway(t *testing.T) {
	p := newIDP(t)
	path := filepath.Join(t.TempDir(), "jwks.json")
	if err := os.WriteFile(path, p.jwks(), 0o600); err != nil {
		t.Fatal(err)
	}
	ks, _ := NewKeySet(KeySetConfig{File: path})
	issuers := []Issuer{{Issuer: issuer, Audiences: []string{"orders"}, Keys: ks}}
	lenient, err := NewValidator(issuers, 0)
	if err != nil {
		t.Fatal(err)
	}
	strict, err := NewValidator(issuers, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	expired := signJWT(t, jose.RS256, p.key("rsa1"), "rsa1", nil, claimSet(map[string]any{"exp": time.Now().Add(-45 * time.Second).Unix()}))
	early := signJWT(t, jose.RS256, p.key("rsa1"), "rsa1", nil, claimSet(map[string]any{"nbf": time.Now().Add(45 * time.Second).Unix()}))
	for _, tok := range []string{expired, early} {
		if _, err := lenient.Validate(ctx, tok); err != nil {
			t.Errorf("default leeway, 45 s off: %v", err)
		}
		if _, err := strict.Validate(ctx, tok); ReasonOf(err) != reason.ExternalExpired {
			t.Errorf("10 s leeway, 45 s off: %v, want %s", err, reason.ExternalExpired)
		}
	}
}
