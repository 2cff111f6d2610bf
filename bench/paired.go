package bench

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"
)

// PairedResult is one measured run through one listener of a paired
// comparison: the sidecar's CPU per request and the latencies.
type PairedResult struct {
	Listener string  `json:"listener"`
	Repeat   int     `json:"repeat"`
	Requests int     `json:"requests"`
	Failed   int     `json:"failed"`
	CPUUsReq float64 `json:"cpu_us_per_req"` // the sidecar's CPU per request
	P50      float64 `json:"p50_us"`
	P99      float64 `json:"p99_us"`
	// Sidecar is the process the listener was in.
	Sidecar string `json:"sidecar"`
}

// pairedSidecar is a sidecar with one listener of each compared variant,
// by name.
type pairedSidecar struct {
	p     *proc
	addrs map[string]string
}

// runPaired compares two listener variants, base and other, measured at
// the same time: in each repeat one sidecar's base listener and the other
// sidecar's other listener carry the same load (load, which returns the
// requests' latencies, the failed ones, and how many it sent besides), and
// the sidecars swap roles in the next, so that machine conditions and
// neither process's luck favour a variant. checked, if set, runs after
// each repeat with its two results (base first).
func runPaired(ctx context.Context, scs [2]pairedSidecar, base, other string, repeats int,
	load func(ctx context.Context, addr string) (latencies, int, int, error), checked func(base, other PairedResult) error) ([]PairedResult, error) {
	var out []PairedResult
	for rep := range repeats {
		via := map[string]*pairedSidecar{base: &scs[rep%2], other: &scs[1-rep%2]}
		settle()
		type measured struct {
			lat           latencies
			failed, extra int
			err           error
			cpu           time.Duration
		}
		got := map[string]*measured{base: {}, other: {}}
		for l, m := range got {
			m.cpu = via[l].p.cpu()
		}
		var wg sync.WaitGroup
		for l, m := range got {
			wg.Go(func() { m.lat, m.failed, m.extra, m.err = load(ctx, via[l].addrs[l]) })
		}
		wg.Wait()
		for _, l := range []string{base, other} {
			m := got[l]
			m.cpu = via[l].p.cpu() - m.cpu
			if m.err != nil {
				return nil, fmt.Errorf("%s: %w", l, m.err)
			}
			n := len(m.lat) + m.failed + m.extra
			out = append(out, PairedResult{Listener: l, Repeat: rep, Sidecar: via[l].p.name, Requests: n, Failed: m.failed,
				CPUUsReq: m.cpu.Seconds() / float64(n) * 1e6, P50: m.lat.pct(50), P99: m.lat.pct(99)})
		}
		if checked != nil {
			if err := checked(out[len(out)-2], out[len(out)-1]); err != nil {
				return nil, err
			}
		}
	}
	return out, nil
}

// pairedTable writes the rows of a paired comparison and returns the
// median of the per-repeat ratios other/base of CPU per request, with
// their range.
func pairedTable(b *writer, results []PairedResult, base, other string) (ratio, lo, hi float64) {
	b.printf("| listener | sidecar CPU µs/request | p50 µs | p99 µs | requests | failed |\n|---|---|---|---|---|---|\n")
	byRep := map[int]map[string]float64{}
	for _, l := range []string{base, other} {
		var cpu, p50, p99 []float64
		var n, failed int
		for _, r := range results {
			if r.Listener != l {
				continue
			}
			cpu, p50, p99 = append(cpu, r.CPUUsReq), append(p50, r.P50), append(p99, r.P99)
			n, failed = n+r.Requests, failed+r.Failed
			if byRep[r.Repeat] == nil {
				byRep[r.Repeat] = map[string]float64{}
			}
			byRep[r.Repeat][l] = r.CPUUsReq
		}
		if len(cpu) == 0 {
			return 0, 0, 0
		}
		cm, clo, chi := med(cpu)
		pm, _, _ := med(p50)
		qm, _, _ := med(p99)
		b.printf("| %s | %.1f (%.1f–%.1f) | %.0f | %.0f | %d | %d |\n", l, cm, clo, chi, pm, qm, n, failed)
	}
	var ratios []float64
	for _, m := range byRep {
		ratios = append(ratios, m[other]/m[base])
	}
	return med(ratios)
}

// med returns the median of v (the mean of the middle two for an even
// count), its minimum and its maximum.
func med(v []float64) (float64, float64, float64) {
	v = slices.Clone(v)
	slices.Sort(v)
	n := len(v)
	m := v[n/2]
	if n%2 == 0 {
		m = (v[n/2-1] + v[n/2]) / 2
	}
	return m, v[0], v[n-1]
}

// writer is a strings.Builder with Printf.
type writer struct{ strings.Builder }

func (w *writer) printf(format string, args ...any) { fmt.Fprintf(&w.Builder, format, args...) }
