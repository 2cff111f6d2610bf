package bench

import (
	"strings"
	"testing"

	"github.com/credflow/credflow/internal/hostenv"
)

// TestEgressTable: the target is judged on the median of the per-repeat
// ratios, and is not met when injection costs more than 5%.
func TestEgressTable(t *testing.T) {
	run := func(injected ...float64) *EgressRun {
		r := &EgressRun{Rate: 1000, Conns: 16, ColdFetchMS: []float64{3, 4, 5}, TokenFetches: 1}
		for i, c := range injected {
			r.Results = append(r.Results,
				EgressResult{Listener: egressPlain, Repeat: i, Requests: 10, CPUUsReq: 100},
				EgressResult{Listener: egressInjected, Repeat: i, Requests: 10, CPUUsReq: c})
		}
		return r
	}
	env := &hostenv.Environment{}
	for _, c := range []struct {
		injected []float64
		want     string
	}{
		{[]float64{102, 104, 99}, "| 1.020× (per-repeat ratios 0.990–1.040) | met |"},
		{[]float64{104, 110, 107}, "| 1.070× (per-repeat ratios 1.040–1.100) | not met |"},
	} {
		if got := EgressTable(env, run(c.injected...)); !strings.Contains(got, c.want) {
			t.Errorf("injected %v: the table lacks %q:\n%s", c.injected, c.want, got)
		}
	}
}
