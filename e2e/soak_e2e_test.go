package e2e_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/credflow/credflow/internal/hostenv"
	"github.com/credflow/credflow/internal/sidecartest"
	"github.com/credflow/credflow/internal/spiretest"
)

const uidWorker = 1005

// soakSample is one reading of the sidecars during the soak.
type soakSample struct {
	At        float64            `json:"at_s"` // seconds since traffic started
	OK        int64              `json:"ok"`
	Failed    int64              `json:"failed"`
	Churns    int64              `json:"churns"`
	Rotations float64            `json:"rotations"` // X.509-SVID rotations, both sidecars
	Figures   map[string]float64 `json:"figures"`   // "<sidecar>/<figure>"
}

// soakFigures are read from each sidecar's /metrics; "series" counts its
// metric series.
var soakFigures = []string{"go_goroutines", "process_open_fds", "process_resident_memory_bytes", "go_memstats_heap_inuse_bytes", "series"}

// TestE2ESoak is L7: real SPIRE with 20 s X.509-SVIDs and 1 min JWT-SVIDs;
// steady TCP and HTTP (JWT-SVID) traffic through a frontend and a backend
// sidecar; and a worker workload whose sidecar is started, used and
// stopped again and again. Every request must succeed, and the sidecars'
// goroutines, descriptors, RSS and metric series must be flat: the last
// third of the run may not sit above the first third (after a warm-up).
//
// The short form runs 75 s. CREDFLOW_SOAK_DURATION sets the length (make
// soak: 30m) and CREDFLOW_SOAK_OUT a directory for soak.md and
// soak.jsonl.
func TestE2ESoak(t *testing.T) {
	duration := 75 * time.Second
	if v := os.Getenv("CREDFLOW_SOAK_DURATION"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			t.Fatalf("CREDFLOW_SOAK_DURATION: %v", err)
		}
		duration = d
	}
	sampleEvery := min(max(duration/30, 5*time.Second), time.Minute)
	churnEvery := min(max(duration/10, 15*time.Second), 2*time.Minute)
	warmup := min(duration/4, 5*time.Minute)
	env := hostenv.Capture()

	s, bin, _ := startWorkloadsOn(t, spiretest.Options{JWTSVIDTTL: time.Minute}, 20*time.Second,
		map[int]string{uidFrontend: "/frontend", uidBackend: "/backend", uidWorker: "/worker"})
	ctx := t.Context()
	echo, err := sidecartest.Echo(ctx)
	if err != nil {
		t.Fatal(err)
	}
	web := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") })}
	webAddr := freeAddr(t)
	webLn, err := net.Listen("tcp", webAddr)
	if err != nil {
		t.Fatal(err)
	}
	go web.Serve(webLn)
	t.Cleanup(func() { web.Close() })

	inTCP, inHTTP, outTCP, outHTTP, workerTCP := freeAddr(t), freeAddr(t), freeAddr(t), freeAddr(t), freeAddr(t)
	common := fmt.Sprintf("workload_api: %s\nadmin: \"{{admin}}\"\ntimeouts: {revalidate: 1s, drain: 5s}\n", s.AgentAddr())
	backend := startSidecar(t, s, bin, uidBackend, "backend", common+fmt.Sprintf(`inbound:
  - {name: echo, listen: %q, app: %q, allow: [spiffe://example.org/frontend, spiffe://example.org/worker]}
  - name: web
    listen: %q
    app: %q
    protocol: http
    allow: [spiffe://example.org/frontend]
    jwt: {require: true}
    routes:
      - {peers: [spiffe://example.org/frontend], methods: [GET], paths: [/api/*]}
`, inTCP, echo, inHTTP, webAddr))
	frontend := startSidecar(t, s, bin, uidFrontend, "frontend", common+fmt.Sprintf(`outbound:
  - {name: echo, listen: %q, upstream: %q, expect: [spiffe://example.org/backend]}
  - {name: web, listen: %q, upstream: %q, protocol: http, expect: [spiffe://example.org/backend]}
`, outTCP, inTCP, outHTTP, inHTTP))
	workerCfg := common + fmt.Sprintf("outbound:\n  - {name: echo, listen: %q, upstream: %q, expect: [spiffe://example.org/backend]}\n", workerTCP, inTCP)
	sidecars := []*sidecartest.Sidecar{backend, frontend}

	var ok, failed, churns atomic.Int64
	fail := func(format string, args ...any) {
		if failed.Add(1) <= 10 {
			t.Errorf(format, args...)
		}
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	every := func(d time.Duration, f func(i int)) {
		wg.Go(func() {
			tick := time.NewTicker(d)
			defer tick.Stop()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				case <-tick.C:
					f(i)
				}
			}
		})
	}
	every(50*time.Millisecond, func(i int) { // TCP: a new connection each time
		msg := []byte(fmt.Sprintf("tcp %d", i))
		if got, err := roundTrip(outTCP, msg); err != nil || !bytes.Equal(got, msg) {
			fail("tcp request %d: %q, %v", i, got, err)
		} else {
			ok.Add(1)
		}
	})
	client := &http.Client{Timeout: 10 * time.Second}
	every(50*time.Millisecond, func(i int) { // HTTP: pooled, a JWT-SVID on each request
		resp, err := client.Get("http://" + outHTTP + "/api/soak")
		if err != nil {
			fail("http request %d: %v", i, err)
			return
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || string(body) != "ok" {
			fail("http request %d: %d %q", i, resp.StatusCode, body)
			return
		}
		ok.Add(1)
	})
	every(churnEvery, func(i int) { // a workload that comes and goes
		w, err := sidecartest.Start(ctx, s, bin, uidWorker, fmt.Sprintf("worker-%d", i), workerCfg, 60*time.Second)
		if err != nil {
			fail("worker %d: %v", i, err)
			return
		}
		for j := range 20 {
			msg := []byte(fmt.Sprintf("worker %d/%d", i, j))
			if got, err := roundTrip(workerTCP, msg); err != nil || !bytes.Equal(got, msg) {
				fail("worker %d request %d: %q, %v", i, j, got, err)
			} else {
				ok.Add(1)
			}
		}
		if err := w.Stop(10 * time.Second); err != nil {
			fail("worker %d: %v", i, err)
		}
		churns.Add(1)
	})

	began := time.Now()
	var samples []soakSample
	sample := func() {
		sm := soakSample{At: time.Since(began).Seconds(), OK: ok.Load(), Failed: failed.Load(), Churns: churns.Load(), Figures: map[string]float64{}}
		for _, sc := range sidecars {
			_, body, err := sc.Get(ctx, "/metrics")
			if err != nil {
				t.Fatalf("%s /metrics: %v", sc.Name, err)
			}
			for line := range strings.SplitSeq(body, "\n") {
				if line == "" || line[0] == '#' {
					continue
				}
				sm.Figures[sc.Name+"/series"]++
				name, _, _ := strings.Cut(line, "{")
				f := strings.Fields(line)
				var v float64
				fmt.Sscan(f[len(f)-1], &v)
				switch name = strings.Fields(name)[0]; name {
				case "go_goroutines", "process_open_fds", "process_resident_memory_bytes", "go_memstats_heap_inuse_bytes":
					sm.Figures[sc.Name+"/"+name] = v
				case "credflow_svid_rotations_total":
					sm.Rotations += v
				}
			}
		}
		samples = append(samples, sm)
	}
	for time.Since(began) < duration {
		time.Sleep(min(sampleEvery, duration-time.Since(began)))
		sample()
	}
	close(stop)
	wg.Wait()
	time.Sleep(2 * time.Second) // let the last connections close
	sample()
	env.Finish()

	last := samples[len(samples)-1]
	t.Logf("%v: %d requests, %d failed, %d worker restarts, %v rotations", duration, last.OK, last.Failed, last.Churns, last.Rotations)
	if last.Failed != 0 {
		t.Errorf("%d requests failed", last.Failed)
	}
	if minRot := duration.Seconds() / 20; last.Rotations < minRot {
		t.Errorf("%v SVID rotations in %v, want at least %.0f", last.Rotations, duration, minRot)
	}
	verdicts := soakVerdicts(samples, warmup.Seconds(), sidecars)
	for _, v := range verdicts {
		t.Log(v.String())
		if !v.Flat {
			t.Errorf("%s/%s grew: %s", v.Sidecar, v.Figure, v)
		}
	}
	if dir := os.Getenv("CREDFLOW_SOAK_OUT"); dir != "" {
		if err := writeSoak(dir, env, duration, samples, verdicts); err != nil {
			t.Fatal(err)
		}
	}
}

// soakVerdict judges one figure of one sidecar over the run after the
// warm-up: the means of its first and last thirds, and its trend (the
// least-squares slope times the length of that part of the run).
type soakVerdict struct {
	Sidecar, Figure string
	First, Last     float64 // means of the first and last thirds
	Max             float64 // over the run after the warm-up
	Trend           float64 // fitted growth from the warm-up to the end
	Allowed         float64 // the most Last may exceed First by, and Trend may reach
	Flat            bool
}

func (v soakVerdict) String() string {
	unit, div := "", 1.0
	if strings.HasSuffix(v.Figure, "_bytes") {
		unit, div = " MiB", 1<<20
	}
	return fmt.Sprintf("%s %s: first third %.1f%s, last third %.1f%s, max %.1f%s, trend %+.1f%s (allowed +%.1f%s)",
		v.Sidecar, v.Figure, v.First/div, unit, v.Last/div, unit, v.Max/div, unit, v.Trend/div, unit, v.Allowed/div, unit)
}

// soakVerdicts judges flatness. The allowances cover what is in flight at
// the moment of a sample (a request holds a few goroutines and
// descriptors) and the Go heap's breathing, not a trend: a leak of one
// goroutine or descriptor per request or per rotation exceeds them within
// minutes, and so does memory growing by a tenth over the run.
func soakVerdicts(samples []soakSample, warmup float64, sidecars []*sidecartest.Sidecar) []soakVerdict {
	var steady []soakSample
	for _, s := range samples {
		if s.At >= warmup {
			steady = append(steady, s)
		}
	}
	third := max(len(steady)/3, 1)
	mean := func(ss []soakSample, key string) float64 {
		var sum float64
		for _, s := range ss {
			sum += s.Figures[key]
		}
		return sum / float64(len(ss))
	}
	// trend fits y = a + b·t over the steady samples and returns b times
	// their time span.
	trend := func(key string) float64 {
		n := float64(len(steady))
		var st, sy, stt, sty float64
		for _, s := range steady {
			y := s.Figures[key]
			st, sy, stt, sty = st+s.At, sy+y, stt+s.At*s.At, sty+s.At*y
		}
		den := n*stt - st*st
		if n < 2 || den == 0 {
			return 0
		}
		return (n*sty - st*sy) / den * (steady[len(steady)-1].At - steady[0].At)
	}
	var out []soakVerdict
	for _, sc := range sidecars {
		for _, fig := range soakFigures {
			key := sc.Name + "/" + fig
			v := soakVerdict{Sidecar: sc.Name, Figure: fig, First: mean(steady[:third], key), Last: mean(steady[len(steady)-third:], key), Trend: trend(key)}
			for _, s := range steady {
				v.Max = max(v.Max, s.Figures[key])
			}
			switch fig {
			case "go_goroutines":
				v.Allowed = 0.1*v.First + 5
			case "process_open_fds":
				v.Allowed = 4
			case "process_resident_memory_bytes", "go_memstats_heap_inuse_bytes":
				v.Allowed = 0.1*v.First + 1<<20
			case "series":
				v.Allowed = 0
			}
			const eps = 1e-6 // a fit of equal values can come out a hair above 0
			v.Flat = v.Last <= v.First+v.Allowed+eps && v.Trend <= v.Allowed+eps
			out = append(out, v)
		}
	}
	return out
}

// writeSoak writes the run's samples (soak.jsonl) and a summary
// (soak.md).
func writeSoak(dir string, env *hostenv.Environment, duration time.Duration, samples []soakSample, verdicts []soakVerdict) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	var jl bytes.Buffer
	enc := json.NewEncoder(&jl)
	enc.Encode(map[string]any{"environment": env, "duration_s": duration.Seconds(), "x509_svid_ttl_s": 20, "jwt_svid_ttl_s": 60})
	for _, s := range samples {
		enc.Encode(s)
	}
	if err := os.WriteFile(filepath.Join(dir, "soak.jsonl"), jl.Bytes(), 0o644); err != nil {
		return err
	}
	last := samples[len(samples)-1]
	var md strings.Builder
	fmt.Fprintf(&md, "# Soak (L7): %v\n\n", duration)
	fmt.Fprintf(&md, "Measured %s on %s (%d CPUs, kernel %s, %s); written by `make soak`.\n\n",
		env.Time.Format(time.RFC3339), env.CPU, env.NumCPU, env.Kernel, env.GoVersion)
	fmt.Fprintf(&md, "Real SPIRE v1.13.3, X.509-SVIDs of 20 s and JWT-SVIDs of 1 min. Traffic: 20 TCP requests/s on new\n"+
		"connections and 20 HTTP requests/s with JWT-SVIDs, frontend → backend; a worker sidecar started,\n"+
		"used (20 requests) and stopped every few minutes.\n\n")
	fmt.Fprintf(&md, "- Requests: %d, failed: **%d**\n- Worker restarts: %d\n- SVID rotations (both sidecars): %.0f\n\n", last.OK, last.Failed, last.Churns, last.Rotations)
	md.WriteString("| sidecar | figure | first third | last third | max | trend over the run | allowed growth | flat |\n|---|---|---:|---:|---:|---:|---:|---|\n")
	for _, v := range verdicts {
		f := func(x float64) string {
			if strings.HasSuffix(v.Figure, "_bytes") {
				return fmt.Sprintf("%.1f MiB", x/(1<<20))
			}
			return fmt.Sprintf("%.1f", x)
		}
		fmt.Fprintf(&md, "| %s | %s | %s | %s | %s | %s | +%s | %v |\n", v.Sidecar, v.Figure, f(v.First), f(v.Last), f(v.Max), f(v.Trend), f(v.Allowed), v.Flat)
	}
	md.WriteString("\nSamples (every row is one reading of both sidecars):\n\n| s | requests | failed | rotations |")
	for _, sc := range []string{"backend", "frontend"} {
		fmt.Fprintf(&md, " %s goroutines | %s fds | %s RSS MiB | %s heap MiB | %s series |", sc, sc, sc, sc, sc)
	}
	md.WriteString("\n|" + strings.Repeat("---:|", 14) + "\n")
	for _, s := range samples {
		fmt.Fprintf(&md, "| %.0f | %d | %d | %.0f |", s.At, s.OK, s.Failed, s.Rotations)
		for _, sc := range []string{"backend", "frontend"} {
			fmt.Fprintf(&md, " %.0f | %.0f | %.1f | %.1f | %.0f |", s.Figures[sc+"/go_goroutines"], s.Figures[sc+"/process_open_fds"],
				s.Figures[sc+"/process_resident_memory_bytes"]/(1<<20), s.Figures[sc+"/go_memstats_heap_inuse_bytes"]/(1<<20), s.Figures[sc+"/series"])
		}
		md.WriteString("\n")
	}
	return os.WriteFile(filepath.Join(dir, "soak.md"), []byte(md.String()), 0o644)
}
