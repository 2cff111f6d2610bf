// Package txn mints and verifies transaction tokens: short-lived JWTs that
// carry an external caller's identity through the mesh, in the spirit of the
// OAuth Transaction Tokens draft.
//
// A token is minted by a sidecar at the edge of the mesh, after it has
// validated an external credential. It is signed with the minting workload's
// X.509-SVID key and carries the SVID chain in its x5c header, so any
// sidecar can verify it with nothing but the SPIFFE X.509 trust bundles: no
// key distribution, no issuer to call. Its header type is txntoken+jwt and
// its claims are
//
//	iss      the minting workload's SPIFFE ID (also the x5c leaf's)
//	sub      the external subject
//	sub_iss  the external issuer
//	aud      the audience: the minter's trust domain (the default), or the
//	         SPIFFE IDs of the workloads that may accept it
//	act      {"sub": the calling workload's SPIFFE ID}
//	txn      a transaction id
//	scope    the external scopes narrowed by the minter's policy
//	jti, iat, exp
//
// A Verifier refuses a token whose chain does not verify against the bundle
// of its trust domain, whose signer its policy does not allow to mint, whose
// type, audience or lifetime is wrong, or whose header carries anything that
// would have to be fetched. A token is for a verifier when its aud names the
// verifying workload's SPIFFE ID or that workload's trust domain
// (spiffe://example.org): a token minted for the trust domain is accepted
// by every workload in it, one minted for a list of SPIFFE IDs only by those
// workloads.
//
// A transaction token is a bearer token inside the mesh: it is not bound to
// the mTLS peer that presents it (it crosses several hops unchanged), which
// is why it lives a minute by default and at most MaxTTL, is only accepted
// over mTLS from peers the route rules allow, can be narrowed to the next
// hops by its audience, and can be accepted once only by verifiers whose
// app never sees it presented twice (VerifyConfig.SingleUse).
package txn

import (
	"cmp"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/credflow/credflow/internal/joseheader"
	"github.com/credflow/credflow/reason"
	"github.com/credflow/credflow/token"
)

// Header is the HTTP header a transaction token travels in.
const Header = "Txn-Token"

// Type is the JOSE typ of a transaction token.
const Type = "txntoken+jwt"

// Limits.
const (
	// DefaultTTL is a token's lifetime when MintConfig.TTL is zero.
	DefaultTTL = time.Minute
	// MaxTTL is the longest lifetime a Minter mints and a Verifier
	// accepts (token.MaxTxnTTL, where the rule is declared for the
	// configuration too).
	MaxTTL = token.MaxTxnTTL
	// DefaultReplayCacheSize bounds a SingleUse verifier's record of the
	// tokens it accepted when VerifyConfig.ReplayCacheSize is zero.
	DefaultReplayCacheSize = 100_000
	// MaxSize bounds the tokens a Verifier parses.
	MaxSize = 16 << 10
)

// Claims are the claims of a transaction token.
type Claims struct {
	Issuer    string           `json:"iss"`
	Subject   string           `json:"sub"`
	SubjectIs string           `json:"sub_iss"`
	Audience  jwt.Audience     `json:"aud"`
	Actor     Actor            `json:"act"`
	Txn       string           `json:"txn"`
	Scope     string           `json:"scope,omitempty"`
	ID        string           `json:"jti"`
	IssuedAt  *jwt.NumericDate `json:"iat"`
	Expiry    *jwt.NumericDate `json:"exp"`
}

// Actor names the workload that acted on the subject's behalf.
type Actor struct {
	Subject string `json:"sub"`
}

// Request is what a minter is asked to put in a token.
type Request struct {
	// Subject and SubjectIssuer identify the external caller.
	Subject, SubjectIssuer string
	// Scopes are the external token's scopes; the minter keeps those its
	// policy allows.
	Scopes []string
	// Txn is the transaction id; a random one when empty.
	Txn string
}

// MintConfig is a minter's policy. The zero value mints 60-second tokens for
// the minter's trust domain with no scope.
type MintConfig struct {
	// TTL is the lifetime of a token; default DefaultTTL, at most MaxTTL.
	TTL time.Duration
	// Audiences is the aud claim: SPIFFE IDs of workloads (the next
	// hops), each of which accepts the token and no other does, or a
	// trust domain ("spiffe://example.org"), every workload of which
	// accepts it. Default the minter's trust domain. See token.CheckTxnAudiences.
	Audiences []string
	// Scopes are the scopes a token may carry: the external scopes are
	// narrowed to these. None means no scope is passed on.
	Scopes []string
}

// Minter mints transaction tokens signed with the workload's X.509-SVID.
type Minter struct {
	cfg  MintConfig
	svid x509svid.Source
	now  func() time.Time
}

// NewMinter returns a minter that signs with the current SVID from svids.
func NewMinter(svids x509svid.Source, cfg MintConfig) (*Minter, error) {
	if cfg.TTL == 0 {
		cfg.TTL = DefaultTTL
	}
	if cfg.TTL < 0 || cfg.TTL > MaxTTL {
		return nil, fmt.Errorf("txn: lifetime %v is outside (0, %v]", cfg.TTL, MaxTTL)
	}
	if len(cfg.Audiences) > 0 {
		if err := token.CheckTxnAudiences(cfg.Audiences); err != nil {
			return nil, fmt.Errorf("txn: %w", err)
		}
	}
	return &Minter{cfg: cfg, svid: svids, now: time.Now}, nil
}

// Mint returns a signed transaction token and its claims.
func (m *Minter) Mint(req Request) (string, *Claims, error) {
	if req.Subject == "" || req.SubjectIssuer == "" {
		return "", nil, errors.New("txn: a subject and its issuer are required")
	}
	svid, err := m.svid.GetX509SVID()
	if err != nil {
		return "", nil, fmt.Errorf("txn: no X.509-SVID to sign with: %w", err)
	}
	alg, err := algorithm(svid.PrivateKey)
	if err != nil {
		return "", nil, err
	}
	x5c := make([]string, len(svid.Certificates))
	for i, c := range svid.Certificates {
		x5c[i] = base64.StdEncoding.EncodeToString(c.Raw)
	}
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: alg, Key: svid.PrivateKey},
		(&jose.SignerOptions{}).WithType(Type).WithHeader(jose.HeaderKey("x5c"), x5c))
	if err != nil {
		return "", nil, fmt.Errorf("txn: %w", err)
	}
	now := m.now()
	aud := jwt.Audience(m.cfg.Audiences)
	if len(aud) == 0 {
		aud = jwt.Audience{svid.ID.TrustDomain().IDString()}
	}
	txnID := req.Txn
	if txnID == "" {
		txnID = randomID()
	}
	c := &Claims{
		Issuer:    svid.ID.String(),
		Subject:   req.Subject,
		SubjectIs: req.SubjectIssuer,
		Audience:  aud,
		Actor:     Actor{Subject: svid.ID.String()},
		Txn:       txnID,
		Scope:     strings.Join(narrow(req.Scopes, m.cfg.Scopes), " "),
		ID:        randomID(),
		IssuedAt:  jwt.NewNumericDate(now),
		Expiry:    jwt.NewNumericDate(now.Add(m.cfg.TTL)),
	}
	tok, err := jwt.Signed(signer).Claims(c).Serialize()
	if err != nil {
		return "", nil, fmt.Errorf("txn: %w", err)
	}
	return tok, c, nil
}

// narrow keeps the requested scopes the policy allows, in request order,
// without duplicates.
func narrow(requested, allowed []string) []string {
	var out []string
	for _, s := range requested {
		if slices.Contains(allowed, s) && !slices.Contains(out, s) {
			out = append(out, s)
		}
	}
	return out
}

func algorithm(key crypto.Signer) (jose.SignatureAlgorithm, error) {
	switch k := key.(type) {
	case *ecdsa.PrivateKey:
		switch k.Curve {
		case elliptic.P256():
			return jose.ES256, nil
		case elliptic.P384():
			return jose.ES384, nil
		}
	case *rsa.PrivateKey:
		return jose.PS256, nil
	}
	return "", fmt.Errorf("txn: cannot sign with a %T SVID key", key)
}

func randomID() string {
	b := make([]byte, 16)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// Error is a refusal with its reason.
type Error struct {
	Reason reason.Reason
	Err    error
}

func (e *Error) Error() string      { return "txn: " + string(e.Reason) + ": " + e.Err.Error() }
func (e *Error) Unwrap() error      { return e.Err }
func (e *Error) Why() reason.Reason { return e.Reason }

func refuse(r reason.Reason, format string, args ...any) error {
	return &Error{Reason: r, Err: fmt.Errorf(format, args...)}
}

// ReasonOf returns the reason of a refusal, or reason.TxnMalformed for any other
// error.
func ReasonOf(err error) reason.Reason {
	return cmp.Or(reason.Of(err), reason.TxnMalformed)
}

// Minters decides whether a workload may mint transaction tokens.
type Minters func(spiffeid.ID) bool

// VerifyConfig is a verifier's policy.
type VerifyConfig struct {
	// Minters says which workloads' tokens are accepted. Required: a
	// verifier without it refuses every token.
	Minters Minters
	// SingleUse accepts each token once: a verifier records the tokens
	// it accepted (by issuer and jti) until they expire, and refuses one
	// presented again. Use it where the app never passes the same token
	// to this workload twice; by default a token is accepted as often as
	// it is presented while it is valid, since an app may call the same
	// next hop several times for one external request.
	SingleUse bool
	// ReplayCacheSize bounds the SingleUse record; default
	// DefaultReplayCacheSize. A full record refuses new tokens
	// (txn_replay_cache_full) rather than forget one that may come back.
	ReplayCacheSize int
	// Leeway is the clock skew tolerated on iat and exp; default
	// jwt.DefaultLeeway (a minute).
	Leeway time.Duration
}

// Verifier verifies transaction tokens against the X.509 trust bundles.
// It is safe for concurrent use.
type Verifier struct {
	cfg     VerifyConfig
	bundles x509bundle.Source
	now     func() time.Time
	seen    *replayCache // nil unless SingleUse
}

// NewVerifier returns a verifier that trusts the minters of cfg whose chains
// verify against bundles.
func NewVerifier(bundles x509bundle.Source, cfg VerifyConfig) *Verifier {
	if cfg.Leeway <= 0 {
		cfg.Leeway = jwt.DefaultLeeway
	}
	if cfg.ReplayCacheSize <= 0 {
		cfg.ReplayCacheSize = DefaultReplayCacheSize
	}
	v := &Verifier{cfg: cfg, bundles: bundles, now: time.Now}
	if cfg.SingleUse {
		v.seen = newReplayCache(cfg.ReplayCacheSize)
	}
	return v
}

// signatureAlgs are the algorithms an SVID key signs with.
var signatureAlgs = []jose.SignatureAlgorithm{jose.ES256, jose.ES384, jose.PS256, jose.RS256}

// txnHeader is what a transaction token's header must and may carry: the
// SVID algorithms, typ txntoken+jwt and the signer's chain in x5c; never a
// key or a place to fetch one (jku, x5u, jwk), crit, or a member named
// twice in any case.
var txnHeader = joseheader.Policy{Algorithms: signatureAlgs, Type: Type, X5C: true, MaxSize: MaxSize}

// Verify checks token for the workload self and returns its claims and the
// minting workload. The token's aud must name self or self's trust domain.
func (v *Verifier) Verify(token string, self spiffeid.ID) (*Claims, spiffeid.ID, error) {
	var zero spiffeid.ID
	if len(token) > MaxSize {
		return nil, zero, refuse(reason.TxnMalformed, "%d bytes, over the %d limit", len(token), MaxSize)
	}
	h, err := joseheader.Parse(token, txnHeader)
	if err != nil {
		return nil, zero, refuse(reason.TxnBadHeader, "%w", err)
	}
	tok, err := jwt.ParseSigned(token, signatureAlgs)
	if err != nil {
		return nil, zero, refuse(reason.TxnBadHeader, "unparsable, or algorithm not allowed")
	}
	if len(h.X5C) == 0 || len(h.X5C) > 8 {
		return nil, zero, refuse(reason.TxnBadHeader, "x5c must hold the signer's chain")
	}
	chain := make([]*x509.Certificate, len(h.X5C))
	for i, s := range h.X5C {
		der, err := base64.StdEncoding.DecodeString(s)
		if err != nil {
			return nil, zero, refuse(reason.TxnBadChain, "x5c[%d] is not base64", i)
		}
		if chain[i], err = x509.ParseCertificate(der); err != nil {
			return nil, zero, refuse(reason.TxnBadChain, "x5c[%d] is not a certificate", i)
		}
	}
	minter, _, err := x509svid.Verify(chain, v.bundles)
	if err != nil {
		return nil, zero, refuse(reason.TxnBadChain, "%v", err)
	}
	if v.cfg.Minters == nil || !v.cfg.Minters(minter) {
		return nil, minter, refuse(reason.TxnNotMinter, "%s may not mint transaction tokens", minter)
	}
	var c Claims
	if err := tok.Claims(chain[0].PublicKey, &c); err != nil {
		return nil, minter, refuse(reason.TxnBadSignature, "signature does not verify with the x5c leaf")
	}
	switch {
	case c.Issuer != minter.String():
		return nil, minter, refuse(reason.TxnBadClaims, "iss is not the signer's SPIFFE ID")
	case c.Subject == "" || c.SubjectIs == "" || c.Txn == "" || c.ID == "" || c.Actor.Subject == "":
		return nil, minter, refuse(reason.TxnBadClaims, "sub, sub_iss, act.sub, txn and jti are required")
	case c.IssuedAt == nil || c.Expiry == nil:
		return nil, minter, refuse(reason.TxnBadClaims, "iat and exp are required")
	}
	if _, err := spiffeid.FromString(c.Actor.Subject); err != nil {
		return nil, minter, refuse(reason.TxnBadClaims, "act.sub is not a SPIFFE ID")
	}
	now := v.now()
	iat, exp := c.IssuedAt.Time(), c.Expiry.Time()
	switch {
	case !now.Before(exp.Add(v.cfg.Leeway)):
		return nil, minter, refuse(reason.TxnExpired, "expired")
	case now.Add(v.cfg.Leeway).Before(iat):
		return nil, minter, refuse(reason.TxnExpired, "issued in the future")
	case exp.Sub(iat) > MaxTTL || !iat.Before(exp):
		return nil, minter, refuse(reason.TxnExpired, "lifetime outside (0, %v]", MaxTTL)
	}
	if !c.Audience.Contains(self.String()) && !c.Audience.Contains(self.TrustDomain().IDString()) {
		return nil, minter, refuse(reason.TxnWrongAudience, "aud names neither %s nor its trust domain", self)
	}
	if v.seen != nil {
		err := v.seen.add(c.Issuer, c.ID, exp.Add(v.cfg.Leeway), now)
		switch {
		case errors.Is(err, errReplayed):
			return nil, minter, refuse(reason.TxnReplayed, "jti %s was accepted before", c.ID)
		case errors.Is(err, errFull):
			return nil, minter, refuse(reason.TxnReplayCacheFull, "%d unexpired tokens recorded", v.cfg.ReplayCacheSize)
		}
	}
	return &c, minter, nil
}
