package anomaly

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/credflow/credflow/reason"
)

// TestLogSink: one line per event, msg "anomaly", with the detector,
// subject, action, evidence and until, and never the token's ID.
func TestLogSink(t *testing.T) {
	var buf bytes.Buffer
	log := slog.New(slog.NewJSONHandler(&buf, nil))
	d, err := New(Config{TokenFailures: Burst{Count: 1, Response: Response{Action: ActionRevoke, For: time.Hour}}},
		Options{Sinks: []Sink{LogSink{Logger: log}}})
	if err != nil {
		t.Fatal(err)
	}
	for range 2 {
		d.Observe(Observation{Subject: mallory, Reason: reason.TxnReplayed, Route: "orders", JTI: "jti-secret-4711", Time: t0})
	}
	if strings.Contains(buf.String(), "jti-secret-4711") {
		t.Errorf("the log holds the token's ID: %s", &buf)
	}
	var line map[string]any
	if err := json.Unmarshal(buf.Bytes(), &line); err != nil {
		t.Fatalf("not one JSON line: %v\n%s", err, &buf)
	}
	delete(line, "time")
	want := map[string]any{
		"level": "WARN", "msg": "anomaly",
		"detector": "token_failures", "subject": "spiffe://example.org/mallory", "action": "revoke",
		"until": "2026-12-06T01:00:00Z",
		"evidence": map[string]any{"count": 2.0, "limit": 1.0, "since": "2026-12-06T00:00:00Z",
			"window": 6e10, "route": "orders", "reason": "txn_replayed"},
	}
	if diff := cmp.Diff(want, line); diff != "" {
		t.Errorf("log line (-want +got):\n%s", diff)
	}
}

// TestMetrics: events counted by detector and action.
func TestMetrics(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	m := NewMetrics(reg)
	d, err := New(Config{
		RefusalBurst: Burst{Count: 1, Response: Response{Action: ActionQuarantine}},
		NewCaller:    Novelty{Routes: []string{"orders"}, LearnFor: time.Second},
	}, Options{Sinks: []Sink{m}})
	if err != nil {
		t.Fatal(err)
	}
	d.Observe(Observation{Subject: alice, Route: "orders", Time: t0})
	for _, s := range []Subject{mallory, scanner} {
		for range 5 {
			d.Observe(Observation{Subject: s, Reason: reason.Unauthorized, Time: t0})
		}
	}
	d.Observe(Observation{Subject: bob, Route: "orders", Time: t0.Add(time.Minute)})
	want := `
# HELP credflow_anomalies_total Anomalies detected, by detector (refusal_burst, token_failures, rate_spike, new_caller) and action (alert, quarantine, revoke).
# TYPE credflow_anomalies_total counter
credflow_anomalies_total{action="alert",detector="new_caller"} 1
credflow_anomalies_total{action="quarantine",detector="refusal_burst"} 2
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "credflow_anomalies_total"); err != nil {
		t.Error(err)
	}
	if problems, err := testutil.GatherAndLint(reg); err != nil || len(problems) > 0 {
		t.Errorf("lint: %v %v", problems, err)
	}
	var nilMetrics *Metrics
	nilMetrics.Emit(Event{}) // a nil *Metrics records nothing, without panicking
}
