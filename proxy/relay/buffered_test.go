package relay

import (
	"context"
	"io"
	"net"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// scriptConn is a connection whose reads return scripted lengths and then
// EOF, and whose writes succeed. It records the buffer size of each read
// while sizes has capacity left.
type scriptConn struct {
	script []int
	next   int
	sizes  []int
}

var _ net.Conn = (*scriptConn)(nil)

func (c *scriptConn) Read(p []byte) (int, error) {
	if len(c.sizes) < cap(c.sizes) {
		c.sizes = append(c.sizes, len(p))
	}
	if c.next == len(c.script) {
		return 0, io.EOF
	}
	n := min(c.script[c.next], len(p))
	c.next++
	return n, nil
}

func (c *scriptConn) reset()                           { c.next, c.sizes = 0, c.sizes[:0] }
func (c *scriptConn) Write(p []byte) (int, error)      { return len(p), nil }
func (c *scriptConn) CloseWrite() error                { return nil }
func (c *scriptConn) Close() error                     { return nil }
func (c *scriptConn) LocalAddr() net.Addr              { return nil }
func (c *scriptConn) RemoteAddr() net.Addr             { return nil }
func (c *scriptConn) SetDeadline(time.Time) error      { return nil }
func (c *scriptConn) SetReadDeadline(time.Time) error  { return nil }
func (c *scriptConn) SetWriteDeadline(time.Time) error { return nil }

// TestBufferSwitching: a direction reads into the small buffer until a read
// fills it, then into the medium one (a TLS record) until smallRun reads in
// a row would have fitted the small one, and into the large one from a read
// that fills the medium one until a read returns less than a record.
func TestBufferSwitching(t *testing.T) {
	const S, M, L = smallSize, mediumSize, largeSize
	run := func(n, size int) []int {
		out := make([]int, n)
		for i := range out {
			out[i] = size
		}
		return out
	}
	cat := func(parts ...[]int) []int {
		var out []int
		for _, p := range parts {
			out = append(out, p...)
		}
		return out
	}
	tests := []struct {
		name   string
		script []int
		want   []int // buffer size of each read, the last one returning EOF
	}{
		{"small messages", []int{100, S - 1, 1}, []int{S, S, S, S}},
		{"messages over the small size", []int{S, 99, S + 99, S + 99}, []int{S, M, M, M, M}},
		{"burst", []int{S, M, L, L, 2 * S}, []int{S, M, L, L, L, M}},
		{"TLS records keep the large buffer", []int{S, M, M, M, 100}, []int{S, M, L, L, L, M}},
		{"back to small after a run of small reads", cat([]int{S}, run(smallRun, 10)), cat([]int{S}, run(smallRun, M), []int{S})},
		{"a larger message restarts the run", cat([]int{S}, run(smallRun-1, 10), []int{2000}, run(smallRun, 10)),
			cat([]int{S}, run(2*smallRun, M), []int{S})},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			src := &scriptConn{script: tt.script, sizes: make([]int, 0, 64)}
			r := Copy(t.Context(), src, &scriptConn{}, Options{})
			if r.Err != nil {
				t.Fatal(r.Err)
			}
			if diff := cmp.Diff(tt.want, src.sizes); diff != "" {
				t.Errorf("read buffer sizes (-want +got):\n%s", diff)
			}
		})
	}
}

// TestBufferSwitchingAllocs: switching between the buffers allocates
// nothing: Copy over 1,000 switch cycles allocates as much as over one.
func TestBufferSwitchingAllocs(t *testing.T) {
	if raceEnabled {
		t.Skip("allocation counts are meaningless under the race detector")
	}
	cycle := append([]int{smallSize, mediumSize, 10}, make([]int, smallRun)...) // small → medium → large → medium → small
	for i := 3; i < len(cycle); i++ {
		cycle[i] = 10
	}
	allocs := func(cycles int) float64 {
		var script []int
		for range cycles {
			script = append(script, cycle...)
		}
		src, dst := &scriptConn{script: script}, &scriptConn{}
		ctx := context.Background()
		Copy(ctx, src, dst, Options{}) // warm the pools
		return testing.AllocsPerRun(20, func() {
			src.reset()
			dst.reset()
			Copy(ctx, src, dst, Options{})
		})
	}
	one, many := allocs(1), allocs(1000)
	if many != one {
		t.Errorf("Copy allocates %v times over 1,000 buffer switch cycles and %v over one; want the same", many, one)
	}
}
