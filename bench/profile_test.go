package bench

import (
	"errors"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/pprof/profile"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/credflow/credflow/internal/admin"
)

type noSVID struct{}

func (noSVID) GetX509SVID() (*x509svid.SVID, error) { return nil, errors.New("none") }

func adminServer(t *testing.T, pprof bool) string {
	t.Helper()
	srv := httptest.NewServer(admin.Handler(admin.Deps{
		Gatherer:         prometheus.NewRegistry(),
		SVIDs:            noSVID{},
		TrustDomains:     func() []spiffeid.TrustDomain { return nil },
		Ready:            func() error { return nil },
		Policies:         func() map[string][]string { return nil },
		KeyExchange:      func() string { return "" },
		NegotiatedGroups: func() map[string]int64 { return nil },
		Pprof:            pprof,
	}))
	t.Cleanup(srv.Close)
	return strings.TrimPrefix(srv.URL, "http://")
}

// TestProfiler: against an admin listener with pprof on, a scenario
// yields a CPU profile that covers it and an allocation profile; against
// one with pprof off, warnings and no files, and the scenario goes on.
func TestProfiler(t *testing.T) {
	dir := t.TempDir()
	var log strings.Builder
	pr, err := newProfiler(dir, &log)
	if err != nil {
		t.Fatal(err)
	}
	tops := []*topology{
		{id: "on", client: &proc{admin: adminServer(t, true)}},
		{id: "off", server: &proc{admin: adminServer(t, false)}},
		{id: "peer", client: &proc{}}, // not a credflow sidecar: skipped
	}
	stop := pr.start(t.Context(), "busy", tops)
	time.Sleep(1500 * time.Millisecond)
	stop()

	var files []string
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		files = append(files, e.Name())
	}
	if want := []string{"on-outbound-busy.allocs.pprof", "on-outbound-busy.cpu.pprof"}; !slices.Equal(files, want) {
		t.Fatalf("files %v, want %v; log:\n%s", files, want, log.String())
	}
	for _, f := range files {
		b, err := os.ReadFile(filepath.Join(dir, f))
		if err != nil {
			t.Fatal(err)
		}
		p, err := profile.ParseData(b)
		if err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		if strings.HasSuffix(f, ".cpu.pprof") && p.DurationNanos < int64(1500*time.Millisecond) {
			// Two one-second pieces: the scenario's 1.5 s, to the end of
			// the piece under way when it ended.
			t.Errorf("%s covers %v, less than the scenario", f, time.Duration(p.DurationNanos))
		}
		if strings.HasSuffix(f, ".allocs.pprof") && p.DefaultSampleType != "alloc_space" {
			t.Errorf("%s: default sample type %q", f, p.DefaultSampleType)
		}
	}
	if !strings.Contains(log.String(), "warning: profile: off-inbound-busy: CPU:") || !strings.Contains(log.String(), "404") {
		t.Errorf("no warning for the sidecar without pprof:\n%s", log.String())
	}
}
