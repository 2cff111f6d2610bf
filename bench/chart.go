package bench

import (
	"image/color"
	"strings"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
)

// MeshCharts draws the run's headline figures as SVG bar charts with gonum
// plot: bulk throughput and added p99 latency per topology. It returns the
// files' contents by name; a chart whose figures the run did not measure
// (a run narrowed by -topologies or -scenarios) is left out.
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
	if bulk != nil {
		out["mesh-bulk.svg"] = bulk
	}
	p0, ok0 := run.figure("rpc", "HTTP/1.1 4 conns", T0, "p99_us")
	lat, err := barChart(run, "1 KB HTTP/1.1 at 1000 rps: p99 added over T0 (µs, lower is better)", "µs",
		func(t string) (float64, bool) {
			s, ok := run.figure("rpc", "HTTP/1.1 4 conns", t, "p99_us")
			return s.med - p0.med, ok && ok0 && t != T0
		})
	if err != nil {
		return nil, err
	}
	if lat != nil {
		out["mesh-latency.svg"] = lat
	}
	return out, nil
}

// barChart draws value for each topology that has one; nil when none has.
func barChart(run *MeshRun, title, unit string, value func(topology string) (float64, bool)) ([]byte, error) {
	var (
		names          []string
		credflow, peer plotter.Values
	)
	for _, t := range run.Topologies {
		v, ok := value(t)
		if !ok {
			continue
		}
		names = append(names, strings.Replace(t, "credflow ", "", 1))
		// Two series, so that credflow's bars stand out; each topology
		// has a value in one and a zero in the other.
		if strings.Contains(t, "credflow") {
			credflow, peer = append(credflow, v), append(peer, 0)
		} else {
			credflow, peer = append(credflow, 0), append(peer, v)
		}
	}
	if len(names) == 0 {
		return nil, nil
	}
	p := plot.New()
	p.Title.Text = title
	p.Title.Padding = vg.Points(8)
	p.Y.Label.Text = unit
	for _, s := range []struct {
		v     plotter.Values
		color color.Color
		label string
	}{{peer, color.RGBA{R: 150, G: 150, B: 150, A: 255}, "baselines and peers"}, {credflow, color.RGBA{R: 31, G: 119, B: 180, A: 255}, "credflow"}} {
		bars, err := plotter.NewBarChart(s.v, vg.Points(22))
		if err != nil {
			return nil, err
		}
		bars.Color, bars.LineStyle.Width = s.color, 0
		p.Add(bars)
		p.Legend.Add(s.label, bars)
	}
	p.Legend.Top = true
	p.Y.Max *= 1.15 // room for the legend
	p.NominalX(names...)
	p.X.Tick.Label.Rotation = 0.6
	p.X.Tick.Label.XAlign = -1
	p.X.Tick.Label.YAlign = -0.2
	w, err := p.WriterTo(9*vg.Inch, 4.5*vg.Inch, chartFormat)
	if err != nil {
		return nil, err
	}
	var b strings.Builder
	if _, err := w.WriteTo(&b); err != nil {
		return nil, err
	}
	return []byte(b.String()), nil
}

// chartFormat is the charts' format; tests may ask for PNG to look at.
var chartFormat = "svg"
