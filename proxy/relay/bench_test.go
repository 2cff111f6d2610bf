package relay

import (
	"context"
	"fmt"
	"io"
	"net"
	"testing"
	"time"
)

// pathName names the copy path a kind exercises, client to backend.
func pathName(k kind) string {
	return map[kind]string{kindTCP: "splice", kindTLS: "tls-tcp", kindPlain: "tcp-buffered"}[k]
}

func sizeName(n int) string {
	if n >= 1<<20 {
		return fmt.Sprintf("%dMiB", n>>20)
	}
	return fmt.Sprintf("%dKiB", n>>10)
}

// chunker moves one chunk client → relay → backend per call, over real
// loopback sockets: a goroutine writes the chunk on the client, the caller
// reads it in full on the backend. Without the relay (direct), the caller
// reads a instead: the same connections and the same TLS, no Copy.
type chunker struct {
	p      pair
	reader net.Conn
	chunk  []byte
	buf    []byte
	send   chan struct{}
	res    <-chan Result
	stop   context.CancelFunc
}

func newChunker(tb testing.TB, k kind, size int, direct bool) *chunker {
	f := newFixture(tb, k)
	p := f.pair(tb)
	ctx, cancel := context.WithCancel(context.Background())
	c := &chunker{p: p, reader: p.backend, chunk: payload(size, 5), buf: make([]byte, size),
		send: make(chan struct{}), stop: cancel}
	if direct {
		c.reader = p.a
	} else {
		c.res = relay(ctx, p, Options{})
	}
	go func() {
		for range c.send {
			if _, err := p.client.Write(c.chunk); err != nil {
				return
			}
		}
	}()
	return c
}

func (c *chunker) move() error {
	c.send <- struct{}{}
	_, err := io.ReadFull(c.reader, c.buf)
	return err
}

func (c *chunker) close(tb testing.TB) {
	close(c.send)
	c.stop()
	if c.res != nil {
		wait(tb, c.res, 5*time.Second)
	}
	c.p.closeAll()
}

// allocsPerChunk measures the allocations of moving one chunk, after a
// warm-up that fills pools and lets TLS move to full-sized records.
func allocsPerChunk(t *testing.T, k kind, size int, direct bool) float64 {
	t.Helper()
	c := newChunker(t, k, size, direct)
	defer c.close(t)
	var err error
	move := func() {
		if e := c.move(); e != nil && err == nil {
			err = e
		}
	}
	for range 100 {
		move()
	}
	allocs := testing.AllocsPerRun(300, move)
	if err != nil {
		t.Fatal(err)
	}
	return allocs
}

// BenchmarkCopy measures throughput over loopback TCP: the kernel path
// (TCP → TCP), the buffered path from TLS to TCP (inbound), and the
// buffered path between plain TCP connections that Copy cannot see as
// *net.TCPConn. The allocations reported are per chunk, relay included.
func BenchmarkCopy(b *testing.B) {
	for _, k := range []kind{kindTCP, kindTLS, kindPlain} {
		for _, size := range []int{1 << 10, 16 << 10, 1 << 20} {
			b.Run(fmt.Sprintf("path=%s/size=%s", pathName(k), sizeName(size)), func(b *testing.B) {
				c := newChunker(b, k, size, false)
				defer c.close(b)
				b.SetBytes(int64(size))
				b.ReportAllocs()
				for b.Loop() {
					if err := c.move(); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}

// TestSteadyStateAllocs: moving a chunk through a running relay allocates
// nothing, on every path, both for chunks that fit the small buffer and for
// chunks that switch to the large one and back. crypto/tls allocates once
// per record read (golang/go#53142), so the TLS path is compared with the
// same TLS connection read without the relay.
func TestSteadyStateAllocs(t *testing.T) {
	if raceEnabled {
		t.Skip("allocation counts are meaningless under the race detector")
	}
	for _, k := range []kind{kindTCP, kindTLS, kindPlain} {
		for _, size := range []int{512, 16 << 10} {
			t.Run(fmt.Sprintf("path=%s/size=%d", pathName(k), size), func(t *testing.T) {
				base := 0.0
				if k == kindTLS {
					base = allocsPerChunk(t, k, size, true)
				}
				if got := allocsPerChunk(t, k, size, false); got != base {
					t.Errorf("%v allocations per chunk through the relay, %v without it; want the same", got, base)
				}
			})
		}
	}
}
