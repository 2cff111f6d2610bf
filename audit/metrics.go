package audit

import "github.com/prometheus/client_golang/prometheus"

// Metrics are the writer's metrics. A nil *Metrics records nothing. Every
// label takes values from a small fixed set.
//
//	credflow_audit_records_total                 records written (events, gaps, checkpoints)
//	credflow_audit_dropped_total{reason}         events lost: queue_full (Write found the queue full), write_error (the write failed)
//	credflow_audit_write_errors_total            writes to the file that failed (a disk full)
//	credflow_audit_checkpoints_total{signed}     checkpoints written, signed "true" or "false"
//	credflow_audit_rotations_total               files rotated
type Metrics struct {
	records     prometheus.Counter
	dropped     *prometheus.CounterVec
	writeErrors prometheus.Counter
	checkpoints *prometheus.CounterVec
	rotations   prometheus.Counter
}

// NewMetrics creates the metrics and registers them with reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		records: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "credflow_audit_records_total",
			Help: "Audit records written: events, gaps and checkpoints.",
		}),
		dropped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "credflow_audit_dropped_total",
			Help: "Audit events lost, by reason: queue_full (the writer's queue was full), write_error (writing them failed). Each loss is recorded in a gap record.",
		}, []string{"reason"}),
		writeErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "credflow_audit_write_errors_total",
			Help: "Writes to the audit file that failed, such as on a full disk.",
		}),
		checkpoints: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "credflow_audit_checkpoints_total",
			Help: "Audit checkpoints written, by whether they are signed (true, false: no SVID at hand).",
		}, []string{"signed"}),
		rotations: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "credflow_audit_rotations_total",
			Help: "Audit files rotated.",
		}),
	}
	reg.MustRegister(m.records, m.dropped, m.writeErrors, m.checkpoints, m.rotations)
	return m
}

func (m *Metrics) recordsWritten(n int) {
	if m != nil {
		m.records.Add(float64(n))
	}
}

func (m *Metrics) droppedQueueFull() {
	if m != nil {
		m.dropped.WithLabelValues("queue_full").Inc()
	}
}

func (m *Metrics) droppedWriteError(n int) {
	if m != nil {
		m.dropped.WithLabelValues("write_error").Add(float64(n))
	}
}

func (m *Metrics) writeError() {
	if m != nil {
		m.writeErrors.Inc()
	}
}

func (m *Metrics) checkpoint(signed bool) {
	if m != nil {
		if signed {
			m.checkpoints.WithLabelValues("true").Inc()
		} else {
			m.checkpoints.WithLabelValues("false").Inc()
		}
	}
}

func (m *Metrics) rotated() {
	if m != nil {
		m.rotations.Inc()
	}
}
