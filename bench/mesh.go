package bench

import (
	"context"
	"fmt"
	"io"
	"os"
	"slices"
	"time"
)

// Profile sizes a mesh run.
type Profile struct {
	Name       string
	Repeats    int   // bulk, ping-pong and handshake repeats
	BulkBytes  int64 // per run, split across the streams
	BulkDirs   []bulkVariant
	RPCRepeats int
	RPCTime    time.Duration // per RPC run, at RPCRate
	RPCRate    int
	PingPongs  int
	Handshakes int
	IdleConns  []int
	// Rotation: an RPC run of RotationTime with SVIDs rotated every
	// RotationEvery.
	RotationTime, RotationEvery time.Duration
}

type bulkVariant struct {
	streams int
	up      bool
}

func (v bulkVariant) String() string {
	dir := "down"
	if v.up {
		dir = "up"
	}
	if v.streams == 1 {
		return "1 stream " + dir
	}
	return fmt.Sprintf("%d streams %s", v.streams, dir)
}

var allBulk = []bulkVariant{{1, true}, {1, false}, {4, true}, {4, false}}

// Profiles: full (make bench, ≤15 minutes here) and short (make
// bench-short, CI, ≤3 minutes).
var Profiles = map[string]Profile{
	"full": {Name: "full", Repeats: 5, BulkBytes: 256 << 20, BulkDirs: allBulk, RPCRepeats: 3, RPCTime: 5 * time.Second, RPCRate: 1000,
		PingPongs: 5000, Handshakes: 300, IdleConns: []int{1000, 10000}, RotationTime: 25 * time.Second, RotationEvery: 10 * time.Second},
	"short": {Name: "short", Repeats: 1, BulkBytes: 32 << 20, BulkDirs: allBulk, RPCRepeats: 1, RPCTime: 2 * time.Second, RPCRate: 1000,
		PingPongs: 500, Handshakes: 60, IdleConns: []int{1000}, RotationTime: 6 * time.Second, RotationEvery: 2 * time.Second},
}

// MeshResult is one measurement: a scenario's variant on a topology.
// Figures hold what the scenario measures, named with their unit
// ("gbit_s", "p99_us", "cpu_s_per_gb.client", ...).
type MeshResult struct {
	Scenario string             `json:"scenario"`
	Variant  string             `json:"variant"`
	Topology string             `json:"topology"`
	Repeat   int                `json:"repeat"`
	Figures  map[string]float64 `json:"figures"`
	Note     string             `json:"note,omitempty"`
}

// MeshRun is the result of RunMesh.
type MeshRun struct {
	Profile    string       `json:"profile"`
	BulkBytes  int64        `json:"bulk_bytes"`
	Handshakes int          `json:"handshakes"`
	Topologies []string     `json:"topologies"`
	Scenarios  []string     `json:"scenarios"`
	Group      string       `json:"group"`  // negotiated by T3's default pair
	Cipher     string       `json:"cipher"` // idem
	FileLimit  uint64       `json:"file_limit"`
	Notes      []string     `json:"notes,omitempty"`
	Results    []MeshResult `json:"results"`
	Seconds    float64      `json:"seconds"`

	// Selection is what -topologies and -scenarios narrowed the run to,
	// empty for everything.
	Selection string `json:"selection,omitempty"`

	// Profiles summarize the sidecars' profiles, when -profile-dir was
	// given (summarizeProfiles).
	Profiles []ProfileSummary `json:"profiles,omitempty"`
}

// mesh is one run in progress.
type mesh struct {
	ctx  context.Context
	p    Profile
	sel  Selection
	r    *rig
	tops []*topology
	full []*topology // T3 pairs without resumption
	log  io.Writer
	run  *MeshRun
	prof *profiler // nil unless profiles were asked for
}

func (m *mesh) notef(format string, args ...any) {
	m.run.Notes = append(m.run.Notes, fmt.Sprintf(format, args...))
	fmt.Fprintf(m.log, "note: "+format+"\n", args...)
}

func (m *mesh) add(res MeshResult) {
	m.run.Results = append(m.run.Results, res)
}

// cpuOf returns a function giving the CPU each side used since the call,
// and the harness's (client and server together).
func cpuOf(t *topology) func() map[string]float64 {
	var c0, s0 time.Duration
	if t.client != nil {
		c0 = t.client.cpu()
	}
	if t.server != nil {
		s0 = t.server.cpu()
	}
	h0 := cpuTime()
	return func() map[string]float64 {
		out := map[string]float64{"harness": (cpuTime() - h0).Seconds()}
		if t.client != nil {
			out["client"] = (t.client.cpu() - c0).Seconds()
		}
		if t.server != nil {
			out["server"] = (t.server.cpu() - s0).Seconds()
		}
		return out
	}
}

// MeshConfig is what RunMesh runs.
type MeshConfig struct {
	Profile Profile
	// Dir holds the processes' output and configuration.
	Dir      string
	Binaries Binaries
	// Selection narrows the run to some topologies and scenarios; the
	// zero value is every one.
	Selection Selection
	// ProfileDir, if set, receives CPU and allocation profiles of the
	// credflow sidecars per scenario (see profiler), and the heap they hold
	// with the scale scenario's idle connections; they then run with
	// debug: {pprof: true}.
	ProfileDir string
	// Log receives progress and notes; nil discards them.
	Log io.Writer
}

// RunMesh runs each selected scenario on each selected topology,
// interleaved by repeat.
func RunMesh(ctx context.Context, c MeshConfig) (*MeshRun, error) {
	start := time.Now()
	p := c.Profile
	log := c.Log
	if log == nil {
		log = io.Discard
	}
	run := &MeshRun{Profile: p.Name, BulkBytes: p.BulkBytes, Handshakes: p.Handshakes, FileLimit: raiseFileLimit(200000)}
	if c.Selection.Topologies != nil || c.Selection.Scenarios != nil {
		run.Selection = c.Selection.String()
	}
	r, err := newRig(ctx, c.Dir, c.Binaries, run.FileLimit)
	if err != nil {
		return nil, err
	}
	defer r.stopAll()
	var prof *profiler
	if c.ProfileDir != "" {
		if prof, err = newProfiler(c.ProfileDir, log); err != nil {
			return nil, err
		}
		r.pprof = true
	}
	target, err := startServer(ctx)
	if err != nil {
		return nil, err
	}
	m := &mesh{ctx: ctx, p: p, sel: c.Selection, r: r, log: log, run: run, prof: prof}
	if m.tops, err = r.startTopologies(target, c.Selection, m.notef); err != nil {
		return nil, err
	}
	if c.Selection.scenario(scHandshake) {
		if m.full, err = r.fullHandshakePairs(target, c.Selection); err != nil {
			return nil, err
		}
	}
	for _, t := range m.tops {
		run.Topologies = append(run.Topologies, t.name)
	}
	// The group and cipher between sidecars, as T3's hybrid pair (or the
	// first credflow pair selected) negotiates them.
	for _, t := range append([]*topology{m.find(T3MLKEM)}, m.tops...) {
		if t != nil && t.link != "" {
			if run.Group, run.Cipher, err = r.negotiated(t); err != nil {
				return nil, err
			}
			break
		}
	}
	if prof != nil {
		m.notef("CPU and allocation profiles of the sidecars in %s: their figures include the profiling's cost", c.ProfileDir)
	}
	// Each scenario, and the topologies it runs on.
	scenarios := map[string]struct {
		run  func() error
		tops func() []*topology
	}{
		scBulk:      {m.bulk, func() []*topology { return m.carrying(kindTCP) }},
		scPingPong:  {m.pingPong, func() []*topology { return m.carrying(kindTCP) }},
		scHandshake: {m.handshakes, func() []*topology { return append(m.carrying(kindTCP), m.full...) }},
		scRPCHTTP1:  {func() error { return m.rpc(kindHTTP1) }, func() []*topology { return m.carrying(kindHTTP1) }},
		scRPCGRPC:   {func() error { return m.rpc(kindGRPC) }, func() []*topology { return m.carrying(kindGRPC) }},
		scRotation:  {m.rotation, func() []*topology { return m.findAll(rotationTopologies) }},
		scScale:     {m.scale, func() []*topology { return m.findAll(scaleTopologies) }},
	}
	for _, id := range ScenarioIDs {
		if !c.Selection.scenario(id) {
			continue
		}
		run.Scenarios = append(run.Scenarios, id)
		fmt.Fprintf(log, "scenario %s\n", id)
		sc := scenarios[id]
		stop := func() {}
		if prof != nil {
			stop = prof.start(ctx, id, sc.tops())
		}
		err := sc.run()
		stop()
		if err != nil {
			return run, fmt.Errorf("bench: scenario %s: %w", id, err)
		}
	}
	if prof != nil {
		names := map[string]string{}
		for _, t := range append(m.tops, m.full...) {
			names[t.id] = t.name
		}
		if run.Profiles, err = summarizeProfiles(c.ProfileDir, names); err != nil {
			m.notef("summarizing the profiles: %v", err)
		}
		for i, s := range run.Profiles {
			run.Profiles[i].Requests = run.requests(s.Scenario)[s.Topology]
		}
	}
	run.Seconds = time.Since(start).Seconds()
	return run, nil
}

func (m *mesh) find(name string) *topology {
	for _, t := range m.tops {
		if t.name == name {
			return t
		}
	}
	return nil
}

// findAll returns the topologies of names that run.
func (m *mesh) findAll(names []string) []*topology {
	var out []*topology
	for _, name := range names {
		if t := m.find(name); t != nil {
			out = append(out, t)
		}
	}
	return out
}

// carrying returns the topologies that carry kind.
func (m *mesh) carrying(kind string) []*topology {
	var out []*topology
	for _, t := range m.tops {
		if _, ok := t.entry[kind]; ok {
			out = append(out, t)
		}
	}
	return out
}

func (m *mesh) bulk() error {
	for rep := range m.p.Repeats {
		for _, v := range m.p.BulkDirs {
			for _, t := range m.carrying(kindTCP) {
				per := m.p.BulkBytes / int64(v.streams)
				cpu := cpuOf(t)
				wall, err := bulkRun(t.entry[kindTCP], v.streams, v.up, per)
				if err != nil {
					return fmt.Errorf("%s %s: %w", t.name, v, err)
				}
				gb := float64(per*int64(v.streams)) / 1e9
				f := map[string]float64{"gbit_s": gb * 8 / wall.Seconds()}
				for side, s := range cpu() {
					f["cpu_s_per_gb."+side] = s / gb
				}
				m.add(MeshResult{Scenario: "bulk", Variant: v.String(), Topology: t.name, Repeat: rep, Figures: f})
			}
		}
	}
	return nil
}

func (m *mesh) pingPong() error {
	for rep := range m.p.Repeats {
		for _, size := range []int{100, 4 << 10} {
			for _, t := range m.carrying(kindTCP) {
				lat, err := pingPong(t.entry[kindTCP], size, m.p.PingPongs)
				if err != nil {
					return fmt.Errorf("%s: %w", t.name, err)
				}
				m.add(MeshResult{Scenario: "ping-pong", Variant: sizeName(size), Topology: t.name, Repeat: rep,
					Figures: map[string]float64{"p50_us": lat.pct(50), "p99_us": lat.pct(99)}})
			}
		}
	}
	return nil
}

func sizeName(n int) string {
	if n >= 1024 {
		return fmt.Sprintf("%d KiB", n>>10)
	}
	return fmt.Sprintf("%d B", n)
}

// handshakes opens new connections through each topology: with resumption
// as each does by default (credflow resumes between sidecars), and, for
// T3, full handshakes per key-exchange group.
func (m *mesh) handshakes() error {
	type run struct {
		t       *topology
		variant string
	}
	var runs []run
	for _, t := range m.carrying(kindTCP) {
		variant := "as configured"
		if slices.Contains([]string{T3X25519, T3MLKEM, T3P256MLKEM}, t.name) {
			variant = "resumed"
		}
		runs = append(runs, run{t, variant})
	}
	for _, t := range m.full {
		runs = append(runs, run{t, "full"})
	}
	const quicConns = `credflow_quic_connections_total{direction="outbound"}`
	for rep := range m.p.Repeats {
		for _, r := range runs {
			cpu := cpuOf(r.t)
			var quic0 float64
			if r.t.name == T3q {
				quic0, _ = r.t.client.metric(quicConns)
			}
			start := time.Now()
			lat, err := newConnections(r.t.entry[kindTCP], m.p.Handshakes)
			if err != nil {
				return fmt.Errorf("%s %s: %w", r.t.name, r.variant, err)
			}
			wall := time.Since(start)
			n := float64(m.p.Handshakes)
			f := map[string]float64{"conns_per_s": n / wall.Seconds(), "p50_us": lat.pct(50), "p99_us": lat.pct(99)}
			if r.t.name == T3q {
				// QUIC handshakes the outbound sidecar made for these app
				// connections: none while its connection to the peer lasts.
				quic1, _ := r.t.client.metric(quicConns)
				f["quic_handshakes"] = quic1 - quic0
			}
			for side, s := range cpu() {
				f["cpu_us_per_conn."+side] = s / n * 1e6
			}
			m.add(MeshResult{Scenario: "handshake", Variant: r.variant, Topology: r.t.name, Repeat: rep, Figures: f})
		}
	}
	return nil
}

// rpc runs, at a fixed rate, 1 KB HTTP/1.1 requests over 4 and 16
// connections (kind http1) or gRPC unary calls (kind grpc).
func (m *mesh) rpc(kind string) error {
	type variant struct {
		name, kind string
		conns      int
	}
	variants := []variant{{"HTTP/1.1 4 conns", kindHTTP1, 4}, {"HTTP/1.1 16 conns", kindHTTP1, 16}, {"gRPC unary", kindGRPC, 1}}
	for rep := range m.p.RPCRepeats {
		for _, v := range variants {
			if v.kind != kind {
				continue
			}
			for _, t := range m.carrying(v.kind) {
				res, err := m.rpcOnce(t, v.kind, v.conns, m.p.RPCTime)
				if err != nil {
					return fmt.Errorf("%s %s: %w", t.name, v.name, err)
				}
				res.Scenario, res.Variant, res.Repeat = "rpc", v.name, rep
				m.add(res)
			}
		}
	}
	return nil
}

func (m *mesh) rpcOnce(t *topology, kind string, conns int, d time.Duration) (MeshResult, error) {
	// The JWT-SVIDs the inbound sidecar validated: one per request where
	// it requires them (T3h-jwt).
	const validated = `credflow_jwt_tokens_total{op="validated"}`
	var validated0 float64
	if t.server != nil && t.server.admin != "" {
		validated0, _ = t.server.metric(validated)
	}
	cpu := cpuOf(t)
	var (
		lat    latencies
		failed int
		err    error
	)
	if kind == kindGRPC {
		lat, failed, err = rpcGRPC(m.ctx, t.entry[kind], m.p.RPCRate, d)
	} else {
		lat, failed, err = rpcHTTP1(m.ctx, t.entry[kind], conns, m.p.RPCRate, d)
	}
	if err != nil {
		return MeshResult{}, err
	}
	n := float64(len(lat) + failed)
	f := map[string]float64{"requests": n, "failed": float64(failed),
		"p50_us": lat.pct(50), "p90_us": lat.pct(90), "p99_us": lat.pct(99), "p99.9_us": lat.pct(99.9)}
	for side, s := range cpu() {
		f["cpu_us_per_req."+side] = s / n * 1e6
		f["vcpu_per_1000rps."+side] = s / d.Seconds() * 1000 / float64(m.p.RPCRate)
	}
	if t.server != nil && t.server.admin != "" {
		if v, err := t.server.metric(validated); err == nil {
			f["jwt_validated"] = v - validated0
		}
	}
	return MeshResult{Topology: t.name, Figures: f}, nil
}

// rotationTopologies are the topologies the rotation scenario runs on.
var rotationTopologies = []string{T3MLKEM, T3h}

// rotation runs HTTP/1.1 RPCs through the credflow pairs while both
// identities get new SVIDs every RotationEvery: no request may fail.
func (m *mesh) rotation() error {
	for _, t := range m.findAll(rotationTopologies) {
		name := t.name
		stop := make(chan struct{})
		rotated := make(chan int, 1)
		go func() {
			n := 0
			defer func() { rotated <- n }()
			tick := time.NewTicker(m.p.RotationEvery)
			defer tick.Stop()
			for {
				select {
				case <-stop:
					return
				case <-tick.C:
					if err := m.r.rotate(); err == nil {
						n++
					}
				}
			}
		}()
		res, err := m.rpcOnce(t, kindHTTP1, 4, m.p.RotationTime)
		close(stop)
		n := <-rotated
		if err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		res.Scenario, res.Variant = "rotation", fmt.Sprintf("HTTP/1.1 4 conns, SVIDs rotated every %v", m.p.RotationEvery)
		res.Figures["rotations"] = float64(n)
		m.add(res)
	}
	return nil
}

// scaleTopologies are the topologies the scale scenario runs on.
var scaleTopologies = []string{T3MLKEM, T4, T5}

// scale holds idle connections through each encrypting topology and
// measures each side's memory per connection.
func (m *mesh) scale() error {
	for _, n := range m.p.IdleConns {
		// Each sidecar holds two descriptors per connection, and so does
		// the harness (client and server ends).
		if fit := int(m.run.FileLimit-2000) / 2 / 1000 * 1000; n > fit {
			m.notef("%d idle connections need %d descriptors per process; the limit here is %d and cannot be raised "+
				"(no CAP_SYS_RESOURCE), so %d were held instead", n, 2*n+100, m.run.FileLimit, fit)
			n = fit
		}
		for _, t := range m.findAll(scaleTopologies) {
			res, err := m.scaleOnce(t, n)
			if err != nil {
				return fmt.Errorf("%s %d: %w", t.name, n, err)
			}
			m.add(res)
		}
	}
	return nil
}

func (m *mesh) scaleOnce(t *topology, n int) (MeshResult, error) {
	// A wave of connections first, opened and closed, so that the baseline
	// is a process that has carried connections (code paged in, pools and
	// caches grown) and has settled after a wave, as it has when the
	// figures are taken: credflow returns what a wave of relays freed once
	// it has parked or closed.
	settle()
	released := m.releases(t)
	closeWarm, err := idleConnections(t.entry[kindTCP], scaleWarmup, 32)
	if err != nil {
		return MeshResult{}, fmt.Errorf("warm-up: %w", err)
	}
	closeWarm()
	m.settleIdle(t, released)
	rss0 := map[*proc]int64{}
	heap0 := map[*proc]float64{}
	stack0 := map[*proc]float64{}
	gor0 := map[*proc]float64{}
	for _, p := range t.procs() {
		rss0[p] = p.rss()
		heap0[p], _ = p.metric("go_memstats_heap_inuse_bytes")
		stack0[p], _ = p.metric("go_memstats_stack_inuse_bytes")
		gor0[p], _ = p.metric("go_goroutines")
	}
	released = m.releases(t)
	closeAll, err := idleConnections(t.entry[kindTCP], n, 32)
	if err != nil {
		return MeshResult{}, err
	}
	defer closeAll()
	// Idle means idle: credflow parks a relay (no goroutine, no buffer)
	// 5 to 7.5 s after its last byte, and returns what the wave of parked
	// relays freed once parking has stopped, so the figures are taken
	// past that.
	time.Sleep(idleSettle)
	m.settleIdle(t, released)
	if m.prof != nil {
		// What the held connections keep, by where it was allocated.
		for side, p := range map[string]*proc{"outbound": t.client, "inbound": t.server} {
			m.prof.snapshot(m.ctx, p, fmt.Sprintf("%s-%s-scale-%d.heap.pprof", t.id, side, n))
		}
	}
	f := map[string]float64{"connections": float64(n)}
	for side, p := range map[string]*proc{"client": t.client, "server": t.server} {
		f["rss_kib_per_conn."+side] = float64(p.rss()-rss0[p]) / 1024 / float64(n)
		if p.admin != "" {
			heap, _ := p.metric("go_memstats_heap_inuse_bytes")
			stack, _ := p.metric("go_memstats_stack_inuse_bytes")
			gor, _ := p.metric("go_goroutines")
			f["heap_kib_per_conn."+side] = (heap - heap0[p]) / 1024 / float64(n)
			f["stack_kib_per_conn."+side] = (stack - stack0[p]) / 1024 / float64(n)
			f["goroutines_per_conn."+side] = (gor - gor0[p]) / float64(n)
		}
	}
	return MeshResult{Scenario: "scale", Variant: fmt.Sprintf("%d idle", n), Topology: t.name, Figures: f}, nil
}

const (
	// idleSettle is how long the scale scenario leaves its connections
	// idle before it measures them.
	idleSettle = 9 * time.Second
	// scaleWarmup is the size of the wave before the baseline: enough
	// relays (600 directions) for credflow to release after them.
	scaleWarmup = 300
	// releaseWait bounds the wait for a credflow sidecar's release.
	releaseWait = 30 * time.Second
)

// releases returns each credflow process's count of memory releases.
func (m *mesh) releases(t *topology) map[*proc]float64 {
	r := map[*proc]float64{}
	for _, p := range t.procs() {
		if p.admin != "" {
			r[p], _ = p.metric("credflow_memory_releases_total")
		}
	}
	return r
}

// settleIdle waits for each credflow process in t to have released memory
// since the counts in before (at most releaseWait; a note says when one
// did not), then for every process's RSS to stop falling.
func (m *mesh) settleIdle(t *topology, before map[*proc]float64) {
	end := time.Now().Add(releaseWait)
	for p, n := range before {
		for {
			if now, _ := p.metric("credflow_memory_releases_total"); now > n {
				break
			}
			if time.Now().After(end) {
				m.notef("%s: a sidecar had not returned freed memory %v after a wave of connections; its scale figures include it", t.name, releaseWait)
				break
			}
			time.Sleep(250 * time.Millisecond)
		}
	}
	settleRSS(t.procs())
}

// settleRSS waits until no process in ps has shrunk by more than 1% for
// rssSteady, for at most rssSettleMax: a process may return memory to the
// system some time after its connections went quiet, and the scale figures
// are what idle connections hold for good. A process that never shrinks
// costs rssSteady.
func settleRSS(ps []*proc) {
	const (
		rssSteady    = 2 * time.Second
		rssSettleMax = 30 * time.Second
	)
	ref := make([]int64, len(ps))
	for i, p := range ps {
		ref[i] = p.rss()
	}
	steadySince := time.Now()
	for end := time.Now().Add(rssSettleMax); time.Since(steadySince) < rssSteady && time.Now().Before(end); {
		time.Sleep(250 * time.Millisecond)
		for i, p := range ps {
			if now := p.rss(); now < ref[i]-ref[i]/100 {
				ref[i], steadySince = now, time.Now()
			}
		}
	}
}

// settle lets the processes finish what the last step started.
func settle() { time.Sleep(time.Second) }

// SelfBinary is the running harness, for its relay subcommand.
func SelfBinary() string {
	p, err := os.Executable()
	if err != nil {
		return os.Args[0]
	}
	return p
}
