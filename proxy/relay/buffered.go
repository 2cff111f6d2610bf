package relay

import (
	"io"
	"sync"
)

// Buffer sizes of the buffered path: a direction's read buffer follows the
// traffic it carries.
//
// smallSize is what a direction starts with, and again after a park (a
// parked relay holds no buffer at all; see park.go). A connection that
// carries only small messages (pings, health checks, short requests and
// replies) never holds more.
//
// mediumSize is one TLS record of plaintext. A direction moves to it after
// a read fills the small buffer: a message of 1–16 KiB then moves in one
// read and one write, as one TLS record. With only the small buffer, a
// 1 KB HTTP request (1,123 bytes with its head) left a sidecar in two
// reads, two records and two writes, and each sidecar made four writes per
// request and reply instead of two (counted with perf in the mesh rpc
// scenario). It goes back to the small buffer after smallRun reads in a
// row that the small one would have held: a stream of small messages with
// an occasional larger one does not flap between the two.
//
// largeSize is four TLS records of plaintext (16 KiB each). The buffered
// path carries TLS (and QUIC) traffic: plain TCP pairs take the kernel path
// on Linux. With Batching under the TLS connection, a 64 KiB read from the
// app leaves as four records in one write(2); against 32 KiB, the whole
// in-process pair (client, both sidecars, server) measured 2.62–2.70
// against 2.80–2.90 CPU-s/GB one stream up, 512 MiB runs interleaved on two
// cores (a TLS source still yields one record per Read, so the other
// direction gains less). A direction moves to it after a read fills the
// medium buffer, and back after a read that returns less than a record:
// it is held only while data arrives faster than a record at a time.
const (
	smallSize  = 1 << 10
	mediumSize = 16 << 10
	largeSize  = 64 << 10
	smallRun   = 8
)

// Buffer pools, shared by all relays. With the poller (thePoller) they are
// the package's only variables besides the sentinel errors; pooling
// pointers to arrays keeps Get and Put free of allocations.
var (
	smallPool  = sync.Pool{New: func() any { return new([smallSize]byte) }}
	mediumPool = sync.Pool{New: func() any { return new([mediumSize]byte) }}
	largePool  = sync.Pool{New: func() any { return new([largeSize]byte) }}
)

// buffers is a direction's read buffer: the small one, held from the start,
// and the medium or large one while the traffic calls for it.
type buffers struct {
	small  *[smallSize]byte
	medium *[mediumSize]byte
	large  *[largeSize]byte
	fits   int // reads in a row, in the medium buffer, that the small one would have held
}

func newBuffers() buffers { return buffers{small: smallPool.Get().(*[smallSize]byte)} }

// buf returns the buffer for the next read.
func (b *buffers) buf() []byte {
	switch {
	case b.large != nil:
		return b.large[:]
	case b.medium != nil:
		return b.medium[:]
	}
	return b.small[:]
}

// read moves to the buffer the next read should use after one that
// returned n bytes.
func (b *buffers) read(n int) {
	switch {
	case b.large != nil:
		if n < mediumSize {
			largePool.Put(b.large)
			b.large = nil
		}
	case b.medium != nil:
		switch {
		case n == mediumSize:
			b.large = largePool.Get().(*[largeSize]byte)
			b.fits = 0
		case n < smallSize:
			b.fits++
			if b.fits == smallRun {
				b.putMedium()
			}
		default:
			b.fits = 0
		}
	case n == smallSize:
		b.medium = mediumPool.Get().(*[mediumSize]byte)
	}
}

func (b *buffers) putMedium() {
	mediumPool.Put(b.medium)
	b.medium, b.fits = nil, 0
}

// put returns every buffer to its pool.
func (b *buffers) put() {
	smallPool.Put(b.small)
	if b.medium != nil {
		b.putMedium()
	}
	if b.large != nil {
		largePool.Put(b.large)
	}
	*b = buffers{}
}

// copyBuffered copies through user-space buffers sized by the traffic (see
// buffers).
func (d *direction) copyBuffered() (parked bool) {
	src := d.s.conns[d.src]
	bufs := newBuffers()
	defer func() {
		// A parked direction drops its buffers instead: a pool keeps what
		// it holds through one collection, so thousands of relays parking
		// at once would keep a buffer each past the release that follows
		// (release.go). A wake-up takes a buffer from the pool again.
		if parked {
			return
		}
		bufs.put()
	}()

	for {
		n, rerr := src.Read(bufs.buf())
		if n > 0 {
			d.writeDeadline()
			w, werr := d.write(bufs.buf()[:n])
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
		bufs.read(n)
	}
}
