package bench

import (
	"fmt"
	"strings"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
)

// MeshCharts draws the run's headline figures as SVG bar charts with gonum
// plot: bulk throughput and added p99 latency per topology. It returns the
// files' contents by name.
func MeshCharts(run *MeshRun) (map[string][]byte, error) {
	out := map[string][]byte{}
	bulk, err := barChart(run, "Bulk, one stream up (Gbit/s, higher is better)", "Gbit/s",
		func(t string) (float64, bool) {
			s, ok := run.figure("bulk", "1 stream up", t, "gbit_s")
			return s.med, ok
		})
	if err != nil {
		return nil, err
	}
	out["mesh-bulk.svg"] = bulk
	p0, ok0 := run.figure("rpc", "HTTP/1.1 4 conns", T0, "p99_us")
	lat, err := barChart(run, "1 KB HTTP/1.1 at 1000 rps: p99 added over T0 (µs, lower is better)", "µs",
		func(t string) (float64, bool) {
			s, ok := run.figure("rpc", "HTTP/1.1 4 conns", t, "p99_us")
			return s.med - p0.med, ok && ok0 && t != T0
		})
	if err != nil {
		return nil, err
	}
	out["mesh-latency.svg"] = lat
	return out, nil
}

func barChart(run *MeshRun, title, unit string, value func(topology string) (float64, bool)) ([]byte, error) {
	var (
		names  []string
		values plotter.Values
	)
	for _, t := range run.Topologies {
		if v, ok := value(t); ok {
			names = append(names, strings.TrimPrefix(strings.TrimPrefix(t, "T3 credflow "), "credflow "))
			values = append(values, v)
		}
	}
	if len(values) == 0 {
		return nil, fmt.Errorf("bench: nothing to chart for %q", title)
	}
	p := plot.New()
	p.Title.Text = title
	p.Y.Label.Text = unit
	bars, err := plotter.NewBarChart(values, vg.Points(22))
	if err != nil {
		return nil, err
	}
	p.Add(bars)
	p.NominalX(names...)
	p.X.Tick.Label.Rotation = 0.6
	p.X.Tick.Label.XAlign = -1
	p.X.Tick.Label.YAlign = -0.2
	w, err := p.WriterTo(9*vg.Inch, 4.5*vg.Inch, "svg")
	if err != nil {
		return nil, err
	}
	var b strings.Builder
	if _, err := w.WriteTo(&b); err != nil {
		return nil, err
	}
	return []byte(b.String()), nil
}
