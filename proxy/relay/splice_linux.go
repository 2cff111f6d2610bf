package relay

import (
	"errors"
	"io"
	"net"
	"os"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// spliceChunk bounds one ReadFrom on the kernel path, and so what
// Options.WriteTimeout applies to as "a single write": the destination must
// take spliceChunk bytes (less its free send buffer) within WriteTimeout.
// Over loopback, 64 KiB, 256 KiB and 1 MiB chunks measured within noise of
// each other (1.3–2.0 GB/s); 256 KiB keeps the syscalls per byte low while
// asking little of a slow reader.
const spliceChunk = 256 << 10

// useKernel switches ab and ba to the kernel path when both connections are
// *net.TCPConn, and reports whether it did.
func useKernel(ab, ba *direction) bool {
	a, ok := ab.s.conns[0].(*net.TCPConn)
	if !ok {
		return false
	}
	b, ok := ab.s.conns[1].(*net.TCPConn)
	if !ok {
		return false
	}
	ra, err := a.SyscallConn()
	if err != nil {
		return false
	}
	rb, err := b.SyscallConn()
	if err != nil {
		return false
	}
	ab.run = newSplicer(ab, a, b, ra).runs
	ba.run = newSplicer(ba, b, a, rb).runs
	return true
}

// splicer is one direction of the kernel path.
//
// (*net.TCPConn).ReadFrom splices until the source ends, holding a pipe and
// blocking in the kernel loop, where neither the relay's byte counts nor
// per-write deadlines can reach. So a splicer first waits until the source
// is readable, asks the kernel how many bytes are queued (SIOCINQ), and
// hands exactly that many (at most spliceChunk) to ReadFrom through an
// io.LimitedReader, which the standard library still splices. ReadFrom then
// never waits on the source: it returns once the queued bytes are written,
// so the write deadline bounds one chunk, the byte count (which the idle
// watchdog reads) advances per chunk, and an idle direction holds no pipe.
type splicer struct {
	d      *direction
	src    *net.TCPConn
	dst    *net.TCPConn
	rc     syscall.RawConn // of the source
	lr     io.LimitedReader
	ready  func(fd uintptr) bool // p.poll, bound once so waiting does not allocate
	avail  int                   // bytes queued on the source, 0 at EOF
	err    error                 // error found while polling the source
	fds    [1]unix.PollFd
	noWait unix.Timespec // zero: ppoll returns at once
}

func newSplicer(d *direction, src, dst *net.TCPConn, rc syscall.RawConn) *splicer {
	p := &splicer{d: d, src: src, dst: dst, rc: rc, lr: io.LimitedReader{R: src}}
	p.ready = p.poll
	return p
}

// runs is run for direction.run: the kernel path never parks (an idle
// splicer already holds no buffer, but does hold its goroutine).
func (p *splicer) runs() bool {
	p.run()
	return false
}

func (p *splicer) run() {
	d := p.d
	for {
		if err := p.rc.Read(p.ready); err != nil {
			d.readFailed(err)
			return
		}
		if p.err != nil {
			d.readFailed(&net.OpError{Op: "read", Net: "tcp", Source: p.src.LocalAddr(), Addr: p.src.RemoteAddr(), Err: p.err})
			return
		}
		if p.avail == 0 {
			d.halfClose()
			return
		}
		p.lr.N = int64(min(p.avail, spliceChunk))
		deadline := d.writeDeadline()
		n, err := p.dst.ReadFrom(&p.lr)
		d.s.moved[d.idx].Add(n)
		switch {
		case err == nil && n == 0: // cannot happen with bytes queued; do not spin
			d.halfClose()
			return
		case err == nil:
		case errors.Is(err, os.ErrDeadlineExceeded) && !deadline.IsZero() && !time.Now().Before(deadline):
			d.writeFailed(err)
			return
		default:
			// A failure of either side: ReadFrom does not say which, and
			// the session closes both either way. A deadline that is not
			// the write deadline is the half-close bound on the source.
			d.readFailed(err)
			return
		}
	}
}

// poll is the RawConn.Read callback: it reports true once the source has
// bytes queued, has reached EOF or has failed, and false to wait for
// readability. It must decide without consuming anything, and must not
// answer false for a source that is already at EOF: the poller would wait
// for an edge that never comes.
func (p *splicer) poll(fd uintptr) bool {
	if p.queued(fd) {
		return true
	}
	// Nothing queued: not readable yet, at EOF, or failed. A zero-timeout
	// ppoll tells which (a one-byte MSG_PEEK would too, but unix.Recvfrom
	// allocates on every call).
	p.fds[0] = unix.PollFd{Fd: int32(fd), Events: unix.POLLIN | unix.POLLRDHUP}
	n, err := unix.Ppoll(p.fds[:], &p.noWait, nil)
	for err == unix.EINTR {
		n, err = unix.Ppoll(p.fds[:], &p.noWait, nil)
	}
	switch {
	case err != nil:
		p.avail, p.err = 0, os.NewSyscallError("ppoll", err)
		return true
	case n == 0:
		return false
	case p.fds[0].Revents&unix.POLLERR != 0:
		if soErr, err := unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_ERROR); err != nil {
			p.err = os.NewSyscallError("getsockopt", err)
		} else if soErr != 0 {
			p.err = os.NewSyscallError("read", syscall.Errno(soErr))
		}
		p.avail = 0 // EOF if the error was already consumed
		return true
	}
	// Readable: bytes that arrived since the ioctl, or EOF.
	if !p.queued(fd) {
		p.avail, p.err = 0, nil
	}
	return true
}

// queued asks the kernel how many bytes the source has queued (SIOCINQ)
// and records a positive answer.
func (p *splicer) queued(fd uintptr) bool {
	n, err := unix.IoctlGetInt(int(fd), unix.SIOCINQ)
	if err != nil || n <= 0 {
		return false
	}
	p.avail, p.err = n, nil
	return true
}
