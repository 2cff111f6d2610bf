package relay

import (
	"io"
	"sync"
)

// Buffer sizes of the buffered path.
//
// smallSize is what an idle direction holds while it waits, so it is kept
// small: with two 1 KiB buffers an idle TLS relay measured 18.8 KiB in all
// (heap and both goroutine stacks; see TestIdleMemory), within the 20 KiB
// budget, where 2 KiB buffers measured 20.8 KiB. Messages up to 1 KiB (most
// requests) still move in one read and one write; a burst that fills the
// small buffer continues in the large one.
//
// largeSize is io.Copy's size: twice the largest TLS record plaintext
// (16 KiB), so a TLS destination gets full records, and large enough to
// amortise the per-syscall cost. A TLS source returns at most one record
// per Read, so only plain pairs could gain from more; 64 KiB measured
// slower there (BenchmarkCopy, 1 MiB chunks, interleaved runs on two cores:
// 1.0–1.1 GB/s against 1.4–1.5 GB/s) while doubling what a busy direction
// holds.
const (
	smallSize = 1 << 10
	largeSize = 32 << 10
)

// Buffer pools, shared by all relays. They are the package's only variables
// besides the sentinel errors; pooling pointers to arrays keeps Get and Put
// free of allocations.
var (
	smallPool = sync.Pool{New: func() any { return new([smallSize]byte) }}
	largePool = sync.Pool{New: func() any { return new([largeSize]byte) }}
)

// copyBuffered copies through user-space buffers. It starts with a small
// buffer, switches to a large one after a read fills the small one, and
// returns the large one to its pool after a read that the small one could
// have held.
func (d *direction) copyBuffered() {
	src, dst := d.s.conns[d.src], d.s.conns[d.dst]
	small := smallPool.Get().(*[smallSize]byte)
	defer smallPool.Put(small)
	var large *[largeSize]byte
	defer func() {
		if large != nil {
			largePool.Put(large)
		}
	}()

	buf := small[:]
	for {
		n, rerr := src.Read(buf)
		if n > 0 {
			d.writeDeadline()
			w, werr := dst.Write(buf[:n])
			d.s.moved[d.idx].Add(int64(w))
			if werr == nil && w < n {
				werr = io.ErrShortWrite
			}
			if werr != nil {
				d.writeFailed(werr)
				return
			}
		}
		if rerr != nil {
			d.readFailed(rerr)
			return
		}
		switch {
		case large == nil && n == smallSize:
			large = largePool.Get().(*[largeSize]byte)
			buf = large[:]
		case large != nil && n < smallSize:
			largePool.Put(large)
			large = nil
			buf = small[:]
		}
	}
}
