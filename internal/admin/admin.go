// Package admin serves the sidecar's admin endpoints, on loopback only:
//
//	/healthz          200 while the process runs
//	/readyz           200 when the sidecar can serve (a valid SVID, listeners
//	                  up, not draining); 503 and the reason otherwise
//	/metrics          Prometheus metrics
//	/debug/identity   the SPIFFE ID, SVID serial and validity, trust domains,
//	                  listener policies and the trust domains they name
//	                  that no bundle is held for, the key-exchange policy
//	                  and the connections by negotiated group, as JSON;
//	                  never key material
//	/debug/credentials each credential source's state (fresh, refreshing,
//	                  failing since, expires at, version, counters), as
//	                  JSON; never a value
//	/debug/pprof/     net/http/pprof's profiles, only when Deps.Pprof is
//	                  set (debug: {pprof: true}); 404 otherwise
//
// Nothing here changes state. The handlers are registered on the admin's
// own mux: net/http/pprof's registration on http.DefaultServeMux, which
// importing it makes, is served by no listener of the sidecar.
package admin

import (
	"encoding/json"
	"net/http"
	"net/http/pprof"
	"net/netip"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/credflow/credflow/credential"
)

// Deps is what the admin endpoints read.
type Deps struct {
	Gatherer prometheus.Gatherer
	SVIDs    x509svid.Source
	// TrustDomains lists the trust domains whose bundles are held.
	TrustDomains func() []spiffeid.TrustDomain
	// Ready returns nil when the sidecar is ready, else why not.
	Ready func() error
	// Policies returns each listener's policy patterns by listener name.
	Policies func() map[string][]string
	// KeyExchange describes the key-exchange policy.
	KeyExchange func() string
	// NegotiatedGroups counts connections by negotiated key-exchange group.
	NegotiatedGroups func() map[string]int64
	// PolicyTrustDomainsWithoutBundle returns the trust domains named by
	// policies whose bundles are not held; nil means none.
	PolicyTrustDomainsWithoutBundle func() []string
	// Credentials returns the state of each credential source, without
	// values; nil means none is configured.
	Credentials func() []credential.State
	// Quarantined lists the peers in quarantine now; nil: no anomaly
	// detection is configured (the endpoints answer 404).
	Quarantined func() []Quarantined
	// Lift ends the quarantine of subject (a SPIFFE ID or an IP address)
	// and reports whether it was in quarantine; an error says the subject
	// does not parse.
	Lift func(subject string) (bool, error)
	// Pprof serves net/http/pprof's handlers under /debug/pprof/ (GET
	// only; the profiles, the index, cmdline, symbol lookups by GET and
	// the execution trace). Default false: those paths answer 404.
	Pprof bool
}

// Handler returns the admin HTTP handler.
func Handler(d Deps) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if err := d.Ready(); err != nil {
			http.Error(w, "not ready: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
		w.Write([]byte("ready\n"))
	})
	mux.Handle("GET /metrics", promhttp.HandlerFor(d.Gatherer, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /debug/identity", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, identity(d))
	})
	mux.HandleFunc("GET /debug/credentials", func(w http.ResponseWriter, _ *http.Request) {
		states := []credential.State{}
		if d.Credentials != nil {
			states = d.Credentials()
		}
		writeJSON(w, map[string]any{"credentials": states})
	})
	if d.Quarantined != nil {
		mux.HandleFunc("GET /quarantine", func(w http.ResponseWriter, _ *http.Request) {
			writeJSON(w, map[string]any{"quarantined": d.Quarantined()})
		})
		mux.HandleFunc("POST /quarantine/lift", func(w http.ResponseWriter, r *http.Request) { lift(d, w, r) })
	}
	if d.Pprof {
		// Index serves the named profiles too (/debug/pprof/heap, allocs,
		// goroutine, ...).
		mux.HandleFunc("GET /debug/pprof/", pprof.Index)
		mux.HandleFunc("GET /debug/pprof/cmdline", pprof.Cmdline)
		mux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("GET /debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("GET /debug/pprof/trace", pprof.Trace)
	}
	return mux
}

// Identity is the /debug/identity document.
type Identity struct {
	SPIFFEID     string              `json:"spiffe_id,omitempty"`
	Serial       string              `json:"serial,omitempty"`
	NotBefore    *time.Time          `json:"not_before,omitempty"`
	NotAfter     *time.Time          `json:"not_after,omitempty"`
	Error        string              `json:"error,omitempty"`
	TrustDomains []string            `json:"trust_domains"`
	Policies     map[string][]string `json:"policies"`
	// PolicyTrustDomainsWithoutBundle are trust domains the policies name
	// with no bundle held: none of their workloads can be authenticated.
	PolicyTrustDomainsWithoutBundle []string `json:"policy_trust_domains_without_bundle"`
	KeyExchange                     string   `json:"key_exchange"`
	// NegotiatedGroups counts the connections relayed since start by the
	// key-exchange group they negotiated.
	NegotiatedGroups map[string]int64 `json:"negotiated_groups"`
}

func identity(d Deps) Identity {
	var doc Identity
	if svid, err := d.SVIDs.GetX509SVID(); err != nil {
		doc.Error = err.Error()
	} else {
		leaf := svid.Certificates[0]
		nb, na := leaf.NotBefore.UTC(), leaf.NotAfter.UTC()
		doc.SPIFFEID, doc.Serial, doc.NotBefore, doc.NotAfter = svid.ID.String(), leaf.SerialNumber.Text(16), &nb, &na
	}
	doc.TrustDomains = []string{}
	for _, td := range d.TrustDomains() {
		doc.TrustDomains = append(doc.TrustDomains, td.Name())
	}
	doc.Policies = d.Policies()
	doc.PolicyTrustDomainsWithoutBundle = []string{}
	if d.PolicyTrustDomainsWithoutBundle != nil {
		doc.PolicyTrustDomainsWithoutBundle = append(doc.PolicyTrustDomainsWithoutBundle, d.PolicyTrustDomainsWithoutBundle()...)
	}
	doc.KeyExchange = d.KeyExchange()
	doc.NegotiatedGroups = d.NegotiatedGroups()
	return doc
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}

// Quarantined is one entry of GET /quarantine.
type Quarantined struct {
	// Subject is the peer's SPIFFE ID or source IP address.
	Subject string `json:"subject"`
	// Until is when the quarantine ends by itself.
	Until time.Time `json:"until"`
	// Detector is the anomaly detector that put the subject there.
	Detector string `json:"detector"`
}

// lift serves POST /quarantine/lift?subject=S. It changes what the data
// plane admits, so only a caller on this host may use it (the admin
// listener may be reachable from the network for /metrics): a request
// from a non-loopback address is refused.
func lift(d Deps, w http.ResponseWriter, r *http.Request) {
	if !fromLoopback(r) {
		http.Error(w, "quarantine/lift: only from this host (a loopback address)", http.StatusForbidden)
		return
	}
	subject := r.URL.Query().Get("subject")
	lifted, err := d.Lift(subject)
	switch {
	case err != nil:
		http.Error(w, "quarantine/lift: "+err.Error(), http.StatusBadRequest)
	case !lifted:
		http.Error(w, "quarantine/lift: "+subject+" is not in quarantine", http.StatusNotFound)
	default:
		writeJSON(w, map[string]any{"lifted": subject})
	}
}

// fromLoopback reports whether r comes from a loopback address.
func fromLoopback(r *http.Request) bool {
	ap, err := netip.ParseAddrPort(r.RemoteAddr)
	return err == nil && ap.Addr().Unmap().IsLoopback()
}
