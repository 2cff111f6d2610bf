package txn

import (
	"encoding/base64"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/credflow/credflow/internal/jwstest"
	"github.com/credflow/credflow/internal/testca"
)

var (
	td       = spiffeid.RequireTrustDomainFromString("example.org")
	edgeID   = spiffeid.RequireFromString("spiffe://example.org/edge")
	middleID = spiffeid.RequireFromString("spiffe://example.org/middle")
)

type staticSVID struct{ svid *x509svid.SVID }

func (s staticSVID) GetX509SVID() (*x509svid.SVID, error) { return s.svid, nil }

func onlyEdge(id spiffeid.ID) bool { return id == edgeID }

type fixture struct {
	ca       *testca.CA
	bundles  *x509bundle.Set
	edge     *Minter
	verifier *Verifier
}

func newFixture(t *testing.T) fixture {
	ca := testca.New(t, td)
	m, err := NewMinter(staticSVID{ca.Issue(t, edgeID)}, MintConfig{Scopes: []string{"orders.read"}})
	if err != nil {
		t.Fatal(err)
	}
	bundles := x509bundle.NewSet(ca.Bundle())
	return fixture{ca: ca, bundles: bundles, edge: m, verifier: NewVerifier(bundles, VerifyConfig{Minters: onlyEdge})}
}

func TestMintVerify(t *testing.T) {
	f := newFixture(t)
	tok, minted, err := f.edge.Mint(Request{Subject: "alice", SubjectIssuer: "https://idp.example", Scopes: []string{"orders.read", "orders.delete", "orders.read"}})
	if err != nil {
		t.Fatal(err)
	}
	c, minter, err := f.verifier.Verify(tok, td)
	if err != nil {
		t.Fatal(err)
	}
	if minter != edgeID || c.Issuer != edgeID.String() || c.Actor.Subject != edgeID.String() {
		t.Errorf("minter %s, iss %s, act %s; want %s", minter, c.Issuer, c.Actor.Subject, edgeID)
	}
	if c.Subject != "alice" || c.SubjectIs != "https://idp.example" || c.Txn == "" || c.ID != minted.ID {
		t.Errorf("claims %+v", c)
	}
	if c.Scope != "orders.read" {
		t.Errorf("scope %q: want the request narrowed to the policy, once", c.Scope)
	}
	if !c.Audience.Contains("spiffe://example.org") {
		t.Errorf("aud %v: want the trust domain", c.Audience)
	}
	if got := c.Expiry.Time().Sub(c.IssuedAt.Time()); got != DefaultTTL {
		t.Errorf("lifetime %v, want %v", got, DefaultTTL)
	}
	hdr := decodeHeader(t, tok)
	if hdr["typ"] != Type || hdr["alg"] != "ES256" {
		t.Errorf("header %v", hdr)
	}
}

func TestVerifyRefuses(t *testing.T) {
	f := newFixture(t)
	good := func(m *Minter) string {
		tok, _, err := m.Mint(Request{Subject: "alice", SubjectIssuer: "https://idp.example"})
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	middle, _ := NewMinter(staticSVID{f.ca.Issue(t, middleID)}, MintConfig{})
	other := testca.New(t, td) // same trust domain name, another CA
	forged, _ := NewMinter(staticSVID{other.Issue(t, edgeID)}, MintConfig{})
	elsewhere, _ := NewMinter(staticSVID{f.ca.Issue(t, edgeID)}, MintConfig{Audience: "spiffe://other.org"})
	expired, _ := NewMinter(staticSVID{f.ca.Issue(t, edgeID)}, MintConfig{})
	expired.now = func() time.Time { return time.Now().Add(-2 * time.Minute) }

	tok := good(f.edge)
	parts := strings.Split(tok, ".")
	tampered := parts[0] + "." + flip(parts[1]) + "." + parts[2]

	cases := []struct {
		name  string
		token string
		want  Reason
	}{
		{"minted by a workload not allowed to mint", good(middle), ReasonMinter},
		{"chain from another CA", good(forged), ReasonChain},
		{"wrong audience", good(elsewhere), ReasonAudience},
		{"expired", good(expired), ReasonExpired},
		{"payload changed", tampered, ReasonSignature},
		{"alg none", unsigned(t, tok), ReasonHeader},
		{"wrong typ", resign(t, f.ca.Issue(t, edgeID), map[string]any{"typ": "JWT"}, nil), ReasonHeader},
		{"jku header", resign(t, f.ca.Issue(t, edgeID), map[string]any{"jku": "https://attacker.example/jwks"}, nil), ReasonHeader},
		{"no x5c", resign(t, f.ca.Issue(t, edgeID), map[string]any{"x5c": nil}, nil), ReasonHeader},
		{"iss is not the signer", resign(t, f.ca.Issue(t, edgeID), nil, map[string]any{"iss": middleID.String()}), ReasonClaims},
		{"no sub", resign(t, f.ca.Issue(t, edgeID), nil, map[string]any{"sub": nil}), ReasonClaims},
		{"no exp", resign(t, f.ca.Issue(t, edgeID), nil, map[string]any{"exp": nil}), ReasonClaims},
		{"lives too long", resign(t, f.ca.Issue(t, edgeID), nil, map[string]any{"exp": time.Now().Add(time.Hour).Unix()}), ReasonExpired},
		{"oversized", strings.Repeat("a", MaxSize+1), ReasonMalformed},
		{"garbage", "not.a.token", ReasonHeader},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := f.verifier.Verify(tc.token, td)
			if err == nil {
				t.Fatal("accepted")
			}
			if got := ReasonOf(err); got != tc.want {
				t.Fatalf("reason %s (%v), want %s", got, err, tc.want)
			}
		})
	}
	t.Run("no minters configured", func(t *testing.T) {
		v := NewVerifier(f.bundles, VerifyConfig{})
		if _, _, err := v.Verify(good(f.edge), td); ReasonOf(err) != ReasonMinter {
			t.Fatalf("err %v, want %s", err, ReasonMinter)
		}
	})
}

func TestMintConfig(t *testing.T) {
	ca := testca.New(t, td)
	if _, err := NewMinter(staticSVID{ca.Issue(t, edgeID)}, MintConfig{TTL: time.Hour}); err == nil {
		t.Error("a one-hour lifetime was accepted")
	}
	m, _ := NewMinter(staticSVID{ca.Issue(t, edgeID)}, MintConfig{})
	if _, _, err := m.Mint(Request{Subject: "alice"}); err == nil {
		t.Error("a token without sub_iss was minted")
	}
}

// resign mints a token for svid with the standard header and claims, then
// changes the given header members and claims (nil deletes).
func resign(t *testing.T, svid *x509svid.SVID, hdr, claims map[string]any) string {
	t.Helper()
	now := time.Now()
	c := map[string]any{
		"iss": svid.ID.String(), "sub": "alice", "sub_iss": "https://idp.example", "aud": td.IDString(),
		"act": map[string]any{"sub": svid.ID.String()}, "txn": "t1", "jti": "j1",
		"iat": now.Unix(), "exp": now.Add(time.Minute).Unix(),
	}
	for k, v := range claims {
		if v == nil {
			delete(c, k)
		} else {
			c[k] = v
		}
	}
	x5c := []string{base64.StdEncoding.EncodeToString(svid.Certificates[0].Raw)}
	h := map[string]any{"typ": Type, "x5c": x5c}
	for k, v := range hdr {
		if v == nil {
			delete(h, k)
		} else {
			h[k] = v
		}
	}
	opts := &jose.SignerOptions{}
	for k, v := range h {
		opts.WithHeader(jose.HeaderKey(k), v)
	}
	s, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: svid.PrivateKey}, opts)
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

// unsigned rewrites tok's header to alg "none" and drops the signature.
func unsigned(t *testing.T, tok string) string {
	hdr := decodeHeader(t, tok)
	hdr["alg"] = "none"
	raw, _ := json.Marshal(hdr)
	parts := strings.Split(tok, ".")
	return base64.RawURLEncoding.EncodeToString(raw) + "." + parts[1] + "."
}

func decodeHeader(t *testing.T, tok string) map[string]any {
	t.Helper()
	enc, _, _ := strings.Cut(tok, ".")
	raw, err := base64.RawURLEncoding.DecodeString(enc)
	if err != nil {
		t.Fatal(err)
	}
	var h map[string]any
	if err := json.Unmarshal(raw, &h); err != nil {
		t.Fatal(err)
	}
	return h
}

// flip changes the subject claim of a base64url payload.
func flip(payload string) string {
	raw, _ := base64.RawURLEncoding.DecodeString(payload)
	raw = []byte(strings.Replace(string(raw), `"alice"`, `"mallory"`, 1))
	return base64.RawURLEncoding.EncodeToString(raw)
}

func FuzzVerify(f *testing.F) {
	ca := testca.New(f, td)
	m, _ := NewMinter(staticSVID{ca.Issue(f, edgeID)}, MintConfig{})
	tok, minted, err := m.Mint(Request{Subject: "alice", SubjectIssuer: "https://idp.example"})
	if err != nil {
		f.Fatal(err)
	}
	f.Add(tok)
	f.Add("")
	f.Add("e30.e30.")
	f.Add("eyJhbGciOiJub25lIn0.e30.")
	v := NewVerifier(x509bundle.NewSet(ca.Bundle()), VerifyConfig{Minters: onlyEdge})
	f.Fuzz(func(t *testing.T, s string) {
		c, minter, err := v.Verify(s, td)
		if err == nil && (c == nil || minter != edgeID) {
			t.Fatalf("accepted a token without a verified minter: %q", s)
		}
		// The signature covers the header and payload bytes, so whatever
		// verifies carries the minted claims.
		if err == nil && (c.Subject != "alice" || c.Txn != minted.Txn) {
			t.Fatalf("accepted changed claims %+v from %q", c, s)
		}
	})
}

// TestVerifyHeaderMembers: a member named twice, in any case, is refused,
// so no reader of the header sees another algorithm or type than the one
// checked ({"typ":"JWT","Typ":"txntoken+jwt"} is not a transaction token).
func TestVerifyHeaderMembers(t *testing.T) {
	f := newFixture(t)
	svid := f.ca.Issue(t, edgeID)
	x5c, _ := json.Marshal([]string{base64.StdEncoding.EncodeToString(svid.Certificates[0].Raw)})
	now := time.Now()
	payload, _ := json.Marshal(map[string]any{
		"iss": edgeID.String(), "sub": "alice", "sub_iss": "https://idp.example", "aud": td.IDString(),
		"act": map[string]any{"sub": edgeID.String()}, "txn": "t1", "jti": "j1",
		"iat": now.Unix(), "exp": now.Add(time.Minute).Unix(),
	})
	sign := func(hdr string) string {
		return jwstest.Sign(t, "ES256", svid.PrivateKey, strings.ReplaceAll(hdr, "X5C", string(x5c)), string(payload))
	}
	if _, _, err := f.verifier.Verify(sign(`{"alg":"ES256","typ":"txntoken+jwt","x5c":X5C}`), td); err != nil {
		t.Fatalf("the plain header: %v", err)
	}
	for _, hdr := range []string{
		`{"alg":"ES256","typ":"txntoken+jwt","x5c":X5C,"Alg":"RS256"}`,
		`{"alg":"ES256","typ":"JWT","x5c":X5C,"Typ":"txntoken+jwt"}`,
		`{"alg":"ES256","Typ":"JWT","typ":"txntoken+jwt","x5c":X5C}`,
		`{"alg":"ES256","typ":"txntoken+jwt","x5c":X5C,"X5c":["AAAA"]}`,
		`{"alg":"ES256","typ":"txntoken+jwt","x5c":X5C,"JKU":"https://evil.example/jwks"}`,
	} {
		t.Run(hdr, func(t *testing.T) {
			_, _, err := f.verifier.Verify(sign(hdr), td)
			if err == nil {
				t.Fatal("accepted")
			}
			if got := ReasonOf(err); got != ReasonHeader {
				t.Fatalf("reason %s (%v), want %s", got, err, ReasonHeader)
			}
		})
	}
}

// TestVerifyLeeway: the clock skew tolerated on iat and exp is a setting,
// by default go-jose's minute.
func TestVerifyLeeway(t *testing.T) {
	f := newFixture(t)
	svid := f.ca.Issue(t, edgeID)
	now := time.Now()
	expired := resign(t, svid, nil, map[string]any{"iat": now.Add(-105 * time.Second).Unix(), "exp": now.Add(-45 * time.Second).Unix()})
	early := resign(t, svid, nil, map[string]any{"iat": now.Add(45 * time.Second).Unix(), "exp": now.Add(105 * time.Second).Unix()})
	strict := NewVerifier(f.bundles, VerifyConfig{Minters: onlyEdge, Leeway: 10 * time.Second})
	for _, tok := range []string{expired, early} {
		if _, _, err := f.verifier.Verify(tok, td); err != nil {
			t.Errorf("default leeway, 45 s off: %v", err)
		}
		if _, _, err := strict.Verify(tok, td); ReasonOf(err) != ReasonExpired {
			t.Errorf("10 s leeway, 45 s off: %v, want %s", err, ReasonExpired)
		}
	}
}
