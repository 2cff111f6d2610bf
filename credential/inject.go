package credential

import (
	"context"
	"encoding/base64"
	"errors"
	"log/slog"
	"net/http"
	"net/url"
	"slices"
	"strings"

	"github.com/credflow/credflow/internal/logkey"
	"github.com/credflow/credflow/reason"
)

// Place is where a request carries an injected credential.
type Place string

// The places of an injected credential.
const (
	// PlaceBearer is "Authorization: Bearer <value>".
	PlaceBearer Place = "bearer"
	// PlaceBasic is "Authorization: Basic <base64 of value>", the value a
	// "user:password" pair.
	PlaceBasic Place = "basic"
	// PlaceHeader is the header Rule.Name, holding the value.
	PlaceHeader Place = "header"
	// PlaceQuery is the query parameter Rule.Name, holding the value.
	PlaceQuery Place = "query"
)

// A Rule says which requests carry a Cache's credential, and where.
type Rule struct {
	Cache *Cache
	// Paths are the canonical path prefixes the rule covers ("/v1/"); none
	// covers every path.
	Paths []string
	Place Place
	// Name is the header or query parameter of PlaceHeader and PlaceQuery.
	Name string
	// RefuseApp refuses a request in which the app put a credential of its
	// own in the rule's place (403, app_credential), rather than removing it.
	RefuseApp bool
	// Optional forwards the request without the credential when none is
	// valid, rather than answering 503 credential_unavailable.
	Optional bool
}

// key names the rule's place in a request: two rules with the same key
// write the same value.
func (r *Rule) key() string {
	switch r.Place {
	case PlaceBearer, PlaceBasic:
		return "header:authorization"
	case PlaceHeader:
		return "header:" + strings.ToLower(r.Name)
	}
	return "query:" + r.Name
}

// covers reports whether the rule applies to a request for the canonical
// path.
func (r *Rule) covers(path string) bool {
	if len(r.Paths) == 0 {
		return true
	}
	for _, p := range r.Paths {
		if strings.HasPrefix(path, p) {
			return true
		}
	}
	return false
}

// An Injector puts credentials into an app's requests to an external API.
// For each place, the first rule that covers the request's path decides
// what goes there: list the more specific paths first. Whatever the app put
// in a place a rule covers is removed, or refused with RefuseApp, so that
// an app can neither smuggle its own credential past the rule nor learn the
// injected one by having it echoed in its place.
type Injector struct {
	Rules []Rule
	// Log receives the refusals for want of a credential; nil discards them.
	Log *slog.Logger
}

// Injected is what Inject put into one request.
type Injected struct {
	used []used
}

type used struct {
	cache *Cache
	value Secret
}

// Names returns the names of the credentials injected, in rule order.
func (in Injected) Names() []string {
	names := make([]string, len(in.used))
	for i, u := range in.used {
		names[i] = u.cache.Name
	}
	return names
}

// Responded reports the upstream's answer to the request: a 401 tells each
// credential's Cache that its value was refused (Cache.Invalidate, at most
// once per backoff, so never a loop of fetches).
func (in Injected) Responded(status int) {
	if status != http.StatusUnauthorized {
		return
	}
	for _, u := range in.used {
		u.cache.Invalidate(u.value)
	}
}

// Inject injects into r, whose canonical path is path, the credential of
// every rule that decides a place of it, and returns what it injected, or
// the reason to refuse the request: CredentialUnavailable when a rule that
// is not Optional has no valid credential (nothing is forwarded without
// it), AppCredential when the app put its own where a RefuseApp rule
// injects. Get waits on a cold cache for its one fetch, under r's context.
func (inj *Injector) Inject(r *http.Request, path string) (Injected, reason.Reason) {
	var in Injected
	decided := make([]string, 0, 4) // the keys of the places decided
	for i := range inj.Rules {
		rule := &inj.Rules[i]
		if !rule.covers(path) {
			continue
		}
		k := rule.key()
		if slices.Contains(decided, k) {
			continue
		}
		decided = append(decided, k)
		if rule.hasApp(r) {
			if rule.RefuseApp {
				return Injected{}, reason.AppCredential
			}
			rule.remove(r)
		}
		c, err := rule.Cache.Get(r.Context())
		if err != nil {
			if rule.Optional {
				continue
			}
			if !errors.Is(err, context.Canceled) {
				inj.logger().Warn("credential: request refused, no valid credential",
					slog.String(logkey.Credential, rule.Cache.Name), slog.String(logkey.Error, err.Error()))
			}
			return Injected{}, reason.CredentialUnavailable
		}
		rule.put(r, c.Value)
		in.used = append(in.used, used{cache: rule.Cache, value: c.Value})
	}
	return in, ""
}

func (inj *Injector) logger() *slog.Logger {
	if inj.Log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return inj.Log
}

// hasApp reports whether the app put something in the rule's place.
func (r *Rule) hasApp(req *http.Request) bool {
	switch r.Place {
	case PlaceBearer, PlaceBasic:
		return len(req.Header.Values("Authorization")) > 0
	case PlaceHeader:
		return len(req.Header.Values(r.Name)) > 0
	}
	_, ok := queryParam(req.URL.RawQuery, r.Name)
	return ok
}

// remove removes what the app put in the rule's place.
func (r *Rule) remove(req *http.Request) {
	switch r.Place {
	case PlaceBearer, PlaceBasic:
		req.Header.Del("Authorization")
	case PlaceHeader:
		req.Header.Del(r.Name)
	default:
		req.URL.RawQuery = withoutParam(req.URL.RawQuery, r.Name)
	}
}

// put writes v in the rule's place.
func (r *Rule) put(req *http.Request, v Secret) {
	switch r.Place {
	case PlaceBearer:
		req.Header.Set("Authorization", "Bearer "+v.Reveal())
	case PlaceBasic:
		req.Header.Set("Authorization", "Basic "+base64.StdEncoding.EncodeToString([]byte(v.Reveal())))
	case PlaceHeader:
		req.Header.Set(r.Name, v.Reveal())
	default:
		q := withoutParam(req.URL.RawQuery, r.Name)
		if q != "" {
			q += "&"
		}
		req.URL.RawQuery = q + url.QueryEscape(r.Name) + "=" + url.QueryEscape(v.Reveal())
	}
}

// queryParam returns the first value of the query parameter name in the
// raw query, and whether it is there. A parameter whose name does not
// unescape is compared as written.
func queryParam(raw, name string) (string, bool) {
	for part := range strings.SplitSeq(raw, "&") {
		k, v, _ := strings.Cut(part, "=")
		if paramName(k) == name {
			return v, true
		}
	}
	return "", false
}

// withoutParam returns the raw query without the parameter name, the
// others kept in their order and escaping.
func withoutParam(raw, name string) string {
	if raw == "" {
		return ""
	}
	var b strings.Builder
	for part := range strings.SplitSeq(raw, "&") {
		k, _, _ := strings.Cut(part, "=")
		if part == "" || paramName(k) == name {
			continue
		}
		if b.Len() > 0 {
			b.WriteByte('&')
		}
		b.WriteString(part)
	}
	return b.String()
}

func paramName(k string) string {
	if n, err := url.QueryUnescape(k); err == nil {
		return n
	}
	return k
}
