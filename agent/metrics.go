package agent

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/credflow/credflow/internal/labelcap"
	"github.com/credflow/credflow/reason"
)

// maxTrustDomainLabels caps the distinct trust_domain label values; further
// trust domains are counted under "other" so that a federation with many
// members cannot grow the number of series without bound.
const maxTrustDomainLabels = 32

// Metrics are the identity-side metrics. A nil *Metrics records nothing.
//
//	credflow_svid_expiry_timestamp_seconds   gauge    NotAfter of the current X.509-SVID
//	credflow_svid_rotations_total            counter  X.509-SVIDs replaced by a newer one
//	credflow_workloadapi_errors_total        counter  Workload API errors, by watch and reason
//	credflow_jwt_svid_cache_total            counter  JWT-SVID requests, by result (hit, miss)
//	credflow_bundle_updates_total            counter  bundle updates, by kind (x509, jwt) and trust domain
type Metrics struct {
	svidExpiry    prometheus.Gauge
	rotations     prometheus.Counter
	apiErrors     *prometheus.CounterVec
	jwtCache      *prometheus.CounterVec
	bundleUpdates *prometheus.CounterVec

	tds *labelcap.Set
}

// NewMetrics creates the identity metrics and registers them with reg.
// It panics if a metric of the same name is already registered, as
// prometheus.MustRegister does.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		svidExpiry: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "credflow_svid_expiry_timestamp_seconds",
			Help: "Expiry (NotAfter, Unix seconds) of the current X.509-SVID.",
		}),
		rotations: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "credflow_svid_rotations_total",
			Help: "X.509-SVIDs replaced by a newer one from the Workload API.",
		}),
		apiErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "credflow_workloadapi_errors_total",
			Help: "Workload API errors by watch (x509, jwt_bundles, jwt_svid) and reason.",
		}, []string{"watch", "reason"}),
		jwtCache: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "credflow_jwt_svid_cache_total",
			Help: "JWT-SVID requests served from the cache (hit) or fetched (miss).",
		}, []string{"result"}),
		bundleUpdates: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "credflow_bundle_updates_total",
			Help: "Trust bundle updates by kind (x509, jwt) and trust domain (capped; the rest is \"other\").",
		}, []string{"kind", "trust_domain"}),
		tds: labelcap.New(maxTrustDomainLabels),
	}
	reg.MustRegister(m.svidExpiry, m.rotations, m.apiErrors, m.jwtCache, m.bundleUpdates)
	return m
}

func (m *Metrics) setExpiry(unix float64) {
	if m != nil {
		m.svidExpiry.Set(unix)
	}
}

func (m *Metrics) rotated() {
	if m != nil {
		m.rotations.Inc()
	}
}

func (m *Metrics) apiError(watch string, r reason.Reason) {
	if m != nil {
		m.apiErrors.WithLabelValues(watch, string(r)).Inc()
	}
}

func (m *Metrics) jwtResult(hit bool) {
	if m == nil {
		return
	}
	if hit {
		m.jwtCache.WithLabelValues("hit").Inc()
	} else {
		m.jwtCache.WithLabelValues("miss").Inc()
	}
}

func (m *Metrics) bundleUpdated(kind, td string) {
	if m == nil {
		return
	}
	td = m.tds.Value(td)
	m.bundleUpdates.WithLabelValues(kind, td).Inc()
}
