package proxy

import (
	"crypto/tls"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/credflow/credflow/internal/labelcap"
	"github.com/credflow/credflow/proxy/relay"
	"github.com/credflow/credflow/reason"
)

// Metrics are the data plane's metrics. A nil *Metrics records nothing.
// Every label takes values from a small fixed set.
//
//	credflow_connections_total{direction,result}          connections by result: allowed, refused, error;
//	                                                      an allowed outbound connection is counted when
//	                                                      it ends (TLS 1.3 servers refuse after the
//	                                                      client's handshake completes), a pooled HTTP one
//	                                                      when the first response comes over it
//	credflow_refusals_total{direction,reason}             refused or failed connections by reason; direction
//	                                                      token_endpoint: refused token endpoint requests
//	credflow_handshake_duration_seconds{direction}        mTLS handshake time (histogram)
//	credflow_inbound_handshakes                           inbound connections accepted whose mTLS handshake has
//	                                                      not finished (at most limits.max_handshakes)
//	credflow_tls_connections_total{direction,group,version,resumed}
//	                                                      established mTLS connections by key-exchange group and TLS version
//	credflow_bytes_total{direction,flow}                  bytes relayed, flow = from_app or to_app
//	credflow_active_connections{direction}                connections being relayed now
//	credflow_parked_relay_directions                      directions of idle relays parked (no goroutine, no buffer held
//	                                                      until data arrives), for all of this process's listeners
//	credflow_memory_releases_total                        times the process returned to the system what a wave of
//	                                                      parked or closed relays freed (proxy/relay/release.go)
//	credflow_connections_closed_total{direction,reason}   established connections closed by the sidecar: peer_expired,
//	                                                      policy_revoked, rapid_reset (HTTP: too many requests cancelled early)
//	credflow_classical_connections_total{direction,trust_domain}
//	                                                      connections that negotiated a classical group under
//	                                                      hybrid-preferred, by peer trust domain (first 32, then "other")
//	credflow_quic_connections_total{direction}            QUIC connections between sidecars (one handshake each)
//	credflow_quic_streams_total{direction}                app connections carried as QUIC streams
//	credflow_quic_fallbacks_total{reason}                 outbound app connections sent over TCP instead: timeout,
//	                                                      handshake_failed, recently_failed, stream_limit
//	credflow_quic_handshake_duration_seconds{direction}   outbound QUIC handshake time (histogram)
//	credflow_quic_retries_total                           inbound QUIC connection attempts answered with a Retry
//	                                                      (past quic.handshake_rate per second)
//	credflow_jwt_tokens_total{op}                         tokens in HTTP mode: JWT-SVIDs attached (outbound) and
//	                                                      validated (inbound); transaction tokens minted (edge
//	                                                      outbound) and txn_verified (inbound)
//	credflow_global_limit_checks_total{kind,result}       checks against the global rate limit service, kind request
//	                                                      or connection: ok, over_limit, error (no answer in time:
//	                                                      the failure mode decided)
type Metrics struct {
	conns     *prometheus.CounterVec
	refusals  *prometheus.CounterVec
	handshake *prometheus.HistogramVec
	pending   prometheus.Gauge
	tlsConns  *prometheus.CounterVec
	bytes     *prometheus.CounterVec
	active    *prometheus.GaugeVec
	parked    prometheus.GaugeFunc
	releases  prometheus.CounterFunc
	closed    *prometheus.CounterVec
	classical *prometheus.CounterVec

	quicConns     *prometheus.CounterVec
	quicStreams   *prometheus.CounterVec
	quicFallbacks *prometheus.CounterVec
	quicRetries   prometheus.Counter
	quicHandshake *prometheus.HistogramVec
	tokens        *prometheus.CounterVec
	globalChecks  *prometheus.CounterVec

	tds *labelcap.Set
}

// maxTrustDomainLabels caps the trust_domain label values.
const maxTrustDomainLabels = 32

// NewMetrics creates the data-plane metrics and registers them with reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		conns: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "credflow_connections_total",
			Help: "Connections handled, by direction (inbound, outbound) and result (allowed, refused, error).",
		}, []string{"direction", "result"}),
		refusals: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "credflow_refusals_total",
			Help: "Connections refused or failed, by direction and reason.",
		}, []string{"direction", "reason"}),
		handshake: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "credflow_handshake_duration_seconds",
			Help:    "Duration of mTLS handshakes, successful or not.",
			Buckets: []float64{.0005, .001, .002, .005, .01, .025, .05, .1, .25, .5, 1, 5},
		}, []string{"direction"}),
		pending: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "credflow_inbound_handshakes",
			Help: "Inbound connections accepted whose mTLS handshake has not finished.",
		}),
		tlsConns: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "credflow_tls_connections_total",
			Help: "Established mTLS connections by direction, key-exchange group, TLS version and resumption.",
		}, []string{"direction", "group", "version", "resumed"}),
		bytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "credflow_bytes_total",
			Help: "Bytes relayed, by direction and flow (from_app, to_app).",
		}, []string{"direction", "flow"}),
		active: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "credflow_active_connections",
			Help: "Connections being relayed now, by direction.",
		}, []string{"direction"}),
		parked: prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "credflow_parked_relay_directions",
			Help: "Directions of idle relays parked (no goroutine, no buffer held until data arrives), for all of this process's listeners.",
		}, func() float64 { return float64(relay.Parked()) }),
		releases: prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "credflow_memory_releases_total",
			Help: "Times this process returned to the system the memory a wave of parked or closed relays freed.",
		}, func() float64 { return float64(relay.Releases()) }),
		closed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "credflow_connections_closed_total",
			Help: "Established connections closed by the sidecar, by reason (peer_expired, policy_revoked, rapid_reset).",
		}, []string{"direction", "reason"}),
		classical: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "credflow_classical_connections_total",
			Help: "Connections that negotiated a classical key exchange under hybrid-preferred, by direction and peer trust domain (first 32, then \"other\").",
		}, []string{"direction", "trust_domain"}),
		quicConns: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "credflow_quic_connections_total",
			Help: "QUIC connections established between sidecars (one handshake each), by direction.",
		}, []string{"direction"}),
		quicStreams: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "credflow_quic_streams_total",
			Help: "App connections carried as QUIC streams, by direction.",
		}, []string{"direction"}),
		quicFallbacks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "credflow_quic_fallbacks_total",
			Help: "Outbound app connections sent over TCP because QUIC was unavailable, by reason (timeout, handshake_failed, recently_failed, stream_limit).",
		}, []string{"reason"}),
		quicRetries: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "credflow_quic_retries_total",
			Help: "Inbound QUIC connection attempts answered with a Retry (source-address validation), past quic.handshake_rate new connections per second.",
		}),
		quicHandshake: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "credflow_quic_handshake_duration_seconds",
			Help:    "Duration of outbound QUIC handshakes, successful or not.",
			Buckets: []float64{.0005, .001, .002, .005, .01, .025, .05, .1, .25, .5, 1, 5},
		}, []string{"direction"}),
		tokens: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "credflow_jwt_tokens_total",
			Help: "Tokens handled in HTTP mode, by operation: JWT-SVIDs attached (outbound) and validated (inbound), transaction tokens minted (edge) and txn_verified (inbound); refusals are in credflow_refusals_total.",
		}, []string{"op"}),
		globalChecks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "credflow_global_limit_checks_total",
			Help: "Checks against the global rate limit service, by kind (request, connection) and result (ok, over_limit, error: no answer in time, the failure mode decided).",
		}, []string{"kind", "result"}),
		tds: labelcap.New(maxTrustDomainLabels),
	}
	reg.MustRegister(m.conns, m.refusals, m.handshake, m.pending, m.tlsConns, m.bytes, m.active, m.parked, m.releases, m.closed, m.classical,
		m.quicConns, m.quicStreams, m.quicFallbacks, m.quicRetries, m.quicHandshake, m.tokens, m.globalChecks)
	return m
}

func (m *Metrics) refused(dir direction, why reason.Reason, isError bool) {
	if m == nil {
		return
	}
	result := "refused"
	if isError {
		result = "error"
	}
	m.conns.WithLabelValues(string(dir), result).Inc()
	m.refusals.WithLabelValues(string(dir), string(why)).Inc()
}

// TokenEndpointRefused counts a request the token endpoint refused, in
// credflow_refusals_total{direction="token_endpoint"}. reason is one of the
// endpoint's fixed reasons.
func (m *Metrics) TokenEndpointRefused(why reason.Reason) {
	if m == nil {
		return
	}
	m.refusals.WithLabelValues("token_endpoint", string(why)).Inc()
}

func (m *Metrics) handshakeDone(dir direction, seconds float64) {
	if m != nil {
		m.handshake.WithLabelValues(string(dir)).Observe(seconds)
	}
}

func (m *Metrics) handshakeStarted() {
	if m != nil {
		m.pending.Inc()
	}
}

func (m *Metrics) handshakeEnded() {
	if m != nil {
		m.pending.Dec()
	}
}

func (m *Metrics) established(dir direction, cs *tls.ConnectionState) {
	if m == nil {
		return
	}
	m.conns.WithLabelValues(string(dir), "allowed").Inc()
	resumed := "false"
	if cs.DidResume {
		resumed = "true"
	}
	m.tlsConns.WithLabelValues(string(dir), GroupName(cs.CurveID), tls.VersionName(cs.Version), resumed).Inc()
}

func (m *Metrics) started(dir direction) {
	if m != nil {
		m.active.WithLabelValues(string(dir)).Inc()
	}
}

func (m *Metrics) finished(dir direction, fromApp, toApp int64) {
	if m == nil {
		return
	}
	m.active.WithLabelValues(string(dir)).Dec()
	m.bytes.WithLabelValues(string(dir), "from_app").Add(float64(fromApp))
	m.bytes.WithLabelValues(string(dir), "to_app").Add(float64(toApp))
}

func (m *Metrics) closedBySidecar(dir direction, why reason.Reason) {
	if m != nil {
		m.closed.WithLabelValues(string(dir), string(why)).Inc()
	}
}

func (m *Metrics) classicalAccepted(dir direction, td string) {
	if m == nil {
		return
	}
	td = m.tds.Value(td)
	m.classical.WithLabelValues(string(dir), td).Inc()
}

func (m *Metrics) quicConn(dir direction) {
	if m != nil {
		m.quicConns.WithLabelValues(string(dir)).Inc()
	}
}

func (m *Metrics) quicStream(dir direction) {
	if m != nil {
		m.quicStreams.WithLabelValues(string(dir)).Inc()
	}
}

func (m *Metrics) quicRetry() {
	if m != nil {
		m.quicRetries.Inc()
	}
}

func (m *Metrics) quicFallback(why reason.Reason) {
	if m != nil {
		m.quicFallbacks.WithLabelValues(string(why)).Inc()
	}
}

func (m *Metrics) quicHandshakeDone(dir direction, seconds float64) {
	if m != nil {
		m.quicHandshake.WithLabelValues(string(dir)).Observe(seconds)
	}
}

func (m *Metrics) globalCheck(kind, result string) {
	if m != nil {
		m.globalChecks.WithLabelValues(kind, result).Inc()
	}
}

func (m *Metrics) token(op string) {
	if m != nil {
		m.tokens.WithLabelValues(op).Inc()
	}
}

// GroupName names a key-exchange group for metrics and logs, mapping
// anything outside crypto/tls's known groups to "other" so the label set
// stays bounded.
func GroupName(id tls.CurveID) string {
	switch id {
	case tls.X25519, tls.CurveP256, tls.CurveP384, tls.CurveP521,
		tls.X25519MLKEM768, tls.SecP256r1MLKEM768, tls.SecP384r1MLKEM1024:
		return id.String()
	case 0:
		return "none"
	}
	return "other"
}
