package e2e_test

import (
	"bytes"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/credflow/credflow/internal/pgtest"
	"github.com/credflow/credflow/internal/spiretest"
	"github.com/credflow/credflow/internal/testenv"
)

// TestE2EServerFailover is F15: two real SPIRE servers share one PostgreSQL
// (the Debian package, started by the test); the agent reaches them
// through a front that takes the first that answers, as a Kubernetes
// Service does. With traffic flowing through two sidecars, the first
// server is stopped: the sidecars keep rotating their SVIDs, which only the
// second server can now sign, and no request fails.
func TestE2EServerFailover(t *testing.T) {
	testenv.NeedsSPIRE(t)
	testenv.NeedsRoot(t, "running PostgreSQL as its own user and workloads as other uids")
	ctx := t.Context()
	pg, err := pgtest.Start(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pg.Stop)
	if err := pg.CreateDB(ctx, "spire"); err != nil {
		t.Fatal(err)
	}
	m := startMeshOn(t, spiretest.Options{Datastore: pg.ConnString("spire"), SecondServer: true}, 20*time.Second, false, "")

	var ok, failed atomic.Int64
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			case <-time.After(50 * time.Millisecond):
			}
			msg := []byte(fmt.Sprintf("request %d", i))
			if got, err := roundTrip(m.frontAddr, msg); err != nil || !bytes.Equal(got, msg) {
				failed.Add(1)
				t.Errorf("request %d failed: %v", i, err)
			} else {
				ok.Add(1)
			}
		}
	}()
	rotations := func() float64 {
		a, _ := m.backend.Metric(ctx, "credflow_svid_rotations_total")
		b, _ := m.frontend.Metric(ctx, "credflow_svid_rotations_total")
		return min(a, b)
	}
	time.Sleep(2 * time.Second)
	if err := m.spire.StopServer(); err != nil {
		t.Fatal(err)
	}
	start := rotations()
	deadline := time.Now().Add(90 * time.Second)
	for rotations()-start < 2 {
		if time.Now().After(deadline) {
			t.Fatalf("only %v rotations in 90 s with the first server down\n%s", rotations()-start, m.spire.Logs(4000))
		}
		time.Sleep(500 * time.Millisecond)
	}
	close(stop)
	<-done
	if code, body, err := m.frontend.Get(ctx, "/readyz"); err != nil || code != 200 {
		t.Errorf("frontend not ready with the first server down: %d %s %v", code, body, err)
	}
	t.Logf("first server down: %v rotations per sidecar, %d requests, %d failed", rotations()-start, ok.Load(), failed.Load())
	if failed.Load() != 0 || ok.Load() < 100 {
		t.Fatalf("%d requests failed, %d succeeded", failed.Load(), ok.Load())
	}
}
