package app_test

import (
	"errors"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/credflow/credflow/internal/admin"
)

// TestQuarantineCommand: `credflow quarantine list` prints the sidecar's
// quarantine, `lift` lifts one subject through the admin endpoint and
// says when it was not in quarantine; without anomaly detection the
// sidecar says so.
func TestQuarantineCommand(t *testing.T) {
	until := time.Date(2026, 12, 6, 4, 0, 0, 0, time.UTC)
	held := map[string]bool{"spiffe://example.org/intruder": true, "192.0.2.9": true}
	srv := httptest.NewServer(admin.Handler(admin.Deps{
		Gatherer: prometheus.NewRegistry(), SVIDs: noSVID{}, Ready: func() error { return nil },
		Quarantined: func() []admin.Quarantined {
			list := []admin.Quarantined{}
			for s := range held {
				list = append(list, admin.Quarantined{Subject: s, Until: until, Detector: "refusal_burst"})
			}
			return list
		},
		Lift: func(s string) (bool, error) {
			if s == "nonsense" {
				return false, errors.New(`"nonsense" is not a SPIFFE ID or an IP address`)
			}
			was := held[s]
			delete(held, s)
			return was, nil
		},
	}))
	t.Cleanup(srv.Close)
	addr := strings.TrimPrefix(srv.URL, "http://")

	code, out, errs := credflow("quarantine", "list", "-admin", addr)
	if code != 0 || !strings.Contains(out, "spiffe://example.org/intruder  2026-12-06T04:00:00Z  refusal_burst") || !strings.Contains(out, "192.0.2.9") {
		t.Errorf("list: exit %d\n%s%s", code, out, errs)
	}
	if code, out, errs := credflow("quarantine", "lift", "-admin", addr, "spiffe://example.org/intruder"); code != 0 || held["spiffe://example.org/intruder"] {
		t.Errorf("lift: exit %d\n%s%s", code, out, errs)
	}
	if code, _, errs := credflow("quarantine", "lift", "-admin", addr, "spiffe://example.org/intruder"); code != 1 || !strings.Contains(errs, "is not in quarantine") {
		t.Errorf("lift again: exit %d, %s", code, errs)
	}
	if code, _, errs := credflow("quarantine", "lift", "-admin", addr, "nonsense"); code != 1 || !strings.Contains(errs, "not a SPIFFE ID") {
		t.Errorf("lift nonsense: exit %d, %s", code, errs)
	}
	if code, _, _ := credflow("quarantine", "lift", "-admin", addr); code != 2 {
		t.Errorf("lift with no subject: exit %d, want 2", code)
	}

	bare := httptest.NewServer(admin.Handler(admin.Deps{Gatherer: prometheus.NewRegistry(), SVIDs: noSVID{}, Ready: func() error { return nil }}))
	t.Cleanup(bare.Close)
	if code, _, errs := credflow("quarantine", "list", "-admin", strings.TrimPrefix(bare.URL, "http://")); code != 1 || !strings.Contains(errs, "no anomaly detection configured") {
		t.Errorf("list without anomaly detection: exit %d, %s", code, errs)
	}
}

type noSVID struct{}

func (noSVID) GetX509SVID() (*x509svid.SVID, error) { return nil, errors.New("no identity yet") }
