package agent

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"

	"github.com/credflow/credflow/internal/joseheader"
)

// MaxJWTSize bounds the tokens ValidateJWTSVID parses; larger ones are
// refused before any parsing.
const MaxJWTSize = 16 << 10

// ErrNoAudience is returned by ValidateJWTSVID when the expected audience is
// empty, or the token names no non-empty audience.
var ErrNoAudience = errors.New("agent: JWT-SVID audience missing or empty")

// ValidateJWTSVID validates token for audience against bundles with the
// default leeway: JWTValidator{Bundles: bundles}.Validate(token, audience).
func ValidateJWTSVID(token string, bundles jwtbundle.Source, audience string) (*jwtsvid.SVID, error) {
	return JWTValidator{Bundles: bundles}.Validate(token, audience)
}

// JWTValidator validates JWT-SVIDs. Its zero Leeway is the default.
type JWTValidator struct {
	// Bundles holds the JWT bundles, by trust domain.
	Bundles jwtbundle.Source
	// Leeway is the clock skew tolerated on exp, nbf and iat; default,
	// and at most, jwt.DefaultLeeway (a minute): go-spiffe checks the
	// times with that minute before this validator checks them with its
	// own.
	Leeway time.Duration
}

// Validate parses token, verifies its signature against the JWT bundle of
// the trust domain named by its subject, and checks its times and that its
// aud claim contains audience. Beyond the leeway, the error wraps
// jwt.ErrExpired, jwt.ErrNotValidYet or jwt.ErrIssuedInTheFuture.
//
// Unlike jwtsvid.ParseAndValidate, which skips the audience check when given
// no audience, an empty expected audience is an error here, and so is a
// token whose aud claim is missing or holds only empty strings.
func (v JWTValidator) Validate(token, audience string) (*jwtsvid.SVID, error) {
	return v.validate(token, audience, nil)
}

// validate is Validate. If pin is not nil, the signature is verified with
// the one key that v.Bundles held for the token's kid when go-spiffe asked
// for the bundle, and pin records that key (see pinnedKey).
func (v JWTValidator) validate(token, audience string, pin *pinnedKey) (*jwtsvid.SVID, error) {
	if audience == "" {
		return nil, ErrNoAudience
	}
	if len(token) > MaxJWTSize {
		return nil, fmt.Errorf("agent: invalid JWT-SVID: %d bytes, over the %d limit", len(token), MaxJWTSize)
	}
	// The one header check of every token (internal/joseheader): the
	// JWT-SVID algorithms only, no key or key location in the token
	// (jwk, jku, x5u, x5c), no crit, no member named twice in any case.
	hdr, err := joseheader.Parse(token, svidHeader)
	if err != nil {
		return nil, fmt.Errorf("agent: invalid JWT-SVID: %w", err)
	}
	var bundles jwtbundle.Source = v.Bundles
	if pin != nil {
		pin.bundles, pin.kid = v.Bundles, hdr.Kid
		bundles = pin
	}
	svid, err := jwtsvid.ParseAndValidate(token, bundles, []string{audience})
	if err != nil {
		// The time checks run after the signature's, with go-jose's
		// minute of leeway. go-spiffe turns jwt.ErrExpired into text;
		// turn it back so callers can name the reason.
		if strings.HasSuffix(err.Error(), "token has expired") {
			err = jwt.ErrExpired
		}
		return nil, fmt.Errorf("agent: invalid JWT-SVID: %w", err)
	}
	// ParseAndValidate accepted the audience; check it is really there,
	// so that this helper never depends on a library's empty-list rule.
	if !slices.Contains(svid.Audience, audience) {
		return nil, ErrNoAudience
	}
	if leeway := v.leeway(); leeway < jwt.DefaultLeeway {
		if err := checkTimes(svid.Claims, leeway, time.Now()); err != nil {
			return nil, fmt.Errorf("agent: invalid JWT-SVID: %w", err)
		}
	}
	return svid, nil
}

// leeway is the clock skew Validate tolerates: Leeway if it is set and
// under jwt.DefaultLeeway, else jwt.DefaultLeeway.
func (v JWTValidator) leeway() time.Duration {
	if v.Leeway > 0 && v.Leeway < jwt.DefaultLeeway {
		return v.Leeway
	}
	return jwt.DefaultLeeway
}

// checkTimes checks the exp, nbf and iat of verified claims with leeway.
func checkTimes(claims map[string]any, leeway time.Duration, now time.Time) error {
	date := func(name string) *jwt.NumericDate {
		f, ok := claims[name].(float64)
		if !ok {
			return nil
		}
		d := jwt.NumericDate(int64(f))
		return &d
	}
	c := jwt.Claims{Expiry: date("exp"), NotBefore: date("nbf"), IssuedAt: date("iat")}
	return c.ValidateWithLeeway(jwt.Expected{Time: now}, leeway)
}

// allowedAlgs are the JWT-SVID signature algorithms (the JWT-SVID
// specification's list; never "none" or HMAC).
var allowedAlgs = []jose.SignatureAlgorithm{
	jose.RS256, jose.RS384, jose.RS512, jose.ES256, jose.ES384, jose.ES512, jose.PS256, jose.PS384, jose.PS512,
}

// svidHeader is what a JWT-SVID header may carry. go-spiffe checks typ
// (absent, JWT or JOSE) and parses with the same algorithm list.
var svidHeader = joseheader.Policy{Algorithms: allowedAlgs, MaxSize: MaxJWTSize}
