package bench

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"runtime"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/credflow/credflow/internal/hostenv"
	"github.com/credflow/credflow/proxy/anomaly"
	"github.com/credflow/credflow/proxy/limit"
	"github.com/credflow/credflow/reason"
)

// The limits benchmark's listeners: the same app behind each, one with
// rate limits on, one without.
const (
	limitsOff = "unlimited"
	limitsOn  = "limited"
)

// limitsConfig is every limit on, high enough to admit the whole load:
// the cost measured is the checks', not refusals'. The listener's one
// route is named, with a limit of its own.
const limitsConfig = `    routes: [{name: rpc, peers: [spiffe://bench.example/client], paths: [/*], limit: {rate: 100000, burst: 100000}}]
    limits:
      requests:
        total: {rate: 1000000, burst: 1000000}
        per_identity: {rate: 100000, burst: 100000}
        overrides: [{peers: [spiffe://bench.example/batch/*], rate: 10, burst: 10}]
      connections: {per_identity: {rate: 1000, burst: 1000}}
      concurrent_per_identity: 1000
`

// anomalyConfig is every anomaly detector on, observing the limited
// listener only (the other is anomaly: false); none fires under the load,
// so what is measured is the observation of every connection and request.
const anomalyConfig = `anomaly:
  refusal_burst: {count: 1000, window: 1m}
  token_failures: {count: 1000, window: 1m}
  rate_spike: {factor: 10, min_rate: 100000, half_life: 10s, interval: 1s, warm_up: 1s}
  new_caller: {routes: [rpc, limited], learn_for: 1s}
`

// LimitsConfig shapes the limits benchmark.
type LimitsConfig struct {
	Credflow   string // the binary
	Dir        string
	Repeats    int
	Rate       int
	Duration   time.Duration
	Conns      int
	Identities int // distinct identities fed to a Limiter for the memory figure
	Cap        int // its MaxIdentities
}

// LimitsRun is the limits benchmark's results.
type LimitsRun struct {
	Rate     int            `json:"rate"`
	Duration time.Duration  `json:"duration"`
	Conns    int            `json:"conns"`
	Results  []PairedResult `json:"results"`
	// The memory of a Limiter fed Identities distinct identities, with
	// MaxIdentities Cap: the identities it kept, and its heap.
	Identities  int   `json:"identities"`
	Cap         int   `json:"cap"`
	Tracked     int   `json:"tracked"`
	HeapBytes   int64 `json:"heap_bytes"`
	UncappedMax int64 `json:"uncapped_heap_bytes"` // the same identities with a cap above their number
	// The same for anomaly detection fed Identities distinct source
	// addresses and as many identities, with its default cap.
	DetectorCap     int   `json:"detector_cap"`
	DetectorTracked int   `json:"detector_tracked"`
	DetectorHeap    int64 `json:"detector_heap_bytes"`
}

// RunLimits measures what rate limits and anomaly detection cost a
// request: two credflow sidecars, each with two HTTP inbound listeners in
// front of the same app, one with every limit on (high enough to admit
// everything) and every detector observing it, and one with neither; mTLS HTTP/1.1 requests from the harness (the client identity)
// through one sidecar's limited listener and the other's unlimited one at
// once, roles swapped each repeat. Then a Limiter's memory with many
// identities, in this process.
func RunLimits(ctx context.Context, c LimitsConfig) (*LimitsRun, error) {
	r, err := newRig(ctx, c.Dir, Binaries{Credflow: c.Credflow}, raiseFileLimit(4096))
	if err != nil {
		return nil, err
	}
	defer r.stopAll()
	app, err := startServer(ctx)
	if err != nil {
		return nil, err
	}
	var scs [2]pairedSidecar
	for i := range scs {
		scs[i].addrs = map[string]string{}
		var cfg strings.Builder
		cfg.WriteString(anomalyConfig + "inbound:\n")
		for _, l := range []string{limitsOff, limitsOn} {
			if scs[i].addrs[l], err = freeAddr(); err != nil {
				return nil, err
			}
			fmt.Fprintf(&cfg, "  - name: %s\n    listen: %q\n    app: %q\n    protocol: http\n    allow: [spiffe://bench.example/client]\n", l, scs[i].addrs[l], app)
			if l == limitsOn {
				cfg.WriteString(limitsConfig)
			} else {
				cfg.WriteString("    routes: [{peers: [spiffe://bench.example/client], paths: [/*]}]\n    anomaly: false\n")
			}
		}
		if scs[i].p, err = r.credflow(fmt.Sprintf("limits-%d", i), r.wlServer.Addr(), cfg.String()); err != nil {
			return nil, err
		}
	}
	svid, err := x509svid.Load(r.path("client.crt"), r.path("client.key"))
	if err != nil {
		return nil, err
	}
	tlsCfg := tlsconfig.MTLSClientConfig(svid, r.bundle, tlsconfig.AuthorizeID(spiffeid.RequireFromPath(r.td, serverPath)))
	load := func(ctx context.Context, addr string) (latencies, int, int, error) {
		lat, failed, err := rpcTLS(ctx, addr, tlsCfg, c.Conns, c.Rate, c.Duration)
		return lat, failed, c.Conns, err
	}
	run := &LimitsRun{Rate: c.Rate, Duration: c.Duration, Conns: c.Conns, Identities: c.Identities, Cap: c.Cap}
	if run.Results, err = runPaired(ctx, scs, limitsOff, limitsOn, c.Repeats, load, nil); err != nil {
		return nil, err
	}
	run.Tracked, run.HeapBytes = limiterHeap(c.Identities, c.Cap)
	_, run.UncappedMax = limiterHeap(c.Identities, c.Identities+1)
	run.DetectorCap = anomaly.DefaultMaxSubjects
	if run.DetectorTracked, run.DetectorHeap, err = detectorHeap(c.Identities); err != nil {
		return nil, err
	}
	return run, nil
}

// rpcTLS is rpcHTTP1 over mTLS with tlsCfg.
func rpcTLS(ctx context.Context, addr string, tlsCfg *tls.Config, conns, rate int, duration time.Duration) (latencies, int, error) {
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: tlsCfg,
		MaxConnsPerHost: conns, MaxIdleConnsPerHost: conns, DisableCompression: true}}
	defer client.CloseIdleConnections()
	url := "https://" + addr + "/rpc"
	do := func(ctx context.Context) error {
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, strings.NewReader(string(rpcBody)))
		if err != nil {
			return err
		}
		resp, err := client.Do(req)
		if err != nil {
			return err
		}
		n, _ := io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || n != int64(len(rpcBody)) {
			return fmt.Errorf("status %d (%s), %d bytes", resp.StatusCode, resp.Header.Get("X-Credflow-Reason"), n)
		}
		return nil
	}
	for range conns {
		if err := do(ctx); err != nil {
			return nil, 0, fmt.Errorf("warm-up: %w", err)
		}
	}
	return openLoop(ctx, rate, duration, conns, do)
}

// limiterHeap feeds n distinct identities to a Limiter with every limit
// on and MaxIdentities most, and returns the identities it keeps and the
// heap it holds.
func limiterHeap(n, most int) (int, int64) {
	heap := func() int64 {
		runtime.GC()
		var m runtime.MemStats
		runtime.ReadMemStats(&m)
		return int64(m.HeapAlloc)
	}
	before := heap()
	l := limit.New(limit.Config{
		Requests:              limit.Limits{Total: limit.Rate{PerSecond: 1e6, Burst: 1e6}, PerIdentity: limit.Rate{PerSecond: 100, Burst: 100}},
		Connections:           limit.Limits{PerIdentity: limit.Rate{PerSecond: 10, Burst: 10}},
		ConcurrentPerIdentity: 10,
		MaxIdentities:         most,
	})
	now := time.Now()
	td := spiffeid.RequireTrustDomainFromString("bench.example")
	for i := range n {
		id, _ := spiffeid.FromSegments(td, "ns", "prod", "sa", fmt.Sprintf("workload-%d", i))
		l.Request(id, now)
		if release, _, ok := l.Connect(id, now); ok {
			release()
		}
	}
	grown := heap() - before
	runtime.KeepAlive(l)
	return l.Tracked(), grown
}

// LimitsTable renders a limits run.
func LimitsTable(env *hostenv.Environment, run *LimitsRun) string {
	var b writer
	b.printf("# Rate limits and anomaly detection: their cost per request, and their memory\n\n"+
		"Two credflow sidecars, each with two HTTP inbound listeners in front of the same app: `%s` with every limit on "+
		"(total and per-identity request buckets, an override, a named route's own limit, new connections per identity, "+
		"open connections per identity; high enough to admit everything, so what is measured is the checks) and all four "+
		"anomaly detectors observing its every connection and request (refusal_burst, token_failures, rate_spike, "+
		"new_caller on its route; none fires), `%s` with no limit and kept from detection (`anomaly: false`; it still "+
		"pays the quarantine lookup, a few nanoseconds). The global limit is not in it: its cost is a round trip to the "+
		"rate limit service. In each repeat the "+
		"harness (the client identity, mTLS, HTTP/1.1, 1 KB each way) loads one sidecar's limited listener and the "+
		"other's unlimited one at once, %d requests/s for %v over %d connections each, and the sidecars swap roles in the "+
		"next; %d repeats. CPU is the loaded sidecar process's per request; median (min–max); the ratio is taken within "+
		"each repeat.\n\n", limitsOn, limitsOff, run.Rate, run.Duration, run.Conns, len(run.Results)/2)
	writeEnv(&b.Builder, env)
	rm, rlo, rhi := pairedTable(&b, run.Results, limitsOff, limitsOn)
	b.printf("\nMemory, in this process: a Limiter with every limit on, fed %d distinct identities (a request and a connection "+
		"each), keeps %d (its max_identities) and holds %.1f MiB; with no cap below their number it would hold %.1f MiB.\n",
		run.Identities, run.Tracked, float64(run.HeapBytes)/(1<<20), float64(run.UncappedMax)/(1<<20))
	b.printf("\n| target (issue 17) | measured | |\n|---|---|---|\n")
	b.printf("| limits and detectors on cost at most 3%% more CPU per request than the same listener without them | %.3f× (per-repeat ratios %.3f–%.3f) | %s |\n",
		rm, rlo, rhi, map[bool]string{true: "met", false: "not met"}[rm <= 1.03])
	b.printf("| memory with %d identities stays under the configured cap | %d tracked of a cap of %d | %s |\n",
		run.Identities, run.Tracked, run.Cap, map[bool]string{true: "met", false: "not met"}[run.Tracked <= run.Cap])
	b.printf("| anomaly detection's state with %d subjects stays under its cap | %d tracked of a cap of %d, %.1f MiB | %s |\n",
		run.Identities, run.DetectorTracked, run.DetectorCap, float64(run.DetectorHeap)/(1<<20),
		map[bool]string{true: "met", false: "not met"}[run.DetectorTracked <= run.DetectorCap])
	return b.String()
}

// detectorHeap feeds anomaly detection, every detector on, a refused
// handshake from each of n distinct source addresses and a request from
// each of n distinct identities, and returns the subjects it keeps and the
// heap it holds.
func detectorHeap(n int) (int, int64, error) {
	heap := func() int64 {
		runtime.GC()
		var m runtime.MemStats
		runtime.ReadMemStats(&m)
		return int64(m.HeapAlloc)
	}
	before := heap()
	d, err := anomaly.New(anomaly.Config{
		RefusalBurst:  anomaly.Burst{Count: 20},
		TokenFailures: anomaly.Burst{Count: 20},
		RateSpike:     anomaly.Spike{Factor: 10},
		NewCaller:     anomaly.Novelty{Routes: []string{"rpc"}, LearnFor: time.Nanosecond},
	}, anomaly.Options{})
	if err != nil {
		return 0, 0, err
	}
	now := time.Now()
	td := spiffeid.RequireTrustDomainFromString("bench.example")
	for i := range n {
		addr := netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)})
		d.Observe(anomaly.Observation{Subject: anomaly.Source(addr), Time: now, Kind: anomaly.Connection, Reason: reason.HandshakeFailed})
		id, _ := spiffeid.FromSegments(td, "ns", "prod", "sa", fmt.Sprintf("workload-%d", i))
		d.Observe(anomaly.Observation{Subject: anomaly.Peer(id), Time: now, Kind: anomaly.Request, Route: "rpc"})
	}
	grown := heap() - before
	runtime.KeepAlive(d)
	return d.Tracked(), grown, nil
}
