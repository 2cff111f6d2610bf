package admin_test

import (
	"errors"
	"net/http"
	"net/http/httptest"
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
