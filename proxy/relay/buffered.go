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
// largeSize is four TLS records of plaintext (16 KiB each). The buffered
// path carries TLS (and QUIC) traffic: plain TCP pairs take the kernel path
// on Linux. With Batching under the TLS connection, a 64 KiB read from the
// app leaves as four records in one write(2); against 32 KiB, the whole
// in-process pair (client, both sidecars, server) measured 2.62–2.70
// against 2.80–2.90 CPU-s/GB one stream up, 512 MiB runs interleaved on two
// cores (a TLS source still yields one record per Read, so the other
// direction gains less). It is pooled and held only while data arrives
// faster than the small buffer holds.
const (
	smallSize = 1 << 10
	largeSize = 64 << 10
)

// Buffer pools, shared by all relays. With the poller (thePoller) they are
// the package's only variables besides the sentinel errors; pooling
// pointers to arrays keeps Get and Put free of allocations.
var (
	smallPool = sync.Pool{New: func() any { return new([smallSize]byte) }}
	largePool = sync.Pool{New: func() any { return new([largeSize]byte) }}
)

// copyBuffered copies through user-space buffers. It starts with a small
// buffer, switches to a large one after a read fills the small one, and
// returns the large one to its pool after a read that the small one could
// have held.
func (d *direction) copyBuffered() (parked bool) {
	src := d.s.conns[d.src]
	small := smallPool.Get().(*[smallSize]byte)
	var large *[largeSize]byte
	defer func() {
		// A parked direction drops its buffers instead: a pool keeps what
		// it holds through one collection, so thousands of relays parking
		// at once would keep a buffer each past the release that follows
		// (release.go). A wake-up takes a buffer from the pool again.
		if parked {
			return
		}
		smallPool.Put(small)
		if large != nil {
			largePool.Put(large)
		}
	}()

	buf := small[:]
	for {
		n, rerr := src.Read(buf)
		if n > 0 {
			d.writeDeadline()
			w, werr := d.write(buf[:n])
			d.s.moved[d.idx].Add(int64(w))
			if werr == nil && w < n {
				werr = io.ErrShortWrite
			}
			if werr != nil {
				d.writeFailed(werr)
				return false
			}
		}
		if rerr != nil {
			if d.s.park != nil && isDeadline(rerr) {
				parkedNow, again := d.s.park.afterDeadline(d)
				if parkedNow {
					return true // a new goroutine may already run d
				}
				if again {
					continue
				}
			}
			d.readFailed(rerr)
			return false
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
