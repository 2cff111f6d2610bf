package relay

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// outcome is the comparable part of a Result.
type outcome struct {
	AToB, BToA int64
	Spliced    bool
}

func outcomeOf(r Result) outcome { return outcome{r.AToB, r.BToA, r.spliced} }

func TestCopyPayloads(t *testing.T) {
	for _, k := range []kind{kindTCP, kindTLS} {
		for _, size := range []int{1, 64 << 10, 10 << 20} {
			t.Run(fmt.Sprintf("conn=%v/size=%d", k, size), func(t *testing.T) {
				f := newFixture(t, k)
				p := f.pair(t)
				defer p.closeAll()
				res := relay(t.Context(), p, Options{})

				up, down := payload(size, 1), payload(size, 2)
				type got struct {
					data []byte
					err  error
				}
				atBackend, atClient := make(chan got, 1), make(chan got, 1)
				// Both directions at once, each ended by a half-close.
				go func() {
					d, err := readAll(p.backend, 30*time.Second)
					atBackend <- got{d, err}
				}()
				go func() {
					d, err := readAll(p.client, 30*time.Second)
					atClient <- got{d, err}
				}()
				go func() {
					p.backend.Write(down)
					closeWriteConn(t, p.backend)
				}()
				if _, err := p.client.Write(up); err != nil {
					t.Fatal(err)
				}
				closeWriteConn(t, p.client)

				for name, c := range map[string]struct {
					ch   chan got
					want []byte
				}{"client->backend": {atBackend, up}, "backend->client": {atClient, down}} {
					g := <-c.ch
					if g.err != nil {
						t.Errorf("%s: read: %v", name, g.err)
					}
					if !bytes.Equal(g.data, c.want) {
						t.Errorf("%s: got %d bytes, want %d bytes (equal length: %v)", name, len(g.data), len(c.want), len(g.data) == len(c.want))
					}
				}
				r := wait(t, res, 10*time.Second)
				if r.Err != nil {
					t.Errorf("Result.Err = %v, want nil", r.Err)
				}
				if err := relayClosed(p); err != nil {
					t.Error(err)
				}
				want := outcome{int64(size), int64(size), k.spliced()}
				if diff := cmp.Diff(want, outcomeOf(r)); diff != "" {
					t.Errorf("Result (-want +got):\n%s", diff)
				}
			})
		}
	}
}

// TestHalfClose: one side shuts down its write side after a request; the
// other sees EOF, replies, and the reply arrives in full before EOF.
func TestHalfClose(t *testing.T) {
	request, reply := payload(3000, 3), payload(200<<10, 4)
	for _, k := range []kind{kindTCP, kindTLS, kindPlain} {
		for _, first := range []string{"client", "backend"} {
			t.Run(fmt.Sprintf("conn=%v/first=%s", k, first), func(t *testing.T) {
				f := newFixture(t, k)
				p := f.pair(t)
				defer p.closeAll()
				res := relay(t.Context(), p, Options{})

				asker, answerer := p.client, p.backend
				if first == "backend" {
					asker, answerer = p.backend, p.client
				}
				if _, err := asker.Write(request); err != nil {
					t.Fatal(err)
				}
				closeWriteConn(t, asker)

				got, err := readAll(answerer, 10*time.Second)
				if err != nil || !bytes.Equal(got, request) {
					t.Fatalf("request: got %d bytes, err %v; want %d bytes and EOF", len(got), err, len(request))
				}
				if _, err := answerer.Write(reply); err != nil {
					t.Fatal(err)
				}
				closeWriteConn(t, answerer)
				got, err = readAll(asker, 10*time.Second)
				if err != nil || !bytes.Equal(got, reply) {
					t.Fatalf("reply: got %d bytes, err %v; want %d bytes and EOF", len(got), err, len(reply))
				}

				r := wait(t, res, 5*time.Second)
				if r.Err != nil {
					t.Errorf("Result.Err = %v, want nil", r.Err)
				}
				up, down := int64(len(request)), int64(len(reply))
				if first == "backend" {
					up, down = down, up
				}
				if diff := cmp.Diff(outcome{up, down, k.spliced()}, outcomeOf(r)); diff != "" {
					t.Errorf("Result (-want +got):\n%s", diff)
				}
			})
		}
	}
}

func TestIdleTimeout(t *testing.T) {
	const idle = 200 * time.Millisecond
	for _, k := range []kind{kindTCP, kindTLS} {
		t.Run(fmt.Sprintf("conn=%v/traffic=none", k), func(t *testing.T) {
			f := newFixture(t, k)
			p := f.pair(t)
			defer p.closeAll()
			start := time.Now()
			r := wait(t, relay(t.Context(), p, Options{IdleTimeout: idle}), 5*time.Second)
			took := time.Since(start)
			if !errors.Is(r.Err, ErrIdle) {
				t.Errorf("Result.Err = %v, want ErrIdle", r.Err)
			}
			// Not before the idle timeout; the wait above bounds it from
			// above (without the idle timer the relay would never end). An
			// upper bound tighter than that would measure the scheduler.
			if took < idle {
				t.Errorf("closed after %v, before the idle timeout %v", took, idle)
			}
			assertClosed(t, p)
		})
		t.Run(fmt.Sprintf("conn=%v/traffic=one-way", k), func(t *testing.T) {
			f := newFixture(t, k)
			p := f.pair(t)
			defer p.closeAll()
			// A byte every 100 ms in one direction keeps the relay open
			// past its idle timeout (1.5 s of traffic under a 1 s timeout).
			// The timeout is ten gaps long, so a loaded machine that
			// delays a write several times over does not end the relay.
			const idle, writes = time.Second, 15
			res := relay(t.Context(), p, Options{IdleTimeout: idle})
			go readAll(p.backend, 10*time.Second) // drains until the relay closes

			var last time.Time
			for range writes {
				if _, err := p.client.Write([]byte{1}); err != nil {
					t.Fatalf("write while active: %v", err)
				}
				last = time.Now()
				time.Sleep(idle / 10)
			}
			select {
			case r := <-res:
				t.Fatalf("relay ended while active: %v", r.Err)
			default:
			}
			r := wait(t, res, 5*time.Second)
			quiet := time.Since(last)
			if !errors.Is(r.Err, ErrIdle) {
				t.Errorf("Result.Err = %v, want ErrIdle", r.Err)
			}
			if quiet < idle {
				t.Errorf("closed %v after the last byte, want at least %v", quiet, idle)
			}
			if r.AToB != writes {
				t.Errorf("AToB = %d, want %d", r.AToB, writes)
			}
		})
	}
}

// assertClosed checks that both test endpoints see the relay's close.
func assertClosed(t *testing.T, p pair) {
	t.Helper()
	for name, c := range map[string]net.Conn{"client": p.client, "backend": p.backend} {
		c.SetReadDeadline(time.Now().Add(2 * time.Second))
		if _, err := c.Read(make([]byte, 1)); !isEOF(err) {
			t.Errorf("%s read after relay end: %v, want EOF or reset", name, err)
		}
	}
}

func TestContextCancel(t *testing.T) {
	cause := errors.New("listener shutting down")
	for _, k := range []kind{kindTCP, kindTLS} {
		t.Run(fmt.Sprintf("conn=%v/when=running", k), func(t *testing.T) {
			f := newFixture(t, k)
			p := f.pair(t)
			defer p.closeAll()
			ctx, cancel := context.WithCancelCause(t.Context())
			res := relay(ctx, p, Options{})
			time.Sleep(50 * time.Millisecond) // both directions blocked in reads
			start := time.Now()
			cancel(cause)
			// Both reads are blocked with no deadline: only the
			// cancellation can end them, so returning at all is the proof.
			r := wait(t, res, 10*time.Second)
			t.Logf("Copy returned %v after cancel", time.Since(start))
			if !errors.Is(r.Err, context.Canceled) || !errors.Is(r.Err, cause) {
				t.Errorf("Result.Err = %v, want context.Canceled with its cause", r.Err)
			}
			assertClosed(t, p)
		})
		t.Run(fmt.Sprintf("conn=%v/when=before", k), func(t *testing.T) {
			f := newFixture(t, k)
			p := f.pair(t)
			defer p.closeAll()
			ctx, cancel := context.WithCancel(t.Context())
			cancel()
			r := wait(t, relay(ctx, p, Options{}), time.Second)
			if !errors.Is(r.Err, context.Canceled) {
				t.Errorf("Result.Err = %v, want context.Canceled", r.Err)
			}
			assertClosed(t, p)
		})
	}
}

// TestWriteTimeout: the receiving end stops reading while the sending end
// keeps writing; the relay's blocked write is cut.
func TestWriteTimeout(t *testing.T) {
	const wt = 300 * time.Millisecond
	for _, k := range []kind{kindTCP, kindTLS} {
		for _, stalled := range []string{"backend", "client"} {
			t.Run(fmt.Sprintf("conn=%v/stalled=%s", k, stalled), func(t *testing.T) {
				f := newFixture(t, k)
				p := f.pair(t)
				defer p.closeAll()
				res := relay(t.Context(), p, Options{WriteTimeout: wt})
				sender := p.client
				if stalled == "client" {
					sender = p.backend
				}
				go func() {
					chunk := make([]byte, 64<<10)
					sender.SetWriteDeadline(time.Now().Add(20 * time.Second))
					for {
						if _, err := sender.Write(chunk); err != nil {
							return
						}
					}
				}()
				r := wait(t, res, 15*time.Second)
				t.Logf("Result.Err: %v", r.Err)
				if !errors.Is(r.Err, ErrWriteTimeout) || !errors.Is(r.Err, os.ErrDeadlineExceeded) {
					t.Errorf("Result.Err = %v, want ErrWriteTimeout", r.Err)
				}
			})
		}
	}
}

func TestHalfCloseTimeout(t *testing.T) {
	const hc = 200 * time.Millisecond
	for _, k := range []kind{kindTCP, kindTLS} {
		t.Run(fmt.Sprintf("conn=%v", k), func(t *testing.T) {
			f := newFixture(t, k)
			p := f.pair(t)
			defer p.closeAll()
			res := relay(t.Context(), p, Options{HalfCloseTimeout: hc})
			closeWriteConn(t, p.client)
			start := time.Now()
			r := wait(t, res, 5*time.Second)
			if took := time.Since(start); took < hc-20*time.Millisecond {
				t.Errorf("closed %v after the half-close, want at least %v", took, hc)
			}
			if !errors.Is(r.Err, ErrHalfCloseTimeout) {
				t.Errorf("Result.Err = %v, want ErrHalfCloseTimeout", r.Err)
			}
		})
	}
}

// TestErrorClosesOther: a reset on one side ends the relay and closes the
// other side at once.
func TestErrorClosesOther(t *testing.T) {
	for _, k := range []kind{kindTCP, kindTLS, kindPlain} {
		for _, failing := range []string{"backend", "client"} {
			t.Run(fmt.Sprintf("conn=%v/reset=%s", k, failing), func(t *testing.T) {
				f := newFixture(t, k)
				p := f.pair(t)
				defer p.closeAll()
				res := relay(t.Context(), p, Options{})
				resetter, other := p.backend, p.client
				if failing == "client" {
					resetter, other = p.client, p.backend
				}
				raw := resetter
				if tc, ok := raw.(interface{ NetConn() net.Conn }); ok {
					raw = tc.NetConn()
				}
				raw.(*net.TCPConn).SetLinger(0)
				time.Sleep(20 * time.Millisecond)
				start := time.Now()
				raw.Close() // RST

				// The relay has no idle timeout here: EOF before the read
				// deadline comes only from the reset being propagated.
				other.SetReadDeadline(time.Now().Add(10 * time.Second))
				if _, err := other.Read(make([]byte, 1)); !isEOF(err) {
					t.Errorf("other side read: %v, want EOF", err)
				}
				t.Logf("other side closed %v after the reset", time.Since(start))
				r := wait(t, res, 2*time.Second)
				t.Logf("Result.Err: %v", r.Err)
				if !errors.Is(r.Err, syscall.ECONNRESET) {
					t.Errorf("Result.Err = %v, want ECONNRESET", r.Err)
				}
			})
		}
	}
}

// TestNoCloseWrite: a destination without CloseWrite is closed entirely
// when its source ends, and the relay ends cleanly.
func TestNoCloseWrite(t *testing.T) {
	f := newFixture(t, kindTCP)
	p := f.pair(t)
	defer p.closeAll()
	type bare struct{ net.Conn } // hides CloseWrite
	res := make(chan Result, 1)
	go func() { res <- Copy(t.Context(), p.a, bare{p.b}, Options{}) }()
	msg := []byte("last words")
	p.client.Write(msg)
	closeWriteConn(t, p.client)
	got, err := readAll(p.backend, 5*time.Second)
	if err != nil || !bytes.Equal(got, msg) {
		t.Errorf("backend got %q, %v; want %q and EOF", got, err, msg)
	}
	r := wait(t, res, 5*time.Second)
	if r.Err != nil {
		t.Errorf("Result.Err = %v, want nil", r.Err)
	}
}

// TestHalfCloseUnix: half-close propagates to and from a Unix socket, the
// way a sidecar reaches an app listening on one.
func TestHalfCloseUnix(t *testing.T) {
	f := newFixture(t, kindTCP)
	p := f.pair(t)
	defer p.closeAll()
	ln, err := net.Listen("unix", filepath.Join(t.TempDir(), "app.sock"))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	toApp, err := net.Dial("unix", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	app, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer app.Close()
	res := make(chan Result, 1)
	go func() { res <- Copy(t.Context(), p.a, toApp, Options{}) }()

	request, reply := payload(5000, 6), payload(100<<10, 7)
	p.client.Write(request)
	closeWriteConn(t, p.client)
	if got, err := readAll(app, 5*time.Second); err != nil || !bytes.Equal(got, request) {
		t.Fatalf("app got %d bytes, %v; want %d and EOF", len(got), err, len(request))
	}
	app.Write(reply)
	closeWriteConn(t, app)
	if got, err := readAll(p.client, 5*time.Second); err != nil || !bytes.Equal(got, reply) {
		t.Fatalf("client got %d bytes, %v; want %d and EOF", len(got), err, len(reply))
	}
	r := wait(t, res, 5*time.Second)
	if r.Err != nil || r.spliced {
		t.Errorf("Result.Err = %v, kernel path %v; want nil, false", r.Err, r.spliced)
	}
}

// TestKernelPath: the kernel path is taken exactly when both connections
// are *net.TCPConn.
func TestKernelPath(t *testing.T) {
	unixPair := func(t *testing.T) (net.Conn, net.Conn) {
		ln, err := net.Listen("unix", filepath.Join(t.TempDir(), "s"))
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		c, err := net.Dial("unix", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		s, err := ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close(); s.Close() })
		return c, s
	}
	tests := []struct {
		name  string
		conns func(t *testing.T, p pair) (a, b net.Conn)
		want  bool
	}{
		{"tcp-tcp", func(_ *testing.T, p pair) (net.Conn, net.Conn) {
			return p.a, p.b
		}, kindTCP.spliced()},
		{"wrapped-tcp", func(_ *testing.T, p pair) (net.Conn, net.Conn) {
			return plainConn{p.a.(*net.TCPConn)}, p.b
		}, false},
		{"tcp-unix", func(t *testing.T, p pair) (net.Conn, net.Conn) {
			u, _ := unixPair(t)
			return p.a, u
		}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t, kindTCP)
			p := f.pair(t)
			defer p.closeAll()
			ctx, cancel := context.WithCancel(t.Context())
			cancel()
			a, b := tt.conns(t, p)
			r := Copy(ctx, a, b, Options{})
			if r.spliced != tt.want {
				t.Errorf("kernel path = %v, want %v", r.spliced, tt.want)
			}
		})
	}
}

// settledGoroutines waits until the number of goroutines stops changing,
// so that goroutines of earlier tests that are still exiting do not count.
func settledGoroutines() int {
	n := runtime.NumGoroutine()
	for stable := 0; stable < 5; {
		time.Sleep(10 * time.Millisecond)
		if m := runtime.NumGoroutine(); m == n {
			stable++
		} else {
			n, stable = m, 0
		}
	}
	return n
}

// TestGoroutines: one goroutine per direction besides Copy's caller, and
// none left once Copy has returned, whichever way it ended.
func TestGoroutines(t *testing.T) {
	const n = 20
	for _, k := range []kind{kindTCP, kindTLS} {
		t.Run(fmt.Sprintf("conn=%v", k), func(t *testing.T) {
			f := newFixture(t, k)
			pairs := make([]pair, n)
			for i := range pairs {
				pairs[i] = f.pair(t)
				defer pairs[i].closeAll()
			}
			base := settledGoroutines()
			ctx, cancel := context.WithCancel(t.Context())
			results := make([]<-chan Result, n)
			for i, p := range pairs {
				results[i] = relay(ctx, p, Options{IdleTimeout: time.Second})
			}
			for _, p := range pairs { // every relay runs both directions
				for _, c := range [][2]net.Conn{{p.client, p.backend}, {p.backend, p.client}} {
					c[0].Write([]byte{1})
					if _, err := io.ReadFull(c[1], make([]byte, 1)); err != nil {
						t.Fatal(err)
					}
				}
			}
			// Each relay: the test's goroutine calling Copy plus one per
			// direction.
			if got := runtime.NumGoroutine() - base; got != 3*n {
				t.Errorf("goroutines while relaying: +%d, want +%d", got, 3*n)
			}
			// End a third cleanly, a third by error and a third by cancel.
			for i, p := range pairs {
				switch i % 3 {
				case 0:
					closeWriteConn(t, p.client)
					closeWriteConn(t, p.backend)
				case 1:
					p.backend.(*net.TCPConn).SetLinger(0)
					p.backend.Close()
				}
			}
			cancel()
			for _, res := range results {
				wait(t, res, 5*time.Second)
			}
			if got := goroutinesBackTo(base, 2*time.Second); got > base {
				t.Errorf("goroutines after Copy returned: %d, want at most %d", got, base)
			}
		})
	}
}
