package procs

import (
	"context"
	"io"
	"log/slog"
	"runtime"
	"sync"
	"testing"
	"testing/synctest"
	"time"
)

// fakeRuntime stands in for the Go runtime: its CPU time grows at load
// cores while (fake) time passes, and it records what the controller set.
type fakeRuntime struct {
	mu       sync.Mutex
	load     float64 // cores in use from now on
	acc      time.Duration
	at       time.Time
	def, cur int // the runtime's default and the current GOMAXPROCS
	sets     []int
}

func newFake(def int) *fakeRuntime {
	return &fakeRuntime{def: def, cur: def, at: time.Now()}
}

func (f *fakeRuntime) setLoad(l float64) {
	f.cpuTime() // account the time so far at the old load
	f.mu.Lock()
	defer f.mu.Unlock()
	f.load = l
}

func (f *fakeRuntime) cpuTime() time.Duration {
	f.mu.Lock()
	defer f.mu.Unlock()
	now := time.Now()
	f.acc += time.Duration(f.load * float64(now.Sub(f.at)))
	f.at = now
	return f.acc
}

func (f *fakeRuntime) procs() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.cur
}

func (f *fakeRuntime) setOne() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.cur = 1
	f.sets = append(f.sets, 1)
}

func (f *fakeRuntime) setDefault() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.cur = f.def
	f.sets = append(f.sets, f.def)
	return f.def
}

func (f *fakeRuntime) state() (cur int, sets []int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.cur, append([]int(nil), f.sets...)
}

// start runs a controller on rt until the returned function is called,
// which waits for it to end.
func start(rt hooks) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	c := newController(Policy{}, rt)
	done := make(chan struct{})
	go func() { defer close(done); c.run(ctx) }()
	return func() { cancel(); <-done }
}

// The default holds until the load has stayed light for DownAfter (3 s);
// one P holds until a sample reaches Up.
func TestLightLoadTakesOneP(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		rt := newFake(4)
		stop := start(rt)
		rt.setLoad(0.3)

		time.Sleep(2950 * time.Millisecond)
		if cur, _ := rt.state(); cur != 4 {
			t.Fatalf("after 2.95 s at 0.3 cores: %d Ps, want the default 4 (one P only after 3 s)", cur)
		}
		time.Sleep(100 * time.Millisecond)
		if cur, _ := rt.state(); cur != 1 {
			t.Fatalf("after 3.05 s at 0.3 cores: %d Ps, want 1", cur)
		}

		// Busier, but under Up: still one P.
		rt.setLoad(0.7)
		time.Sleep(time.Second)
		if cur, _ := rt.state(); cur != 1 {
			t.Fatalf("at 0.7 cores: %d Ps, want 1 (Up is 0.75)", cur)
		}

		// Nearing a core: the default within one sample.
		rt.setLoad(0.95)
		time.Sleep(110 * time.Millisecond)
		if cur, _ := rt.state(); cur != 4 {
			t.Fatalf("one sample at 0.95 cores: %d Ps, want the default 4", cur)
		}

		// The same load at the default is above Down: it stays.
		rt.setLoad(0.5)
		time.Sleep(10 * time.Second)
		if cur, _ := rt.state(); cur != 4 {
			t.Fatalf("at 0.5 cores (above Down): %d Ps, want the default 4", cur)
		}
		stop()
		if _, sets := rt.state(); len(sets) != 2 || sets[0] != 1 || sets[1] != 4 {
			t.Errorf("GOMAXPROCS set to %v, want [1 4]", sets)
		}
	})
}

// A single busy sample restarts the count towards one P.
func TestBusySampleRestartsCount(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		rt := newFake(2)
		stop := start(rt)
		defer stop()
		rt.setLoad(0.1)
		time.Sleep(2500 * time.Millisecond)
		rt.setLoad(0.6) // above Down for one sample
		time.Sleep(100 * time.Millisecond)
		rt.setLoad(0.1)
		time.Sleep(2800 * time.Millisecond)
		if cur, _ := rt.state(); cur != 2 {
			t.Fatalf("2.8 s light after a busy sample: %d Ps, want the default 2", cur)
		}
		time.Sleep(300 * time.Millisecond)
		if cur, _ := rt.state(); cur != 1 {
			t.Fatalf("3.1 s light after a busy sample: %d Ps, want 1", cur)
		}
	})
}

// With a default of one (a one-CPU limit) the controller changes nothing,
// whatever the load.
func TestDefaultOfOne(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		rt := newFake(1)
		stop := start(rt)
		rt.setLoad(0.1)
		time.Sleep(5 * time.Second)
		rt.setLoad(1)
		time.Sleep(5 * time.Second)
		stop()
		if _, sets := rt.state(); len(sets) != 0 {
			t.Errorf("GOMAXPROCS set to %v with a default of 1, want no change", sets)
		}
	})
}

// Ending the controller at one P gives the runtime its default back.
func TestStopRestoresDefault(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		rt := newFake(3)
		stop := start(rt)
		time.Sleep(4 * time.Second) // no load at all
		if cur, _ := rt.state(); cur != 1 {
			t.Fatalf("idle for 4 s: %d Ps, want 1", cur)
		}
		stop()
		if cur, _ := rt.state(); cur != 3 {
			t.Errorf("after stop: %d Ps, want the default 3", cur)
		}
	})
}

// GOMAXPROCS in the environment: Run returns at once and changes nothing.
func TestEnvironmentDecides(t *testing.T) {
	t.Setenv("GOMAXPROCS", "2")
	synctest.Test(t, func(t *testing.T) {
		done := make(chan struct{})
		go func() {
			defer close(done)
			Run(context.Background(), Policy{}, slog.New(slog.NewTextHandler(io.Discard, nil)), func(int) {
				t.Error("GOMAXPROCS changed although set in the environment")
			})
		}()
		synctest.Wait()
		select {
		case <-done:
		default:
			t.Fatal("Run did not return with GOMAXPROCS set in the environment")
		}
	})
}

// The hooks of the real runtime: one P, and the default back.
func TestGoRuntime(t *testing.T) {
	if EnvSet() {
		t.Skip("GOMAXPROCS is set in the environment: the runtime's default is that value")
	}
	def := runtime.GOMAXPROCS(0)
	t.Cleanup(func() { runtime.SetDefaultGOMAXPROCS() })
	rt := goRuntime{}
	rt.setOne()
	if got := rt.procs(); got != 1 {
		t.Fatalf("after setOne: GOMAXPROCS %d, want 1", got)
	}
	if got := rt.setDefault(); got != def {
		t.Fatalf("setDefault returned %d, want the default %d", got, def)
	}
	if got := runtime.GOMAXPROCS(0); got != def {
		t.Fatalf("after setDefault: GOMAXPROCS %d, want %d", got, def)
	}
	// The process's CPU time grows with work. Spin until it does: on a
	// busy machine a short spin may get little CPU, and the kernel may
	// account it in ticks.
	before := rt.cpuTime()
	for deadline := time.Now().Add(10 * time.Second); rt.cpuTime() <= before; {
		if time.Now().After(deadline) {
			t.Fatal("process CPU time did not grow over 10 s of spinning")
		}
	}
}
