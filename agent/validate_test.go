package agent_test

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/credflow/credflow/agent"
	"github.com/credflow/credflow/internal/jwstest"
)

const aud = "spiffe://example.org/backend"

type keyset struct {
	key     *ecdsa.PrivateKey
	bundles *jwtbundle.Set
}

func newKeyset(t testing.TB) keyset {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	b := jwtbundle.New(spiffeid.RequireTrustDomainFromString("example.org"))
	b.AddJWTAuthority("k1", key.Public())
	return keyset{key: key, bundles: jwtbundle.NewSet(b)}
}

// sign builds a JWS with the given extra headers and claims.
func sign(t testing.TB, alg jose.SignatureAlgorithm, key any, headers map[jose.HeaderKey]any, claims map[string]any) string {
	t.Helper()
	opts := &jose.SignerOptions{}
	for k, v := range headers {
		opts.WithHeader(k, v)
	}
	s, err := jose.NewSigner(jose.SigningKey{Algorithm: alg, Key: key}, opts)
	if err != nil {
		t.Fatal(err)
	}
	payload, _ := json.Marshal(claims)
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

func claims(mod func(map[string]any)) map[string]any {
	now := time.Now()
	c := map[string]any{"sub": "spiffe://example.org/frontend", "aud": []string{aud}, "iat": now.Unix(), "exp": now.Add(time.Minute).Unix()}
	if mod != nil {
		mod(c)
	}
	return c
}

// TestValidateJWTSVIDRefusals covers B12-B16.
func TestValidateJWTSVIDRefusals(t *testing.T) {
	ks := newKeyset(t)
	kid := map[jose.HeaderKey]any{"kid": "k1"}
	good := sign(t, jose.ES256, ks.key, kid, claims(nil))
	if _, err := agent.ValidateJWTSVID(good, ks.bundles, aud); err != nil {
		t.Fatalf("the well-formed token: %v", err)
	}
	pubDER, _ := x509.MarshalPKIXPublicKey(ks.key.Public())
	_, edKey, _ := ed25519.GenerateKey(rand.Reader)
	parts := strings.Split(good, ".")
	noneHeader := base64.RawURLEncoding.EncodeToString([]byte(`{"alg":"none","kid":"k1"}`))
	otherKS := newKeyset(t)
	past := time.Now().Add(-time.Hour)
	tests := []struct {
		name, token string
	}{
		{"B12 alg=none", noneHeader + "." + parts[1] + "."},
		{"B12 HS256 keyed with the public key", sign(t, jose.HS256, pubDER, kid, claims(nil))},
		{"B12 EdDSA, outside the JWT-SVID list", sign(t, jose.EdDSA, edKey, kid, claims(nil))},
		{"B13 aud missing", sign(t, jose.ES256, ks.key, kid, claims(func(c map[string]any) { delete(c, "aud") }))},
		{"B13 aud []", sign(t, jose.ES256, ks.key, kid, claims(func(c map[string]any) { c["aud"] = []string{} }))},
		{"B13 aud \"\"", sign(t, jose.ES256, ks.key, kid, claims(func(c map[string]any) { c["aud"] = "" }))},
		{"B13 aud [\"\"]", sign(t, jose.ES256, ks.key, kid, claims(func(c map[string]any) { c["aud"] = []string{""} }))},
		{"B13 another service", sign(t, jose.ES256, ks.key, kid, claims(func(c map[string]any) { c["aud"] = []string{"spiffe://example.org/other"} }))},
		{"B14 exp missing", sign(t, jose.ES256, ks.key, kid, claims(func(c map[string]any) { delete(c, "exp") }))},
		{"B14 exp past", sign(t, jose.ES256, ks.key, kid, claims(func(c map[string]any) { c["exp"] = past.Unix() }))},
		{"B14 nbf beyond skew", sign(t, jose.ES256, ks.key, kid, claims(func(c map[string]any) { c["nbf"] = time.Now().Add(10 * time.Minute).Unix() }))},
		{"B15 unknown kid", sign(t, jose.ES256, ks.key, map[jose.HeaderKey]any{"kid": "k9"}, claims(nil))},
		{"B15 jku header", sign(t, jose.ES256, ks.key, map[jose.HeaderKey]any{"kid": "k1", "jku": "https://evil.example/jwks"}, claims(nil))},
		{"B15 x5u header", sign(t, jose.ES256, ks.key, map[jose.HeaderKey]any{"kid": "k1", "x5u": "https://evil.example/cert"}, claims(nil))},
		{"B15 jwk header", sign(t, jose.ES256, ks.key, map[jose.HeaderKey]any{"kid": "k1", "jwk": map[string]string{"kty": "EC"}}, claims(nil))},
		{"signed by another key", sign(t, jose.ES256, otherKS.key, kid, claims(nil))},
		{"B16 1 MB of dots", strings.Repeat(".", 1<<20)},
		{"B16 64 KB header", base64.RawURLEncoding.EncodeToString([]byte(`{"alg":"ES256","x":"`+strings.Repeat("a", 64<<10)+`"}`)) + "." + parts[1] + "." + parts[2]},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if svid, err := agent.ValidateJWTSVID(tt.token, ks.bundles, aud); err == nil {
				t.Fatalf("accepted: %+v", svid)
			}
		})
	}
	// B14: an expired token with a bad signature is reported as badly
	// signed, not as expired.
	expiredForged := sign(t, jose.ES256, otherKS.key, kid, claims(func(c map[string]any) { c["exp"] = past.Unix() }))
	_, err := agent.ValidateJWTSVID(expiredForged, ks.bundles, aud)
	if err == nil || strings.Contains(err.Error(), "expired") {
		t.Fatalf("expired and forged: %v, want a signature error first", err)
	}
	// B16: refusing a huge token allocates little.
	huge := strings.Repeat(".", 1<<20)
	if allocs := testing.AllocsPerRun(10, func() { agent.ValidateJWTSVID(huge, ks.bundles, aud) }); allocs > 10 {
		t.Fatalf("%v allocations to refuse a 1 MB token", allocs)
	}
}

func FuzzValidateJWTSVID(f *testing.F) {
	f.Add("a.b.c")
	f.Add("eyJhbGciOiJFUzI1NiJ9.e30.AA")
	f.Add(strings.Repeat(".", 64))
	f.Fuzz(func(t *testing.T, token string) {
		ks := keyset{bundles: jwtbundle.NewSet(jwtbundle.New(spiffeid.RequireTrustDomainFromString("example.org")))}
		if svid, err := agent.ValidateJWTSVID(token, ks.bundles, aud); err == nil {
			t.Fatalf("a fuzzed token validated against an empty bundle: %+v", svid)
		}
	})
}

// TestValidateJWTSVIDClockSkew covers F11 for JWT-SVIDs: a token minted by
// a clock 30 s ahead or behind validates; beyond the minute of leeway the
// error names the time check that failed.
func TestValidateJWTSVIDClockSkew(t *testing.T) {
	ks := newKeyset(t)
	kid := map[jose.HeaderKey]any{"kid": "k1"}
	at := func(skew time.Duration) string { // minted by a clock off by skew, 60 s TTL
		return sign(t, jose.ES256, ks.key, kid, claims(func(c map[string]any) {
			minted := time.Now().Add(skew)
			c["iat"], c["nbf"], c["exp"] = minted.Unix(), minted.Unix(), minted.Add(time.Minute).Unix()
		}))
	}
	for _, skew := range []time.Duration{30 * time.Second, -30 * time.Second} {
		if _, err := agent.ValidateJWTSVID(at(skew), ks.bundles, aud); err != nil {
			t.Errorf("minted %v off: %v", skew, err)
		}
	}
	if _, err := agent.ValidateJWTSVID(at(3*time.Minute), ks.bundles, aud); !errors.Is(err, jwt.ErrNotValidYet) && !errors.Is(err, jwt.ErrIssuedInTheFuture) {
		t.Errorf("minted 3m ahead: %v, want not valid yet", err)
	}
	if _, err := agent.ValidateJWTSVID(at(-3*time.Minute), ks.bundles, aud); !errors.Is(err, jwt.ErrExpired) {
		t.Errorf("minted 3m behind: %v, want expired", err)
	}
}

// TestValidateJWTSVIDHeaderMembers: a JOSE header with a member named twice,
// even in another case ({"alg":"ES256","Alg":"RS256"}), or a case variant of
// a member that must not be there, is refused, so that no reader of the
// header can see another algorithm, key or type than the one verified.
func TestValidateJWTSVIDHeaderMembers(t *testing.T) {
	ks := newKeyset(t)
	payload, _ := json.Marshal(claims(nil))
	if _, err := agent.ValidateJWTSVID(jwstest.Sign(t, "ES256", ks.key, `{"alg":"ES256","kid":"k1"}`, string(payload)), ks.bundles, aud); err != nil {
		t.Fatalf("the plain header: %v", err)
	}
	for _, hdr := range []string{
		`{"alg":"ES256","kid":"k1","Alg":"RS256"}`,
		`{"Alg":"RS256","alg":"ES256","kid":"k1"}`,
		`{"alg":"ES256","kid":"k1","aLg":"none"}`,
		`{"alg":"ES256","kid":"k1","KID":"k2"}`,
		`{"alg":"ES256","kid":"k1","typ":"JWT","Typ":"txntoken+jwt"}`,
		`{"alg":"ES256","kid":"k1","JKU":"https://evil.example/jwks"}`,
		`{"alg":"ES256","kid":"k1","X5u":"https://evil.example/cert"}`,
		`{"alg":"ES256","kid":"k1","crit":["exp"],"exp":1}`,
		`{"alg":"ES256","kid":"k1"}{}`,
	} {
		t.Run(hdr, func(t *testing.T) {
			tok := jwstest.Sign(t, "ES256", ks.key, hdr, string(payload))
			if svid, err := agent.ValidateJWTSVID(tok, ks.bundles, aud); err == nil {
				t.Fatalf("accepted, for %s", svid.ID)
			}
		})
	}
}

// TestJWTValidatorLeeway: the clock skew tolerated on exp, nbf and iat is a
// setting; the default is go-jose's minute, and it cannot be raised past it.
func TestJWTValidatorLeeway(t *testing.T) {
	ks := newKeyset(t)
	kid := map[jose.HeaderKey]any{"kid": "k1"}
	at := func(skew time.Duration) string { // minted by a clock off by skew, 60 s TTL
		return sign(t, jose.ES256, ks.key, kid, claims(func(c map[string]any) {
			minted := time.Now().Add(skew)
			c["iat"], c["nbf"], c["exp"] = minted.Unix(), minted.Unix(), minted.Add(time.Minute).Unix()
		}))
	}
	expired20s, early20s := at(-80*time.Second), at(20*time.Second)
	for _, tok := range []string{expired20s, early20s} {
		if _, err := (agent.JWTValidator{Bundles: ks.bundles}).Validate(tok, aud); err != nil {
			t.Errorf("default leeway, 20 s off: %v", err)
		}
	}
	strict := agent.JWTValidator{Bundles: ks.bundles, Leeway: 10 * time.Second}
	if _, err := strict.Validate(expired20s, aud); !errors.Is(err, jwt.ErrExpired) {
		t.Errorf("10 s leeway, expired 20 s ago: %v, want expired", err)
	}
	if _, err := strict.Validate(early20s, aud); !errors.Is(err, jwt.ErrNotValidYet) && !errors.Is(err, jwt.ErrIssuedInTheFuture) {
		t.Errorf("10 s leeway, minted 20 s ahead: %v, want not valid yet", err)
	}
	if _, err := strict.Validate(at(-65*time.Second), aud); err != nil {
		t.Errorf("10 s leeway, expired 5 s ago: %v", err)
	}
	lax := agent.JWTValidator{Bundles: ks.bundles, Leeway: time.Hour}
	if _, err := lax.Validate(at(-3*time.Minute), aud); !errors.Is(err, jwt.ErrExpired) {
		t.Errorf("a leeway of an hour, expired 2 minutes ago: %v, want expired (at most a minute)", err)
	}
}
