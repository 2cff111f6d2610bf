package bench

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/google/pprof/profile"
)

// profiler fetches profiles of the credflow sidecars (-profile-dir), which
// then run with debug: {pprof: true}: for each scenario and each sidecar of
// a topology it touches, a CPU profile over the scenario and the
// allocations made during it, written as
// DIR/<topology>-<sidecar>-<scenario>.{cpu,allocs}.pprof (sidecar:
// outbound or inbound).
//
// A CPU profile is fetched in one-second pieces, back to back, from the
// scenario's start to its end, and the pieces merged: the length of a
// scenario is not known in advance, and net/http/pprof's profile runs for
// a length fixed when it starts. A sidecar uses CPU only while its
// topology is measured, so its profile is that of its measurements (with
// whatever it does in the background meanwhile). The allocation profile is
// the heap profile at the scenario's end less the one at its start (each
// after a garbage collection), as `go tool pprof -base` would show it.
//
// A fetch that fails is a warning on the log and leaves that file out; it
// never fails the run. The profiling costs the sidecars some CPU (one
// request a second, and the profiler's sampling), which their figures in
// such a run include, and some allocation: runtime/pprof and
// compress/flate in the allocation profile are the profiler's own.
type profiler struct {
	dir    string
	log    io.Writer
	client *http.Client
}

// chunk is the length of one CPU profile fetch.
const chunk = time.Second

func newProfiler(dir string, log io.Writer) (*profiler, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	return &profiler{dir: dir, log: log, client: &http.Client{Timeout: chunk + 10*time.Second}}, nil
}

func (pr *profiler) warnf(format string, args ...any) {
	fmt.Fprintf(pr.log, "warning: profile: "+format+"\n", args...)
}

// start begins profiling the credflow sidecars of tops for scenario, and
// returns once each has its starting heap profile taken and its first CPU
// profile fetch under way. The function it returns ends the profiles and
// writes them.
func (pr *profiler) start(ctx context.Context, scenario string, tops []*topology) (stop func()) {
	procs := map[string]*proc{}
	for _, t := range tops {
		for side, p := range map[string]*proc{"outbound": t.client, "inbound": t.server} {
			procs[fmt.Sprintf("%s-%s-%s", t.id, side, scenario)] = p
		}
	}
	return pr.startProcs(ctx, procs)
}

// startProcs is start for sidecars named by the file names of their
// profiles (without the suffixes); those without an admin listener are
// left out.
func (pr *profiler) startProcs(ctx context.Context, procs map[string]*proc) (stop func()) {
	ctx, cancel := context.WithCancel(ctx)
	var wg, ready sync.WaitGroup
	for name, p := range procs {
		if p == nil || p.admin == "" {
			continue
		}
		ready.Add(1)
		wg.Go(func() { pr.sidecar(ctx, p, name, ready.Done) })
	}
	ready.Wait()
	return func() { cancel(); wg.Wait() }
}

// sidecar profiles one sidecar until ctx ends, then writes its files. It
// calls started once it has the starting heap and is about to ask for the
// first CPU piece.
func (pr *profiler) sidecar(ctx context.Context, p *proc, name string, started func()) {
	// The fetches that end the profiles run after ctx, bounded by the
	// client's timeout.
	after := context.WithoutCancel(ctx)
	base, err := pr.fetch(after, p, "heap?gc=1")
	if err != nil {
		pr.warnf("%s: heap at the start: %v", name, err)
	}
	started()
	var pieces []*profile.Profile
	for ctx.Err() == nil {
		// A piece that started runs to its end, so the scenario's last
		// moments are in the profile.
		piece, err := pr.fetch(after, p, fmt.Sprintf("profile?seconds=%d", int(chunk/time.Second)))
		if err != nil {
			pr.warnf("%s: CPU: %v", name, err)
			break
		}
		pieces = append(pieces, piece)
	}
	if len(pieces) > 0 {
		if cpu, err := profile.Merge(pieces); err != nil {
			pr.warnf("%s: merging the CPU profile's pieces: %v", name, err)
		} else {
			pr.write(name+".cpu.pprof", cpu)
		}
	}
	end, err := pr.fetch(after, p, "heap?gc=1")
	if err != nil {
		pr.warnf("%s: heap at the end: %v", name, err)
		return
	}
	allocs := end
	if base != nil {
		start := base.TimeNanos
		base.Scale(-1)
		if allocs, err = profile.Merge([]*profile.Profile{base, end}); err != nil {
			pr.warnf("%s: heap at the end less the start: %v", name, err)
			return
		}
		allocs.TimeNanos, allocs.DurationNanos = start, end.TimeNanos-start
	}
	allocs.DefaultSampleType = "alloc_space"
	pr.write(name+".allocs.pprof", allocs)
}

// snapshot writes the sidecar's heap in use now, after a garbage
// collection, to DIR/file; a sidecar without an admin listener is skipped.
func (pr *profiler) snapshot(ctx context.Context, p *proc, file string) {
	if p == nil || p.admin == "" {
		return
	}
	heap, err := pr.fetch(ctx, p, "heap?gc=1")
	if err != nil {
		pr.warnf("%s: %v", file, err)
		return
	}
	heap.DefaultSampleType = "inuse_space"
	pr.write(file, heap)
}

// fetch gets /debug/pprof/WHAT from the sidecar's admin listener.
func (pr *profiler) fetch(ctx context.Context, p *proc, what string) (*profile.Profile, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+p.admin+"/debug/pprof/"+what, nil)
	if err != nil {
		return nil, err
	}
	resp, err := pr.client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return nil, fmt.Errorf("%s: %s: %s", what, resp.Status, b)
	}
	return profile.Parse(resp.Body)
}

func (pr *profiler) write(file string, p *profile.Profile) {
	f, err := os.Create(filepath.Join(pr.dir, file))
	if err == nil {
		err = p.Write(f)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
	}
	if err != nil {
		pr.warnf("%s: %v", file, err)
	}
}
