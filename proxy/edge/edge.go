// Package edge validates external bearer tokens (OIDC ID or access tokens
// that are JWTs) at the edge of the mesh and exchanges them for transaction
// tokens.
//
// Each trusted issuer is configured with its audiences, the signature
// algorithms it may use, and its keys: a JWKS read from a file or fetched
// from an HTTPS URL. Keys are cached; a token signed with a key ID the cache
// does not know triggers a refresh, at most once per refresh interval, so a
// stream of tokens with made-up key IDs cannot turn the sidecar into a load
// generator against the identity provider. Nothing named in a token (jku,
// x5u, jwk) is ever fetched or used.
package edge

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"

	"github.com/credflow/credflow/proxy/txn"
)

// MaxTokenSize bounds the external tokens Validate parses.
const MaxTokenSize = 16 << 10

// DefaultSkew is the clock skew tolerated on exp, nbf and iat.
const DefaultSkew = 30 * time.Second

// Issuer is a trusted external issuer.
type Issuer struct {
	// Issuer is the exact iss value of its tokens.
	Issuer string
	// Audiences are the aud values accepted; a token must name at least
	// one. Required.
	Audiences []string
	// Algorithms are the signature algorithms accepted; default RS256 and
	// ES256. "none" and HMAC are never accepted.
	Algorithms []string
	// Keys holds the issuer's JWKS.
	Keys *KeySet
}

// Reason classifies a refused external token. Its values are metric labels.
type Reason string

// Refusal reasons.
const (
	ReasonMissing   Reason = "external_missing"   // no bearer token
	ReasonMalformed Reason = "external_malformed" // not a compact JWS, or over MaxTokenSize
	ReasonAlg       Reason = "external_bad_alg"   // an algorithm the issuer may not use, or none
	ReasonHeader    Reason = "external_bad_header"
	ReasonIssuer    Reason = "external_unknown_issuer"
	ReasonKey       Reason = "external_unknown_key"
	ReasonSignature Reason = "external_bad_signature"
	ReasonExpired   Reason = "external_expired" // expired, or not yet valid
	ReasonAudience  Reason = "external_wrong_audience"
	ReasonClaims    Reason = "external_bad_claims"
)

// Error is a refusal with its reason.
type Error struct {
	Reason Reason
	Err    error
}

func (e *Error) Error() string { return "edge: " + string(e.Reason) + ": " + e.Err.Error() }
func (e *Error) Unwrap() error { return e.Err }

func refuse(r Reason, format string, args ...any) error {
	return &Error{Reason: r, Err: fmt.Errorf(format, args...)}
}

// ReasonOf returns the reason of a refusal, or ReasonMalformed for any other
// error.
func ReasonOf(err error) Reason {
	var e *Error
	if errors.As(err, &e) {
		return e.Reason
	}
	return ReasonMalformed
}

// Subject is a validated external identity.
type Subject struct {
	Subject, Issuer string
	Scopes          []string
	Expiry          time.Time
}

// Validator validates external tokens against a set of issuers.
type Validator struct {
	issuers map[string]*Issuer
	skew    time.Duration
	now     func() time.Time
}

// hmac and none are never accepted, whatever the configuration says.
var allowed = map[string]jose.SignatureAlgorithm{
	"RS256": jose.RS256, "RS384": jose.RS384, "RS512": jose.RS512,
	"PS256": jose.PS256, "PS384": jose.PS384, "PS512": jose.PS512,
	"ES256": jose.ES256, "ES384": jose.ES384, "ES512": jose.ES512,
	"EdDSA": jose.EdDSA,
}

// CheckAlgorithm reports whether name is an algorithm an issuer may be
// configured with.
func CheckAlgorithm(name string) error {
	if _, ok := allowed[name]; !ok {
		return fmt.Errorf("edge: %q is not an asymmetric JWS algorithm (RS*, PS*, ES*, EdDSA)", name)
	}
	return nil
}

// NewValidator returns a validator for issuers, which must have distinct
// Issuer values, audiences and keys.
func NewValidator(issuers []Issuer) (*Validator, error) {
	v := &Validator{issuers: map[string]*Issuer{}, skew: DefaultSkew, now: time.Now}
	for i := range issuers {
		is := issuers[i]
		switch {
		case is.Issuer == "":
			return nil, errors.New("edge: an issuer needs its iss value")
		case len(is.Audiences) == 0:
			return nil, fmt.Errorf("edge: issuer %s needs at least one audience", is.Issuer)
		case is.Keys == nil:
			return nil, fmt.Errorf("edge: issuer %s needs keys", is.Issuer)
		case v.issuers[is.Issuer] != nil:
			return nil, fmt.Errorf("edge: issuer %s is configured twice", is.Issuer)
		}
		if len(is.Algorithms) == 0 {
			is.Algorithms = []string{"RS256", "ES256"}
		}
		for _, a := range is.Algorithms {
			if err := CheckAlgorithm(a); err != nil {
				return nil, err
			}
		}
		v.issuers[is.Issuer] = &is
	}
	return v, nil
}

// claims are the registered claims read from an external token, plus the
// two usual ways of carrying scopes.
type claims struct {
	jwt.Claims
	Scope string   `json:"scope"`
	Scp   []string `json:"scp"`
}

// Validate checks an external token and returns its subject.
func (v *Validator) Validate(ctx context.Context, token string) (*Subject, error) {
	if token == "" {
		return nil, refuse(ReasonMissing, "no token")
	}
	if len(token) > MaxTokenSize {
		return nil, refuse(ReasonMalformed, "%d bytes, over the %d limit", len(token), MaxTokenSize)
	}
	hdr, err := parseHeader(token)
	if err != nil {
		return nil, err
	}
	algs := make([]jose.SignatureAlgorithm, 0, len(allowed))
	for _, a := range allowed {
		algs = append(algs, a)
	}
	tok, err := jwt.ParseSigned(token, algs)
	if err != nil {
		if _, ok := allowed[hdr.Alg]; !ok {
			return nil, refuse(ReasonAlg, "algorithm %q is never accepted", hdr.Alg)
		}
		return nil, refuse(ReasonMalformed, "not a compact JWS")
	}
	// The issuer picks the keys, so read it before verifying; nothing is
	// trusted until the signature verifies with that issuer's key.
	var peek claims
	if err := tok.UnsafeClaimsWithoutVerification(&peek); err != nil {
		return nil, refuse(ReasonClaims, "claims do not parse")
	}
	is := v.issuers[peek.Issuer]
	if is == nil {
		return nil, refuse(ReasonIssuer, "issuer is not trusted")
	}
	if !slices.Contains(is.Algorithms, hdr.Alg) {
		return nil, refuse(ReasonAlg, "issuer %s does not sign with %s", is.Issuer, hdr.Alg)
	}
	key, err := is.Keys.Key(ctx, hdr.Kid, hdr.Alg)
	if err != nil {
		return nil, refuse(ReasonKey, "%v", err)
	}
	var c claims
	if err := tok.Claims(key.Key, &c); err != nil {
		return nil, refuse(ReasonSignature, "signature does not verify")
	}
	now := v.now()
	switch {
	case c.Expiry == nil:
		return nil, refuse(ReasonClaims, "exp is required")
	case c.Subject == "":
		return nil, refuse(ReasonClaims, "sub is required")
	case c.Issuer != is.Issuer:
		return nil, refuse(ReasonClaims, "iss changed between reads")
	}
	if err := c.Claims.ValidateWithLeeway(jwt.Expected{Issuer: is.Issuer, Time: now}, v.skew); err != nil {
		return nil, refuse(ReasonExpired, "%v", err)
	}
	if !slices.ContainsFunc(is.Audiences, c.Audience.Contains) {
		return nil, refuse(ReasonAudience, "aud names none of the audiences configured for %s", is.Issuer)
	}
	scopes := c.Scp
	if c.Scope != "" {
		scopes = strings.Fields(c.Scope)
	}
	return &Subject{Subject: c.Subject, Issuer: c.Issuer, Scopes: scopes, Expiry: c.Expiry.Time()}, nil
}

type header struct {
	Alg string `json:"alg"`
	Kid string `json:"kid"`
}

// parseHeader reads alg and kid, and refuses headers that name keys or
// places to fetch them, or critical extensions.
func parseHeader(token string) (*header, error) {
	encoded, _, ok := strings.Cut(token, ".")
	if !ok {
		return nil, refuse(ReasonMalformed, "not a compact JWS")
	}
	raw, err := base64.RawURLEncoding.DecodeString(encoded)
	if err != nil {
		return nil, refuse(ReasonMalformed, "unparsable header")
	}
	var members map[string]json.RawMessage
	if err := json.Unmarshal(raw, &members); err != nil {
		return nil, refuse(ReasonMalformed, "unparsable header")
	}
	for _, k := range []string{"jku", "x5u", "jwk", "x5c", "crit"} {
		if _, ok := members[k]; ok {
			return nil, refuse(ReasonHeader, "header %q is not accepted", k)
		}
	}
	var h header
	if err := json.Unmarshal(raw, &h); err != nil {
		return nil, refuse(ReasonMalformed, "unparsable alg or kid")
	}
	return &h, nil
}

// Exchanger validates an external token and mints a transaction token for
// its subject.
type Exchanger struct {
	v *Validator
	m *txn.Minter
}

// NewExchanger returns an exchanger that validates with v and mints with m.
func NewExchanger(v *Validator, m *txn.Minter) *Exchanger {
	return &Exchanger{v: v, m: m}
}

// Exchange validates external and returns a transaction token for its
// subject. A refusal is an *Error; a failure to mint is not.
func (x *Exchanger) Exchange(ctx context.Context, external string) (string, *txn.Claims, error) {
	sub, err := x.v.Validate(ctx, external)
	if err != nil {
		return "", nil, err
	}
	return x.m.Mint(txn.Request{Subject: sub.Subject, SubjectIssuer: sub.Issuer, Scopes: sub.Scopes})
}
