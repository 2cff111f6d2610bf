package otlp_test

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	collogspb "go.opentelemetry.io/proto/otlp/collector/logs/v1"
	logspb "go.opentelemetry.io/proto/otlp/logs/v1"
	"google.golang.org/grpc"

	"github.com/credflow/credflow/audit"
	"github.com/credflow/credflow/audit/otlp"
	"github.com/credflow/credflow/internal/jaegertest"
	"github.com/credflow/credflow/internal/testenv"
)

// collector is an OTLP logs receiver for the unit tests: it keeps what it
// receives, and while hold is set it answers no call until released.
type collector struct {
	collogspb.UnimplementedLogsServiceServer
	addr string

	mu       sync.Mutex
	requests []*collogspb.ExportLogsServiceRequest
	hold     chan struct{} // non-nil: calls wait for it to close
	arrived  chan struct{} // a call arrived
}

func startCollector(t *testing.T) (*collector, *grpc.Server) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	c := &collector{addr: ln.Addr().String(), arrived: make(chan struct{}, 100)}
	s := grpc.NewServer()
	collogspb.RegisterLogsServiceServer(s, c)
	go s.Serve(ln)
	t.Cleanup(s.Stop)
	return c, s
}

func (c *collector) Export(ctx context.Context, req *collogspb.ExportLogsServiceRequest) (*collogspb.ExportLogsServiceResponse, error) {
	c.mu.Lock()
	hold := c.hold
	c.mu.Unlock()
	c.arrived <- struct{}{}
	if hold != nil {
		select {
		case <-hold:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	c.mu.Lock()
	c.requests = append(c.requests, req)
	c.mu.Unlock()
	return &collogspb.ExportLogsServiceResponse{}, nil
}

// records are the log records received so far.
func (c *collector) records() []*logspb.LogRecord {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []*logspb.LogRecord
	for _, req := range c.requests {
		for _, rl := range req.ResourceLogs {
			for _, sl := range rl.ScopeLogs {
				out = append(out, sl.LogRecords...)
			}
		}
	}
	return out
}

// run runs e until the test ends or the returned stop.
func run(t *testing.T, e *otlp.Exporter) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); e.Run(ctx) }()
	var once sync.Once
	stop = func() { once.Do(func() { cancel(); <-done }) }
	t.Cleanup(stop)
	return stop
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// metric is the value of the counter name{reason=label} (no label: "")
// in reg.
func metric(t *testing.T, reg *prometheus.Registry, name, label string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			if len(m.GetLabel()) == 0 && label == "" || len(m.GetLabel()) == 1 && m.GetLabel()[0].GetValue() == label {
				return m.GetCounter().GetValue()
			}
		}
	}
	t.Fatalf("no metric %s{%s}", name, label)
	return 0
}

func decision(i int, d string) *audit.Record {
	return &audit.Record{V: audit.Version, Seq: uint64(i), Prev: strings.Repeat("0", 64), Event: audit.Event{
		Type: audit.TypeDecision, Time: time.Unix(1700000000, int64(i)).UTC(), Listener: "api", Direction: "inbound",
		PeerID: "spiffe://example.org/frontend", Decision: d, Method: "GET", Path: "/orders"}}
}

// TestExportRecords: each record arrives once, its line the body, with
// the service's resource, a severity by outcome and the fields to filter
// on; an event the trail could not write arrives with its fields.
func TestExportRecords(t *testing.T) {
	c, _ := startCollector(t)
	reg := prometheus.NewRegistry()
	e, err := otlp.New(otlp.Config{Endpoint: c.addr, Insecure: true, ServiceName: "orders", Interval: 50 * time.Millisecond, Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	stop := run(t, e)
	e.Export(decision(1, audit.Allow), []byte(`{"line":1}`))
	e.Export(decision(2, audit.Deny), []byte(`{"line":2}`))
	unwritten := decision(0, audit.Allow)
	unwritten.Prev = ""
	e.Export(unwritten, nil)
	stop()

	got := c.records()
	if len(got) != 3 {
		t.Fatalf("%d records at the collector, want 3", len(got))
	}
	if b := got[0].GetBody().GetStringValue(); b != `{"line":1}` {
		t.Errorf("body %q, want the record's line", b)
	}
	if got[0].SeverityNumber != logspb.SeverityNumber_SEVERITY_NUMBER_INFO || got[1].SeverityNumber != logspb.SeverityNumber_SEVERITY_NUMBER_WARN {
		t.Errorf("severities %v, %v: want INFO for an allow, WARN for a deny", got[0].SeverityNumber, got[1].SeverityNumber)
	}
	if got[0].EventName != "credflow.audit.decision" || got[0].TimeUnixNano != uint64(time.Unix(1700000000, 1).UnixNano()) {
		t.Errorf("event name %q, time %d", got[0].EventName, got[0].TimeUnixNano)
	}
	attrs := map[string]string{}
	for _, kv := range got[1].Attributes {
		attrs[kv.Key] = kv.Value.String()
	}
	for _, k := range []string{"credflow.audit.seq", "credflow.audit.type", "credflow.peer_id", "credflow.decision", "url.path"} {
		if attrs[k] == "" {
			t.Errorf("attribute %s missing: %v", k, attrs)
		}
	}
	if b := got[2].GetBody().GetStringValue(); !strings.Contains(b, `"seq":0`) || !strings.Contains(b, `"peer_id":"spiffe://example.org/frontend"`) {
		t.Errorf("unwritten event's body %q: want its fields, seq 0", b)
	}
	if n := metric(t, reg, "credflow_audit_exported_total", ""); n != 3 {
		t.Errorf("credflow_audit_exported_total = %v, want 3", n)
	}
}

// TestSlowCollector: while the collector answers nothing, Export goes on
// returning; records past the queue are dropped and counted, and those
// queued go when the collector answers again.
func TestSlowCollector(t *testing.T) {
	c, _ := startCollector(t)
	hold := make(chan struct{})
	c.mu.Lock()
	c.hold = hold
	c.mu.Unlock()
	reg := prometheus.NewRegistry()
	e, err := otlp.New(otlp.Config{Endpoint: c.addr, Insecure: true, Queue: 10, Interval: time.Hour, Timeout: time.Hour, Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	run(t, e)
	for i := range 10 { // a full queue: sent at once
		e.Export(decision(i+1, audit.Allow), []byte("{}"))
	}
	<-c.arrived // and the collector hangs on it
	for i := range 1000 {
		e.Export(decision(i+11, audit.Allow), []byte("{}")) // would hang here if Export waited
	}
	if n := metric(t, reg, "credflow_audit_export_dropped_total", otlp.DropQueueFull); n != 990 {
		t.Errorf("dropped for a full queue: %v, want 990", n)
	}
	close(hold)
	waitFor(t, "the 20 queued records exported", func() bool { return metric(t, reg, "credflow_audit_exported_total", "") == 20 })
	if n := len(c.records()); n != 20 {
		t.Errorf("%d records at the collector, want 20", n)
	}
}

// TestCollectorDown: records a collector that is not there cannot take
// are counted as failed, and stopping does not wait past the timeout.
func TestCollectorDown(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	reg := prometheus.NewRegistry()
	e, err := otlp.New(otlp.Config{Endpoint: addr, Insecure: true, Interval: time.Hour, Timeout: 2 * time.Second, Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	stop := run(t, e)
	for i := range 5 {
		e.Export(decision(i+1, audit.Allow), []byte("{}"))
	}
	stop()
	if n := metric(t, reg, "credflow_audit_export_dropped_total", otlp.DropExportFailed); n != 5 {
		t.Errorf("export_failed %v, want 5", n)
	}
	e.Export(decision(6, audit.Allow), []byte("{}")) // after Run: dropped
	if n := metric(t, reg, "credflow_audit_export_dropped_total", otlp.DropQueueFull); n != 1 {
		t.Errorf("after Run returned: queue_full %v, want 1", n)
	}
}

// TestExportToJaeger: a trail written with the exporter reaches a real
// collector (Jaeger's): every event and gap once, each body exactly its
// line in the file; checkpoints stay in the file.
func TestExportToJaeger(t *testing.T) {
	testenv.NeedsJaeger(t)
	j, err := jaegertest.Start(t.Context(), "")
	if err != nil {
		t.Fatal(err)
	}
	defer j.Close()
	e, err := otlp.New(otlp.Config{Endpoint: j.OTLP, Insecure: true, Interval: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	stopExport := run(t, e)
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	w, err := audit.New(audit.Config{Path: path, CheckpointEvery: 25, Export: e.Export})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- w.Run(ctx) }()
	for i := range 100 {
		w.Write(decision(i, audit.Allow).Event)
	}
	waitFor(t, "100 events written", func() bool { return w.Stats().Events == 100 })
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	stopExport()

	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var want []string
	for line := range strings.Lines(string(data)) {
		if !strings.Contains(line, `"type":"checkpoint"`) {
			want = append(want, strings.TrimSuffix(line, "\n"))
		}
	}
	if len(want) != 100 {
		t.Fatalf("%d events in the trail, want 100", len(want))
	}
	waitFor(t, "the records at Jaeger", func() bool { return len(j.LogBodies()) >= len(want) })
	got := j.LogBodies()
	slices.Sort(got)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Errorf("Jaeger received %d records, want exactly the %d event lines of the trail", len(got), len(want))
	}
}
