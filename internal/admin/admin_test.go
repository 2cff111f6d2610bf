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

// TestQuarantine: GET /quarantine lists the peers in quarantine; POST
// /quarantine/lift lifts one, from this host only (the admin listener may
// be reachable from the network for /metrics); without anomaly detection
// neither path exists.
func TestQuarantine(t *testing.T) {
	quarantined := map[string]bool{"spiffe://example.org/intruder": true}
	deps := admin.Deps{
		Gatherer: prometheus.NewRegistry(), SVIDs: noSVID{}, Ready: func() error { return nil },
		Quarantined: func() []admin.Quarantined {
			var list []admin.Quarantined
			for s := range quarantined {
				list = append(list, admin.Quarantined{Subject: s, Detector: "token_failures"})
			}
			return list
		},
		Lift: func(s string) (bool, error) {
			if !strings.HasPrefix(s, "spiffe://") {
				return false, errors.New("not a SPIFFE ID or an IP address")
			}
			was := quarantined[s]
			delete(quarantined, s)
			return was, nil
		},
	}
	h := admin.Handler(deps)
	do := func(method, target, from string) (int, string) {
		req := httptest.NewRequest(method, target, nil)
		req.RemoteAddr = from
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		return rec.Code, rec.Body.String()
	}
	if code, body := do(http.MethodGet, "/quarantine", "192.0.2.7:4000"); code != 200 || !strings.Contains(body, `"subject": "spiffe://example.org/intruder"`) {
		t.Errorf("GET /quarantine: %d %s", code, body)
	}
	lift := "/quarantine/lift?subject=spiffe://example.org/intruder"
	if code, _ := do(http.MethodPost, lift, "192.0.2.7:4000"); code != http.StatusForbidden || !quarantined["spiffe://example.org/intruder"] {
		t.Errorf("lift from another host: %d; want 403 and the quarantine kept", code)
	}
	if code, _ := do(http.MethodGet, lift, "127.0.0.1:4000"); code != http.StatusMethodNotAllowed {
		t.Errorf("GET of lift: %d, want 405", code)
	}
	if code, body := do(http.MethodPost, lift, "127.0.0.1:4000"); code != 200 || quarantined["spiffe://example.org/intruder"] {
		t.Errorf("lift from this host: %d %s; want 200 and the quarantine lifted", code, body)
	}
	if code, _ := do(http.MethodPost, lift, "[::1]:4000"); code != http.StatusNotFound {
		t.Errorf("lift of a peer not in quarantine: %d, want 404", code)
	}
	if code, _ := do(http.MethodPost, "/quarantine/lift?subject=nonsense", "127.0.0.1:4000"); code != http.StatusBadRequest {
		t.Errorf("lift of a subject that does not parse: %d, want 400", code)
	}
	deps.Quarantined, deps.Lift = nil, nil
	h = admin.Handler(deps)
	if code, _ := do(http.MethodGet, "/quarantine", "127.0.0.1:4000"); code != http.StatusNotFound {
		t.Errorf("GET /quarantine without anomaly detection: %d, want 404", code)
	}
}
