// Package edge validates external bearer tokens (OIDC ID or access tokens
// that are JWTs) at the edge of the mesh and exchanges them for transaction
// tokens.
//
// Each trusted issuer is configured with its audiences, the signature
// algorithms it may use, and its keys: a JWKS read from a file or fetched
// from an HTTPS URL. Keys are cached and read again on the issuer's refresh
// interval (sooner if the JWKS response's cache headers say so), so a key
// the issuer removes stops being trusted. A token signed with a key ID the
// cache does not know triggers a read too, at most once per MinRefresh, so
// a stream of tokens with made-up key IDs cannot turn the sidecar into a
// load generator against the identity provider. Nothing named in a token
// (jku, x5u, jwk) is ever fetched or used.
package edge

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"

	"github.com/credflow/credflow/internal/joseheader"
	"github.com/credflow/credflow/reason"
	"github.com/credflow/credflow/token"
	"github.com/credflow/credflow/token/txn"
)

// MaxTokenSize bounds the external tokens Validate parses.
const MaxTokenSize = 16 << 10

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

// Error is a refusal with its reason.
type Error struct {
	Reason reason.Reason
	Err    error
}

func (e *Error) Error() string      { return "edge: " + string(e.Reason) + ": " + e.Err.Error() }
func (e *Error) Unwrap() error      { return e.Err }
func (e *Error) Why() reason.Reason { return e.Reason }

func refuse(r reason.Reason, format string, args ...any) error {
	return &Error{Reason: r, Err: fmt.Errorf(format, args...)}
}

// ReasonOf returns the reason of a refusal, or reason.ExternalMalformed for any other
// error.
func ReasonOf(err error) reason.Reason {
	return cmp.Or(reason.Of(err), reason.ExternalMalformed)
}

// Subject is a validated external identity.
type Subject struct {
	Subject, Issuer string
	Scopes          []string
	Expiry          time.Time
}

// Validator validates external tokens against a set of issuers.
type Validator struct {
	issuers map[string]*trusted
	algs    []jose.SignatureAlgorithm // every algorithm an issuer may use
	leeway  time.Duration
	now     func() time.Time
}

// trusted is a configured Issuer, its algorithms as go-jose names them.
type trusted struct {
	name      string
	audiences []string
	algs      []jose.SignatureAlgorithm
	keys      *KeySet
}

// asymmetric are token.Algorithms as go-jose names them: the algorithms an
// issuer may be configured with.
var asymmetric = func() []jose.SignatureAlgorithm {
	algs := make([]jose.SignatureAlgorithm, len(token.Algorithms))
	for i, a := range token.Algorithms {
		algs[i] = jose.SignatureAlgorithm(a)
	}
	return algs
}()

// NewValidator returns a validator for issuers, which must have distinct
// Issuer values, audiences and keys. leeway is the clock skew tolerated on
// exp, nbf and iat; zero means jwt.DefaultLeeway (a minute).
func NewValidator(issuers []Issuer, leeway time.Duration) (*Validator, error) {
	if leeway <= 0 {
		leeway = jwt.DefaultLeeway
	}
	v := &Validator{issuers: map[string]*trusted{}, algs: asymmetric, leeway: leeway, now: time.Now}
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
		in := &trusted{name: is.Issuer, audiences: is.Audiences, keys: is.Keys}
		for _, a := range is.Algorithms {
			if err := token.CheckAlgorithm(a); err != nil {
				return nil, fmt.Errorf("edge: %w", err)
			}
			in.algs = append(in.algs, jose.SignatureAlgorithm(a))
		}
		v.issuers[is.Issuer] = in
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
		return nil, refuse(reason.ExternalMissing, "no token")
	}
	if len(token) > MaxTokenSize {
		return nil, refuse(reason.ExternalMalformed, "%d bytes, over the %d limit", len(token), MaxTokenSize)
	}
	// The header is checked before anything reads it, first against every
	// algorithm an issuer may be configured with (so none and HMAC are
	// refused before the claims are even decoded).
	hdr, err := checkHeader(token, v.algs)
	if err != nil {
		return nil, err
	}
	peekTok, err := jwt.ParseSigned(token, v.algs)
	if err != nil {
		return nil, refuse(reason.ExternalMalformed, "not a compact JWS")
	}
	// The issuer picks the keys and the algorithms, so read it before
	// verifying; nothing is trusted until the signature verifies with that
	// issuer's key.
	var peek claims
	if err := peekTok.UnsafeClaimsWithoutVerification(&peek); err != nil {
		return nil, refuse(reason.ExternalBadClaims, "claims do not parse")
	}
	is := v.issuers[peek.Issuer]
	if is == nil {
		return nil, refuse(reason.ExternalUnknownIssuer, "issuer is not trusted")
	}
	// From here on, only the issuer's own algorithms: the header, and the
	// parse whose signature is verified.
	if !slices.Contains(is.algs, hdr.Alg) {
		return nil, refuse(reason.ExternalBadAlg, "issuer %s does not sign with %s", is.name, hdr.Alg)
	}
	tok, err := jwt.ParseSigned(token, is.algs)
	if err != nil {
		return nil, refuse(reason.ExternalBadAlg, "issuer %s does not sign with %s", is.name, hdr.Alg)
	}
	key, err := is.keys.Key(ctx, hdr.Kid, string(hdr.Alg))
	if err != nil {
		return nil, refuse(reason.ExternalUnknownKey, "%v", err)
	}
	var c claims
	if err := tok.Claims(key.Key, &c); err != nil {
		return nil, refuse(reason.ExternalBadSignature, "signature does not verify")
	}
	now := v.now()
	switch {
	case c.Expiry == nil:
		return nil, refuse(reason.ExternalBadClaims, "exp is required")
	case c.Subject == "":
		return nil, refuse(reason.ExternalBadClaims, "sub is required")
	case c.Issuer != is.name:
		return nil, refuse(reason.ExternalBadClaims, "iss changed between reads")
	}
	if err := c.Claims.ValidateWithLeeway(jwt.Expected{Issuer: is.name, Time: now}, v.leeway); err != nil {
		return nil, refuse(reason.ExternalExpired, "%v", err)
	}
	if !slices.ContainsFunc(is.audiences, c.Audience.Contains) {
		return nil, refuse(reason.ExternalWrongAudience, "aud names none of the audiences configured for %s", is.name)
	}
	scopes := c.Scp
	if c.Scope != "" {
		scopes = strings.Fields(c.Scope)
	}
	return &Subject{Subject: c.Subject, Issuer: c.Issuer, Scopes: scopes, Expiry: c.Expiry.Time()}, nil
}

// checkHeader checks the protected header (internal/joseheader) against
// algs and classifies a refusal.
func checkHeader(token string, algs []jose.SignatureAlgorithm) (*joseheader.Header, error) {
	hdr, err := joseheader.Parse(token, joseheader.Policy{Algorithms: algs, MaxSize: MaxTokenSize})
	switch {
	case err == nil:
		return hdr, nil
	case errors.Is(err, joseheader.ErrAlgorithm):
		return nil, refuse(reason.ExternalBadAlg, "%w", err)
	case errors.Is(err, joseheader.ErrMember), errors.Is(err, joseheader.ErrType):
		return nil, refuse(reason.ExternalBadHeader, "%w", err)
	default:
		return nil, refuse(reason.ExternalMalformed, "%w", err)
	}
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
