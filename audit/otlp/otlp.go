// Package otlp sends audit records to an OpenTelemetry collector as OTLP
// logs over gRPC, as the trail writes them: one log record per event or
// gap, its body the record's line in the trail (so that a copy held by
// the collector can be checked against the file), its attributes the
// fields a query filters on.
//
// Sending is batched and bounded: Export appends to a queue and returns;
// one goroutine (Run) sends the queue every second, or as soon as a batch
// is full. A record that finds the queue full, or whose batch the
// collector refuses or does not take within the timeout, is dropped and
// counted, and the failure logged at most every 10 s: a slow or absent
// collector never holds up the trail, let alone a request. The trail on
// disk stays the record of truth; this is a copy for search and alerting.
//
// The OpenTelemetry SDK's log pipeline is not used: its batch processor
// drops from a full queue without a count the sidecar could export, and
// the records here are already encoded. The OTLP protocol types and the
// gRPC client are the project's own dependencies.
package otlp

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	collogspb "go.opentelemetry.io/proto/otlp/collector/logs/v1"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	logspb "go.opentelemetry.io/proto/otlp/logs/v1"
	resourcepb "go.opentelemetry.io/proto/otlp/resource/v1"
	"golang.org/x/time/rate"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/credflow/credflow/audit"
	"github.com/credflow/credflow/internal/logkey"
)

// Defaults of Config.
const (
	DefaultQueue    = 4096
	DefaultTimeout  = 5 * time.Second
	DefaultInterval = time.Second
	batchSize       = 512
)

// scopeName is the instrumentation scope of the records.
const scopeName = "github.com/credflow/credflow/audit"

// Config configures an Exporter. Endpoint is required.
type Config struct {
	// Endpoint is the collector's OTLP/gRPC host:port.
	Endpoint string
	// Insecure sends in plain text (a collector on loopback or the
	// node); otherwise TLS with the system's roots.
	Insecure bool
	// ServiceName is the resource's service.name (default "credflow").
	ServiceName string
	// Queue is how many records wait at most (default DefaultQueue).
	Queue int
	// Timeout bounds one export call (default DefaultTimeout).
	Timeout time.Duration
	// Interval is the longest a record waits to be sent (default
	// DefaultInterval).
	Interval time.Duration
	// Logger receives failed exports, at most one line every 10 s; nil
	// discards them.
	Logger *slog.Logger
	// Registerer registers the metrics; nil registers none.
	Registerer prometheus.Registerer
}

// Reasons a record is dropped, the label of
// credflow_audit_export_dropped_total.
const (
	DropQueueFull    = "queue_full"
	DropExportFailed = "export_failed"
)

// Exporter sends audit records to a collector. Export may be called from
// any goroutine; Run sends.
type Exporter struct {
	cfg      Config
	log      *slog.Logger
	conn     *grpc.ClientConn
	client   collogspb.LogsServiceClient
	resource *resourcepb.Resource
	warn     rate.Sometimes

	exported prometheus.Counter
	dropped  *prometheus.CounterVec

	mu     sync.Mutex
	queue  []*logspb.LogRecord
	closed bool
	kick   chan struct{}
}

// New creates an exporter; it connects when it first sends, so a
// collector that is down at the start costs records, counted, not the
// start.
func New(cfg Config) (*Exporter, error) {
	if cfg.Endpoint == "" {
		return nil, fmt.Errorf("audit/otlp: no collector endpoint")
	}
	cfg.ServiceName = cmp.Or(cfg.ServiceName, "credflow")
	if cfg.Queue <= 0 {
		cfg.Queue = DefaultQueue
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = DefaultTimeout
	}
	if cfg.Interval <= 0 {
		cfg.Interval = DefaultInterval
	}
	creds := credentials.NewTLS(nil)
	if cfg.Insecure {
		creds = insecure.NewCredentials()
	}
	conn, err := grpc.NewClient(cfg.Endpoint, grpc.WithTransportCredentials(creds))
	if err != nil {
		return nil, fmt.Errorf("audit/otlp: collector %s: %w", cfg.Endpoint, err)
	}
	e := &Exporter{cfg: cfg, log: cfg.Logger, conn: conn, client: collogspb.NewLogsServiceClient(conn),
		resource: &resourcepb.Resource{Attributes: []*commonpb.KeyValue{str("service.name", cfg.ServiceName)}},
		warn:     rate.Sometimes{First: 1, Interval: 10 * time.Second},
		exported: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "credflow_audit_exported_total",
			Help: "Audit records the OpenTelemetry collector accepted.",
		}),
		dropped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "credflow_audit_export_dropped_total",
			Help: "Audit records not sent to the collector, by reason: queue_full (the export queue was full), export_failed (the collector refused them or did not take them in time). They are still in the trail's file.",
		}, []string{"reason"}),
		kick: make(chan struct{}, 1),
	}
	if e.log == nil {
		e.log = slog.New(slog.DiscardHandler)
	}
	for _, r := range []string{DropQueueFull, DropExportFailed} {
		e.dropped.WithLabelValues(r)
	}
	if cfg.Registerer != nil {
		cfg.Registerer.MustRegister(e.exported, e.dropped)
	}
	return e, nil
}

// Export queues r, with line its line in the trail (nil when it could not
// be written), and returns at once; it is an audit.Config's Export.
func (e *Exporter) Export(r *audit.Record, line []byte) {
	lr := logRecord(r, line)
	e.mu.Lock()
	if e.closed || len(e.queue) >= e.cfg.Queue {
		e.mu.Unlock()
		e.dropped.WithLabelValues(DropQueueFull).Inc()
		return
	}
	e.queue = append(e.queue, lr)
	full := len(e.queue) == min(batchSize, e.cfg.Queue)
	e.mu.Unlock()
	if full {
		select {
		case e.kick <- struct{}{}:
		default:
		}
	}
}

// Run sends the queue every Interval and whenever a batch is full, until
// ctx is done; then it sends what is left, for at most Timeout, and
// closes the connection.
func (e *Exporter) Run(ctx context.Context) {
	tick := time.NewTicker(e.cfg.Interval)
	defer tick.Stop()
	for {
		select {
		case <-tick.C:
			e.send(false)
		case <-e.kick:
			e.send(false)
		case <-ctx.Done():
			e.send(true)
			e.conn.Close()
			return
		}
	}
}

// send sends everything queued, a batch per call; last closes the queue
// and gives all the calls together Timeout.
func (e *Exporter) send(last bool) {
	parent := context.Background()
	if last {
		var cancel context.CancelFunc
		parent, cancel = context.WithTimeout(parent, e.cfg.Timeout)
		defer cancel()
	}
	e.mu.Lock()
	records := e.queue
	e.queue = nil
	e.closed = last
	e.mu.Unlock()
	for batch := range slices.Chunk(records, batchSize) {
		ctx, cancel := context.WithTimeout(parent, e.cfg.Timeout)
		resp, err := e.client.Export(ctx, &collogspb.ExportLogsServiceRequest{ResourceLogs: []*logspb.ResourceLogs{{
			Resource:  e.resource,
			ScopeLogs: []*logspb.ScopeLogs{{Scope: &commonpb.InstrumentationScope{Name: scopeName}, LogRecords: batch}},
		}}})
		cancel()
		rejected := int64(0)
		if err == nil {
			if p := resp.GetPartialSuccess(); p != nil {
				rejected = min(p.GetRejectedLogRecords(), int64(len(batch)))
				if rejected > 0 {
					err = fmt.Errorf("the collector rejected %d records: %s", rejected, p.GetErrorMessage())
				}
			}
		} else {
			rejected = int64(len(batch))
		}
		e.exported.Add(float64(int64(len(batch)) - rejected))
		if rejected > 0 {
			e.dropped.WithLabelValues(DropExportFailed).Add(float64(rejected))
			e.warn.Do(func() {
				e.log.Warn("audit: records not exported to the collector", slog.String(logkey.Collector, e.cfg.Endpoint),
					slog.Int64(logkey.Count, rejected), slog.String(logkey.Error, err.Error()))
			})
		}
	}
}

// logRecord is r as an OTLP log record: the event's time, a severity
// (warn for a denial, a failure or a gap), the line as the body (for an
// event not written, its record with seq 0), and the fields a query
// filters on as attributes.
func logRecord(r *audit.Record, line []byte) *logspb.LogRecord {
	lr := &logspb.LogRecord{
		TimeUnixNano:         uint64(r.Time.UnixNano()),
		ObservedTimeUnixNano: uint64(time.Now().UnixNano()),
		SeverityNumber:       logspb.SeverityNumber_SEVERITY_NUMBER_INFO,
		SeverityText:         "INFO",
		EventName:            "credflow.audit." + string(r.Type),
	}
	if r.Decision == audit.Deny || r.Type == audit.TypeGap || r.Kind == audit.KindCredentialFailed {
		lr.SeverityNumber, lr.SeverityText = logspb.SeverityNumber_SEVERITY_NUMBER_WARN, "WARN"
	}
	if line == nil { // not in the trail: its fields, seq 0
		line, _ = json.Marshal(r)
	}
	if line != nil {
		lr.Body = &commonpb.AnyValue{Value: &commonpb.AnyValue_StringValue{StringValue: string(line)}}
	}
	attrs := make([]*commonpb.KeyValue, 0, 8)
	if r.Seq != 0 {
		attrs = append(attrs, &commonpb.KeyValue{Key: "credflow.audit.seq", Value: &commonpb.AnyValue{Value: &commonpb.AnyValue_IntValue{IntValue: int64(r.Seq)}}})
	} else {
		attrs = append(attrs, &commonpb.KeyValue{Key: "credflow.audit.unwritten", Value: &commonpb.AnyValue{Value: &commonpb.AnyValue_BoolValue{BoolValue: true}}})
	}
	attrs = append(attrs, str("credflow.audit.type", string(r.Type)))
	for _, f := range []struct{ key, value string }{
		{"credflow.audit.kind", string(r.Kind)},
		{"credflow.listener", r.Listener},
		{"credflow.peer_id", r.PeerID},
		{"credflow.decision", r.Decision},
		{"credflow.reason", r.Reason},
		{"credflow.route", r.Route},
		{"http.request.method", r.Method},
		{"url.path", r.Path},
		{"credflow.tls_group", r.Group},
		{"credflow.audit.jti", r.JTI},
		{"credflow.audit.subject", r.Subject},
		{"credflow.credential", r.Credential},
	} {
		if f.value != "" {
			attrs = append(attrs, str(f.key, f.value))
		}
	}
	lr.Attributes = attrs
	return lr
}

// str is a string attribute.
func str(key, value string) *commonpb.KeyValue {
	return &commonpb.KeyValue{Key: key, Value: &commonpb.AnyValue{Value: &commonpb.AnyValue_StringValue{StringValue: value}}}
}
