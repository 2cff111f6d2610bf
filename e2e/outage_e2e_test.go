package e2e_test

import (
	"os"
	"testing"
	"time"

	"github.com/credflow/credflow/internal/sidecartest"
	"github.com/credflow/credflow/internal/spiretest"
)

// TestE2EAgentOutage is F1 with traffic: the SPIRE agent is killed for
// 40 s (CREDFLOW_SOAK=1: 3 minutes) while the sidecars' 5-minute SVIDs are
// valid. A request every 50 ms through both sidecars never fails, both
// stay ready, their goroutines and descriptors do not grow while they
// retry (backed off), and once the agent is back they reconnect (their
// Workload API errors stop).
func TestE2EAgentOutage(t *testing.T) {
	outage := 40 * time.Second
	if os.Getenv("CREDFLOW_SOAK") == "1" {
		outage = 3 * time.Minute
	}
	// The agent's own SVID must outlive the outage too: with join-token
	// attestation, an agent whose SVID expired cannot attest again.
	m := startMeshOn(t, spiretest.Options{CATTL: time.Hour, X509SVIDTTL: 10 * time.Minute}, 5*time.Minute, false, "")
	ctx := t.Context()
	loop := startFixedRate(t, 50*time.Millisecond, echoRequests(m.frontAddr))
	loop.waitMore(t, 20, 10*time.Second)

	if err := m.spire.KillAgent(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(5 * time.Second) // the watches notice and back off
	before := leakFigures(t, m.frontend, m.backend)
	errs0 := sidecarCounters(t, sidecarsOf(m), "credflow_workloadapi_errors_total")
	time.Sleep(outage - 5*time.Second)
	for _, sc := range sidecarsOf(m) {
		if code, body, err := sc.Get(ctx, "/readyz"); err != nil || code != 200 {
			t.Errorf("%s not ready with the agent down: %d %q %v", sc.Name, code, body, err)
		}
	}
	after := leakFigures(t, m.frontend, m.backend)
	errs1 := sidecarCounters(t, sidecarsOf(m), "credflow_workloadapi_errors_total")
	for k, v := range after {
		if v > before[k]+3 {
			t.Errorf("%s grew from %v to %v while the agent was down", k, before[k], v)
		}
	}
	// Backed off (doubling up to 5 s per watch): a few dozen errors at
	// most, where a loop without backoff makes thousands.
	for i, sc := range sidecarsOf(m) {
		if n := errs1[i] - errs0[i]; n > (outage - 5*time.Second).Seconds() {
			t.Errorf("%s: %v Workload API errors in %v: not backed off", sc.Name, n, outage-5*time.Second)
		}
	}

	if err := m.spire.StartAgent(ctx); err != nil {
		t.Fatal(err)
	}
	// Back: the watches reconnect and stop failing.
	pollFor(t, 30*time.Second, "reconnected to the agent", func() (bool, string) {
		a := sidecarCounters(t, sidecarsOf(m), "credflow_workloadapi_errors_total")
		time.Sleep(3 * time.Second)
		b := sidecarCounters(t, sidecarsOf(m), "credflow_workloadapi_errors_total")
		return a[0] == b[0] && a[1] == b[1], "Workload API errors still rising"
	})
	loop.waitMore(t, 20, 10*time.Second)
	ok, failed := loop.stop()
	t.Logf("agent down %v: %d requests, %d failed; goroutines and fds %v -> %v", outage, ok, failed, before, after)
	if failed != 0 {
		t.Errorf("%d requests failed", failed)
	}
}

func sidecarsOf(m *mesh) []*sidecartest.Sidecar {
	return []*sidecartest.Sidecar{m.frontend, m.backend}
}
