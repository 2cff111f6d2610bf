// Package rawio reads and writes TCP connections with raw system calls,
// outside the Go runtime's bookkeeping for calls that may block.
//
// Go makes every read(2) and write(2) of a network connection through
// syscall.Syscall, which tells the scheduler the thread may block
// (entersyscall, exitsyscall). A network socket is non-blocking, so the call
// never does, and the bookkeeping buys nothing; it costs a little on every
// call, and more at moderate load: the runtime's monitor thread sleeps
// whenever every P is idle, and the first such call after that wakes it (a
// futex wake-up, then the monitor's short sleeps and the context switches
// they bring). A sidecar at a thousand requests a second is idle between
// requests most of the time, so it paid that twice per request.
//
// A connection from Wrap makes the same calls inside its syscall.RawConn, so
// deadlines, Close and the network poller behave exactly as they do for a
// *net.TCPConn: a read that finds nothing waits in the poller, and a write
// the socket cannot take waits until it can. Only the system call itself is
// made raw. Under the race detector it is made through the syscall package
// instead, for the annotations the detector needs.
package rawio

import (
	"net"
)

// Wrap returns c read and written with raw system calls when c is a
// *net.TCPConn on a platform that has them, and c itself otherwise.
func Wrap(c net.Conn) net.Conn {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return c
	}
	return wrap(tc)
}

// Listener returns ln with every connection it accepts wrapped, for a
// server that accepts its own (net/http's).
func Listener(ln net.Listener) net.Listener { return listener{ln} }

type listener struct{ net.Listener }

func (l listener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return Wrap(c), nil
}
