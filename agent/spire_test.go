package agent_test

import (
	"context"
	"errors"
	"os"
	"runtime"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/credflow/credflow/agent"
	"github.com/credflow/credflow/internal/spiretest"
	"github.com/credflow/credflow/internal/testenv"
	"github.com/credflow/credflow/reason"
)

// startSPIRE runs a real SPIRE server and agent for the test.
func startSPIRE(t *testing.T, opts spiretest.Options) *spiretest.SPIRE {
	t.Helper()
	testenv.NeedsSPIRE(t)
	opts.Logf = t.Logf
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	s, err := spiretest.Start(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Log(s.Logs(6000))
		}
		s.Close()
	})
	return s
}

// registerSelf registers this test process's uid under path.
func registerSelf(t *testing.T, s *spiretest.SPIRE, path string, x509TTL, jwtTTL time.Duration) spiffeid.ID {
	t.Helper()
	id := s.ID(path)
	if _, err := s.Register(t.Context(), spiretest.Entry{ID: id, UID: os.Getuid(), X509SVIDTTL: x509TTL, JWTSVIDTTL: jwtTTL}); err != nil {
		t.Fatal(err)
	}
	return id
}

// runSource starts a Source on the agent's socket and stops it at cleanup,
// checking that Run returns nil.
func runSource(t *testing.T, s *spiretest.SPIRE, cfg agent.Config) (*agent.Source, *prometheus.Registry) {
	t.Helper()
	reg := prometheus.NewRegistry()
	cfg.Addr = s.AgentAddr()
	cfg.Metrics = agent.NewMetrics(reg)
	if cfg.MaxBackoff == 0 {
		cfg.MaxBackoff = 2 * time.Second
	}
	src, err := agent.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- src.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Error("Run did not return within 10s of cancel")
		}
	})
	return src, reg
}

// waitReady waits until src is ready or the timeout passes.
func waitReady(t *testing.T, src *agent.Source, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := src.Ready()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("not ready after %s: %v", timeout, err)
		}
		select {
		case <-src.Changed():
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func reasonOf(err error) reason.Reason {
	var nre *agent.NotReadyError
	if errors.As(err, &nre) {
		return nre.Reason
	}
	return ""
}

// checkValid fails unless svid is within its validity period now and
// chains to the Source's bundle for its trust domain.
func checkValid(t *testing.T, src *agent.Source, svid *x509svid.SVID) {
	t.Helper()
	leaf := svid.Certificates[0]
	now := time.Now()
	if now.Before(leaf.NotBefore) || !now.Before(leaf.NotAfter) {
		t.Fatalf("SVID handed out outside its validity [%s, %s] at %s", leaf.NotBefore, leaf.NotAfter, now)
	}
	if _, _, err := x509svid.Verify(svid.Certificates, src); err != nil {
		t.Fatalf("SVID does not verify against the Source's bundle: %v", err)
	}
}

func TestSourceServesRegisteredWorkload(t *testing.T) {
	s := startSPIRE(t, spiretest.Options{})
	src, _ := runSource(t, s, agent.Config{})

	// Not registered yet: the agent answers that no identity is issued.
	deadline := time.Now().Add(20 * time.Second)
	for reasonOf(src.Ready()) != reason.NoIdentity {
		if time.Now().After(deadline) {
			t.Fatalf("Ready() = %v, want reason %s", src.Ready(), reason.NoIdentity)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if _, err := src.GetX509SVID(); !errors.Is(err, agent.ErrNotReady) {
		t.Fatalf("GetX509SVID before registration: err = %v, want ErrNotReady", err)
	}

	id := registerSelf(t, s, "/workload/self", 0, 0)
	waitReady(t, src, 30*time.Second)
	svid, err := src.GetX509SVID()
	if err != nil {
		t.Fatal(err)
	}
	if svid.ID != id {
		t.Fatalf("SVID ID = %s, want %s", svid.ID, id)
	}
	checkValid(t, src, svid)
	b, err := src.GetX509BundleForTrustDomain(s.TrustDomain())
	if err != nil || len(b.X509Authorities()) == 0 {
		t.Fatalf("X.509 bundle for %s: %v, %v", s.TrustDomain(), b, err)
	}
	waitJWTBundle(t, src, s) // the JWT bundle watch runs beside the X.509 one
	other := spiffeid.RequireTrustDomainFromString("other.example")
	if _, err := src.GetX509BundleForTrustDomain(other); err == nil {
		t.Fatalf("bundle for unknown trust domain %s returned", other)
	}
}

func TestSourceRotations(t *testing.T) {
	s := startSPIRE(t, spiretest.Options{})
	id := registerSelf(t, s, "/workload/rotating", 20*time.Second, 0)
	src, reg := runSource(t, s, agent.Config{})
	waitReady(t, src, 30*time.Second)

	const want = 3
	seen := map[string]bool{}
	deadline := time.After(90 * time.Second)
	for len(seen) < want+1 {
		ch := src.Changed()
		svid, err := src.GetX509SVID()
		if err != nil {
			t.Fatalf("GetX509SVID during rotation: %v", err)
		}
		if svid.ID != id {
			t.Fatalf("SVID ID = %s, want %s", svid.ID, id)
		}
		checkValid(t, src, svid)
		seen[svid.Certificates[0].SerialNumber.String()] = true
		select {
		case <-ch:
		case <-deadline:
			t.Fatalf("saw %d distinct SVIDs in 90s, want %d", len(seen), want+1)
		}
	}
	got := metricValue(t, reg, "credflow_svid_rotations_total")
	if got < want {
		t.Fatalf("credflow_svid_rotations_total = %v, want >= %d", got, want)
	}
}

// metricValue sums every series of the named metric in reg.
func metricValue(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var total float64
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.Metric {
			total += m.GetCounter().GetValue() + m.GetGauge().GetValue()
		}
	}
	return total
}

// TestSourceAgentOutage is F1: the agent is killed for ~30s while the SVID
// is valid.
func TestSourceAgentOutage(t *testing.T) {
	s := startSPIRE(t, spiretest.Options{})
	registerSelf(t, s, "/workload/outage", 5*time.Minute, 0)
	src, reg := runSource(t, s, agent.Config{MaxBackoff: 2 * time.Second})
	waitReady(t, src, 30*time.Second)
	before, _ := src.GetX509SVID()

	if err := s.KillAgent(); err != nil {
		t.Fatal(err)
	}
	// Let the watches notice and settle into their backoff, then sample.
	time.Sleep(3 * time.Second)
	g0, fd0 := runtime.NumGoroutine(), openFDs(t)
	for range 27 {
		time.Sleep(time.Second)
		if err := src.Ready(); err != nil {
			t.Fatalf("Ready() during outage: %v", err)
		}
		svid, err := src.GetX509SVID()
		if err != nil {
			t.Fatalf("GetX509SVID during outage: %v", err)
		}
		if !svid.Certificates[0].Equal(before.Certificates[0]) {
			t.Fatal("SVID changed while the agent was down")
		}
	}
	g1, fd1 := runtime.NumGoroutine(), openFDs(t)
	t.Logf("during outage: goroutines %d -> %d, fds %d -> %d", g0, g1, fd0, fd1)
	if g1 > g0+3 {
		t.Errorf("goroutines grew from %d to %d during the outage", g0, g1)
	}
	if fd1 > fd0+3 {
		t.Errorf("open fds grew from %d to %d during the outage", fd0, fd1)
	}
	// Retries are backed off: with a 2s cap, 30s allow ~20 attempts per
	// watch at most, not a tight loop.
	errs := metricValue(t, reg, "credflow_workloadapi_errors_total")
	if errs == 0 || errs > 60 {
		t.Errorf("credflow_workloadapi_errors_total = %v during a 30s outage, want 1..60", errs)
	}

	ch := src.Changed()
	if err := s.StartAgent(t.Context()); err != nil {
		t.Fatal(err)
	}
	select {
	case <-ch:
	case <-time.After(15 * time.Second):
		t.Fatal("no update within 15s of the agent's return")
	}
	if err := src.Ready(); err != nil {
		t.Fatalf("Ready() after recovery: %v", err)
	}
}

func openFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

// TestSourceExpiryWhileAgentDown is F2: the agent stays down past the
// SVID's expiry.
func TestSourceExpiryWhileAgentDown(t *testing.T) {
	s := startSPIRE(t, spiretest.Options{})
	registerSelf(t, s, "/workload/expiring", 10*time.Second, 0)
	src, _ := runSource(t, s, agent.Config{})
	waitReady(t, src, 30*time.Second)
	if err := s.KillAgent(); err != nil {
		t.Fatal(err)
	}
	svid, err := src.GetX509SVID()
	if err != nil {
		t.Fatalf("GetX509SVID right after the kill: %v", err)
	}
	notAfter := svid.Certificates[0].NotAfter
	if d := time.Until(notAfter); d > time.Minute {
		t.Fatalf("SVID valid for %s; the entry asked for a 10s TTL", d)
	}
	// Until expiry the cached SVID is served and valid; after it, never.
	for time.Now().Before(notAfter.Add(2 * time.Second)) {
		svid, err := src.GetX509SVID()
		now := time.Now()
		if err == nil && !now.Before(svid.Certificates[0].NotAfter) {
			t.Fatalf("expired SVID handed out at %s (NotAfter %s)", now, svid.Certificates[0].NotAfter)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if r := reasonOf(src.Ready()); r != reason.SVIDExpired {
		t.Fatalf("Ready() = %v, want reason %s", src.Ready(), reason.SVIDExpired)
	}
	if _, err := src.GetX509SVID(); !errors.Is(err, agent.ErrNotReady) {
		t.Fatalf("GetX509SVID after expiry: err = %v, want ErrNotReady", err)
	}
	if err := s.StartAgent(t.Context()); err != nil {
		t.Fatal(err)
	}
	waitReady(t, src, 20*time.Second)
	svid, err = src.GetX509SVID()
	if err != nil {
		t.Fatal(err)
	}
	checkValid(t, src, svid)
}

// TestSourceStartsBeforeAgent is F3: the Source starts before the Workload
// API socket exists.
func TestSourceStartsBeforeAgent(t *testing.T) {
	s := startSPIRE(t, spiretest.Options{})
	registerSelf(t, s, "/workload/early", 0, 0)
	if err := s.StopAgent(); err != nil {
		t.Fatal(err)
	}
	_ = os.Remove(s.AgentSocket())
	if _, err := os.Stat(s.AgentSocket()); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("agent socket still present: %v", err)
	}
	const maxBackoff = 2 * time.Second
	src, _ := runSource(t, s, agent.Config{MaxBackoff: maxBackoff})
	time.Sleep(5 * time.Second)
	if r := reasonOf(src.Ready()); r != reason.AgentUnavailable {
		t.Fatalf("Ready() with no agent = %v, want reason %s", src.Ready(), reason.AgentUnavailable)
	}
	if err := s.StartAgent(t.Context()); err != nil {
		t.Fatal(err)
	}
	started := time.Now()
	// One backoff (capped at maxBackoff, plus jitter), and a second for the
	// agent's first answer.
	waitReady(t, src, maxBackoff+maxBackoff/10+time.Second)
	t.Logf("ready %s after the agent became healthy", time.Since(started).Round(time.Millisecond))
}

// TestSourceStreamEnds is F14: the Workload API stream ends (the agent
// restarts) and the next rotation still arrives.
func TestSourceStreamEnds(t *testing.T) {
	s := startSPIRE(t, spiretest.Options{})
	registerSelf(t, s, "/workload/restarted", 20*time.Second, 0)
	src, _ := runSource(t, s, agent.Config{})
	waitReady(t, src, 30*time.Second)

	if err := s.StopAgent(); err != nil {
		t.Fatal(err)
	}
	if err := s.StartAgent(t.Context()); err != nil {
		t.Fatal(err)
	}
	// Collect two distinct SVIDs received after the restart: the one the
	// reconnected watch delivers first, and the next rotation.
	held, _ := src.GetX509SVID()
	serials := map[string]bool{held.Certificates[0].SerialNumber.String(): true}
	deadline := time.After(60 * time.Second)
	for n := 0; n < 2; {
		ch := src.Changed()
		select {
		case <-ch:
		case <-deadline:
			t.Fatalf("only %d new SVIDs within 60s of the agent restart", n)
		}
		svid, err := src.GetX509SVID()
		if err != nil {
			t.Fatal(err)
		}
		if sn := svid.Certificates[0].SerialNumber.String(); !serials[sn] {
			serials[sn] = true
			n++
			checkValid(t, src, svid)
		}
	}
}
