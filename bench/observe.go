package bench

import (
	"context"
	"fmt"
	"io"
	"path/filepath"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/credflow/credflow/internal/hostenv"
	"github.com/credflow/credflow/internal/jaegertest"
)

// The observe benchmark's listeners: the same app behind each; one kept
// from the audit trail and from tracing, one audited, one traced.
const (
	observePlain   = "plain"
	observeAudited = "audited"
	observeTraced  = "traced"
)

// ObserveConfig shapes the observe benchmark.
type ObserveConfig struct {
	Credflow string // the binary
	Jaeger   string // the directory holding the jaeger binary; "": bin/ at the module's root
	Dir      string
	Repeats  int
	Rate     int
	Duration time.Duration
	Conns    int
	// ProfileDir, if set, receives CPU and allocation profiles of the
	// two sidecars over the audit and the tracing comparisons, as
	// DIR/observe-sampled-<0|1>-<audit|tracing>.{cpu,allocs}.pprof (the sidecars
	// run with debug: {pprof: true}; the profiling's cost is in that
	// run's figures).
	ProfileDir string
	Log        io.Writer
}

// ObserveRun is the observe benchmark's results: two paired comparisons,
// audit on against off and tracing at 100% against off.
type ObserveRun struct {
	Rate     int            `json:"rate"`
	Duration time.Duration  `json:"duration"`
	Conns    int            `json:"conns"`
	Audit    []PairedResult `json:"audit"`
	Tracing  []PairedResult `json:"tracing"`
	// SampledOut is tracing on with a sample ratio of 0 against off,
	// on two other sidecars.
	SampledOut []PairedResult `json:"sampled_out,omitempty"`
}

// RunObserve measures what the audit trail and tracing cost a request: two
// credflow sidecars, each writing an audit trail and exporting every span
// (sample ratio 1) to a real Jaeger, each with three HTTP inbound
// listeners in front of the same app: one kept from both (audit: false,
// tracing: false), one audited only, one traced only. Paired as the limits
// benchmark is: audited against plain, then traced against plain.
func RunObserve(ctx context.Context, c ObserveConfig) (*ObserveRun, error) {
	j, err := jaegertest.Start(ctx, c.Jaeger)
	if err != nil {
		return nil, err
	}
	defer j.Close()
	r, err := newRig(ctx, c.Dir, Binaries{Credflow: c.Credflow}, raiseFileLimit(4096))
	if err != nil {
		return nil, err
	}
	r.pprof = c.ProfileDir != ""
	defer r.stopAll()
	app, err := startServer(ctx)
	if err != nil {
		return nil, err
	}
	// sidecars starts two sidecars with the listeners named, each with
	// the settings of its kind, and tracing as given.
	sidecars := func(name, tracing string, listeners ...string) (scs [2]pairedSidecar, err error) {
		for i := range scs {
			scs[i].addrs = map[string]string{}
			var cfg strings.Builder
			fmt.Fprintf(&cfg, "audit: {path: %q}\ntracing: {endpoint: %q, insecure: true, %s, service_name: bench-%d}\ninbound:\n",
				filepath.Join(c.Dir, fmt.Sprintf("audit-%s-%d.jsonl", name, i)), j.OTLP, tracing, i)
			for _, l := range listeners {
				if scs[i].addrs[l], err = freeAddr(); err != nil {
					return scs, err
				}
				fmt.Fprintf(&cfg, "  - name: %s\n    listen: %q\n    app: %q\n    protocol: http\n    allow: [spiffe://bench.example/client]\n"+
					"    routes: [{name: rpc, peers: [spiffe://bench.example/client], paths: [/*]}]\n", l, scs[i].addrs[l], app)
				switch l {
				case observePlain:
					cfg.WriteString("    audit: false\n    tracing: false\n")
				case observeAudited:
					cfg.WriteString("    tracing: false\n")
				case observeTraced:
					cfg.WriteString("    audit: false\n")
				}
			}
			if scs[i].p, err = r.credflow(fmt.Sprintf("observe-%s-%d", name, i), r.wlServer.Addr(), cfg.String()); err != nil {
				return scs, err
			}
		}
		return scs, nil
	}
	scs, err := sidecars("sampled", "sample_ratio: 1", observePlain, observeAudited, observeTraced)
	if err != nil {
		return nil, err
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
	run := &ObserveRun{Rate: c.Rate, Duration: c.Duration, Conns: c.Conns}
	// profiled runs f, with the two sidecars profiled over it when asked,
	// as DIR/<sidecar>-<what>.{cpu,allocs}.pprof.
	profiled := func(what string, f func() error) error {
		if c.ProfileDir == "" {
			return f()
		}
		pr, err := newProfiler(c.ProfileDir, c.Log)
		if err != nil {
			return err
		}
		stop := pr.startProcs(ctx, map[string]*proc{scs[0].p.name + "-" + what: scs[0].p, scs[1].p.name + "-" + what: scs[1].p})
		defer stop()
		return f()
	}
	if err := profiled("audit", func() (err error) {
		run.Audit, err = runPaired(ctx, scs, observePlain, observeAudited, c.Repeats, load, nil)
		return err
	}); err != nil {
		return nil, err
	}
	if err := profiled("tracing", func() (err error) {
		run.Tracing, err = runPaired(ctx, scs, observePlain, observeTraced, c.Repeats, load, nil)
		return err
	}); err != nil {
		return nil, err
	}
	// Sampling off: two sidecars of their own, the first two stopped.
	for _, sc := range scs {
		sc.p.stop()
	}
	if scs, err = sidecars("unsampled", "sample_ratio: 0", observePlain, observeTraced); err != nil {
		return nil, err
	}
	if run.SampledOut, err = runPaired(ctx, scs, observePlain, observeTraced, c.Repeats, load, nil); err != nil {
		return nil, err
	}
	return run, nil
}

// ObserveTable renders an observe run.
func ObserveTable(env *hostenv.Environment, run *ObserveRun) string {
	var b writer
	b.printf("# Audit trail and tracing: their cost per request\n\n"+
		"Two credflow sidecars, each writing an audit trail (a hash-chained record per decision, signed checkpoints) and "+
		"exporting spans over OTLP/gRPC to a real Jaeger (v1.75.0, in memory) with a sample ratio of 1, each with three HTTP "+
		"inbound listeners in front of the same app: `%s` kept from both (`audit: false`, `tracing: false`), `%s` audited "+
		"only, `%s` traced only (a server and a client span per request). In each repeat the harness (the client identity, "+
		"mTLS, HTTP/1.1, 1 KB each way) loads one sidecar's plain listener and the other's audited (then traced) one at "+
		"once, %d requests/s for %v over %d connections each, and the sidecars swap roles in the next; %d repeats per "+
		"comparison. CPU is the loaded sidecar process's per request, the trail's writer and the span exporter included; "+
		"median (min–max); the ratio is taken within each repeat.\n\n",
		observePlain, observeAudited, observeTraced, run.Rate, run.Duration, run.Conns, len(run.Audit)/2)
	writeEnv(&b.Builder, env)
	b.printf("\n## Audit trail\n\n")
	am, alo, ahi := pairedTable(&b, run.Audit, observePlain, observeAudited)
	b.printf("\n## Tracing, every request sampled\n\n")
	tm, tlo, thi := pairedTable(&b, run.Tracing, observePlain, observeTraced)
	met := map[bool]string{true: "met", false: "not met"}
	b.printf("\n| target (issue 18) | measured | |\n|---|---|---|\n")
	b.printf("| the audit trail costs at most 5%% more CPU per request | %.3f× (per-repeat ratios %.3f–%.3f) | %s |\n", am, alo, ahi, met[am <= 1.05])
	b.printf("| tracing at 100%% sampling costs at most 10%% more CPU per request | %.3f× (per-repeat ratios %.3f–%.3f) | %s |\n", tm, tlo, thi, met[tm <= 1.10])
	if len(run.SampledOut) > 0 {
		b.printf("\n## Tracing on, nothing sampled (`sample_ratio: 0`)\n\nTwo other sidecars, the first two stopped, with "+
			"`tracing: {sample_ratio: 0}`: the `%s` listener's requests carry no trace context, so none is sampled and no span "+
			"is exported; the sidecar only follows sampled traces then, so it starts none and passes the requests on as they came.\n\n", observeTraced)
		sm, slo, shi := pairedTable(&b, run.SampledOut, observePlain, observeTraced)
		b.printf("\n| target (issue 18) | measured | |\n|---|---|---|\n")
		b.printf("| sampling off costs nothing measurable | %.3f× (per-repeat ratios %.3f–%.3f) | %s |\n", sm, slo, shi,
			map[bool]string{true: "met: the median within 1%, the ratios on both sides of 1", false: "not met"}[slo <= 1 && sm <= 1.01])
	}
	b.printf("\nWith tracing off (no `tracing:` section, or `tracing: false` on the listener) no span is made and no "+
		"code of it runs: the `%s` listener is that case.\n", observePlain)
	return b.String()
}
