package route_test

import (
	"errors"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/credflow/credflow/proxy/authz"
	"github.com/credflow/credflow/proxy/route"
)

func TestNormalize(t *testing.T) {
	tests := []struct{ in, want string }{
		{"/admin", "/admin"},
		{"//admin", "/admin"},
		{"/./admin", "/admin"},
		{"/x/../admin", "/admin"},
		{"/%61dmin", "/admin"},
		{"/a/b/", "/a/b/"},
		{"/a/b/.", "/a/b/"},
		{"/", "/"},
		{"/a%20b", "/a b"},
		{"/ADMIN", "/ADMIN"},
	}
	for _, tt := range tests {
		got, err := route.Normalize(tt.in)
		if err != nil || got != tt.want {
			t.Errorf("Normalize(%q) = %q, %v; want %q", tt.in, got, err, tt.want)
		}
	}
	for _, bad := range []string{"/admin%2f", "/admin%2F", "/admin;p=1", "/a%5cb", "/a\\b", "/..", "/a/../../b", "/%00", "/a%0d%0aX: y", "admin", "", "/%zz"} {
		if got, err := route.Normalize(bad); !errors.Is(err, route.ErrBadPath) {
			t.Errorf("Normalize(%q) = %q, %v; want ErrBadPath", bad, got, err)
		}
	}
}

// TestB1 checks that every spelling of /admin gets the decision of the
// canonical path: a rule that allows only /public/* never lets /admin in,
// and a rule that allows /admin lets in exactly the canonical spellings.
func TestB1(t *testing.T) {
	peers, _ := authz.ParsePolicy([]string{"spiffe://td/frontend"})
	pub, _ := route.ParsePath("/public/*")
	admin, _ := route.ParsePath("/admin")
	peer := spiffeid.RequireFromString("spiffe://td/frontend")
	publicOnly := route.Table{Rules: []route.Rule{{Peers: peers, Paths: []route.Path{pub}}}}
	adminOnly := route.Table{Rules: []route.Rule{{Peers: peers, Methods: []string{"GET"}, Paths: []route.Path{admin}}}}
	folded := route.Table{Rules: adminOnly.Rules, CaseInsensitive: true}
	for _, spelling := range []string{"/admin", "//admin", "/./admin", "/x/../admin", "/%61dmin", "/admin%2f", "/admin;p=1", "/ADMIN", "/public/../admin", "/public/%2e%2e/admin"} {
		canon, err := route.Normalize(spelling)
		if err != nil {
			continue // answered 400: refused whatever the rules say
		}
		if publicOnly.Allows(peer, "GET", canon) {
			t.Errorf("%q (canonical %q) passed a rule that allows only /public/*", spelling, canon)
		}
		wantAdmin := strings.EqualFold(canon, "/admin")
		if got := folded.Allows(peer, "GET", canon); got != wantAdmin {
			t.Errorf("case-insensitive: %q (canonical %q) allowed=%v, want %v", spelling, canon, got, wantAdmin)
		}
		if got := adminOnly.Allows(peer, "GET", canon); got != (canon == "/admin") {
			t.Errorf("case-sensitive: %q (canonical %q) allowed=%v", spelling, canon, got)
		}
	}
	if adminOnly.Allows(peer, "POST", "/admin") {
		t.Error("a method outside the rule was allowed")
	}
	if adminOnly.Allows(spiffeid.RequireFromString("spiffe://td/other"), "GET", "/admin") {
		t.Error("a peer outside the rule was allowed")
	}
	if !publicOnly.Allows(peer, "DELETE", "/public/x") || publicOnly.Allows(peer, "GET", "/publicx") || publicOnly.Allows(peer, "GET", "/public") {
		t.Error("prefix match is not at a '/' boundary")
	}
}

func TestParsePath(t *testing.T) {
	for _, bad := range []string{"admin", "/a/*/b", "/a*", "//a", "/a/../b", "/a;b"} {
		if _, err := route.ParsePath(bad); err == nil {
			t.Errorf("ParsePath(%q) succeeded", bad)
		}
	}
}

func FuzzNormalize(f *testing.F) {
	for _, s := range []string{"/admin", "//a/./b/../c", "/%61", "/a%2fb", "/a;b", "/.."} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		out, err := route.Normalize(in)
		if err != nil {
			return
		}
		// Canonical output is a fixed point, and holds nothing ambiguous.
		again, err := route.Normalize(escape(out))
		if err != nil || again != out {
			t.Fatalf("Normalize(%q) = %q, but that normalizes to %q, %v", in, out, again, err)
		}
		if strings.Contains(out, "//") || strings.Contains(out, "/./") || strings.Contains(out, "/../") {
			t.Fatalf("Normalize(%q) = %q is not canonical", in, out)
		}
		// Nothing an app could read as a path parameter, a separator or
		// another path once decoded or folded.
		if !utf8.ValidString(out) || strings.ContainsAny(out, ";\\\x00") || strings.ContainsAny(out, "\uff0f\uff0e\uff3c\uff1b") {
			t.Fatalf("Normalize(%q) = %q holds what an app may re-interpret", in, out)
		}
	})
}

// escape percent-encodes what a request line could not carry raw.
func escape(p string) string {
	var b strings.Builder
	for i := 0; i < len(p); i++ {
		c := p[i]
		if c == '%' || c <= ' ' || c >= 0x7f || c == '?' || c == '#' {
			b.WriteString("%" + strings.ToUpper(string("0123456789abcdef"[c>>4])+string("0123456789abcdef"[c&15])))
			continue
		}
		b.WriteByte(c)
	}
	return b.String()
}

// FuzzAllows checks the rule matcher against its definition: an exact path
// allows only itself, a prefix pattern "/p/*" only canonical paths under
// "/p/", whatever spelling of the path the request used.
func FuzzAllows(f *testing.F) {
	for _, s := range [][2]string{{"/admin", "/admin"}, {"/api/*", "/api/x"}, {"/api/*", "/api"}, {"/api/*", "/apix"},
		{"/api/*", "/api/../admin"}, {"/health", "/%68ealth"}, {"/a/*", "//a//b"}} {
		f.Add(s[0], s[1])
	}
	peer := spiffeid.RequireFromString("spiffe://example.org/frontend")
	anyone, err := authz.ParsePolicy([]string{"spiffe://example.org"})
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, pattern, raw string) {
		p, err := route.ParsePath(pattern)
		if err != nil {
			return
		}
		path, err := route.Normalize(raw)
		if err != nil {
			return
		}
		table := route.Table{Rules: []route.Rule{{Peers: anyone, Methods: []string{"GET"}, Paths: []route.Path{p}}}}
		got := table.Allows(peer, "GET", path)
		want := path == pattern
		if prefix, ok := strings.CutSuffix(pattern, "*"); ok {
			want = strings.HasPrefix(path, prefix)
		}
		if got != want {
			t.Fatalf("pattern %q, request path %q (canonical %q): allowed %v, want %v", pattern, raw, path, got, want)
		}
		if table.Allows(peer, "POST", path) {
			t.Fatalf("pattern %q allowed POST %q outside its methods", pattern, path)
		}
	})
}

// TestNormalizeAfterDecoding: what decoding reveals is judged like what
// came raw. An encoded ';' would reach the app as a path parameter
// (Tomcat, Jetty and Spring serve /api/..;/admin as /admin); bytes that
// are not UTF-8 (overlong forms such as %c0%af among them) and characters
// that Unicode compatibility folding turns into '/', '\', '.', ';' or '%'
// (full-width solidus and full stop) would mean one path to the sidecar
// and another to an app that folds or decodes leniently.
func TestNormalizeAfterDecoding(t *testing.T) {
	for _, bad := range []string{
		"/api/..%3B/admin", "/api/..%3b/admin", "/a%3Bjsessionid=1",
		"/a%ff", "/%c0%af", "/%C0%AE%C0%AE/admin", "/a%e2%82", "/a\xffb",
		"/api/%ef%bc%8f..%ef%bc%8fadmin", "/api/%ef%bc%8e%ef%bc%8e/admin", "/a%ef%bc%bcb", "/a%ef%bc%9bb", "/a%ef%bc%85",
		"/a%e2%80%a5", // TWO DOT LEADER folds to ".."
	} {
		if got, err := route.Normalize(bad); !errors.Is(err, route.ErrBadPath) {
			t.Errorf("Normalize(%q) = %q, %v; want ErrBadPath", bad, got, err)
		}
	}
	for in, want := range map[string]string{
		"/caf%C3%A9":          "/café",
		"/%E2%82%AC":          "/€",
		"/%E6%97%A5%E6%9C%AC": "/日本",
		"/api/%25":            "/api/%",
		"/api/a%3Fb":          "/api/a?b",
	} {
		if got, err := route.Normalize(in); err != nil || got != want {
			t.Errorf("Normalize(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
}

// TestAllowsUpgrade: a protocol switch is allowed only by a rule that
// allows the request and names the protocol.
func TestAllowsUpgrade(t *testing.T) {
	peers, _ := authz.ParsePolicy([]string{"spiffe://td/frontend"})
	ws, _ := route.ParsePath("/ws/*")
	api, _ := route.ParsePath("/api/*")
	table := route.Table{Rules: []route.Rule{
		{Peers: peers, Paths: []route.Path{api}},
		{Peers: peers, Methods: []string{"GET"}, Paths: []route.Path{ws}, Upgrade: []string{"websocket"}},
	}}
	peer := spiffeid.RequireFromString("spiffe://td/frontend")
	for _, c := range []struct {
		peer             spiffeid.ID
		method, path, up string
		want             bool
	}{
		{peer, "GET", "/ws/chat", "websocket", true},
		{peer, "GET", "/ws/chat", "WebSocket", true},
		{peer, "GET", "/ws/chat", "h2c", false},
		{peer, "GET", "/ws/chat", "websocket2", false},
		{peer, "POST", "/ws/chat", "websocket", false},
		{peer, "GET", "/api/x", "websocket", false},
		{spiffeid.RequireFromString("spiffe://td/other"), "GET", "/ws/chat", "websocket", false},
	} {
		if got := table.AllowsUpgrade(c.peer, c.method, c.path, c.up); got != c.want {
			t.Errorf("AllowsUpgrade(%s, %s %s, %q) = %v, want %v", c.peer, c.method, c.path, c.up, got, c.want)
		}
	}
	if !table.Allows(peer, "GET", "/ws/chat") {
		t.Error("the upgrade rule does not allow a plain request")
	}
}
