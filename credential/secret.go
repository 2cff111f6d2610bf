// Package credential keeps the credentials the sidecar injects into a
// workload's calls to external APIs: an OAuth access token, an API key, a
// basic-auth pair. The workload never holds them. A Source obtains a
// credential from where it lives (an authorization server, a secret
// store, a mounted file) and a Cache keeps one fresh: fetched once for
// many callers, refreshed ahead of its expiry in the background, retried
// with backoff while the one it has is still valid, and never served past
// its expiry.
//
// A credential's value is a Secret, which prints, formats and marshals as
// "[redacted]": it can reach a log line, an error or a debug page only by
// mistake, and then without its value.
package credential

import (
	"fmt"
	"log/slog"
	"strings"
)

// Secret is a credential's value. Its zero value is empty.
type Secret struct{ v string }

// NewSecret returns a Secret holding v, or an error when v holds a byte
// that cannot appear in an HTTP header value (a control character other
// than horizontal tab, CR and LF included): such a value could split or
// forge the header it is injected in.
func NewSecret(v string) (Secret, error) {
	if v == "" {
		return Secret{}, fmt.Errorf("credential: the value is empty")
	}
	if i := strings.IndexFunc(v, notHeaderByte); i >= 0 {
		return Secret{}, fmt.Errorf("credential: the value holds byte %#02x at offset %d, not allowed in an HTTP header", v[i], i)
	}
	return Secret{v: v}, nil
}

// notHeaderByte reports a byte RFC 9110 does not allow in a field value:
// controls other than HTAB, and DEL.
func notHeaderByte(r rune) bool {
	return (r < 0x20 && r != '\t') || r == 0x7f
}

// Reveal returns the value, for the one place that injects it.
func (s Secret) Reveal() string { return s.v }

// IsZero reports whether s holds no value.
func (s Secret) IsZero() bool { return s.v == "" }

// Equal reports whether s and t hold the same value.
func (s Secret) Equal(t Secret) bool { return s.v == t.v }

const redacted = "[redacted]"

// String returns "[redacted]".
func (Secret) String() string { return redacted }

// GoString returns "[redacted]", for %#v.
func (Secret) GoString() string { return redacted }

// Format writes "[redacted]" for every verb.
func (Secret) Format(f fmt.State, _ rune) { fmt.Fprint(f, redacted) }

// LogValue returns "[redacted]" for log/slog.
func (Secret) LogValue() slog.Value { return slog.StringValue(redacted) }

// MarshalText returns "[redacted]", for encoding/json and friends.
func (Secret) MarshalText() ([]byte, error) { return []byte(redacted), nil }
