package rawio

import (
	"io"
	"net"
	"os"
	"strconv"
	"sync"
	"syscall"
)

// maxRW bounds one system call's length, as the net package does.
const maxRW = 1 << 30

// conn is a *net.TCPConn whose Read and Write make raw system calls. The
// rest (deadlines, CloseWrite, SyscallConn, ReadFrom for a copy into it) is
// the TCPConn's own.
//
// One read and one write may be in progress at a time, as on any net.Conn;
// each direction's mutex serializes more, where the TCPConn's own lock
// would. The call's operands live in the conn, not in a closure, so a call
// allocates nothing.
type conn struct {
	*net.TCPConn
	rc syscall.RawConn

	rmu    sync.Mutex
	rbuf   []byte
	rn     int
	rerr   error
	readFn func(uintptr) bool

	wmu     sync.Mutex
	wbuf    []byte
	wn      int
	werr    error
	writeFn func(uintptr) bool
}

func wrap(tc *net.TCPConn) net.Conn {
	rc, err := tc.SyscallConn()
	if err != nil {
		return tc
	}
	c := &conn{TCPConn: tc, rc: rc}
	c.readFn, c.writeFn = c.read, c.write
	return c
}

// NetConn returns the TCP connection underneath, for code that looks
// through wrappers to the socket (peer credentials, a peek at an idle
// connection, a relay that parks).
func (c *conn) NetConn() net.Conn { return c.TCPConn }

// Read reads like (*net.TCPConn).Read: what the socket holds, up to len(p);
// io.EOF once the peer has closed its side.
func (c *conn) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return c.TCPConn.Read(p) // no system call, but the checks a closed conn fails
	}
	if len(p) > maxRW {
		p = p[:maxRW]
	}
	c.rmu.Lock()
	c.rbuf = p
	err := c.rc.Read(c.readFn)
	n, rerr := c.rn, c.rerr
	c.rbuf, c.rn, c.rerr = nil, 0, nil
	c.rmu.Unlock()
	switch {
	case err != nil:
		return 0, c.opError("read", err)
	case rerr != nil:
		return 0, c.opError("read", rerr)
	case n == 0:
		return 0, io.EOF
	}
	return n, nil
}

// read is called with the socket's descriptor under the poller's read
// lock; false means the socket had nothing and the poller should wait.
func (c *conn) read(fd uintptr) bool {
	for {
		n, e := sysRead(fd, c.rbuf)
		switch e {
		case 0:
			c.rn = n
			return true
		case syscall.EINTR:
		case syscall.EAGAIN:
			return false
		default:
			c.rerr = os.NewSyscallError("read", e)
			return true
		}
	}
}

// Write writes like (*net.TCPConn).Write: all of p unless an error stops
// it, waiting while the socket's buffer is full.
func (c *conn) Write(p []byte) (int, error) {
	if len(p) == 0 {
		return c.TCPConn.Write(p) // the checks, and the empty write, as before
	}
	c.wmu.Lock()
	c.wbuf, c.wn = p, 0
	err := c.rc.Write(c.writeFn)
	n, werr := c.wn, c.werr
	c.wbuf, c.wn, c.werr = nil, 0, nil
	c.wmu.Unlock()
	switch {
	case err != nil:
		return n, c.opError("write", err)
	case werr != nil:
		return n, c.opError("write", werr)
	}
	return n, nil
}

// write writes until wbuf is all written, an error, or a full socket
// (false: the poller waits until it can take more, then calls again).
func (c *conn) write(fd uintptr) bool {
	for c.wn < len(c.wbuf) {
		b := c.wbuf[c.wn:]
		if len(b) > maxRW {
			b = b[:maxRW]
		}
		n, e := sysWrite(fd, b)
		switch e {
		case 0:
			if n == 0 { // as the net package reports a write that makes no progress
				c.werr = io.ErrUnexpectedEOF
				return true
			}
			if n > len(b) {
				// As the net package does: something that claims more than
				// it was given cannot be trusted with the rest either.
				panic("rawio: invalid return from write: got " + strconv.Itoa(n) + " from a write of " + strconv.Itoa(len(b)))
			}
			c.wn += n
		case syscall.EINTR:
		case syscall.EAGAIN:
			return false
		default:
			c.werr = os.NewSyscallError("write", e)
			return true
		}
	}
	return true
}

// opError reports err as (*net.TCPConn) does: an *net.OpError naming the
// operation and both addresses, around the poller's error (a deadline,
// net.ErrClosed) or the system call's.
func (c *conn) opError(op string, err error) error {
	if oe, ok := err.(*net.OpError); ok { // the RawConn's, "raw-read" or "raw-write"
		err = oe.Err
	}
	return &net.OpError{Op: op, Net: "tcp", Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: err}
}
