// Package route authorizes HTTP requests by peer SPIFFE ID, method and
// path, after normalizing the path once: the same canonical path is used
// for matching and forwarded to the app, so no spelling of a path reaches
// the app past a rule that denies its canonical form.
//
// Normalize decodes percent-escapes, collapses "//", resolves "." and
// "..", and refuses what has no single meaning: encoded "/" or "\", a raw
// "\", ";" path parameters (raw or encoded), NUL and control characters,
// bytes that are not UTF-8, characters that Unicode compatibility folding
// turns into a separator, a dot, ";" or "%", and ".." above the root.
package route

import (
	"errors"
	"fmt"
	"net/url"
	"slices"
	"strings"
	"unicode/utf8"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"golang.org/x/text/unicode/norm"

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
	if err := checkDecoded(decoded); err != nil {
		return "", err
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

// checkDecoded refuses what decoding revealed that the app could read
// otherwise than the sidecar: the path forwarded is the decoded one, so an
// encoded ";" would arrive as a path parameter (Tomcat, Jetty and Spring
// serve /api/..;/admin as /admin); bytes that are not UTF-8, overlong
// forms such as %c0%af among them, are read by lenient decoders as "/" or
// "."; and characters whose compatibility form (NFKC, which some
// frameworks apply to paths) holds "/", "\", ".", ";" or "%", such as the
// full-width solidus U+FF0F, would become another path after routing.
func checkDecoded(decoded string) error {
	if strings.ContainsAny(decoded, ";\\") {
		return fmt.Errorf("%w: %q holds an encoded ';' or '\\'", ErrBadPath, decoded)
	}
	if !utf8.ValidString(decoded) {
		return fmt.Errorf("%w: not UTF-8", ErrBadPath)
	}
	for _, r := range decoded {
		switch {
		case r < 0x20 || r == 0x7f:
			return fmt.Errorf("%w: control character", ErrBadPath)
		case r >= utf8.RuneSelf && strings.ContainsAny(norm.NFKC.String(string(r)), "/\\.;%"):
			return fmt.Errorf("%w: %U folds to a path delimiter", ErrBadPath, r)
		}
	}
	return nil
}

// Rule allows the peers it names to use its methods on its paths. Empty
// Methods means any method; Paths must not be empty.
type Rule struct {
	// Name, optional, names the route in the access log, in per-route
	// rate limits and in global rate-limit descriptors.
	Name    string
	Peers   authz.Policy
	Methods []string // upper-case
	Paths   []Path
	// Upgrade lists the protocols ("websocket") a request this rule
	// allows may switch to with an Upgrade header, compared without
	// regard to case. Empty, the default, allows no switch: the tunnel
	// that follows carries bytes the sidecar does not parse.
	Upgrade []string
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
	_, ok := t.Match(peer, method, path)
	return ok
}

// Match returns the first rule that allows a request from peer with
// method on the canonical path, or false when none does.
func (t Table) Match(peer spiffeid.ID, method, path string) (*Rule, bool) {
	for i := range t.Rules {
		if t.allows(t.Rules[i], peer, method, path) {
			return &t.Rules[i], true
		}
	}
	return nil, false
}

// AllowsUpgrade reports whether a request from peer with method on the
// canonical path may switch to protocol: some rule allows the request and
// lists the protocol in its Upgrade.
func (t Table) AllowsUpgrade(peer spiffeid.ID, method, path, protocol string) bool {
	return slices.ContainsFunc(t.Rules, func(r Rule) bool {
		return t.allows(r, peer, method, path) &&
			slices.ContainsFunc(r.Upgrade, func(p string) bool { return strings.EqualFold(p, protocol) })
	})
}

func (t Table) allows(r Rule, peer spiffeid.ID, method, path string) bool {
	if !r.Peers.Allows(peer) {
		return false
	}
	if len(r.Methods) > 0 && !slices.Contains(r.Methods, method) {
		return false
	}
	return slices.ContainsFunc(r.Paths, func(p Path) bool { return p.match(path, t.CaseInsensitive) })
}
