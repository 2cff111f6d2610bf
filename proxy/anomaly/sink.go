package anomaly

import (
	"context"
	"log/slog"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/credflow/credflow/internal/logkey"
)

// Sink receives events. Emit is called on the goroutine that called
// Observe and must not block.
type Sink interface {
	Emit(Event)
}

// SinkFunc is a function that is a Sink.
type SinkFunc func(Event)

// Emit calls f(e).
func (f SinkFunc) Emit(e Event) { f(e) }

// LogSink writes each event as one structured log line at warning level:
// msg "anomaly" with the detector, subject, action, evidence (a group of
// its non-zero fields) and, for quarantines, until. It never logs a token
// or its ID.
type LogSink struct {
	// Logger is where the lines go; nil discards them.
	Logger *slog.Logger
}

var _ Sink = LogSink{}

// Emit logs e.
func (l LogSink) Emit(e Event) {
	if l.Logger == nil {
		return
	}
	attrs := []slog.Attr{
		slog.String(logkey.Detector, string(e.Detector)),
		slog.String(logkey.Subject, e.Subject.String()),
		slog.String(logkey.Action, string(e.Action)),
		slog.Any(logkey.Evidence, e.Evidence),
	}
	if !e.Until.IsZero() {
		attrs = append(attrs, slog.Time(logkey.Until, e.Until))
	}
	l.Logger.LogAttrs(context.Background(), slog.LevelWarn, "anomaly", attrs...)
}

// LogValue is the evidence's non-zero fields, as a group.
func (ev Evidence) LogValue() slog.Value {
	var attrs []slog.Attr
	if ev.Count != 0 {
		attrs = append(attrs, slog.Int(logkey.Count, ev.Count))
	}
	if ev.Limit != 0 {
		attrs = append(attrs, slog.Int(logkey.Limit, ev.Limit))
	}
	if !ev.Since.IsZero() {
		attrs = append(attrs, slog.Time(logkey.Since, ev.Since))
	}
	if ev.Window != 0 {
		attrs = append(attrs, slog.Duration(logkey.Window, ev.Window))
	}
	if ev.Rate != 0 {
		attrs = append(attrs, slog.Float64(logkey.Rate, ev.Rate))
	}
	if ev.Baseline != 0 {
		attrs = append(attrs, slog.Float64(logkey.Baseline, ev.Baseline))
	}
	if ev.Route != "" {
		attrs = append(attrs, slog.String(logkey.Route, ev.Route))
	}
	if ev.Reason != "" {
		attrs = append(attrs, slog.String(logkey.Reason, string(ev.Reason)))
	}
	return slog.GroupValue(attrs...)
}

// annotations are the evidence's non-zero fields as strings, keyed as in
// the log line.
func (ev Evidence) annotations() map[string]string {
	a := make(map[string]string)
	for _, attr := range ev.LogValue().Group() {
		v := attr.Value
		switch v.Kind() {
		case slog.KindTime:
			a[attr.Key] = v.Time().UTC().Format(time.RFC3339Nano)
		case slog.KindFloat64:
			a[attr.Key] = strconv.FormatFloat(v.Float64(), 'f', -1, 64)
		default:
			a[attr.Key] = v.String()
		}
	}
	return a
}

// Metrics are the package's metrics. A nil *Metrics records nothing.
// Every label takes values from a small fixed set.
//
//	credflow_anomalies_total{detector,action}       events by detector and action
//	credflow_anomaly_webhook_dropped_total          events the webhook dropped: its queue was full, or it was closed
//	credflow_anomaly_webhook_failed_total           events the webhook could not deliver, retries spent
type Metrics struct {
	anomalies *prometheus.CounterVec
	dropped   prometheus.Counter
	failed    prometheus.Counter
}

var _ Sink = (*Metrics)(nil)

// NewMetrics creates the metrics and registers them with reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		anomalies: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "credflow_anomalies_total",
			Help: "Anomalies detected, by detector (refusal_burst, token_failures, rate_spike, new_caller) and action (alert, quarantine, revoke).",
		}, []string{"detector", "action"}),
		dropped: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "credflow_anomaly_webhook_dropped_total",
			Help: "Anomaly events not sent to the webhook because its queue was full or it was closed.",
		}),
		failed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "credflow_anomaly_webhook_failed_total",
			Help: "Anomaly events the webhook could not deliver after its retries.",
		}),
	}
	reg.MustRegister(m.anomalies, m.dropped, m.failed)
	return m
}

// Emit counts e.
func (m *Metrics) Emit(e Event) {
	if m != nil {
		m.anomalies.WithLabelValues(string(e.Detector), string(e.Action)).Inc()
	}
}

func (m *Metrics) webhookDropped() {
	if m != nil {
		m.dropped.Inc()
	}
}

func (m *Metrics) webhookFailed(n int) {
	if m != nil {
		m.failed.Add(float64(n))
	}
}
