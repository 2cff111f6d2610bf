package admin_test

import (
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/credflow/credflow/internal/admin"
)

type noSVID struct{}

func (noSVID) GetX509SVID() (*x509svid.SVID, error) { return nil, errors.New("no identity yet") }

// TestReadOnly is B19's second half: the admin endpoints answer GET (and
// HEAD) only; every method that could change state is refused, and
// nothing but the documented paths exists (no pprof, no shutdown).
func TestReadOnly(t *testing.T) {
	h := admin.Handler(admin.Deps{
		Gatherer:         prometheus.NewRegistry(),
		SVIDs:            noSVID{},
		TrustDomains:     func() []spiffeid.TrustDomain { return nil },
		Ready:            func() error { return nil },
		Policies:         func() map[string][]string { return nil },
		KeyExchange:      func() string { return "hybrid-preferred" },
		NegotiatedGroups: func() map[string]int64 { return nil },
	})
	do := func(method, path string) int {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(method, path, nil))
		return rec.Code
	}
	paths := []string{"/healthz", "/readyz", "/metrics", "/debug/identity"}
	for _, p := range paths {
		if code := do(http.MethodGet, p); code != http.StatusOK {
			t.Errorf("GET %s: %d", p, code)
		}
		for _, m := range []string{http.MethodPost, http.MethodPut, http.MethodPatch, http.MethodDelete} {
			if code := do(m, p); code != http.StatusMethodNotAllowed {
				t.Errorf("%s %s: %d, want 405", m, p, code)
			}
		}
	}
	for _, p := range []string{"/debug/pprof/", "/quitquitquit", "/shutdown", "/config", "/logging", "/debug/vars"} {
		for _, m := range []string{http.MethodGet, http.MethodPost} {
			if code := do(m, p); code != http.StatusNotFound {
				t.Errorf("%s %s: %d, want 404", m, p, code)
			}
		}
	}
}

// TestIdentityTrustDomainsWithoutBundle: /debug/identity lists the trust
// domains that policies name and no bundle is held for.
func TestIdentityTrustDomainsWithoutBundle(t *testing.T) {
	for _, tc := range []struct {
		name    string
		missing func() []string
		want    string
	}{
		{"some", func() []string { return []string{"partner.example"} }, `"policy_trust_domains_without_bundle": [
    "partner.example"
  ]`},
		{"none", func() []string { return nil }, `"policy_trust_domains_without_bundle": []`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := admin.Handler(admin.Deps{
				Gatherer: prometheus.NewRegistry(),
				SVIDs:    noSVID{},
				TrustDomains: func() []spiffeid.TrustDomain {
					return []spiffeid.TrustDomain{spiffeid.RequireTrustDomainFromString("example.org")}
				},
				Ready:                           func() error { return nil },
				Policies:                        func() map[string][]string { return nil },
				KeyExchange:                     func() string { return "hybrid-preferred" },
				NegotiatedGroups:                func() map[string]int64 { return nil },
				PolicyTrustDomainsWithoutBundle: tc.missing,
			})
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/debug/identity", nil))
			if !strings.Contains(rec.Body.String(), tc.want) {
				t.Errorf("/debug/identity:\n%s\nwant %s", rec.Body, tc.want)
			}
		})
	}
}

// TestPprof: /debug/pprof/ exists only when Deps.Pprof is set; then it
// serves net/http/pprof's profiles, by GET only.
func TestPprof(t *testing.T) {
	paths := []string{"/debug/pprof/", "/debug/pprof/heap", "/debug/pprof/allocs", "/debug/pprof/goroutine?debug=1",
		"/debug/pprof/cmdline", "/debug/pprof/symbol", "/debug/pprof/profile?seconds=1", "/debug/pprof/trace?seconds=0.1"}
	for _, on := range []bool{false, true} {
		t.Run(map[bool]string{false: "off", true: "on"}[on], func(t *testing.T) {
			h := admin.Handler(admin.Deps{
				Gatherer:         prometheus.NewRegistry(),
				SVIDs:            noSVID{},
				TrustDomains:     func() []spiffeid.TrustDomain { return nil },
				Ready:            func() error { return nil },
				Policies:         func() map[string][]string { return nil },
				KeyExchange:      func() string { return "hybrid-preferred" },
				NegotiatedGroups: func() map[string]int64 { return nil },
				Pprof:            on,
			})
			for _, p := range paths {
				rec := httptest.NewRecorder()
				h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, p, nil))
				want := http.StatusNotFound
				if on {
					want = http.StatusOK
				}
				if rec.Code != want {
					t.Errorf("GET %s: %d, want %d", p, rec.Code, want)
				}
				if on && strings.HasPrefix(p, "/debug/pprof/profile") && !strings.HasPrefix(rec.Body.String(), "\x1f\x8b") {
					t.Errorf("GET %s: not a gzipped profile", p)
				}
				rec = httptest.NewRecorder()
				h.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, p, nil))
				if want == http.StatusOK {
					want = http.StatusMethodNotAllowed
				}
				if rec.Code != want {
					t.Errorf("POST %s: %d, want %d", p, rec.Code, want)
				}
			}
		})
	}
}
