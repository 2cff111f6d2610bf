// Package route authorizes HTTP requests by peer SPIFFE ID, method and
// path, after normalizing the path once: the same canonical path is used
// for matching and forwarded to the app, so no spelling of a path reaches
// the app past a rule that denies its canonical form.
//
// Normalize decodes percent-escapes of unreserved characters, collapses
// "//", resolves "." and "..", and refuses what has no single meaning:
// encoded "/" or "\", a raw "\", ";" path parameters, NUL and control
// characters, and ".." above the root.
package route

import (
	"errors"
	"fmt"
	"net/url"
	"slices"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/credflow/credflow/proxy/authz"
)

// ErrBadPath is returned by Normalize for a path with no single canonical
// form; the request is answered 400.
var ErrBadPath = errors.New("route: path has no canonical form")

// Normalize returns the canonical form of an escaped request path.
func Normalize(escaped string) (string, error) {
	if escaped == "" || escaped[0] != '/' {
		return "", fmt.Errorf("%w: %q does not start with /", ErrBadPath, escaped)
	}
	lower := strings.ToLower(escaped)
	for _, bad := range []string{"%2f", "%5c", "%00", "\\", ";"} {
		if strings.Contains(lower, bad) {
			return "", fmt.Errorf("%w: %q holds %q", ErrBadPath, escaped, bad)
		}
	}
	decoded, err := url.PathUnescape(escaped)
	if err != nil {
		return "", fmt.Errorf("%w: %v", ErrBadPath, err)
	}
	if strings.ContainsFunc(decoded, func(r rune) bool { return r < 0x20 || r == 0x7f }) {
		return "", fmt.Errorf("%w: control character", ErrBadPath)
	}
	var segs []string
	for seg := range strings.SplitSeq(decoded, "/") {
		switch seg {
		case "", ".":
		case "..":
			if len(segs) == 0 {
				return "", fmt.Errorf("%w: %q climbs above the root", ErrBadPath, escaped)
			}
			segs = segs[:len(segs)-1]
		default:
			segs = append(segs, seg)
		}
	}
	out := "/" + strings.Join(segs, "/")
	if len(segs) > 0 && (strings.HasSuffix(decoded, "/") || strings.HasSuffix(decoded, "/.") || strings.HasSuffix(decoded, "/..")) {
		out += "/"
	}
	return out, nil
}

// Rule allows the peers it names to use its methods on its paths. Empty
// Methods means any method; Paths must not be empty.
type Rule struct {
	Peers   authz.Policy
	Methods []string // upper-case
	Paths   []Path
}

// Path matches a canonical path: exactly ("/health") or as a prefix at a
// '/' boundary ("/api/*" matches "/api/x" and "/api/", not "/api" or
// "/apix").
type Path struct {
	prefix bool
	path   string
}

// ParsePath parses a path pattern; it must be in canonical form already.
func ParsePath(s string) (Path, error) {
	base, prefix := strings.CutSuffix(s, "/*")
	if prefix {
		base += "/"
	}
	if strings.Contains(base, "*") {
		return Path{}, fmt.Errorf("route: path %q: '*' is only allowed as a final /*", s)
	}
	canon, err := Normalize(base)
	if err != nil || canon != base {
		return Path{}, fmt.Errorf("route: path %q is not in canonical form", s)
	}
	return Path{prefix: prefix, path: base}, nil
}

func (p Path) match(path string, fold bool) bool {
	want := p.path
	if fold {
		path, want = strings.ToLower(path), strings.ToLower(want)
	}
	if p.prefix {
		return strings.HasPrefix(path, want)
	}
	return path == want
}

// Table is an ordered list of allow rules; a request no rule allows is
// denied.
type Table struct {
	Rules []Rule
	// CaseInsensitive matches paths without regard to case, for apps that
	// treat /Admin and /admin alike.
	CaseInsensitive bool
}

// Allows reports whether a request from peer with method on the canonical
// path is allowed.
func (t Table) Allows(peer spiffeid.ID, method, path string) bool {
	for _, r := range t.Rules {
		if !r.Peers.Allows(peer) {
			continue
		}
		if len(r.Methods) > 0 && !slices.Contains(r.Methods, method) {
			continue
		}
		for _, p := range r.Paths {
			if p.match(path, t.CaseInsensitive) {
				return true
			}
		}
	}
	return false
}
