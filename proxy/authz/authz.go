// Package authz decides which SPIFFE IDs a listener accepts as peers.
//
// A Policy is a list of patterns, each one of:
//
//	spiffe://td/path/to/workload   exactly this ID
//	spiffe://td                    any ID in trust domain td
//	spiffe://td/ns/prod/*          any ID under /ns/prod/, matched at a '/'
//	                               boundary: /ns/prod/a matches, /ns/production
//	                               and /ns/prod itself do not
//
// Patterns are parsed with the SPIFFE ID grammar, so a pattern is always in
// canonical form (lower-case trust domain, no empty, "." or ".." segments,
// no trailing '/'), and IDs are compared as parsed values, never as raw
// strings from a certificate.
package authz

import (
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

type kind uint8

const (
	exact kind = iota
	domain
	prefix
)

// Pattern matches SPIFFE IDs; see the package doc for the syntax.
type Pattern struct {
	kind kind
	td   spiffeid.TrustDomain
	path string // exact: the ID's path; prefix: the path with a trailing '/'
}

// ParsePattern parses one pattern.
func ParsePattern(s string) (Pattern, error) {
	if base, ok := strings.CutSuffix(s, "/*"); ok {
		id, err := spiffeid.FromString(base)
		if err != nil {
			return Pattern{}, fmt.Errorf("authz: pattern %q: %w", s, err)
		}
		if id.Path() == "" {
			return Pattern{}, fmt.Errorf("authz: pattern %q: write the trust domain alone (%s) to allow all of it", s, base)
		}
		return Pattern{kind: prefix, td: id.TrustDomain(), path: id.Path() + "/"}, nil
	}
	if strings.Contains(s, "*") {
		return Pattern{}, fmt.Errorf("authz: pattern %q: '*' is only allowed as a final path segment (/*)", s)
	}
	id, err := spiffeid.FromString(s)
	if err != nil {
		return Pattern{}, fmt.Errorf("authz: pattern %q: %w", s, err)
	}
	if id.Path() == "" {
		return Pattern{kind: domain, td: id.TrustDomain()}, nil
	}
	return Pattern{kind: exact, td: id.TrustDomain(), path: id.Path()}, nil
}

// Match reports whether id matches the pattern.
func (p Pattern) Match(id spiffeid.ID) bool {
	if id.IsZero() || id.TrustDomain() != p.td {
		return false
	}
	switch p.kind {
	case domain:
		return true
	case exact:
		return id.Path() == p.path
	default:
		return strings.HasPrefix(id.Path(), p.path)
	}
}

// TrustDomain is the trust domain the pattern is confined to.
func (p Pattern) TrustDomain() spiffeid.TrustDomain { return p.td }

// String returns the pattern in the syntax ParsePattern reads.
func (p Pattern) String() string {
	switch p.kind {
	case domain:
		return p.td.IDString()
	case prefix:
		return p.td.IDString() + p.path + "*"
	default:
		return p.td.IDString() + p.path
	}
}

// Policy allows the IDs that match any of its patterns. The zero Policy
// allows nothing.
type Policy struct {
	patterns []Pattern
}

// ErrEmpty is returned by ParsePolicy for an empty list: a listener that
// accepts nobody is almost certainly a mistake.
var ErrEmpty = errors.New("authz: empty policy allows no peer")

// ParsePolicy parses a list of patterns. Every bad pattern is reported.
func ParsePolicy(patterns []string) (Policy, error) {
	if len(patterns) == 0 {
		return Policy{}, ErrEmpty
	}
	var (
		p    Policy
		errs []error
	)
	for _, s := range patterns {
		pat, err := ParsePattern(s)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		p.patterns = append(p.patterns, pat)
	}
	if len(errs) > 0 {
		return Policy{}, errors.Join(errs...)
	}
	return p, nil
}

// Allows reports whether id matches one of the policy's patterns.
func (p Policy) Allows(id spiffeid.ID) bool {
	for _, pat := range p.patterns {
		if pat.Match(id) {
			return true
		}
	}
	return false
}

// ExactID returns the ID when the policy is a single exact SPIFFE ID.
func (p Policy) ExactID() (spiffeid.ID, bool) {
	if len(p.patterns) != 1 || p.patterns[0].kind != exact {
		return spiffeid.ID{}, false
	}
	id, err := spiffeid.FromPath(p.patterns[0].td, p.patterns[0].path)
	return id, err == nil
}

// TrustDomains returns the distinct trust domains the policy's patterns
// name, in order.
func (p Policy) TrustDomains() []spiffeid.TrustDomain {
	var out []spiffeid.TrustDomain
	for _, pat := range p.patterns {
		if !slices.Contains(out, pat.td) {
			out = append(out, pat.td)
		}
	}
	return out
}

// Patterns returns the policy's patterns in the syntax ParsePattern reads.
func (p Policy) Patterns() []string {
	out := make([]string, len(p.patterns))
	for i, pat := range p.patterns {
		out[i] = pat.String()
	}
	return out
}
