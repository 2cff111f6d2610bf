package bench

import (
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/google/pprof/profile"
)

// stacks builds a profile of one sample per stack (leaf first), with the
// given values of the sample types.
func stacks(types []string, samples map[string][]int64) *profile.Profile {
	p := &profile.Profile{}
	for _, t := range types {
		p.SampleType = append(p.SampleType, &profile.ValueType{Type: t, Unit: "x"})
	}
	funcs := map[string]*profile.Function{}
	for stack, values := range samples {
		var locs []*profile.Location
		for name := range strings.SplitSeq(stack, ";") {
			f := funcs[name]
			if f == nil {
				f = &profile.Function{ID: uint64(len(funcs) + 1), Name: name}
				funcs[name] = f
				p.Function = append(p.Function, f)
			}
			loc := &profile.Location{ID: uint64(len(p.Location) + 1), Line: []profile.Line{{Function: f}}}
			p.Location = append(p.Location, loc)
			locs = append(locs, loc)
		}
		p.Sample = append(p.Sample, &profile.Sample{Location: locs, Value: values})
	}
	return p
}

func writeProfileFile(t *testing.T, path string, p *profile.Profile) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Write(f); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
}

// TestSummarizeProfiles: the cost classes count a sample once for every
// class on its stack, the top functions are the flat ones, and the
// allocation per request divides by the requests of the scenario's
// variants.
func TestSummarizeProfiles(t *testing.T) {
	dir := t.TempDir()
	base := filepath.Join(dir, idT3h+"-inbound-"+scRPCHTTP1)
	writeProfileFile(t, base+".cpu.pprof", stacks([]string{"samples", "cpu"}, map[string][]int64{
		// 50% encrypting under the reverse proxy.
		"crypto/internal/aes.encrypt;crypto/tls.(*halfConn).encrypt;net/http/httputil.(*ReverseProxy).ServeHTTP": {5, 500},
		// 30% allocating under the sidecar's forwarder, which is the
		// reverse proxy too.
		"runtime.mallocgc;github.com/credflow/credflow/proxy.(*forwarder).ServeHTTP": {3, 300},
		// 20% in the garbage collector.
		"runtime.scanobject;runtime.gcBgMarkWorker": {2, 200},
		// The profiler's own work is left out.
		"compress/flate.(*compressor).write;runtime/pprof.(*profileBuilder).flush": {9, 900},
	}))
	writeProfileFile(t, base+".allocs.pprof", stacks([]string{"alloc_objects", "alloc_space"}, map[string][]int64{
		"net/http.Header.Clone;net/http/httputil.(*ReverseProxy).ServeHTTP": {300, 30000},
		"bufio.NewReaderSize":                           {100, 10000},
		"compress/flate.NewWriter;net/http/pprof.Index": {100, 90000},
	}))
	// An outbound profile that does not parse is an error, not a silent
	// gap; a missing one is skipped.
	names := map[string]string{idT3h: T3h}
	got, err := summarizeProfiles(dir, names)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 {
		t.Fatalf("got %d summaries, want 1: %+v", len(got), got)
	}
	s := got[0]
	if s.Topology != T3h || s.Side != "inbound" || s.Scenario != scRPCHTTP1 {
		t.Errorf("named %q %q %q", s.Topology, s.Side, s.Scenario)
	}
	if math.Abs(s.CPUSeconds-1e-6) > 1e-12 {
		t.Errorf("CPU %v s, want 1e-6 (1000 ns)", s.CPUSeconds)
	}
	want := map[string]float64{
		"TLS record encryption and decryption": 0.5,
		"reverse proxy":                        0.8,
		"allocation":                           0.3,
		"garbage collection":                   0.2,
		"system calls":                         0,
	}
	for _, c := range s.Costs {
		if w, ok := want[c.Name]; ok && math.Abs(c.Share-w) > 1e-9 {
			t.Errorf("%s: share %v, want %v", c.Name, c.Share, w)
		}
	}
	if len(s.TopCPU) != 3 || s.TopCPU[0].Name != "crypto/internal/aes.encrypt" || math.Abs(s.TopCPU[0].Share-0.5) > 1e-9 {
		t.Errorf("top CPU %+v", s.TopCPU)
	}
	if s.AllocBytes != 40000 || s.AllocObjects != 400 || s.TopAlloc[0].Name != "net/http.Header.Clone" || math.Abs(s.TopAlloc[0].Share-0.75) > 1e-9 {
		t.Errorf("allocations %v B, %v objects, top %+v", s.AllocBytes, s.AllocObjects, s.TopAlloc)
	}

	run := &MeshRun{Results: []MeshResult{
		{Scenario: "rpc", Variant: "HTTP/1.1 4 conns", Topology: T3h, Figures: map[string]float64{"requests": 6}},
		{Scenario: "rpc", Variant: "HTTP/1.1 16 conns", Topology: T3h, Figures: map[string]float64{"requests": 4}},
		{Scenario: "rpc", Variant: "gRPC unary", Topology: T3h, Figures: map[string]float64{"requests": 1000}},
	}}
	got[0].Requests = run.requests(scRPCHTTP1)[T3h]
	run.Profiles = got
	var b strings.Builder
	run.writeProfiles(&b)
	for _, line := range []string{
		"| TLS record encryption and decryption | 50% |",
		"| allocated per request | 4.0 KB in 40 objects |",
		"`crypto/internal/aes.encrypt` 50.0%",
		"`net/http.Header.Clone` 75.0%",
	} {
		if !strings.Contains(b.String(), line) {
			t.Errorf("report lacks %q:\n%s", line, b.String())
		}
	}

	if err := os.WriteFile(filepath.Join(dir, idT3h+"-outbound-"+scRPCHTTP1+".cpu.pprof"), []byte("not a profile"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := summarizeProfiles(dir, names); err == nil {
		t.Error("a profile that does not parse was not an error")
	}
}

// TestCostClassesOf: functions land in the classes the report names them
// by: the HTTP/2 package vendored into net/http counts as HTTP/2 but for
// the roots of the handler goroutines it starts, and the write batching
// under every TLS connection is not the L4 copy.
func TestCostClassesOf(t *testing.T) {
	classesOf := func(fn string) []string {
		var out []string
		for _, c := range costClasses {
			if c.in(fn) {
				out = append(out, c.name)
			}
		}
		return out
	}
	for fn, want := range map[string][]string{
		"net/http/internal/http2.(*serverConn).writeFrameAsync":              {"HTTP/2 framing and streams"},
		"golang.org/x/net/http2.(*Framer).ReadFrame":                         {"HTTP/2 framing and streams"},
		"net/http/internal/http2.(*serverConn).runHandler":                   nil,
		"net/http.http2Handler.ServeHTTP":                                    nil,
		"github.com/credflow/credflow/proxy/relay.(*direction).copyBuffered": {"L4 copy"},
		"github.com/credflow/credflow/proxy/relay.(*batchConn).Write":        nil,
		"internal/runtime/syscall/linux.Syscall6":                            {"system calls"},
	} {
		if got := classesOf(fn); !slices.Equal(got, want) {
			t.Errorf("%s: classes %q, want %q", fn, got, want)
		}
	}
}
