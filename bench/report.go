package bench

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/pprof"
	"strings"
	"time"

	"github.com/credflow/credflow/internal/hostenv"
	"github.com/credflow/credflow/proxy/limit"
)

// Main runs the benchmark command line: scenarios by name, results written
// under -out as JSON lines (appended, one line per run) and a Markdown
// table (replaced).
func Main(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) > 0 && args[0] == "relay" {
		return relayMain(ctx, args[1:], stderr)
	}
	fs := flag.NewFlagSet("credflow-bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	scenario := fs.String("scenario", "pq", "scenarios to run, comma-separated: kex (handshake cost per key-exchange group), "+
		"kem (KEM primitives, Go against circl), tokens (ES256 against ML-DSA-65 tokens), "+
		"quic (Initial datagrams of a QUIC handshake per group), transport (TCP against QUIC between sidecars, in process), "+
		"mesh (T0-T5h as processes, narrowed by -topologies and -scenarios: bulk, RPC latency, ping-pong, handshakes, connection scale, rotation), "+
		"egress (credential injection's CPU cost on an egress listener, cold-cache token fetches; needs -hydra), "+
		"limits (rate limits' CPU cost on an inbound listener, and their memory with many identities), "+
		"observe (the audit trail's and tracing's CPU cost per request, against a real Jaeger); "+
		"pq is the first four")
	profile := fs.String("profile", "full", "mesh: full (make bench) or short (make bench-short)")
	credflowBin := fs.String("credflow", "bin/credflow", "mesh: the credflow binary")
	ghostunnelBin := fs.String("ghostunnel", "bin/ghostunnel", "mesh: the ghostunnel binary (T4); empty skips T4")
	haproxyBin := fs.String("haproxy", "haproxy", "mesh: the haproxy binary (T5, T5h); empty skips them")
	hydraBin := fs.String("hydra", "bin/hydra", "egress: the Ory Hydra binary (make hydra)")
	limitsTime := fs.Duration("limits-time", 5*time.Second, "limits: the length of each measured run (600 requests/s through each of two listeners at once)")
	observeTime := fs.Duration("observe-time", 5*time.Second, "observe: the length of each measured run (600 requests/s through each of two listeners at once)")
	egressTime := fs.Duration("egress-time", 5*time.Second, "egress: the length of each measured run (600 requests/s through each of two listeners at once)")
	n := fs.Int("n", 300, "handshakes or operations per measurement")
	repeats := fs.Int("repeats", 5, "repeats, scenarios interleaved within each")
	out := fs.String("out", "bench/results", "directory for results; empty writes nothing")
	cpuprofile := fs.String("cpuprofile", "", "write a CPU profile of the run to this file")
	topologies := fs.String("topologies", "", "mesh: comma-separated topology ids to run (default all): "+
		strings.Join(TopologyIDs, ", ")+"; T3 is its three key-exchange variants")
	profileDir := fs.String("profile-dir", "", "mesh, observe: write CPU and allocation profiles of each credflow sidecar, per scenario, "+
		"to DIR/<topology>-<outbound|inbound>-<scenario>.{cpu,allocs}.pprof; observe: of its two sidecars over the audit and the tracing comparisons "+
		"(the sidecars run with debug: {pprof: true})")
	profilePass := fs.String("profile-pass", "", "mesh: after the measured run, a short run of "+strings.Join(profilePassTopologies, ", ")+
		" over "+strings.Join(profiledScenarios, ", ")+" with profiles written to DIR, summarized in the results: the figures come from the run "+
		"without profiling, where the time goes from this one")
	scenarios := fs.String("scenarios", "", "mesh: comma-separated scenario ids to run (default all): "+
		strings.Join(ScenarioIDs, ", ")+"; rpc is rpc-http1 and rpc-grpc")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	sel, err := ParseSelection(*topologies, *scenarios)
	if err != nil {
		fmt.Fprintln(stderr, "credflow-bench:", err)
		return 2
	}
	names := strings.Split(*scenario, ",")
	if *scenario == "pq" {
		names = []string{"kex", "kem", "tokens", "quic"}
	}
	for _, name := range names {
		if name != "kex" && name != "kem" && name != "tokens" && name != "quic" && name != "transport" && name != "mesh" && name != "egress" && name != "limits" && name != "observe" {
			fmt.Fprintf(stderr, "credflow-bench: unknown scenario %q\n", name)
			return 2
		}
	}
	if *cpuprofile != "" {
		f, err := os.Create(*cpuprofile)
		if err != nil {
			fmt.Fprintln(stderr, "credflow-bench:", err)
			return 1
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			fmt.Fprintln(stderr, "credflow-bench:", err)
			return 1
		}
		defer pprof.StopCPUProfile()
	}
	for _, name := range names {
		env := hostenv.Capture()
		var (
			results any
			table   string
			err     error
		)
		switch name {
		case "kex":
			var rs []KexResult
			rs, err = RunKex(ctx, *n, *repeats)
			env.Finish()
			results, table = rs, KexTable(env, SummarizeKex(rs), *n, *repeats)
		case "kem":
			var rs []OpResult
			rs, err = RunKEM(*n, *repeats)
			env.Finish()
			results, table = rs, OpTable("KEM primitives: Go standard library against circl",
				fmt.Sprintf("Single-threaded, %d operations per repeat, %d repeats; median and min–max. "+
					"Bytes: public key (keygen), ciphertext (encaps, seal), shared key (decaps).", *n, *repeats), env, rs)
		case "transport":
			var rs []TransportResult
			const bulkBytes = 256 << 20
			rs, err = RunTransport(ctx, bulkBytes, *n, *repeats)
			env.Finish()
			results, table = rs, TransportTable(env, rs, bulkBytes, *n, *repeats)
		case "mesh":
			p, ok := Profiles[*profile]
			if !ok {
				fmt.Fprintf(stderr, "credflow-bench: unknown profile %q (full, short)\n", *profile)
				return 2
			}
			var bins Binaries
			if bins, err = findBinaries(*credflowBin, *ghostunnelBin, *haproxyBin); err != nil {
				break
			}
			var dir string
			if dir, err = os.MkdirTemp("", "credflow-bench-"); err != nil {
				break
			}
			var run *MeshRun
			run, err = RunMesh(ctx, MeshConfig{Profile: p, Dir: dir, Binaries: bins, Selection: sel, ProfileDir: *profileDir, Log: stderr})
			env.Finish()
			if err != nil {
				fmt.Fprintf(stderr, "credflow-bench: processes' logs and configuration kept in %s\n", dir)
				break
			}
			os.RemoveAll(dir)
			if *profilePass != "" {
				if err = profiledPass(ctx, run, bins, *profilePass, stderr); err != nil {
					break
				}
			}
			results, table = run, MeshTable(env, run)
			if *out != "" {
				var charts map[string][]byte
				if charts, err = MeshCharts(run); err != nil {
					break
				}
				for file, data := range charts {
					if err = os.MkdirAll(*out, 0o755); err == nil {
						err = os.WriteFile(filepath.Join(*out, file), data, 0o644)
					}
				}
			}
		case "egress":
			var bins Binaries
			if bins, err = findBinaries(*credflowBin, "", ""); err != nil {
				break
			}
			var hydra, dir string
			if hydra, err = filepath.Abs(*hydraBin); err != nil {
				break
			}
			if _, err = os.Stat(hydra); err != nil {
				err = fmt.Errorf("the Hydra binary (make hydra): %w", err)
				break
			}
			if dir, err = os.MkdirTemp("", "credflow-bench-egress-"); err != nil {
				break
			}
			var run *EgressRun
			run, err = RunEgress(ctx, EgressConfig{Credflow: bins.Credflow, Hydra: hydra, Dir: dir, Repeats: *repeats,
				Rate: 600, Duration: *egressTime, Conns: 16, ColdFetches: 50})
			env.Finish()
			if err != nil {
				fmt.Fprintf(stderr, "credflow-bench: the sidecar's log and configuration kept in %s\n", dir)
				break
			}
			os.RemoveAll(dir)
			results, table = run, EgressTable(env, run)
		case "limits":
			var bins Binaries
			if bins, err = findBinaries(*credflowBin, "", ""); err != nil {
				break
			}
			var dir string
			if dir, err = os.MkdirTemp("", "credflow-bench-limits-"); err != nil {
				break
			}
			var run *LimitsRun
			run, err = RunLimits(ctx, LimitsConfig{Credflow: bins.Credflow, Dir: dir, Repeats: *repeats, Rate: 600,
				Duration: *limitsTime, Conns: 16, Identities: 100000, Cap: limit.DefaultMaxIdentities})
			env.Finish()
			if err != nil {
				fmt.Fprintf(stderr, "credflow-bench: the sidecars' logs and configuration kept in %s\n", dir)
				break
			}
			os.RemoveAll(dir)
			results, table = run, LimitsTable(env, run)
		case "observe":
			var bins Binaries
			if bins, err = findBinaries(*credflowBin, "", ""); err != nil {
				break
			}
			var dir string
			if dir, err = os.MkdirTemp("", "credflow-bench-observe-"); err != nil {
				break
			}
			var run *ObserveRun
			run, err = RunObserve(ctx, ObserveConfig{Credflow: bins.Credflow, Dir: dir, Repeats: *repeats, Rate: 600,
				Duration: *observeTime, Conns: 16, ProfileDir: *profileDir, Log: stderr})
			env.Finish()
			if err != nil {
				fmt.Fprintf(stderr, "credflow-bench: the sidecars' logs and configuration kept in %s\n", dir)
				break
			}
			os.RemoveAll(dir)
			results, table = run, ObserveTable(env, run)
		case "quic":
			var rs []QUICInitialResult
			rs, err = RunQUICInitial(ctx)
			env.Finish()
			results, table = rs, QUICTable(env, rs)
		case "tokens":
			var rs []OpResult
			rs, err = RunTokens(*n, *repeats)
			env.Finish()
			results, table = rs, OpTable("Token signatures: ES256 against ML-DSA-65 bound to the SVID",
				fmt.Sprintf("Single-threaded, %d operations per repeat, %d repeats; median and min–max. Bytes: the "+
					"serialized token. ML-DSA-65 verification includes the binding (SVID chain against the bundle and "+
					"its ES256 signature), as a receiver without a binding cache does.", *n, *repeats), env, rs)
		}
		if err != nil {
			fmt.Fprintln(stderr, "credflow-bench:", err)
			return 1
		}
		fmt.Fprintln(stdout, table)
		if *out == "" {
			continue
		}
		if err := writeResults(*out, name, env, results, table); err != nil {
			fmt.Fprintln(stderr, "credflow-bench:", err)
			return 1
		}
	}
	return 0
}

// findBinaries resolves the mesh's programs; the credflow binary is
// required, a missing peer skips its topology.
func findBinaries(credflow, ghostunnel, haproxy string) (Binaries, error) {
	b := Binaries{Self: SelfBinary()}
	var err error
	if b.Credflow, err = exec.LookPath(credflow); err != nil {
		return b, fmt.Errorf("the credflow binary (make build): %w", err)
	}
	if b.Credflow, err = filepath.Abs(b.Credflow); err != nil {
		return b, err
	}
	if ghostunnel != "" {
		if p, err := exec.LookPath(ghostunnel); err == nil {
			b.Ghostunnel, _ = filepath.Abs(p)
		}
	}
	if haproxy != "" {
		if p, err := exec.LookPath(haproxy); err == nil {
			b.HAProxy = p
		}
	}
	return b, nil
}

func writeResults(dir, name string, env *hostenv.Environment, results any, table string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	line, err := json.Marshal(struct {
		Env     *hostenv.Environment `json:"environment"`
		Results any                  `json:"results"`
	}{env, results})
	if err != nil {
		return err
	}
	f, err := os.OpenFile(filepath.Join(dir, name+".jsonl"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	if _, err := f.Write(append(line, '\n')); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, name+".md"), []byte(table), 0o644)
}

// KexTable renders the handshake results as Markdown, with the BENCH.md
// targets and whether they are met.
func KexTable(env *hostenv.Environment, sums []KexSummary, n, repeats int) string {
	var b strings.Builder
	fmt.Fprintf(&b, "# Handshake cost per key-exchange group\n\n")
	fmt.Fprintf(&b, "Mutual TLS 1.3 as the sidecar makes it (proxy/mtls: ECDSA P-256 SVIDs, verification and\n"+
		"authorization in VerifyConnection), over loopback TCP, both sides in one process.\n"+
		"%d sequential handshakes per group and mode per repeat, %d repeats, groups interleaved;\n"+
		"median (min–max over repeats). CPU is both sides together.\n\n", n, repeats)
	writeEnv(&b, env)
	b.WriteString("| group | handshake | CPU µs/handshake | vs X25519 | handshakes/s | vs X25519 | p50 µs | p99 µs | ClientHello B | segments @1460 |\n")
	b.WriteString("|---|---|---|---|---|---|---|---|---|---|\n")
	var hybridRate, hybridCPU float64
	for _, s := range sums {
		mode := "full"
		if s.Resumed {
			mode = "resumed"
		}
		fmt.Fprintf(&b, "| %s | %s | %.0f (%.0f–%.0f) | %.2f× | %.0f (%.0f–%.0f) | %.2f× | %.0f | %.0f | %d | %d |\n",
			s.Group, mode, s.CPUMicros, s.CPUMin, s.CPUMax, s.CPUVsBaseline, s.PerSecond, s.PerSecMin, s.PerSecMax,
			s.RateVsBaseline, s.P50Micros, s.P99Micros, s.ClientHelloBytes, s.Segments1460)
		if s.Group == "X25519MLKEM768" && !s.Resumed {
			hybridRate, hybridCPU = s.RateVsBaseline, s.CPUMicros
		}
	}
	met := func(ok bool) string {
		if ok {
			return "met"
		}
		return "not met"
	}
	b.WriteString("\n| target (BENCH.md) | measured | |\n|---|---|---|\n")
	fmt.Fprintf(&b, "| X25519MLKEM768 full handshakes/s ≥ 0.9× X25519 | %.2f× | %s |\n", hybridRate, met(hybridRate >= 0.9))
	fmt.Fprintf(&b, "| CPU per full mutual handshake ≤ 1.0 ms, both sides (X25519MLKEM768) | %.2f ms | %s |\n", hybridCPU/1000, met(hybridCPU <= 1000))
	return b.String()
}

// QUICTable renders the QUIC Initial counts as Markdown.
func QUICTable(env *hostenv.Environment, rs []QUICInitialResult) string {
	var b strings.Builder
	b.WriteString("# QUIC: client Initial datagrams per handshake, by key-exchange group\n\n" +
		"Ten mutual-TLS QUIC handshakes (quic-go, the sidecar's TLS configurations) per group over loopback UDP; " +
		"the client's first flight is counted: its datagrams that carry an Initial packet before it has received anything " +
		"(the largest count over the ten, since pacing can let the server's first ACK in early; handshake time is the median). " +
		"A ClientHello larger than one 1200-byte Initial needs a second.\n\n")
	writeEnv(&b, env)
	b.WriteString("| group | client first-flight Initial datagrams | their bytes | handshake µs |\n|---|---|---|---|\n")
	for _, r := range rs {
		fmt.Fprintf(&b, "| %s | %d | %d | %.0f |\n", r.Group, r.InitialDatagrams, r.InitialBytes, r.HandshakeMicros)
	}
	return b.String()
}
