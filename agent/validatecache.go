package agent

import (
	"crypto"
	"crypto/sha256"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
)

// DefaultJWTValidationCacheMax is how many validated tokens a
// JWTValidationCache keeps when its Max is not set.
const DefaultJWTValidationCacheMax = 10000

// JWTValidationCache is a JWTValidator that verifies the signature of a
// token once. A token it has validated for an audience is kept, by its
// SHA-256 and that audience, with the SVID parsed from it, the kid of its
// header and the public key that verified its signature. Validating it
// again for that audience answers from what was kept after checking what
// can have changed since:
//
//   - that the JWT bundle of the trust domain of its subject still holds
//     under that kid a key Equal to the one that verified the signature, so
//     that a JWT authority removed from the bundle, or replaced under the
//     same kid, refuses the token at once, as a fresh validation would;
//   - its exp, nbf and iat, against the clock now and with the validator's
//     leeway, as Validate checks them.
//
// The rest cannot change: the header, signature and claims are those of
// the bytes whose digest is the key, and they passed every other check
// of Validate, the audience asked for included. If the bundle check fails
// the token is validated afresh, and if a time check fails the kept token
// is dropped, so the error is the one Validate returns: beyond the leeway
// it wraps jwt.ErrExpired, jwt.ErrNotValidYet or jwt.ErrIssuedInTheFuture.
//
// Errors are never kept, nor tokens over MaxJWTSize, which Validate
// refuses unparsed. At most Max tokens are kept: when full, those past
// their exp and leeway go first, else one kept token chosen at random.
//
// A token's own text is kept by no key, and logged by none; but the
// jwtsvid.SVID kept holds it, for SVID.Marshal, until the token is
// evicted. The SVID returned from the cache is the one its first
// validation returned, shared by every caller: it must not be modified.
//
// A JWTValidationCache is safe for concurrent use and must not be copied
// after first use. Its zero value, once Validator is set, is ready.
type JWTValidationCache struct {
	// Validator validates the tokens not kept, and its Bundles and leeway
	// are those checked on the tokens kept.
	Validator JWTValidator
	// Max bounds the tokens kept; default DefaultJWTValidationCacheMax.
	Max int

	now      func() time.Time // time.Now if nil; tests set it
	verified atomic.Int64     // full validations, for the tests

	mu      sync.Mutex
	entries map[jwtValidKey]*validJWT
	soonest time.Time // no entry's until is earlier
}

// jwtValidKey names a token validated for an audience.
type jwtValidKey struct {
	sum      [sha256.Size]byte
	audience string
}

// validJWT is a token a JWTValidationCache keeps. It is not modified once
// stored, and is read without the lock.
type validJWT struct {
	svid  *jwtsvid.SVID
	kid   string
	key   equalKey  // verified the signature
	until time.Time // exp plus leeway: past it, the token never validates again
}

// equalKey is what the crypto.PublicKey types of the standard library
// implement.
type equalKey interface {
	Equal(crypto.PublicKey) bool
}

// Validate validates token for audience as c.Validator.Validate does, and
// returns the same SVID or error, verifying the signature only when token
// is not kept for audience (see JWTValidationCache).
func (c *JWTValidationCache) Validate(token, audience string) (*jwtsvid.SVID, error) {
	if audience == "" || len(token) > MaxJWTSize {
		return c.Validator.Validate(token, audience) // refused unparsed
	}
	k := jwtValidKey{sum: sha256.Sum256([]byte(token)), audience: audience}
	c.mu.Lock()
	e := c.entries[k]
	c.mu.Unlock()
	if e != nil {
		if !c.keyHeld(e) {
			c.drop(k, e)
			return c.validate(k, token, audience)
		}
		if err := checkTimes(e.svid.Claims, c.Validator.leeway(), c.clock()); err != nil {
			c.drop(k, e)
			return nil, fmt.Errorf("agent: invalid JWT-SVID: %w", err)
		}
		return e.svid, nil
	}
	return c.validate(k, token, audience)
}

// validate validates token in full and keeps it if it is valid.
func (c *JWTValidationCache) validate(k jwtValidKey, token, audience string) (*jwtsvid.SVID, error) {
	c.verified.Add(1)
	var pin pinnedKey
	svid, err := c.Validator.validate(token, audience, &pin)
	if err != nil {
		return nil, err
	}
	// A key that cannot be compared cannot be rechecked: not kept.
	if key, ok := pin.key.(equalKey); ok {
		c.store(k, &validJWT{svid: svid, kid: pin.kid, key: key, until: svid.Expiry.Add(c.Validator.leeway())})
	}
	return svid, nil
}

// keyHeld reports whether the JWT bundle of e's trust domain holds, under
// e's kid, the key that verified e's signature.
func (c *JWTValidationCache) keyHeld(e *validJWT) bool {
	b, err := c.Validator.Bundles.GetJWTBundleForTrustDomain(e.svid.ID.TrustDomain())
	if err != nil || b == nil {
		return false
	}
	key, ok := b.FindJWTAuthority(e.kid)
	return ok && e.key.Equal(key)
}

func (c *JWTValidationCache) clock() time.Time {
	if c.now != nil {
		return c.now()
	}
	return time.Now()
}

// store keeps e under k, evicting first if the cache is full.
func (c *JWTValidationCache) store(k jwtValidKey, e *validJWT) {
	max := c.Max
	if max <= 0 {
		max = DefaultJWTValidationCacheMax
	}
	now := c.clock()
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.entries == nil {
		c.entries = make(map[jwtValidKey]*validJWT)
	}
	if _, ok := c.entries[k]; !ok && len(c.entries) >= max {
		c.evictLocked(max-1, now)
	}
	if len(c.entries) == 0 || e.until.Before(c.soonest) {
		c.soonest = e.until
	}
	c.entries[k] = e
}

// evictLocked drops the entries past their until, if any can be, then
// entries chosen at random (in map order) down to n. c.mu must be held.
func (c *JWTValidationCache) evictLocked(n int, now time.Time) {
	if now.After(c.soonest) {
		var soonest time.Time
		for k, e := range c.entries {
			if now.After(e.until) {
				delete(c.entries, k)
			} else if soonest.IsZero() || e.until.Before(soonest) {
				soonest = e.until
			}
		}
		c.soonest = soonest
	}
	for k := range c.entries {
		if len(c.entries) <= n {
			break
		}
		delete(c.entries, k)
	}
}

// drop forgets e, unless k names another entry by now.
func (c *JWTValidationCache) drop(k jwtValidKey, e *validJWT) {
	c.mu.Lock()
	if c.entries[k] == e {
		delete(c.entries, k)
	}
	c.mu.Unlock()
}

// pinnedKey is the jwtbundle.Source a JWTValidationCache validates with:
// it answers with a bundle of the one JWT authority that bundles holds
// under kid, and records that key. The signature is then verified with
// the key recorded, whatever the bundle holds by the time the token is
// kept; looking the key up again after the validation could record one
// that replaced it meanwhile and never verified the token.
type pinnedKey struct {
	bundles jwtbundle.Source
	kid     string
	key     crypto.PublicKey
}

// GetJWTBundleForTrustDomain returns td's bundle cut down to the authority
// under p.kid, or to none, so that go-spiffe fails as it would on the
// whole bundle when there is none.
func (p *pinnedKey) GetJWTBundleForTrustDomain(td spiffeid.TrustDomain) (*jwtbundle.Bundle, error) {
	b, err := p.bundles.GetJWTBundleForTrustDomain(td)
	if err != nil || b == nil {
		return b, err
	}
	key, ok := b.FindJWTAuthority(p.kid)
	if !ok {
		return jwtbundle.New(td), nil
	}
	p.key = key
	return jwtbundle.FromJWTAuthorities(td, map[string]crypto.PublicKey{p.kid: key}), nil
}
