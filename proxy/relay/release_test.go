package relay

import (
	"math"
	"os"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"
)

// TestMain holds the process's memory releases back: a release after one
// test's wave of relays would run on a goroutine of its own during the
// next test, and some tests count goroutines. TestIdleMemory lets them
// happen.
func TestMain(m *testing.M) {
	releaseAfterForTest(math.MaxInt)
	os.Exit(m.Run())
}

// releaseAfterForTest sets the size of a wave for the process's releaser,
// counting from zero, and returns a function that puts the old size back.
func releaseAfterForTest(n int) (restore func()) {
	r := theReleaser()
	r.mu.Lock()
	defer r.mu.Unlock()
	old := r.after
	r.after, r.n = n, 0
	return func() { releaseAfterForTest(old) }
}

func TestReleaser(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var released atomic.Int64
		r := &releaser{after: 4, quiet: time.Second, every: 10 * time.Second, free: func() { released.Add(1) }}
		freed := func() int64 { return released.Load() }
		step := func(d time.Duration) {
			t.Helper()
			time.Sleep(d)
			synctest.Wait()
		}

		// A wave too small releases nothing.
		for range 3 {
			r.retired(1)
		}
		step(time.Minute)
		if freed() != 0 {
			t.Fatalf("released after 3 directions retired (wave of 4): %d", freed())
		}

		// The fourth makes the wave; the release waits until retiring has
		// stopped for a second.
		r.retired(1)
		for i := range 6 { // a park or an end (2 directions) every half second
			step(500 * time.Millisecond)
			r.retired(1 + i%2)
		}
		if freed() != 0 {
			t.Fatalf("released while directions went on retiring: %d", freed())
		}
		step(999 * time.Millisecond)
		if freed() != 0 {
			t.Fatal("released before retiring had stopped for a second")
		}
		step(time.Millisecond)
		if freed() != 1 || r.done.Load() != 1 {
			t.Fatalf("a second after the last retirement: %d releases, want 1", freed())
		}

		// The next wave comes 2 s later: the release waits for 10 s after
		// the first.
		step(time.Second)
		for range 4 {
			r.retired(1)
		}
		step(8999 * time.Millisecond)
		if freed() != 1 {
			t.Fatal("released twice within 10 s")
		}
		step(time.Millisecond)
		if freed() != 2 {
			t.Fatalf("10 s after the first release: %d releases, want 2", freed())
		}

		// A wave counts from the last release.
		for range 3 {
			r.retired(1)
		}
		step(time.Minute)
		if freed() != 2 {
			t.Fatalf("released after 3 directions retired since the last release: %d", freed())
		}
	})
}
