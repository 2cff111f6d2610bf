package relay

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"runtime"
	"testing"
	"time"
)

// waitParked waits until n directions are parked, and fails the test
// after 10 s.
func waitParked(t testing.TB, n int) {
	t.Helper()
	end := time.Now().Add(10 * time.Second)
	for Parked() != n {
		if time.Now().After(end) {
			t.Fatalf("%d directions parked after 10s, want %d", Parked(), n)
		}
		time.Sleep(time.Millisecond)
	}
}

// checkEnded fails the test unless the relay on p closed both its
// connections and left nothing in the poller.
func checkEnded(t *testing.T, p pair) {
	t.Helper()
	if err := relayClosed(p); err != nil {
		t.Error(err)
	}
	if n := Parked(); n != 0 {
		t.Errorf("%d directions left in the poller", n)
	}
}

func needPoller(t *testing.T) {
	t.Helper()
	if runtime.GOOS != "linux" {
		t.Skip("relays park on Linux only")
	}
}

// exchange sends msg from one end to the other and checks it arrives.
func exchange(t testing.TB, from, to net.Conn, msg []byte) {
	t.Helper()
	errc := make(chan error, 1)
	go func() {
		_, err := from.Write(msg)
		errc <- err
	}()
	got := make([]byte, len(msg))
	to.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadFull(to, got); err != nil {
		t.Fatalf("reading %d bytes: %v", len(msg), err)
	}
	to.SetReadDeadline(time.Time{})
	if err := <-errc; err != nil {
		t.Fatalf("writing: %v", err)
	}
	if !bytes.Equal(got, msg) {
		t.Fatalf("%d bytes arrived changed", len(msg))
	}
}

// TestParkAndWake: a quiet relay parks both directions (no goroutine of
// its own left), wakes for data either way, small or many TLS records,
// parks again, and still propagates a half-close and ends cleanly.
func TestParkAndWake(t *testing.T) {
	needPoller(t)
	for _, k := range []kind{kindTLS, kindPlain} {
		t.Run(k.String(), func(t *testing.T) {
			f := newFixture(t, k)
			p := f.pair(t)
			defer p.closeAll()
			thePoller() // its goroutine is the process's, not the relay's
			base := runtime.NumGoroutine()
			res := relay(t.Context(), p, Options{ParkAfter: 20 * time.Millisecond})
			for round, size := range []int{1, 100, 1 << 20, 5000} {
				waitParked(t, 2)
				if g := goroutinesBackTo(base+1, 10*time.Second); g > base+1 {
					t.Errorf("round %d: %d goroutines with the relay parked, want %d (the caller's)", round, g, base+1)
				}
				exchange(t, p.client, p.backend, payload(size, uint64(round)))
				exchange(t, p.backend, p.client, payload(size, uint64(round)+100))
			}
			waitParked(t, 2)
			closeWriteConn(t, p.client)
			got, err := readAll(p.backend, 10*time.Second)
			if err != nil || len(got) != 0 {
				t.Fatalf("backend after the client's half-close: %q, %v; want EOF", got, err)
			}
			exchange(t, p.backend, p.client, []byte("still open"))
			closeWriteConn(t, p.backend)
			r := wait(t, res, 10*time.Second)
			if r.Err != nil {
				t.Fatalf("Copy: %v", r.Err)
			}
			if want := int64(1 + 100 + 1<<20 + 5000); r.AToB != want || r.BToA != want+10 {
				t.Errorf("moved %d and %d bytes, want %d and %d", r.AToB, r.BToA, want, want+10)
			}
			checkEnded(t, p)
		})
	}
}

// TestParkedEnds: a parked relay still ends on each of the ways a relay
// ends, with nothing left in the poller.
func TestParkedEnds(t *testing.T) {
	needPoller(t)
	errRevoked := errors.New("revoked")
	cases := []struct {
		name string
		opts Options
		act  func(t *testing.T, p pair, r *Relay, cancel context.CancelFunc)
		want error
	}{
		{"cancel", Options{}, func(t *testing.T, p pair, r *Relay, cancel context.CancelFunc) { cancel() }, context.Canceled},
		{"close", Options{}, func(t *testing.T, p pair, r *Relay, cancel context.CancelFunc) { r.Close(errRevoked) }, errRevoked},
		{"idle", Options{IdleTimeout: 300 * time.Millisecond}, nil, ErrIdle},
		// The client half-closes: a->b wakes for the EOF, and b->a, parked,
		// must wake to observe its half-close bound.
		{"half-close bound", Options{HalfCloseTimeout: 200 * time.Millisecond},
			func(t *testing.T, p pair, r *Relay, cancel context.CancelFunc) { closeWriteConn(t, p.client) }, ErrHalfCloseTimeout},
		{"peer reset", Options{}, func(t *testing.T, p pair, r *Relay, cancel context.CancelFunc) {
			// Without close_notify, which would be a clean end of a->b.
			raw := p.client.(interface{ NetConn() net.Conn }).NetConn().(*net.TCPConn)
			raw.SetLinger(0)
			raw.Close()
		}, nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			f := newFixture(t, kindTLS)
			p := f.pair(t)
			defer p.closeAll()
			ctx, cancel := context.WithCancel(t.Context())
			defer cancel()
			c.opts.ParkAfter = 10 * time.Millisecond
			r := New(p.a, p.b, c.opts)
			res := make(chan Result, 1)
			r.Start(ctx, func(x Result) { res <- x })
			waitParked(t, 2)
			if c.act != nil {
				c.act(t, p, r, cancel)
			}
			got := wait(t, res, 10*time.Second)
			switch {
			case c.want != nil && !errors.Is(got.Err, c.want):
				t.Errorf("relay: %v, want %v", got.Err, c.want)
			case c.want == nil && got.Err == nil:
				t.Errorf("relay: no error after a reset")
			}
			checkEnded(t, p)
		})
	}
}

// TestParkRaces: with a park check every millisecond, park requests race
// with traffic in both directions (messages of every size, gaps around the
// park period): every byte arrives, in order, and the relay ends cleanly.
func TestParkRaces(t *testing.T) {
	needPoller(t)
	rounds := 300
	if testing.Short() {
		rounds = 60
	}
	for _, k := range []kind{kindTLS, kindPlain} {
		t.Run(k.String(), func(t *testing.T) {
			f := newFixture(t, k)
			p := f.pair(t)
			defer p.closeAll()
			res := relay(t.Context(), p, Options{ParkAfter: time.Millisecond})
			for i := range rounds {
				size := []int{1, 17, 1024, 1025, 16 << 10, 70 << 10}[i%6]
				from, to := p.client, p.backend
				if i%2 == 1 {
					from, to = to, from
				}
				exchange(t, from, to, payload(size, uint64(i)))
				time.Sleep(time.Duration(i%4) * time.Millisecond)
			}
			waitParked(t, 2) // at least one whole park and wake-up, whatever the timing above
			exchange(t, p.backend, p.client, payload(3000, 1))
			closeWriteConn(t, p.client)
			closeWriteConn(t, p.backend)
			if r := wait(t, res, 10*time.Second); r.Err != nil {
				t.Fatalf("Copy: %v", r.Err)
			}
			checkEnded(t, p)
		})
	}
}

// TestNoParking: with ParkAfter < 0 a relay has no park state (so nothing
// ever asks it to park), and relays as usual; with 0 it has one.
func TestNoParking(t *testing.T) {
	needPoller(t)
	f := newFixture(t, kindTLS)
	p := f.pair(t)
	defer p.closeAll()
	if New(p.a, p.b, Options{}).s.park == nil {
		t.Fatal("a TLS relay with the default period cannot park")
	}
	r := New(p.a, p.b, Options{ParkAfter: -1})
	if r.s.park != nil {
		t.Fatal("a relay with ParkAfter < 0 can park")
	}
	res := make(chan Result, 1)
	r.Start(t.Context(), func(x Result) { res <- x })
	exchange(t, p.client, p.backend, []byte("x"))
	exchange(t, p.backend, p.client, []byte("y"))
	closeWriteConn(t, p.client)
	closeWriteConn(t, p.backend)
	if got := wait(t, res, 10*time.Second); got.Err != nil {
		t.Fatalf("relay: %v", got.Err)
	}
	checkEnded(t, p)
}

// TestCloseBeforeStart: a relay closed before it starts reports the cause
// at once and closes both connections; one closed while it runs ends with
// the cause too.
func TestCloseBeforeStart(t *testing.T) {
	f := newFixture(t, kindTLS)
	errGone := errors.New("gone")

	p := f.pair(t)
	defer p.closeAll()
	r := New(p.a, p.b, Options{})
	r.Close(errGone)
	res := make(chan Result, 1)
	r.Start(t.Context(), func(x Result) { res <- x })
	if got := wait(t, res, 10*time.Second); !errors.Is(got.Err, errGone) {
		t.Errorf("Result.Err = %v, want %v", got.Err, errGone)
	}
	if err := relayClosed(p); err != nil {
		t.Error(err)
	}

	p = f.pair(t)
	defer p.closeAll()
	r = New(p.a, p.b, Options{})
	res = make(chan Result, 1)
	r.Start(t.Context(), func(x Result) { res <- x })
	exchange(t, p.client, p.backend, []byte("x"))
	r.Close(nil)
	if got := wait(t, res, 10*time.Second); !errors.Is(got.Err, ErrClosed) {
		t.Errorf("Result.Err = %v, want %v", got.Err, ErrClosed)
	}
	if err := relayClosed(p); err != nil {
		t.Error(err)
	}
}

// BenchmarkRoundTripAfterIdle: a one-byte round trip through a TLS relay
// after a quiet period long enough to park it, against the same with
// parking off: the difference is what waking both directions costs the
// first exchange after a pause.
func BenchmarkRoundTripAfterIdle(b *testing.B) {
	if runtime.GOOS != "linux" {
		b.Skip("relays park on Linux only")
	}
	for _, c := range []struct {
		name string
		park time.Duration
	}{{"parked", time.Millisecond}, {"not-parked", -1}} {
		b.Run(c.name, func(b *testing.B) {
			f := newFixture(b, kindTLS)
			p := f.pair(b)
			defer p.closeAll()
			res := relay(b.Context(), p, Options{ParkAfter: c.park})
			one := make([]byte, 1)
			for b.Loop() {
				b.StopTimer()
				if c.park > 0 {
					waitParked(b, 2)
				} else {
					time.Sleep(2 * time.Millisecond) // as long as parking takes
				}
				b.StartTimer()
				p.client.Write(one)
				io.ReadFull(p.backend, one)
				p.backend.Write(one)
				io.ReadFull(p.client, one)
			}
			b.StopTimer()
			p.client.Close()
			p.backend.Close()
			wait(b, res, 10*time.Second)
		})
	}
}
