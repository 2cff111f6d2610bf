package credential

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Collector exports the caches' counters and the remaining life of their
// credentials, read from State at each scrape, labeled by source name. No
// value is exported.
type Collector struct {
	Caches []*Cache

	now func() time.Time // time.Now; tests set it
}

var (
	descHits = prometheus.NewDesc("credflow_credential_cache_hits_total",
		"Requests given a credential from memory, by credential source.", []string{"credential"}, nil)
	descFetches = prometheus.NewDesc("credflow_credential_fetches_total",
		"Credentials fetched from their source, by credential source.", []string{"credential"}, nil)
	descFailures = prometheus.NewDesc("credflow_credential_fetch_failures_total",
		"Fetches from a credential source that failed, by credential source.", []string{"credential"}, nil)
	descRemaining = prometheus.NewDesc("credflow_credential_remaining_seconds",
		"Seconds until the credential held expires, by credential source; absent for a credential with no expiry or none held.", []string{"credential"}, nil)
	descUsable = prometheus.NewDesc("credflow_credential_usable",
		"1 if the source has a credential it injects now, else 0 (requests that need it are answered 503).", []string{"credential"}, nil)
)

// Describe sends the descriptions of the metrics.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descHits, descFetches, descFailures, descRemaining, descUsable} {
		ch <- d
	}
}

// Collect sends each cache's metrics.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	now := time.Now
	if c.now != nil {
		now = c.now
	}
	for _, cache := range c.Caches {
		st := cache.State()
		ch <- prometheus.MustNewConstMetric(descHits, prometheus.CounterValue, float64(st.Hits), st.Name)
		ch <- prometheus.MustNewConstMetric(descFetches, prometheus.CounterValue, float64(st.Fetches), st.Name)
		ch <- prometheus.MustNewConstMetric(descFailures, prometheus.CounterValue, float64(st.Failures), st.Name)
		if !st.Expires.IsZero() {
			ch <- prometheus.MustNewConstMetric(descRemaining, prometheus.GaugeValue, st.Expires.Sub(now()).Seconds(), st.Name)
		}
		usable := 0.0
		if st.Usable {
			usable = 1
		}
		ch <- prometheus.MustNewConstMetric(descUsable, prometheus.GaugeValue, usable, st.Name)
	}
}
