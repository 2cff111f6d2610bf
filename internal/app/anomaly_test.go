package app

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/credflow/credflow/audit"
	"github.com/credflow/credflow/internal/config"
	"github.com/credflow/credflow/proxy/anomaly"
)

// TestLiftAudited: a quarantine lifted through the admin endpoint is in
// the audit trail; a subject that does not parse, or is not in
// quarantine, lifts nothing and writes nothing.
func TestLiftAudited(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	w, err := audit.New(audit.Config{Path: path})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); w.Run(ctx) }()
	d, err := newDetection(&config.Anomaly{TokenFailures: config.Burst{Count: 1}}, prometheus.NewRegistry(), slog.New(slog.DiscardHandler), nil)
	if err != nil {
		t.Fatal(err)
	}
	d.trail = &trail{w: w}
	d.detector.Quarantine().Add(anomaly.Peer(spiffeid.RequireFromString("spiffe://example.org/intruder")), time.Now().Add(time.Hour), anomaly.TokenFailures)
	if _, err := d.lift("nonsense"); err == nil {
		t.Error("lift of a subject that does not parse: no error")
	}
	if ok, _ := d.lift("spiffe://example.org/other"); ok {
		t.Error("lift of a subject not in quarantine reported done")
	}
	if ok, err := d.lift("spiffe://example.org/intruder"); !ok || err != nil {
		t.Fatalf("lift: %v %v", ok, err)
	}
	cancel()
	<-done
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(string(raw), `"kind":"quarantine"`); n != 1 || !strings.Contains(string(raw), `"subject":"spiffe://example.org/intruder"`) ||
		!strings.Contains(string(raw), `"reason":"lifted"`) {
		t.Errorf("the trail (%d quarantine records):\n%s", n, raw)
	}
}
