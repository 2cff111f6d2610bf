package bench

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/google/pprof/profile"
)

// ProfileSummary is what the profiles of one sidecar in one scenario say
// about where its CPU and its allocations went (-profile-dir).
type ProfileSummary struct {
	Topology string `json:"topology"`
	Side     string `json:"side"` // outbound or inbound
	Scenario string `json:"scenario"`
	// CPUSeconds is the CPU the profile sampled.
	CPUSeconds float64 `json:"cpu_s"`
	// Requests is how many requests the topology carried in the scenario
	// (RPC scenarios), to divide the allocations by.
	Requests float64 `json:"requests,omitempty"`
	// Costs are the shares of that CPU spent under each of costClasses:
	// a sample counts for every class with a function in its stack, so
	// the shares overlap and need not add up to 1.
	Costs []Share `json:"costs"`
	// TopCPU are the functions that used the most CPU themselves (flat).
	TopCPU []Share `json:"top_cpu"`
	// AllocBytes and AllocObjects are what the sidecar allocated during
	// the scenario; TopAlloc the functions that allocated the most bytes.
	AllocBytes   float64 `json:"alloc_bytes"`
	AllocObjects float64 `json:"alloc_objects"`
	TopAlloc     []Share `json:"top_alloc"`
}

// Share is a part of a profile's total, between 0 and 1.
type Share struct {
	Name  string  `json:"name"`
	Share float64 `json:"share"`
}

// costClass names a kind of work by the functions that do it.
type costClass struct {
	name string
	in   func(fn string) bool
}

func anyOf(names ...string) func(string) bool {
	return func(fn string) bool { return slices.Contains(names, fn) }
}

func prefixed(prefixes ...string) func(string) bool {
	return func(fn string) bool {
		for _, p := range prefixes {
			if strings.HasPrefix(fn, p) {
				return true
			}
		}
		return false
	}
}

// costClasses are the kinds of work the report measures the shares of.
var costClasses = []costClass{
	{"TLS record encryption and decryption", anyOf("crypto/tls.(*halfConn).encrypt", "crypto/tls.(*halfConn).decrypt")},
	{"TLS handshakes", anyOf("crypto/tls.(*Conn).handshakeContext")},
	{"system calls", prefixed("syscall.", "internal/runtime/syscall/")},
	{"scheduler and network poller", anyOf("runtime.schedule", "runtime.findRunnable", "runtime.netpoll")},
	{"garbage collection", anyOf("runtime.gcBgMarkWorker", "runtime.gcAssistAlloc", "runtime.bgsweep", "runtime.bgscavenge")},
	{"allocation", anyOf("runtime.mallocgc")},
	{"HTTP/2 framing and streams", http2Framing},
	// The sidecar's own forwarder (proxy/forward.go) relays what
	// httputil.ReverseProxy relayed before it, and still relays protocol
	// switches: both are the reverse proxy, with the transport under it.
	{"reverse proxy", prefixed("net/http/httputil.", "github.com/credflow/credflow/proxy.(*forwarder).")},
	{"request filters", anyOf("github.com/credflow/credflow/proxy.pipeline.run")},
	{"JWT-SVID validation", prefixed("github.com/credflow/credflow/agent.(*JWTValidationCache).Validate", "github.com/credflow/credflow/agent.JWTValidator.Validate")},
	{"access log", prefixed("log/slog.")},
	{"metrics", prefixed("github.com/prometheus/")},
	{"L4 copy", l4Copy},
}

// http2Framing is the HTTP/2 code (Go 1.27's net/http/internal/http2, and
// x/net/http2 and the older bundle inside net/http) but for the roots of
// the server's handler goroutines: the handler's own work is not framing.
func http2Framing(fn string) bool {
	switch fn {
	case "net/http/internal/http2.(*serverConn).runHandler", "net/http.http2Handler.ServeHTTP",
		"golang.org/x/net/http2.(*serverConn).runHandler", "net/http.(*http2serverConn).runHandler":
		return false
	}
	return prefixed("net/http/internal/http2.", "golang.org/x/net/http2.", "net/http.(*http2", "net/http.http2")(fn)
}

// l4Copy is the relay's copy path: proxy/relay without the write batching
// that sits under every TLS connection of a sidecar, the HTTP modes' too
// (there it is the HTTP/2 and HTTP/1.1 writes' system calls, not a copy).
func l4Copy(fn string) bool {
	const relay = "github.com/credflow/credflow/proxy/relay."
	return strings.HasPrefix(fn, relay) && !strings.HasPrefix(fn, relay+"(*batchConn)")
}

// profiledScenarios are the scenarios whose profiles the report
// summarizes, and profiledTopologies the topologies: the L7 pairs and the
// L4 pair they are measured against.
var (
	profiledScenarios  = []string{scRPCHTTP1, scRPCGRPC, scBulk}
	profiledTopologies = []string{idT3h, idT3hGRPC, idT3hJWT, idT3MLKEM}
)

// profilePassTopologies are the topologies of -profile-pass.
var profilePassTopologies = []string{idT3MLKEM, idT3h, idT3hGRPC, idT3hJWT}

// profiledPass runs the short profile of the profiled topologies and
// scenarios with -profile-dir dir, and gives run the summaries of its
// profiles: the figures of run stay those measured without profiling.
func profiledPass(ctx context.Context, run *MeshRun, bins Binaries, dir string, log io.Writer) error {
	sel, err := ParseSelection(strings.Join(profilePassTopologies, ","), strings.Join(profiledScenarios, ","))
	if err != nil {
		return err
	}
	work, err := os.MkdirTemp("", "credflow-bench-profiles-")
	if err != nil {
		return err
	}
	fmt.Fprintf(log, "profile pass: %s\n", sel)
	prun, err := RunMesh(ctx, MeshConfig{Profile: Profiles["short"], Dir: work, Binaries: bins, Selection: sel, ProfileDir: dir, Log: log})
	if err != nil {
		fmt.Fprintf(log, "credflow-bench: processes' logs and configuration kept in %s\n", work)
		return fmt.Errorf("profile pass: %w", err)
	}
	os.RemoveAll(work)
	run.Profiles = prun.Profiles
	run.Notes = append(run.Notes, fmt.Sprintf("profiles from a separate short run (%s; profiles in %s), not from the measured one", sel, dir))
	return nil
}

// summarizeProfiles reads the profiles the profiler wrote in dir for the
// profiled scenarios and topologies. A missing file is skipped; one that
// does not parse is an error.
func summarizeProfiles(dir string, names map[string]string) ([]ProfileSummary, error) {
	var out []ProfileSummary
	for _, sc := range profiledScenarios {
		for _, id := range profiledTopologies {
			for _, side := range []string{"outbound", "inbound"} {
				base := filepath.Join(dir, fmt.Sprintf("%s-%s-%s", id, side, sc))
				s, ok, err := summarize(base)
				if err != nil {
					return out, err
				}
				if ok {
					s.Topology, s.Side, s.Scenario = cmp.Or(names[id], id), side, sc
					out = append(out, s)
				}
			}
		}
	}
	return out, nil
}

// topN is how many functions the report names per profile.
const topN = 5

func summarize(base string) (ProfileSummary, bool, error) {
	var s ProfileSummary
	cpu, err := readProfile(base + ".cpu.pprof")
	if errors.Is(err, fs.ErrNotExist) {
		return s, false, nil
	}
	if err != nil {
		return s, false, err
	}
	total, costs, flat := cpuShares(cpu)
	s.CPUSeconds = total / 1e9
	s.Costs, s.TopCPU = costs, top(flat, total, topN)
	allocs, err := readProfile(base + ".allocs.pprof")
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return s, false, err
	}
	if allocs != nil {
		bytes, objects, byFn := allocShares(allocs)
		s.AllocBytes, s.AllocObjects, s.TopAlloc = bytes, objects, top(byFn, bytes, topN)
	}
	return s, true, nil
}

func readProfile(path string) (*profile.Profile, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	p, err := profile.Parse(f)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return p, nil
}

// sampleIndex is the index of the sample type named typ, or -1.
func sampleIndex(p *profile.Profile, typ string) int {
	return slices.IndexFunc(p.SampleType, func(st *profile.ValueType) bool { return st.Type == typ })
}

// cpuShares returns a CPU profile's total (nanoseconds), each cost class's
// share of it, and the CPU each function used itself.
func cpuShares(p *profile.Profile) (total float64, costs []Share, flat map[string]float64) {
	i := sampleIndex(p, "cpu")
	if i < 0 {
		return 0, nil, nil
	}
	under := make([]float64, len(costClasses))
	flat = map[string]float64{}
	for _, smp := range p.Sample {
		if inStack(smp, profilers) {
			continue
		}
		v := float64(smp.Value[i])
		total += v
		if name := leaf(smp); name != "" {
			flat[name] += v
		}
		for c, class := range costClasses {
			if inStack(smp, class.in) {
				under[c] += v
			}
		}
	}
	for c, class := range costClasses {
		if total > 0 {
			costs = append(costs, Share{class.name, under[c] / total})
		}
	}
	return total, costs, flat
}

// allocShares returns an allocation profile's bytes and objects, and the
// bytes each function allocated itself.
func allocShares(p *profile.Profile) (bytes, objects float64, byFn map[string]float64) {
	bi, oi := sampleIndex(p, "alloc_space"), sampleIndex(p, "alloc_objects")
	if bi < 0 || oi < 0 {
		return 0, 0, nil
	}
	byFn = map[string]float64{}
	for _, smp := range p.Sample {
		if inStack(smp, profilers) {
			continue
		}
		bytes += float64(smp.Value[bi])
		objects += float64(smp.Value[oi])
		if name := leaf(smp); name != "" {
			byFn[name] += float64(smp.Value[bi])
		}
	}
	return bytes, objects, byFn
}

// profilers are the functions of the profiling itself: the samples taken
// under them are left out, so the summaries describe the sidecar's work.
var profilers = prefixed("runtime/pprof.", "net/http/pprof.")

// leaf is the function a sample was taken in.
func leaf(smp *profile.Sample) string {
	if len(smp.Location) == 0 || len(smp.Location[0].Line) == 0 || smp.Location[0].Line[0].Function == nil {
		return ""
	}
	return smp.Location[0].Line[0].Function.Name
}

// inStack reports whether a function of the sample's stack is in.
func inStack(smp *profile.Sample, in func(string) bool) bool {
	for _, loc := range smp.Location {
		for _, ln := range loc.Line {
			if ln.Function != nil && in(ln.Function.Name) {
				return true
			}
		}
	}
	return false
}

// top returns the n largest of m as shares of total.
func top(m map[string]float64, total float64, n int) []Share {
	if total <= 0 {
		return nil
	}
	var out []Share
	for name, v := range m {
		out = append(out, Share{name, v / total})
	}
	slices.SortFunc(out, func(a, b Share) int { return cmp.Or(cmp.Compare(b.Share, a.Share), strings.Compare(a.Name, b.Name)) })
	return out[:min(n, len(out))]
}

// writeProfiles renders the summaries: per scenario, one table of the
// cost classes' shares with a column per sidecar, then each sidecar's top
// functions.
func (run *MeshRun) writeProfiles(b *strings.Builder) {
	if len(run.Profiles) == 0 {
		return
	}
	b.WriteString("## Where the sidecars' CPU and allocations go (profiles)\n\n")
	b.WriteString("From the CPU and allocation profiles of each credflow sidecar taken over the whole scenario (-profile-dir). " +
		"The profiling's own samples (under runtime/pprof and net/http/pprof) are left out. " +
		"A cost class's share is the part of the sidecar's CPU samples with one of its functions on the stack: classes overlap " +
		"(allocation is part of the reverse proxy's share, say), so a column does not add up to 100%.\n\n")
	for _, sc := range profiledScenarios {
		var cols []ProfileSummary
		for _, s := range run.Profiles {
			if s.Scenario == sc {
				cols = append(cols, s)
			}
		}
		if len(cols) == 0 {
			continue
		}
		fmt.Fprintf(b, "### %s\n\n| | ", sc)
		for _, s := range cols {
			fmt.Fprintf(b, "%s %s | ", s.Topology, s.Side)
		}
		b.WriteString("\n|---|" + strings.Repeat("---|", len(cols)) + "\n| CPU sampled (s) | ")
		for _, s := range cols {
			fmt.Fprintf(b, "%.2f | ", s.CPUSeconds)
		}
		b.WriteString("\n")
		for c, class := range costClasses {
			fmt.Fprintf(b, "| %s | ", class.name)
			for _, s := range cols {
				if c < len(s.Costs) {
					fmt.Fprintf(b, "%.0f%% | ", 100*s.Costs[c].Share)
				} else {
					b.WriteString("– | ")
				}
			}
			b.WriteString("\n")
		}
		if sc != scBulk {
			b.WriteString("| allocated per request | ")
			for _, s := range cols {
				if n := s.Requests; n > 0 && s.AllocBytes > 0 {
					fmt.Fprintf(b, "%.1f KB in %.0f objects | ", s.AllocBytes/n/1000, s.AllocObjects/n)
				} else {
					b.WriteString("– | ")
				}
			}
			b.WriteString("\n")
		}
		b.WriteString("\n")
		for _, s := range cols {
			fmt.Fprintf(b, "- %s %s, top CPU (flat): %s", s.Topology, s.Side, shares(s.TopCPU))
			if len(s.TopAlloc) > 0 {
				fmt.Fprintf(b, "; top allocation (bytes): %s", shares(s.TopAlloc))
			}
			b.WriteString("\n")
		}
		b.WriteString("\n")
	}
}

func shares(ss []Share) string {
	parts := make([]string, len(ss))
	for i, s := range ss {
		parts[i] = fmt.Sprintf("`%s` %.1f%%", s.Name, 100*s.Share)
	}
	return strings.Join(parts, ", ")
}

// requests returns, for an RPC scenario, the requests each topology
// carried in the run (every variant and repeat), by topology name.
func (run *MeshRun) requests(scenario string) map[string]float64 {
	var kind string
	switch scenario {
	case scRPCHTTP1:
		kind = "HTTP/1.1"
	case scRPCGRPC:
		kind = "gRPC"
	default:
		return nil
	}
	out := map[string]float64{}
	for _, r := range run.Results {
		if r.Scenario == "rpc" && strings.HasPrefix(r.Variant, kind) {
			out[r.Topology] += r.Figures["requests"]
		}
	}
	return out
}
