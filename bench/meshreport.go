package bench

import (
	"fmt"
	"slices"
	"strings"

	"github.com/credflow/credflow/internal/hostenv"
)

// summary is the median and spread of one figure over repeats.
type summary struct{ med, lo, hi float64 }

// figure summarizes a figure of a scenario's variant on a topology; ok is
// false when nothing was measured.
func (run *MeshRun) figure(scenario, variant, topology, name string) (summary, bool) {
	var v []float64
	for _, r := range run.Results {
		if r.Scenario == scenario && r.Variant == variant && r.Topology == topology {
			if x, ok := r.Figures[name]; ok {
				v = append(v, x)
			}
		}
	}
	if len(v) == 0 {
		return summary{}, false
	}
	slices.Sort(v)
	return summary{v[len(v)/2], v[0], v[len(v)-1]}, true
}

// variants lists a scenario's variants and topologies in the order run.
func (run *MeshRun) variants(scenario string) (variants, topologies []string) {
	for _, r := range run.Results {
		if r.Scenario != scenario {
			continue
		}
		if !slices.Contains(variants, r.Variant) {
			variants = append(variants, r.Variant)
		}
		if !slices.Contains(topologies, r.Topology) {
			topologies = append(topologies, r.Topology)
		}
	}
	return variants, topologies
}

func (run *MeshRun) has(scenario, variant, topology string) bool {
	for _, r := range run.Results {
		if r.Scenario == scenario && r.Variant == variant && r.Topology == topology {
			return true
		}
	}
	return false
}

// column is one column of a scenario table.
type column struct {
	head, figure, format string
	spread               bool
}

func (run *MeshRun) table(b *strings.Builder, title, scenario, intro string, cols []column) {
	variants, tops := run.variants(scenario)
	if len(variants) == 0 {
		return
	}
	fmt.Fprintf(b, "## %s\n\n%s\n\n| variant | topology |", title, intro)
	for _, c := range cols {
		fmt.Fprintf(b, " %s |", c.head)
	}
	b.WriteString("\n|---|---|" + strings.Repeat("---|", len(cols)) + "\n")
	for _, v := range variants {
		for _, t := range tops {
			if !run.has(scenario, v, t) {
				continue
			}
			fmt.Fprintf(b, "| %s | %s |", v, t)
			for _, c := range cols {
				s, ok := run.figure(scenario, v, t, c.figure)
				switch {
				case !ok:
					b.WriteString(" – |")
				case c.spread && s.lo != s.hi:
					fmt.Fprintf(b, " "+c.format+" ("+c.format+"–"+c.format+") |", s.med, s.lo, s.hi)
				default:
					fmt.Fprintf(b, " "+c.format+" |", s.med)
				}
			}
			b.WriteString("\n")
		}
	}
	b.WriteString("\n")
}

// target is one BENCH.md target as measured.
type target struct {
	figure, goal, measured string
	met                    *bool // nil: not measurable in this run
}

func (run *MeshRun) targets() []target {
	var ts []target
	get := func(scenario, variant, topology, name string) (float64, bool) {
		s, ok := run.figure(scenario, variant, topology, name)
		return s.med, ok
	}
	both := func(scenario, variant, topology, name string) (float64, bool) {
		c, ok1 := get(scenario, variant, topology, name+".client")
		s, ok2 := get(scenario, variant, topology, name+".server")
		return c + s, ok1 && ok2
	}
	add := func(figure, goal, measured string, ok, met bool) {
		t := target{figure: figure, goal: goal, measured: measured}
		if ok {
			t.met = &met
		} else {
			t.measured = "not measured in this run"
		}
		ts = append(ts, t)
	}
	const bulkV = "1 stream up"
	t3, ok3 := get("bulk", bulkV, T3MLKEM, "gbit_s")
	t4, ok4 := get("bulk", bulkV, T4, "gbit_s")
	t5, ok5 := get("bulk", bulkV, T5, "gbit_s")
	add("bulk throughput, T3 vs T4 ghostunnel", "≥ 1.3×", fmt.Sprintf("%.2f× (%.2f against %.2f Gbit/s, one stream up)", t3/t4, t3, t4), ok3 && ok4, t3 >= 1.3*t4)
	add("bulk throughput, T3 vs T5 HAProxy", "≥ 1.0×", fmt.Sprintf("%.2f× (%.2f against %.2f Gbit/s)", t3/t5, t3, t5), ok3 && ok5, t3 >= t5)
	cpu, okc := both("bulk", bulkV, T3MLKEM, "cpu_s_per_gb")
	add("bulk CPU-s/GB, T3, both sidecars", "≤ 2.0", fmt.Sprintf("%.2f (%.1f× the crypto floor of 0.36)", cpu, cpu/0.36), okc, cpu <= 2.0)

	const rpcV = "HTTP/1.1 4 conns"
	p0, ok0 := get("rpc", rpcV, T0, "p99_us")
	p3, okp3 := get("rpc", rpcV, T3MLKEM, "p99_us")
	p4, okp4 := get("rpc", rpcV, T4, "p99_us")
	hop3, hop4 := (p3-p0)/2, (p4-p0)/2
	add("added p99 at 1000 rps, 1 KB, per sidecar hop", "≤ 25 µs over T0, and below T4",
		fmt.Sprintf("%.0f µs (T4: %.0f µs)", hop3, hop4), ok0 && okp3 && okp4, hop3 <= 25 && hop3 < hop4)
	vc, okv1 := get("rpc", rpcV, T3MLKEM, "vcpu_per_1000rps.client")
	vs, okv2 := get("rpc", rpcV, T3MLKEM, "vcpu_per_1000rps.server")
	add("vCPU per 1000 rps per sidecar (1 KB HTTP)", "≤ 0.05", fmt.Sprintf("outbound %.3f, inbound %.3f", vc, vs), okv1 && okv2, max(vc, vs) <= 0.05)

	hx, okx := get("handshake", "full", T3X25519, "conns_per_s")
	hm, okm := get("handshake", "full", T3MLKEM, "conns_per_s")
	add("hybrid PQ handshakes/s, X25519MLKEM768 vs X25519 (full, through the sidecars)", "≥ 0.9×",
		fmt.Sprintf("%.2f× (%.0f against %.0f per second)", hm/hx, hm, hx), okx && okm, hm >= 0.9*hx)
	hc, okh := both("handshake", "full", T3MLKEM, "cpu_us_per_conn")
	add("CPU per full mutual handshake, both sidecars (X25519MLKEM768)", "≤ 1.0 ms",
		fmt.Sprintf("%.2f ms (including the relayed connection's setup)", hc/1000), okh, hc <= 1000)

	scaleVariants, _ := run.variants("scale")
	for _, n := range scaleVariants {
		mc, ok1 := get("scale", n, T3MLKEM, "rss_kib_per_conn.client")
		ms, ok2 := get("scale", n, T3MLKEM, "rss_kib_per_conn.server")
		add("memory per idle connection per sidecar ("+n+")", "≤ 20 KiB", fmt.Sprintf("outbound %.1f KiB, inbound %.1f KiB (RSS)", mc, ms), ok1 && ok2, max(mc, ms) <= 20)
	}
	if len(scaleVariants) == 0 {
		add("memory per idle connection per sidecar", "≤ 20 KiB", "", false, false)
	}
	var failed, requests float64
	okr := false
	for _, r := range run.Results {
		if r.Scenario == "rotation" {
			failed += r.Figures["failed"]
			requests += r.Figures["requests"]
			okr = true
		}
	}
	add("rotation under load", "0 failed requests", fmt.Sprintf("%.0f failed of %.0f", failed, requests), okr, okr && failed == 0)

	// The L7 path against HAProxy, per sidecar (the busier of the two),
	// and its tail latency against L4's at the same load.
	perSidecar := func(variant, topology string) (float64, bool) {
		c, ok1 := get("rpc", variant, topology, "vcpu_per_1000rps.client")
		s, ok2 := get("rpc", variant, topology, "vcpu_per_1000rps.server")
		return max(c, s), ok1 && ok2
	}
	for _, v := range []struct{ variant, l7 string }{{rpcV, T3h}, {"HTTP/1.1 16 conns", T3h}, {"gRPC unary", T3hGRPC}} {
		h, okh := perSidecar(v.variant, v.l7)
		l4, okl4 := perSidecar(v.variant, T5)
		add("L7: T3h vCPU per 1000 rps per sidecar vs T5 HAProxy L4 ("+v.variant+")", "≤ 1.0×",
			fmt.Sprintf("%.2f× (%.3f against %.3f)", h/l4, h, l4), okh && okl4, h <= l4)
		if v.l7 == T3h { // T5h carries HTTP/1.1 only
			l7, okl7 := perSidecar(v.variant, T5h)
			add("L7: T3h vCPU per 1000 rps per sidecar vs T5h HAProxy mode http ("+v.variant+")", "≤ 1.0×",
				fmt.Sprintf("%.2f× (%.3f against %.3f)", h/l7, h, l7), okh && okl7, h <= l7)
		}
		ph, ok1 := get("rpc", v.variant, v.l7, "p99_us")
		p3, ok2 := get("rpc", v.variant, T3MLKEM, "p99_us")
		add("L7: T3h p99 vs T3 at the same load ("+v.variant+")", "≤ 1.2×",
			fmt.Sprintf("%.2f× (%.0f against %.0f µs)", ph/p3, ph, p3), ok1 && ok2, ph <= 1.2*p3)
	}
	t3v, okt3 := perSidecar(rpcV, T3MLKEM)
	t5v, okt5 := perSidecar(rpcV, T5)
	add("L4: T3 vCPU per 1000 rps per sidecar vs T5 HAProxy ("+rpcV+")", "≤ 1.0×",
		fmt.Sprintf("%.2f× (%.3f against %.3f)", t3v/t5v, t3v, t5v), okt3 && okt5, t3v <= t5v)

	// The same with the runtime's monitor thread kept awake (an opt-in
	// setting of the sidecars' environment; README, "Performance").
	t3a, okt3a := perSidecar(rpcV, T3Awake)
	add("L4, monitor awake (opt-in): T3 vCPU per 1000 rps per sidecar vs T5 HAProxy ("+rpcV+")", "≤ 1.0×",
		fmt.Sprintf("%.2f× (%.3f against %.3f)", t3a/t5v, t3a, t5v), okt3a && okt5, t3a <= t5v)
	t3ha, okt3ha := perSidecar(rpcV, T3hAwake)
	t5hv, okt5h := perSidecar(rpcV, T5h)
	add("L7, monitor awake (opt-in): T3h vCPU per 1000 rps per sidecar vs T5 HAProxy L4 ("+rpcV+")", "≤ 1.0×",
		fmt.Sprintf("%.2f× (%.3f against %.3f)", t3ha/t5v, t3ha, t5v), okt3ha && okt5, t3ha <= t5v)
	add("L7, monitor awake (opt-in): T3h vCPU per 1000 rps per sidecar vs T5h HAProxy mode http ("+rpcV+")", "≤ 1.0×",
		fmt.Sprintf("%.2f× (%.3f against %.3f)", t3ha/t5hv, t3ha, t5hv), okt3ha && okt5h, t3ha <= t5hv)

	q, okq := get("bulk", bulkV, T3q, "gbit_s")
	add("QUIC bulk vs T3", "≥ 0.5×", fmt.Sprintf("%.2f× (%.2f against %.2f Gbit/s)", q/t3, q, t3), okq && ok3, q >= 0.5*t3)
	qh, okqh := get("handshake", "as configured", T3q, "quic_handshakes")
	qc, _ := both("handshake", "as configured", T3q, "cpu_us_per_conn")
	fc, _ := both("handshake", "full", T3MLKEM, "cpu_us_per_conn")
	add("QUIC: a new app connection over an established QUIC connection adds no handshake", "no QUIC handshake per new app connection",
		fmt.Sprintf("%.0f QUIC handshakes for %d new app connections; sidecar CPU %.0f µs per connection against %.0f µs for a full TCP handshake",
			qh, run.Handshakes, qc, fc), okqh, qh == 0)
	return ts
}

// MeshTable renders a run as Markdown: the environment, the targets with
// what was measured, then each scenario's medians.
func MeshTable(env *hostenv.Environment, run *MeshRun) string {
	var b strings.Builder
	fmt.Fprintf(&b, "# Mesh benchmark (%s profile)\n\n", run.Profile)
	b.WriteString("Client, sidecars or peers, and server on loopback; the sidecars, relays and peers are separate processes, " +
		"measured one by one (client side, server side); the harness (load generator and server) is one more. " +
		"Topologies interleaved within each repeat. Median over repeats, (min–max) where they differ. ")
	fmt.Fprintf(&b, "Between credflow sidecars: %s, %s. Run time %.0f s.\n\n", run.Group, run.Cipher, run.Seconds)
	writeEnv(&b, env)
	if run.Selection != "" {
		fmt.Fprintf(&b, "- selected (-topologies, -scenarios): %s\n", run.Selection)
	}
	for _, n := range run.Notes {
		fmt.Fprintf(&b, "- note: %s\n", n)
	}
	if len(run.Notes) > 0 || run.Selection != "" {
		b.WriteString("\n")
	}
	b.WriteString("## Targets (BENCH.md)\n\n| figure | target | measured | |\n|---|---|---|---|\n")
	for _, t := range run.targets() {
		verdict := "–"
		if t.met != nil {
			verdict = map[bool]string{true: "met", false: "not met"}[*t.met]
		}
		fmt.Fprintf(&b, "| %s | %s | %s | %s |\n", t.figure, t.goal, t.measured, verdict)
	}
	b.WriteString("\n")
	if len(run.Profiles) > 0 {
		b.WriteString("Where the sidecars' CPU and allocations go, from their profiles: the last section. What was tried for the targets not met: bench/README.md.\n\n")
	}
	run.table(&b, "Bulk", "bulk", fmt.Sprintf("%d MiB per run in 128 KiB writes, split across the streams. CPU-s per GB moved, per process.", run.BulkBytes>>20), []column{
		{"Gbit/s", "gbit_s", "%.2f", true},
		{"CPU-s/GB client side", "cpu_s_per_gb.client", "%.2f", false},
		{"CPU-s/GB server side", "cpu_s_per_gb.server", "%.2f", false},
		{"CPU-s/GB harness", "cpu_s_per_gb.harness", "%.2f", false},
	})
	run.table(&b, "RPC latency, open loop", "rpc", "1 KB request and answer (HTTP/1.1), or a gRPC health check, at a fixed rate; "+
		"latency from the moment each request is issued. Latencies are absolute: T0's row, in the same run, is the baseline to subtract (the targets table does it for p99, per hop).", []column{
		{"p50 µs", "p50_us", "%.0f", false},
		{"p90 µs", "p90_us", "%.0f", false},
		{"p99 µs", "p99_us", "%.0f", true},
		{"p99.9 µs", "p99.9_us", "%.0f", false},
		{"CPU-µs/req client side", "cpu_us_per_req.client", "%.1f", false},
		{"CPU-µs/req server side", "cpu_us_per_req.server", "%.1f", false},
		{"vCPU/1000 rps client side", "vcpu_per_1000rps.client", "%.3f", false},
		{"vCPU/1000 rps server side", "vcpu_per_1000rps.server", "%.3f", false},
		{"failed", "failed", "%.0f", false},
	})
	run.table(&b, "Ping-pong", "ping-pong", "One connection, a message echoed back, round trip time.", []column{
		{"p50 µs", "p50_us", "%.0f", true},
		{"p99 µs", "p99_us", "%.0f", true},
	})
	run.table(&b, "New connections", "handshake", "Connect, one byte each way, close; sequential. T3 \"resumed\": the sidecars' default "+
		"(session resumption between them); \"full\": resumption off, every connection a full mutual handshake. Others as they are "+
		"configured by default. CPU per connection per process.", []column{
		{"conns/s", "conns_per_s", "%.0f", true},
		{"p50 µs", "p50_us", "%.0f", false},
		{"p99 µs", "p99_us", "%.0f", false},
		{"CPU-µs client side", "cpu_us_per_conn.client", "%.0f", false},
		{"CPU-µs server side", "cpu_us_per_conn.server", "%.0f", false},
	})
	run.table(&b, "Connection scale", "scale", "Idle connections held through the pair, each after one exchange; growth per connection, "+
		"from a baseline taken after a wave of 300 connections opened and closed; measured 9 s after the last connection opened, "+
		"once credflow has returned the memory its parked relays freed and no process's RSS has fallen by more than 1% for 2 s. Heap, goroutine stacks and goroutines from credflow's own metrics.", []column{
		{"RSS KiB/conn client side", "rss_kib_per_conn.client", "%.1f", false},
		{"RSS KiB/conn server side", "rss_kib_per_conn.server", "%.1f", false},
		{"heap KiB/conn client side", "heap_kib_per_conn.client", "%.1f", false},
		{"heap KiB/conn server side", "heap_kib_per_conn.server", "%.1f", false},
		{"stack KiB/conn client side", "stack_kib_per_conn.client", "%.1f", false},
		{"stack KiB/conn server side", "stack_kib_per_conn.server", "%.1f", false},
		{"goroutines/conn client side", "goroutines_per_conn.client", "%.1f", false},
	})
	run.table(&b, "Rotation under load", "rotation", "Both identities get new SVIDs from the Workload API during the run.", []column{
		{"requests", "requests", "%.0f", false},
		{"failed", "failed", "%.0f", false},
		{"rotations", "rotations", "%.0f", false},
		{"p99 µs", "p99_us", "%.0f", false},
	})
	run.writeProfiles(&b)
	return b.String()
}
