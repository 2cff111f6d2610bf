package relay

import (
	"context"
	"fmt"
	"io"
	"net"
	"runtime"
	"testing"
	"time"
)

// TestIdleMemory measures what 1,000 idle relays hold: heap (buffers, timers,
// session state) and goroutine stacks (one per direction, started by Relay.Start),
// over connections that already exist, so the figure is the relay's own
// cost. Each relay has moved a byte each way before it is measured idle, and
// has parked where it can (TLS and plain on Linux: no goroutine and no
// buffer left). The target is 20 KiB per relayed connection
// pair (both directions).
func TestIdleMemory(t *testing.T) {
	const (
		n      = 1000
		target = 20 << 10
	)
	if testing.Short() {
		t.Skip("4,000 sockets")
	}
	if raceEnabled {
		t.Skip("the race detector enlarges stacks and pools")
	}
	defer releaseAfterForTest(releaseAfter)()
	for _, k := range []kind{kindTCP, kindPlain, kindTLS} {
		t.Run(fmt.Sprintf("conn=%v", k), func(t *testing.T) {
			f := newFixture(t, k)
			pairs := make([]pair, n)
			for i := range pairs {
				pairs[i] = f.pair(t)
				defer pairs[i].closeAll()
			}
			heap, stack := idleCost(t, k, pairs)
			t.Logf("per idle relayed connection: heap %.0f B + stacks %.0f B = %.1f KiB", heap, stack, (heap+stack)/1024)
			if heap+stack > target {
				t.Errorf("idle relay holds %.0f B, want at most %d", heap+stack, target)
			}
		})
	}
}

// idleCost starts Copy on every pair, moves one byte each way through each
// relay, lets them go idle, and returns the heap and stack bytes in use per
// relay.
func idleCost(t *testing.T, k kind, pairs []pair) (heap, stack float64) {
	t.Helper()
	runtime.GC()
	runtime.GC() // twice: the second empties the pools' victim caches
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	released := Releases()

	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	results := make([]<-chan Result, len(pairs))
	for i, p := range pairs {
		res := make(chan Result, 1)
		New(p.a, p.b, Options{ParkAfter: 10 * time.Millisecond}).Start(ctx, func(r Result) { res <- r })
		results[i] = res
	}
	one := make([]byte, 1)
	for i, p := range pairs {
		for _, c := range [][2]net.Conn{{p.client, p.backend}, {p.backend, p.client}} {
			if _, err := c[0].Write(one); err != nil {
				t.Fatalf("relay %d: %v", i, err)
			}
			if _, err := io.ReadFull(c[1], one); err != nil {
				select {
				case r := <-results[i]:
					t.Fatalf("relay %d ended: %v", i, r.Err)
				default:
					t.Fatalf("relay %d: %v", i, err)
				}
			}
		}
	}
	time.Sleep(100 * time.Millisecond) // all blocked in their next read
	if runtime.GOOS == "linux" && !k.spliced() {
		waitParked(t, 2*len(pairs))
		if 2*len(pairs) >= releaseAfter {
			waitReleased(t, released)
		}
	}
	runtime.GC()
	runtime.ReadMemStats(&after)

	cancel()
	for _, res := range results {
		wait(t, res, 10*time.Second)
	}
	n := float64(len(pairs))
	return (float64(after.HeapInuse) - float64(before.HeapInuse)) / n,
		(float64(after.StackInuse) - float64(before.StackInuse)) / n
}

// waitReleased waits for the release that follows a wave of parks: at most
// releaseEvery after the one before, once parking has stopped for
// releaseQuiet.
func waitReleased(t testing.TB, before int64) {
	t.Helper()
	bound := releaseEvery + releaseQuiet + 10*time.Second
	end := time.Now().Add(bound)
	for Releases() == before {
		if time.Now().After(end) {
			t.Fatalf("no memory release %v after a wave of parks", bound)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
