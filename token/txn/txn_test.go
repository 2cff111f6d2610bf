package txn

import (
	"encoding/base64"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/credflow/credflow/internal/jwstest"
	"github.com/credflow/credflow/internal/testca"
	"github.com/credflow/credflow/reason"
)

var (
	td       = spiffeid.RequireTrustDomainFromString("example.org")
	edgeID   = spiffeid.RequireFromString("spiffe://example.org/edge")
	middleID = spiffeid.RequireFromString("spiffe://example.org/middle")
	// backendID is the verifying workload.
	backendID = spiffeid.RequireFromString("spiffe://example.org/backend")
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
	c, minter, err := f.verifier.Verify(tok, backendID)
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
	elsewhere, _ := NewMinter(staticSVID{f.ca.Issue(t, edgeID)}, MintConfig{Audiences: []string{"spiffe://other.org"}})
	expired, _ := NewMinter(staticSVID{f.ca.Issue(t, edgeID)}, MintConfig{})
	expired.now = func() time.Time { return time.Now().Add(-3 * time.Minute) }

	tok := good(f.edge)
	parts := strings.Split(tok, ".")
	tampered := parts[0] + "." + flip(parts[1]) + "." + parts[2]

	cases := []struct {
		name  string
		token string
		want  reason.Reason
	}{
		{"minted by a workload not allowed to mint", good(middle), reason.TxnNotMinter},
		{"chain from another CA", good(forged), reason.TxnBadChain},
		{"wrong audience", good(elsewhere), reason.TxnWrongAudience},
		{"expired", good(expired), reason.TxnExpired},
		{"payload changed", tampered, reason.TxnBadSignature},
		{"alg none", unsigned(t, tok), reason.TxnBadHeader},
		{"wrong typ", resign(t, f.ca.Issue(t, edgeID), map[string]any{"typ": "JWT"}, nil), reason.TxnBadHeader},
		{"jku header", resign(t, f.ca.Issue(t, edgeID), map[string]any{"jku": "https://attacker.example/jwks"}, nil), reason.TxnBadHeader},
		{"no x5c", resign(t, f.ca.Issue(t, edgeID), map[string]any{"x5c": nil}, nil), reason.TxnBadHeader},
		{"iss is not the signer", resign(t, f.ca.Issue(t, edgeID), nil, map[string]any{"iss": middleID.String()}), reason.TxnBadClaims},
		{"no sub", resign(t, f.ca.Issue(t, edgeID), nil, map[string]any{"sub": nil}), reason.TxnBadClaims},
		{"no exp", resign(t, f.ca.Issue(t, edgeID), nil, map[string]any{"exp": nil}), reason.TxnBadClaims},
		{"lives too long", resign(t, f.ca.Issue(t, edgeID), nil, map[string]any{"exp": time.Now().Add(time.Hour).Unix()}), reason.TxnExpired},
		{"oversized", strings.Repeat("a", MaxSize+1), reason.TxnMalformed},
		{"garbage", "not.a.token", reason.TxnBadHeader},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := f.verifier.Verify(tc.token, backendID)
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
		if _, _, err := v.Verify(good(f.edge), backendID); ReasonOf(err) != reason.TxnNotMinter {
			t.Fatalf("err %v, want %s", err, reason.TxnNotMinter)
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
		c, minter, err := v.Verify(s, backendID)
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
	if _, _, err := f.verifier.Verify(sign(`{"alg":"ES256","typ":"txntoken+jwt","x5c":X5C}`), backendID); err != nil {
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
			_, _, err := f.verifier.Verify(sign(hdr), backendID)
			if err == nil {
				t.Fatal("accepted")
			}
			if got := ReasonOf(err); got != reason.TxnBadHeader {
				t.Fatalf("reason %s (%v), want %s", got, err, reason.TxnBadHeader)
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
		if _, _, err := f.verifier.Verify(tok, backendID); err != nil {
			t.Errorf("default leeway, 45 s off: %v", err)
		}
		if _, _, err := strict.Verify(tok, backendID); ReasonOf(err) != reason.TxnExpired {
			t.Errorf("10 s leeway, 45 s off: %v, want %s", err, reason.TxnExpired)
		}
	}
}

// TestLifetimeCap: a transaction token lives at most MaxTTL, five minutes:
// a minter refuses a longer lifetime, a verifier a longer-lived token.
func TestLifetimeCap(t *testing.T) {
	f := newFixture(t)
	svid := f.ca.Issue(t, edgeID)
	if _, err := NewMinter(staticSVID{svid}, MintConfig{TTL: 6 * time.Minute}); err == nil {
		t.Error("a six-minute lifetime was accepted")
	}
	if _, err := NewMinter(staticSVID{svid}, MintConfig{TTL: 5 * time.Minute}); err != nil {
		t.Errorf("a five-minute lifetime: %v", err)
	}
	now := time.Now()
	for lifetime, want := range map[time.Duration]reason.Reason{5 * time.Minute: "", 6 * time.Minute: reason.TxnExpired} {
		tok := resign(t, svid, nil, map[string]any{"iat": now.Unix(), "exp": now.Add(lifetime).Unix()})
		_, _, err := f.verifier.Verify(tok, backendID)
		if (want == "" && err != nil) || (want != "" && ReasonOf(err) != want) {
			t.Errorf("a token living %v: %v, want %q", lifetime, err, want)
		}
	}
}

// TestAudience: a token minted for the trust domain is accepted by every
// verifier in it; one minted for a list of SPIFFE IDs (the next hops) only
// by those workloads.
func TestAudience(t *testing.T) {
	f := newFixture(t)
	svid := f.ca.Issue(t, edgeID)
	ordersID := spiffeid.RequireFromString("spiffe://example.org/orders")
	paymentsID := spiffeid.RequireFromString("spiffe://example.org/payments")
	mint := func(aud ...string) string {
		m, err := NewMinter(staticSVID{svid}, MintConfig{Audiences: aud})
		if err != nil {
			t.Fatal(err)
		}
		tok, _, err := m.Mint(Request{Subject: "alice", SubjectIssuer: "https://idp.example"})
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	cases := []struct {
		name   string
		token  string
		self   spiffeid.ID
		accept bool
	}{
		{"the trust domain, by default", mint(), paymentsID, true},
		{"the trust domain, named", mint("spiffe://example.org"), ordersID, true},
		{"the next hop", mint(ordersID.String()), ordersID, true},
		{"another workload than the next hop", mint(ordersID.String()), paymentsID, false},
		{"two next hops, the second", mint(ordersID.String(), paymentsID.String()), paymentsID, true},
		{"two next hops, another", mint(ordersID.String(), paymentsID.String()), backendID, false},
		{"another trust domain", mint("spiffe://other.org"), ordersID, false},
		{"the same path in another trust domain", mint("spiffe://other.org/orders"), ordersID, false},
		{"a workload, not the trust domain", resign(t, svid, nil, map[string]any{"aud": "spiffe://example.org/"}), ordersID, false},
		{"a prefix of the verifier's ID", resign(t, svid, nil, map[string]any{"aud": "spiffe://example.org/ord"}), ordersID, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := f.verifier.Verify(tc.token, tc.self)
			switch {
			case tc.accept && err != nil:
				t.Fatalf("refused: %v", err)
			case !tc.accept && ReasonOf(err) != reason.TxnWrongAudience:
				t.Fatalf("err %v, want %s", err, reason.TxnWrongAudience)
			}
		})
	}
	for _, aud := range [][]string{
		{"orders-api"},
		{""},
		{"https://example.org/orders"},
		{"spiffe://example.org", "spiffe://example.org/orders"},
		{ordersID.String(), ordersID.String()},
	} {
		if _, err := NewMinter(staticSVID{svid}, MintConfig{Audiences: aud}); err == nil {
			t.Errorf("audience %q accepted", aud)
		}
	}
}

// TestSingleUse: a verifier with SingleUse accepts each token once, until
// it expires; other verifiers keep their own record; the record is bounded
// and a full one refuses rather than forgets.
func TestSingleUse(t *testing.T) {
	f := newFixture(t)
	clock := time.Now()
	now := func() time.Time { return clock }
	f.edge.now = now
	mint := func() string {
		tok, _, err := f.edge.Mint(Request{Subject: "alice", SubjectIssuer: "https://idp.example"})
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	once := NewVerifier(f.bundles, VerifyConfig{Minters: onlyEdge, SingleUse: true, ReplayCacheSize: 2})
	once.now = now
	other := NewVerifier(f.bundles, VerifyConfig{Minters: onlyEdge, SingleUse: true})
	other.now = now
	f.verifier.now = now

	t1, t2 := mint(), mint()
	for i, v := range []*Verifier{once, once, other} {
		if _, _, err := v.Verify(t1, backendID); (i == 1) != (ReasonOf(err) == reason.TxnReplayed) || (i != 1 && err != nil) {
			t.Fatalf("presentation %d of the token: %v", i+1, err)
		}
	}
	for range 2 {
		if _, _, err := f.verifier.Verify(t1, backendID); err != nil {
			t.Fatalf("a verifier without SingleUse: %v", err)
		}
	}
	if _, _, err := once.Verify(t2, backendID); err != nil {
		t.Fatal(err)
	}
	if _, _, err := once.Verify(mint(), backendID); ReasonOf(err) != reason.TxnReplayCacheFull {
		t.Fatalf("a third token with room for two: %v, want %s", err, reason.TxnReplayCacheFull)
	}
	// Once t1 and t2 expire (and the leeway passes), their entries go:
	// they would be refused as expired anyway.
	clock = clock.Add(DefaultTTL + jwt.DefaultLeeway + time.Second)
	if _, _, err := once.Verify(t1, backendID); ReasonOf(err) != reason.TxnExpired {
		t.Fatalf("t1 after it expired: %v, want %s", err, reason.TxnExpired)
	}
	t3, t4 := mint(), mint()
	for _, tok := range []string{t3, t4} {
		if _, _, err := once.Verify(tok, backendID); err != nil {
			t.Fatalf("after the first tokens expired: %v", err)
		}
	}
	if _, _, err := once.Verify(t3, backendID); ReasonOf(err) != reason.TxnReplayed {
		t.Fatalf("t3 again: %v, want %s", err, reason.TxnReplayed)
	}
}

// TestSingleUseConcurrent: of many concurrent presentations of one token,
// exactly one is accepted.
func TestSingleUseConcurrent(t *testing.T) {
	f := newFixture(t)
	tok, _, err := f.edge.Mint(Request{Subject: "alice", SubjectIssuer: "https://idp.example"})
	if err != nil {
		t.Fatal(err)
	}
	v := NewVerifier(f.bundles, VerifyConfig{Minters: onlyEdge, SingleUse: true})
	const n = 16
	errs := make(chan error, n)
	for range n {
		go func() { _, _, err := v.Verify(tok, backendID); errs <- err }()
	}
	accepted := 0
	for range n {
		switch err := <-errs; {
		case err == nil:
			accepted++
		case ReasonOf(err) != reason.TxnReplayed:
			t.Errorf("err %v, want %s", err, reason.TxnReplayed)
		}
	}
	if accepted != 1 {
		t.Fatalf("%d of %d presentations accepted, want 1", accepted, n)
	}
}
