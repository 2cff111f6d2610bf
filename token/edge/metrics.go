package edge

import "github.com/prometheus/client_golang/prometheus"

// Metrics counts key-set refreshes:
//
//	credflow_jwks_refreshes_total{result}   result: ok, error
type Metrics struct {
	refreshes *prometheus.CounterVec
}

// NewMetrics registers the edge metrics with reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{refreshes: prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "credflow_jwks_refreshes_total",
		Help: "Reads of external issuers' JWKS, by result.",
	}, []string{"result"})}
	reg.MustRegister(m.refreshes)
	return m
}

// Refreshed counts one refresh; use it as KeySetConfig.OnRefresh. A nil
// *Metrics counts nothing.
func (m *Metrics) Refreshed(err error) {
	if m == nil {
		return
	}
	result := "ok"
	if err != nil {
		result = "error"
	}
	m.refreshes.WithLabelValues(result).Inc()
}
