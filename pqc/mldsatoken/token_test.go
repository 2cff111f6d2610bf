package mldsatoken

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/credflow/credflow/internal/testca"
)

var td = spiffeid.RequireTrustDomainFromString("example.org")

func claims(aud string) Claims {
	now := time.Now()
	return Claims{Subject: "user-42", Audience: []string{aud}, IssuedAt: now.Unix(), Expiry: now.Add(time.Minute).Unix(), ID: "j1", Txn: "t1"}
}

func TestRoundTripAndRefusals(t *testing.T) {
	ca := testca.New(t, td)
	bundles := x509bundle.NewSet(ca.Bundle())
	edge := spiffeid.RequireFromPath(td, "/edge")
	signer, err := NewSigner(ca.Issue(t, edge), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	const aud = "spiffe://example.org/backend"
	tok, err := signer.Sign(claims(aud))
	if err != nil {
		t.Fatal(err)
	}
	got, err := Verify(tok, bundles, aud, time.Now())
	if err != nil {
		t.Fatalf("round trip: %v", err)
	}
	if got.Issuer != edge.String() || got.Subject != "user-42" || got.Txn != "t1" {
		t.Fatalf("claims = %+v", got)
	}

	other, err := NewSigner(ca.Issue(t, spiffeid.RequireFromPath(td, "/other")), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	otherTok, _ := other.Sign(claims(aud))
	parts := strings.Split(tok, ".")
	otherParts := strings.Split(otherTok, ".")

	// A token whose header carries edge's binding but is signed with
	// other's ML-DSA key: the key does not match the binding.
	mismatched := func() string {
		s := &Signer{id: edge, key: other.key, binding: signer.binding}
		tk, _ := s.Sign(claims(aud))
		return tk
	}()
	// A binding re-signed with a key that is not the SVID's.
	forgedBinding := func() string {
		bp := strings.Split(signer.binding, ".")
		k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		forged := &Signer{id: edge, key: signer.key, binding: bp[0] + "." + bp[1] + "." + esSign(t, k, bp[0]+"."+bp[1])}
		tk, _ := forged.Sign(claims(aud))
		return tk
	}()
	foreign := func() string {
		s, err := NewSigner(testca.New(t, td).Issue(t, edge), time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		tk, _ := s.Sign(claims(aud))
		return tk
	}()
	expired := func() string {
		c := claims(aud)
		c.Expiry = time.Now().Add(-time.Second).Unix()
		tk, _ := signer.Sign(c)
		return tk
	}()
	algES256 := func() string {
		h, _ := json.Marshal(map[string]any{"alg": "ES256", "typ": Type, "x5b": signer.binding})
		return base64.RawURLEncoding.EncodeToString(h) + "." + parts[1] + "." + parts[2]
	}()

	tests := []struct {
		name  string
		token string
		aud   string
		want  error
	}{
		{"tampered payload", parts[0] + "." + otherParts[1] + "." + parts[2], aud, ErrSignature},
		{"key not the bound one", mismatched, aud, ErrSignature},
		{"binding not signed by the SVID", forgedBinding, aud, ErrBinding},
		{"chain from another CA", foreign, aud, ErrBinding},
		{"expired", expired, aud, ErrClaims},
		{"another audience", tok, "spiffe://example.org/elsewhere", ErrClaims},
		{"empty audience", tok, "", ErrClaims},
		{"alg ES256", algES256, aud, ErrAlg},
		{"two parts", parts[0] + "." + parts[1], aud, ErrMalformed},
		{"huge", strings.Repeat("a", MaxTokenSize+1), aud, ErrMalformed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := Verify(tt.token, bundles, tt.aud, time.Now()); !errors.Is(err, tt.want) {
				t.Fatalf("err = %v, want %v", err, tt.want)
			}
		})
	}
	// After the binding's expiry (the SVID's), even a fresh token is refused.
	if _, err := Verify(tok, bundles, aud, time.Now().Add(2*time.Hour)); !errors.Is(err, ErrBinding) && !errors.Is(err, ErrClaims) {
		t.Fatalf("after the SVID expired: %v", err)
	}
}

func esSign(t *testing.T, k *ecdsa.PrivateKey, input string) string {
	t.Helper()
	s, err := esSignForTest(k, input)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func FuzzVerify(f *testing.F) {
	f.Add("a.b.c")
	f.Add("eyJhbGciOiJNTC1EU0EtNjUifQ.e30.AA")
	f.Add(strings.Repeat(".", 100))
	ca := testca.New(f, td)
	bundles := x509bundle.NewSet(ca.Bundle())
	f.Fuzz(func(t *testing.T, token string) {
		if c, err := Verify(token, bundles, "aud", time.Now()); err == nil {
			t.Fatalf("a fuzzed token verified: %+v", c)
		}
	})
}
