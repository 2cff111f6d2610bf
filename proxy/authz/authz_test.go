package authz_test

import (
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/credflow/credflow/proxy/authz"
)

// TestMatchB4 covers B4: only the exact canonical ID, a whole trust domain,
// or a true prefix at a '/' boundary passes.
func TestMatchB4(t *testing.T) {
	tests := []struct {
		pattern string
		peer    string
		want    bool
	}{
		{"spiffe://td/ns/a/sa/cert-manager.io", "spiffe://td/ns/a/sa/cert-manager.io", true},
		{"spiffe://td/ns/a/sa/cert-manager.io", "spiffe://td/ns/a/sa/cert-managerXio", false},
		{"spiffe://td/ns/a/sa/cert-manager.io", "spiffe://td/ns/a/sa/cert-manager.io/x", false},
		{"spiffe://td/ns/a/sa/cert-manager.io", "spiffe://td/ns/a/sa/cert-manager.i", false},
		{"spiffe://td/ns/a/sa/cert-manager.io", "spiffe://other/ns/a/sa/cert-manager.io", false},
		{"spiffe://td/a/*", "spiffe://td/a/b", true},
		{"spiffe://td/a/*", "spiffe://td/a/b/c", true},
		{"spiffe://td/a/*", "spiffe://td/ab", false},
		{"spiffe://td/a/*", "spiffe://td/a", false},
		{"spiffe://td/a/*", "spiffe://tda/a/b", false},
		{"spiffe://td", "spiffe://td/anything", true},
		{"spiffe://td", "spiffe://td.evil/anything", false},
		{"spiffe://td", "spiffe://evil.td/x", false},
	}
	for _, tt := range tests {
		t.Run(tt.pattern+"~"+tt.peer, func(t *testing.T) {
			p, err := authz.ParsePattern(tt.pattern)
			if err != nil {
				t.Fatal(err)
			}
			id := spiffeid.RequireFromString(tt.peer)
			if got := p.Match(id); got != tt.want {
				t.Fatalf("Match = %v, want %v", got, tt.want)
			}
		})
	}
}

// TestNonCanonicalPeersDoNotParse: B4's non-canonical peer spellings never
// become IDs, so they can never match; the data plane refuses them as
// invalid SVIDs before authorization.
func TestNonCanonicalPeersDoNotParse(t *testing.T) {
	for _, s := range []string{
		"spiffe://TD/ns/a/sa/cert-manager.io",
		"spiffe://td//ns/a/sa/cert-manager.io",
		"spiffe://td/ns/a/sa/cert-manager.io/",
		"spiffe://td/ns/./a",
		"spiffe://td/ns/../a",
		"spiffe://td/ns/a%2Fb",
		"SPIFFE://td/ns/a",
		"spiffe://td/ns/a\x00b",
	} {
		if _, err := spiffeid.FromString(s); err == nil {
			t.Errorf("%q parsed as a SPIFFE ID", s)
		}
	}
}

func TestParsePatternErrors(t *testing.T) {
	for _, s := range []string{
		"", "td/a", "spiffe://td/a*", "spiffe://td/*/b", "spiffe://td/*", "spiffe://TD/a", "spiffe://td/a/", "https://td/a",
	} {
		if p, err := authz.ParsePattern(s); err == nil {
			t.Errorf("ParsePattern(%q) = %v, want an error", s, p)
		}
	}
	if _, err := authz.ParsePolicy(nil); err != authz.ErrEmpty {
		t.Errorf("empty policy: err = %v", err)
	}
}

func TestPolicy(t *testing.T) {
	p, err := authz.ParsePolicy([]string{"spiffe://a/x", "spiffe://b/ns/*"})
	if err != nil {
		t.Fatal(err)
	}
	for id, want := range map[string]bool{"spiffe://a/x": true, "spiffe://a/y": false, "spiffe://b/ns/z": true, "spiffe://b/nsz": false} {
		if got := p.Allows(spiffeid.RequireFromString(id)); got != want {
			t.Errorf("Allows(%s) = %v, want %v", id, got, want)
		}
	}
	if (authz.Policy{}).Allows(spiffeid.RequireFromString("spiffe://a/x")) {
		t.Error("the zero Policy allowed a peer")
	}
}

func FuzzPattern(f *testing.F) {
	for _, s := range []string{"spiffe://td/a/*", "spiffe://td", "spiffe://td/a/b", "spiffe://td/a*", "spiffe://t-d.x/a_b/c.d"} {
		f.Add(s, "spiffe://td/a/b")
	}
	f.Fuzz(func(t *testing.T, pattern, peer string) {
		p, err := authz.ParsePattern(pattern)
		if err != nil {
			return
		}
		// A parsed pattern prints back to itself.
		again, err := authz.ParsePattern(p.String())
		if err != nil || again != p {
			t.Fatalf("%q -> %q does not round-trip: %v", pattern, p.String(), err)
		}
		id, err := spiffeid.FromString(peer)
		if err != nil {
			return
		}
		if p.Match(id) && id.TrustDomain() != p.TrustDomain() {
			t.Fatalf("%s matched %s across trust domains", p, id)
		}
		// A prefix match is always at a '/' boundary.
		if p.Match(id) && p.String() != p.TrustDomain().IDString() {
			base := p.String()
			if trimmed, ok := cutStar(base); ok {
				if len(id.String()) <= len(trimmed) || id.String()[:len(trimmed)] != trimmed {
					t.Fatalf("%s matched %s without the prefix", p, id)
				}
			} else if id.String() != base {
				t.Fatalf("exact %s matched %s", p, id)
			}
		}
	})
}

func cutStar(s string) (string, bool) {
	if len(s) > 0 && s[len(s)-1] == '*' {
		return s[:len(s)-1], true
	}
	return s, false
}
