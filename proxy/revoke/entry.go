// Package revoke is the operator's deny list: SPIFFE IDs (exact or
// pattern), X.509 certificate serial numbers and transaction-token IDs
// (jti) that the sidecar refuses, each until its expiry.
//
// A List holds the current set as an immutable snapshot that lookups read
// without a lock. A source keeps it up to date: FileSource from a JSON file
// (a mounted ConfigMap), RedisSource from a Redis hash with pub/sub for
// prompt delivery. RedisStore and FileStore are the editors' side of the
// same two places, behind the Store interface.
//
// # Entries
//
// An entry is JSON with these fields:
//
//	kind     "spiffe_id", "serial" or "jti"
//	value    spiffe_id: an ID or a pattern in proxy/authz syntax
//	         (spiffe://td/exact/id, spiffe://td/prefix/*, spiffe://td);
//	         serial: the certificate's serial number in hex, as openssl
//	         prints it (3A8F01, 3a:8f:01), compared as a number;
//	         jti: the token's jti claim, compared exactly
//	expires  RFC 3339 time after which the entry no longer matches;
//	         absent: never
//	reason   free text for the operators, optional
//	added    RFC 3339 time the entry was added, optional
//
// Fields this version does not know are ignored, so that entries written by
// a newer editor still apply. An entry is identified by its Key, the kind
// and the value in canonical form: adding an entry with the Key of another
// replaces it.
package revoke

import (
	"errors"
	"fmt"
	"math/big"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/credflow/credflow/proxy/authz"
)

// Kind is what an entry's value names.
type Kind string

// The kinds of entry.
const (
	// SPIFFEID: Value is a SPIFFE ID or a pattern in proxy/authz syntax.
	SPIFFEID Kind = "spiffe_id"
	// Serial: Value is an X.509 certificate serial number in hex.
	Serial Kind = "serial"
	// JTI: Value is a transaction token's jti claim.
	JTI Kind = "jti"
)

// Limits on the length of an entry's text fields, in bytes.
const (
	maxValue  = 1024
	maxReason = 1024
)

// Entry is one revocation; see the package doc for its JSON encoding.
type Entry struct {
	Kind  Kind   `json:"kind"`
	Value string `json:"value"`
	// Expires is when the entry stops matching; zero is never.
	Expires time.Time `json:"expires,omitzero"`
	// Reason says why, for the operators; optional.
	Reason string `json:"reason,omitempty"`
	// Added is when the entry was added; optional.
	Added time.Time `json:"added,omitzero"`
}

// ErrInvalid is wrapped by every error about an entry that is not valid.
var ErrInvalid = errors.New("revoke: invalid entry")

// Canonical returns e with its Value in canonical form (a pattern as
// authz.Pattern prints it, a serial in lower-case hex without leading
// zeros), or an error wrapping ErrInvalid that names the problem.
func (e Entry) Canonical() (Entry, error) {
	v, err := canonical(e.Kind, e.Value)
	if err != nil {
		return Entry{}, err
	}
	if len(e.Reason) > maxReason {
		return Entry{}, fmt.Errorf("%w: %s %q: reason longer than %d bytes", ErrInvalid, e.Kind, e.Value, maxReason)
	}
	if err := printable(e.Reason); err != nil {
		return Entry{}, fmt.Errorf("%w: %s %q: reason %v", ErrInvalid, e.Kind, e.Value, err)
	}
	e.Value = v
	return e, nil
}

// Validate reports whether e is a valid entry, with an error wrapping
// ErrInvalid that names the problem.
func (e Entry) Validate() error {
	_, err := e.Canonical()
	return err
}

// Key identifies the entry: its kind and canonical value,
// "spiffe_id:spiffe://td/a", "serial:3a8f01", "jti:…". The key of an entry
// whose value does not parse uses the value as it is.
func (e Entry) Key() string {
	v, err := canonical(e.Kind, e.Value)
	if err != nil {
		v = e.Value
	}
	return string(e.Kind) + ":" + v
}

// Live reports whether e matches at now: it has no expiry, or expires
// after now.
func (e Entry) Live(now time.Time) bool {
	return e.Expires.IsZero() || now.Before(e.Expires)
}

// canonical returns value in canonical form for kind.
func canonical(kind Kind, value string) (string, error) {
	if value == "" {
		return "", fmt.Errorf("%w: %s: empty value", ErrInvalid, kind)
	}
	if len(value) > maxValue {
		return "", fmt.Errorf("%w: %s: value longer than %d bytes", ErrInvalid, kind, maxValue)
	}
	switch kind {
	case SPIFFEID:
		p, err := authz.ParsePattern(value)
		if err != nil {
			return "", fmt.Errorf("%w: %s: %w", ErrInvalid, kind, err)
		}
		return p.String(), nil
	case Serial:
		n, err := ParseSerial(value)
		if err != nil {
			return "", err
		}
		return n.Text(16), nil
	case JTI:
		if err := printable(value); err != nil {
			return "", fmt.Errorf("%w: %s %q: %v", ErrInvalid, kind, value, err)
		}
		return value, nil
	case "":
		return "", fmt.Errorf("%w: no kind (want %s, %s or %s)", ErrInvalid, SPIFFEID, Serial, JTI)
	default:
		return "", fmt.Errorf("%w: unknown kind %q (want %s, %s or %s)", ErrInvalid, kind, SPIFFEID, Serial, JTI)
	}
}

// printable reports an error when s is not UTF-8 or holds a control
// character, which would break a log line or the CLI's table.
func printable(s string) error {
	if !utf8.ValidString(s) {
		return errors.New("is not UTF-8")
	}
	if i := strings.IndexFunc(s, unicode.IsControl); i >= 0 {
		return fmt.Errorf("holds a control character at byte %d", i)
	}
	return nil
}

// ParseSerial parses a certificate serial number in hex as openssl prints
// it: upper or lower case, with or without ':' between the bytes
// ("3A8F01", "3a:8f:01"). Leading zeros are allowed.
func ParseSerial(s string) (*big.Int, error) {
	digits := strings.ReplaceAll(s, ":", "")
	if digits == "" {
		return nil, fmt.Errorf("%w: serial %q: no hex digits", ErrInvalid, s)
	}
	if i := strings.IndexFunc(digits, func(r rune) bool { return !isHex(r) }); i >= 0 {
		return nil, fmt.Errorf("%w: serial %q: %q is not a hex digit (write the serial as openssl prints it, e.g. 3A:8F:01)", ErrInvalid, s, []rune(digits[i:])[0])
	}
	n, _ := new(big.Int).SetString(digits, 16) // only hex digits: cannot fail
	return n, nil
}

func isHex(r rune) bool {
	return '0' <= r && r <= '9' || 'a' <= r && r <= 'f' || 'A' <= r && r <= 'F'
}
