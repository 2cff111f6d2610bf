package agent

import (
	"errors"
	"fmt"
	"slices"

	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
)

// ErrNoAudience is returned by ValidateJWTSVID when the expected audience is
// empty, or the token names no non-empty audience.
var ErrNoAudience = errors.New("agent: JWT-SVID audience missing or empty")

// ValidateJWTSVID parses token, verifies its signature against the JWT
// bundle of the trust domain named by its subject, and checks its expiry and
// that its aud claim contains audience.
//
// Unlike jwtsvid.ParseAndValidate, which skips the audience check when given
// no audience, an empty expected audience is an error here, and so is a
// token whose aud claim is missing or holds only empty strings.
func ValidateJWTSVID(token string, bundles jwtbundle.Source, audience string) (*jwtsvid.SVID, error) {
	if audience == "" {
		return nil, ErrNoAudience
	}
	svid, err := jwtsvid.ParseAndValidate(token, bundles, []string{audience})
	if err != nil {
		return nil, fmt.Errorf("agent: invalid JWT-SVID: %w", err)
	}
	// ParseAndValidate accepted the audience; check it is really there,
	// so that this helper never depends on a library's empty-list rule.
	if !slices.Contains(svid.Audience, audience) {
		return nil, ErrNoAudience
	}
	return svid, nil
}
