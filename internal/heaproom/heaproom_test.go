package heaproom

import (
	"context"
	"io"
	"log/slog"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"sync"
	"testing"
	"testing/synctest"
	"time"
)

const mib = 1 << 20

// fakeRuntime stands in for the Go runtime: it allocates rate bytes a second
// while (fake) time passes, has a fixed live heap, and records the GOGC
// values the controller set.
type fakeRuntime struct {
	mu    sync.Mutex
	rate  float64 // bytes per second from now on
	live  uint64
	alloc float64
	at    time.Time
	sets  []int
}

func newFake(live uint64) *fakeRuntime {
	return &fakeRuntime{live: live, at: time.Now()}
}

func (f *fakeRuntime) setRate(r float64) {
	f.read() // account the time so far at the old rate
	f.mu.Lock()
	defer f.mu.Unlock()
	f.rate = r
}

func (f *fakeRuntime) setLive(l uint64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.live = l
}

func (f *fakeRuntime) read() (allocated, live uint64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	now := time.Now()
	f.alloc += f.rate * now.Sub(f.at).Seconds()
	f.at = now
	return uint64(f.alloc), f.live
}

func (f *fakeRuntime) setPercent(p int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.sets = append(f.sets, p)
}

func (f *fakeRuntime) state() []int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]int(nil), f.sets...)
}

// current is the GOGC in force: the last one set, or the default.
func (f *fakeRuntime) current() int {
	s := f.state()
	if len(s) == 0 {
		return defaultPercent
	}
	return s[len(s)-1]
}

func start(rt hooks) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	c := newController(Policy{}, rt)
	done := make(chan struct{})
	go func() { defer close(done); c.run(ctx) }()
	return func() { cancel(); <-done }
}

// Allocating at 12 MiB/s (an HTTP sidecar at 1000 requests a second) gives
// the heap room within one sample; a rate between Quiet and Busy keeps it;
// QuietAfter at or under Quiet takes it back.
func TestBusyGivesRoom(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		rt := newFake(2 * mib)
		stop := start(rt)
		rt.setRate(1 * mib)
		time.Sleep(5 * time.Second)
		if got := rt.current(); got != defaultPercent {
			t.Fatalf("at 1 MiB/s: GOGC %d, want the default %d", got, defaultPercent)
		}

		rt.setRate(12 * mib)
		time.Sleep(1100 * time.Millisecond)
		want := percentFor(2*mib, 16*mib) // 450: a goal of 18 MiB
		if got := rt.current(); got != want {
			t.Fatalf("one sample at 12 MiB/s: GOGC %d, want %d", got, want)
		}

		// Under Busy but above Quiet: the room stays.
		rt.setRate(4 * mib)
		time.Sleep(30 * time.Second)
		if got := rt.current(); got != want {
			t.Fatalf("at 4 MiB/s after busy: GOGC %d, want %d still", got, want)
		}

		rt.setRate(1 * mib)
		time.Sleep(4500 * time.Millisecond)
		if got := rt.current(); got != want {
			t.Fatalf("4.5 s at 1 MiB/s: GOGC %d, want %d (quiet only after 5 s)", got, want)
		}
		time.Sleep(time.Second)
		if got := rt.current(); got != defaultPercent {
			t.Fatalf("5.5 s at 1 MiB/s: GOGC %d, want the default back", got)
		}
		stop()
		if sets := rt.state(); len(sets) != 2 {
			t.Errorf("GOGC set to %v, want two changes", sets)
		}
	})
}

// While busy, the percent follows the live heap when it moves by more than
// an eighth, not at every small move.
func TestFollowsLiveHeap(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		rt := newFake(2 * mib)
		stop := start(rt)
		defer stop()
		rt.setRate(12 * mib)
		time.Sleep(1500 * time.Millisecond)
		rt.setLive(2*mib + mib/4) // 450 → 456: stays
		time.Sleep(2 * time.Second)
		if sets := rt.state(); len(sets) != 1 || sets[0] != 450 {
			t.Fatalf("GOGC set to %v after a small move of the live heap, want [450]", sets)
		}
		rt.setLive(8 * mib) // 450 → 200
		time.Sleep(time.Second)
		if sets := rt.state(); len(sets) != 2 || sets[1] != 200 {
			t.Fatalf("GOGC set to %v after the live heap grew to 8 MiB, want [450 200]", sets)
		}
		rt.setLive(32 * mib) // room no longer needed
		time.Sleep(time.Second)
		if got := rt.current(); got != defaultPercent {
			t.Fatalf("GOGC %d with a 32 MiB live heap, want the default", got)
		}
	})
}

// Ending the controller while busy sets the default back.
func TestStopRestoresDefault(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		rt := newFake(mib)
		stop := start(rt)
		rt.setRate(20 * mib)
		time.Sleep(2 * time.Second)
		if got := rt.current(); got == defaultPercent {
			t.Fatalf("at 20 MiB/s: GOGC still the default")
		}
		stop()
		if got := rt.current(); got != defaultPercent {
			t.Errorf("after stop: GOGC %d, want the default", got)
		}
	})
}

// A heap already larger than the room needs none: the default stays.
func TestLargeHeapLeftAlone(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		rt := newFake(64 * mib)
		stop := start(rt)
		rt.setRate(50 * mib)
		time.Sleep(5 * time.Second)
		stop()
		if sets := rt.state(); len(sets) != 0 {
			t.Errorf("GOGC set to %v with a 64 MiB live heap, want no change", sets)
		}
	})
}

func TestPercentFor(t *testing.T) {
	for _, c := range []struct {
		live, room uint64
		want       int
	}{
		{0, 16 * mib, 400},           // the runtime's minimum sets the goal: 4 MiB × 4 = 16 MiB
		{3 * mib / 2, 16 * mib, 437}, // minimum 4 MiB × 4.37 = 17.5 MiB; live-based 1.5 × 5.37 = 8
		{2 * mib, 16 * mib, 450},     // minimum 18 MiB; live-based 2 × 5.5 = 11
		{4 * mib, 16 * mib, 400},     // live-based 4 × 5 = 20 MiB; minimum 16
		{8 * mib, 16 * mib, 200},     // live-based 8 × 3 = 24 MiB; minimum 8
		{3 * mib, 8 * mib, 266},      // live-based 3 × 3.66 = 11 MiB; minimum 10.6
		{16 * mib, 16 * mib, 100},    // the default's goal is live+room already
		{100 * mib, 16 * mib, 100},   // never below the default
		{2 * mib, 2 * mib, 100},      // 4 MiB, the default's own minimum
	} {
		if got := percentFor(c.live, c.room); got != c.want {
			t.Errorf("percentFor(live %d, room %d) = %d, want %d", c.live, c.room, got, c.want)
		}
	}
}

// On the real runtime: with the percent percentFor gives, the goal the
// runtime sets after a collection is live+room, give or take what the
// runtime counts beside the heap (stacks, globals). Fails if the runtime's
// minimum heap goal or its scaling changes.
func TestRuntimeGoal(t *testing.T) {
	old := debug.SetGCPercent(defaultPercent)
	defer debug.SetGCPercent(old)
	rt := newGoRuntime()
	runtime.GC()
	_, live := rt.read()
	if live == 0 {
		t.Fatal("live heap 0 after a collection: the runtime's metrics are not read")
	}
	const room = 16 * mib
	rt.setPercent(percentFor(live, room))
	runtime.GC()
	_, live = rt.read()
	goal := []metrics.Sample{{Name: "/gc/heap/goal:bytes"}}
	metrics.Read(goal)
	got, want := goal[0].Value.Uint64(), live+room
	if got < want*9/10 || got > want*12/10 {
		t.Errorf("heap goal %d MiB at GOGC %d over %d MiB live, want about %d MiB",
			got/mib, percentFor(live, room), live/mib, want/mib)
	}
}

// The real runtime's counters: the bytes allocated grow as the test
// allocates.
func TestRuntimeAllocated(t *testing.T) {
	rt := newGoRuntime()
	before, _ := rt.read()
	var keep [][]byte
	for range 64 {
		keep = append(keep, make([]byte, 64<<10))
	}
	after, _ := rt.read()
	runtime.KeepAlive(keep)
	if after-before < 4*mib {
		t.Errorf("allocated %d bytes by the runtime's count after allocating 4 MiB", after-before)
	}
}

// GOGC in the environment: Run returns at once and changes nothing.
func TestEnvironmentDecides(t *testing.T) {
	t.Setenv("GOGC", "200")
	synctest.Test(t, func(t *testing.T) {
		done := make(chan struct{})
		go func() {
			defer close(done)
			Run(context.Background(), Policy{}, slog.New(slog.NewTextHandler(io.Discard, nil)), func(int) {
				t.Error("GOGC changed although set in the environment")
			})
		}()
		synctest.Wait()
		select {
		case <-done:
		default:
			t.Fatal("Run did not return with GOGC set in the environment")
		}
	})
}
