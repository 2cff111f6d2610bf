// Package joseheader checks the protected header of a compact JWS before
// any other code reads it. It is the one header check of every token the
// sidecar validates: JWT-SVIDs (agent), external tokens (token/edge) and
// transaction tokens (token/txn).
//
// The header is parsed strictly, so that every reader of it sees the same
// members: a member named twice, also in another case ({"alg":"PS256",
// "Alg":"RS256"}: Go's encoding/json matches struct fields case-
// insensitively, go-jose does not), a case variant of a registered member
// name ("JKU"), invalid UTF-8 or data after the object are refused. The
// algorithm must be in the caller's list, compared exactly; the members
// that name keys or places to fetch them (jku, x5u, jwk) and the extensions
// that change how a token is read (crit, b64) are always refused, x5c unless
// the caller carries its chain there.
package joseheader

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/go-jose/go-jose/v4"
)

// DefaultMaxSize bounds a token when Policy.MaxSize is zero.
const DefaultMaxSize = 16 << 10

// Errors, for errors.Is; the error returned by Parse wraps one and says
// more.
var (
	// ErrSize: the token is over the size limit.
	ErrSize = errors.New("joseheader: token too large")
	// ErrMalformed: not a compact JWS whose header is one JSON object.
	ErrMalformed = errors.New("joseheader: malformed header")
	// ErrAlgorithm: alg is missing or not in the caller's list.
	ErrAlgorithm = errors.New("joseheader: algorithm not allowed")
	// ErrMember: a member is duplicated, a case variant of a registered
	// name, or one the header may not carry.
	ErrMember = errors.New("joseheader: header member not allowed")
	// ErrType: typ is not the one the caller requires.
	ErrType = errors.New("joseheader: wrong typ")
)

// Policy is what a caller accepts in a header.
type Policy struct {
	// Algorithms are the accepted alg values, compared exactly. Pass the
	// same list to jwt.ParseSigned. Empty accepts nothing.
	Algorithms []jose.SignatureAlgorithm
	// Type, if set, is the typ the header must carry, compared exactly.
	// Empty leaves typ to the caller.
	Type string
	// X5C lets the header carry x5c (the signer's chain, which the caller
	// verifies itself); without it x5c is refused.
	X5C bool
	// MaxSize bounds the whole token in bytes; default DefaultMaxSize.
	MaxSize int
}

// Header is the part of a checked header that callers read.
type Header struct {
	Alg jose.SignatureAlgorithm
	Kid string
	Typ string
	// X5C is the base64 (standard, padded) DER chain, leaf first; set only
	// when Policy.X5C allows it.
	X5C []string
}

// registered are the header member names of RFC 7515, 7516 and 7797 (and
// RFC 8555's nonce and url). A member whose name is a case variant of one
// of these is refused: a reader that matches names case-insensitively
// would take it for the registered one.
var registered = []string{
	"alg", "jku", "jwk", "kid", "x5u", "x5c", "x5t", "x5t#S256", "typ", "cty", "crit", "b64",
	"enc", "zip", "epk", "apu", "apv", "iv", "tag", "p2s", "p2c", "nonce", "url",
}

// refused are never accepted: keys or places to fetch them from, which no
// token chooses for itself, and extensions that change how the token is read.
var refused = []string{"jku", "x5u", "jwk", "crit", "b64"}

// Parse checks the protected header of the compact JWS token against p and
// returns it. It does not verify the signature.
func Parse(token string, p Policy) (*Header, error) {
	max := p.MaxSize
	if max <= 0 {
		max = DefaultMaxSize
	}
	if len(token) > max {
		return nil, fmt.Errorf("%w: %d bytes, over the %d limit", ErrSize, len(token), max)
	}
	if strings.Count(token, ".") != 2 {
		return nil, fmt.Errorf("%w: not three dot-separated parts", ErrMalformed)
	}
	encoded, _, _ := strings.Cut(token, ".")
	raw, err := base64.RawURLEncoding.Strict().DecodeString(encoded)
	if err != nil {
		return nil, fmt.Errorf("%w: not base64url", ErrMalformed)
	}
	members, err := strictObject(raw)
	if err != nil {
		return nil, err
	}
	for _, name := range refused {
		if _, ok := members[name]; ok {
			return nil, fmt.Errorf("%w: %q", ErrMember, name)
		}
	}
	var h Header
	var alg string
	if err := stringMember(members, "alg", &alg); err != nil {
		return nil, err
	}
	if alg == "" || !slices.Contains(p.Algorithms, jose.SignatureAlgorithm(alg)) {
		return nil, fmt.Errorf("%w: %q", ErrAlgorithm, truncate(alg))
	}
	h.Alg = jose.SignatureAlgorithm(alg)
	if err := stringMember(members, "kid", &h.Kid); err != nil {
		return nil, err
	}
	if err := stringMember(members, "typ", &h.Typ); err != nil {
		return nil, err
	}
	if p.Type != "" && h.Typ != p.Type {
		return nil, fmt.Errorf("%w: want %s", ErrType, p.Type)
	}
	if v, ok := members["x5c"]; ok {
		if !p.X5C {
			return nil, fmt.Errorf("%w: %q", ErrMember, "x5c")
		}
		if err := json.Unmarshal(v, &h.X5C); err != nil || h.X5C == nil {
			return nil, fmt.Errorf("%w: x5c is not an array of strings", ErrMalformed)
		}
	}
	return &h, nil
}

// strictObject decodes one JSON object and returns its members. A member
// named twice, with names equal under Unicode case folding (the matching
// of encoding/json), or named as a case variant of a registered name, is
// refused, and so is anything after the object.
func strictObject(raw []byte) (map[string]json.RawMessage, error) {
	if !utf8.Valid(raw) {
		return nil, fmt.Errorf("%w: not UTF-8", ErrMalformed)
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		return nil, fmt.Errorf("%w: not a JSON object", ErrMalformed)
	}
	members := map[string]json.RawMessage{}
	folded := map[string]bool{}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, fmt.Errorf("%w: not a JSON object", ErrMalformed)
		}
		name, ok := tok.(string)
		if !ok {
			return nil, fmt.Errorf("%w: not a JSON object", ErrMalformed)
		}
		f := fold(name)
		if folded[f] {
			return nil, fmt.Errorf("%w: a member is named twice (names compared regardless of case)", ErrMember)
		}
		folded[f] = true
		for _, r := range registered {
			if f == fold(r) && name != r {
				return nil, fmt.Errorf("%w: a case variant of %q", ErrMember, r)
			}
		}
		var v json.RawMessage
		if err := dec.Decode(&v); err != nil {
			return nil, fmt.Errorf("%w: not a JSON object", ErrMalformed)
		}
		members[name] = v
	}
	if tok, err := dec.Token(); err != nil || tok != json.Delim('}') {
		return nil, fmt.Errorf("%w: not a JSON object", ErrMalformed)
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, fmt.Errorf("%w: data after the header object", ErrMalformed)
	}
	return members, nil
}

// stringMember reads members[name], if present, into dst; it must be a
// JSON string.
func stringMember(members map[string]json.RawMessage, name string, dst *string) error {
	v, ok := members[name]
	if !ok {
		return nil
	}
	if err := json.Unmarshal(v, dst); err != nil || !bytes.HasPrefix(bytes.TrimSpace(v), []byte(`"`)) {
		return fmt.Errorf("%w: %s is not a string", ErrMalformed, name)
	}
	return nil
}

// fold maps s to a canonical form under Unicode simple case folding: two
// names fold alike exactly when strings.EqualFold (and so encoding/json's
// field matching) takes them for the same name.
func fold(s string) string {
	var b strings.Builder
	b.Grow(len(s))
	for _, r := range s {
		least := r
		for f := unicode.SimpleFold(r); f != r; f = unicode.SimpleFold(f) {
			least = min(least, f)
		}
		b.WriteRune(least)
	}
	return b.String()
}

// truncate bounds a value copied from a token into an error.
func truncate(s string) string {
	const n = 32
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}
