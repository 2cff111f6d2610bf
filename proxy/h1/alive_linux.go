package h1

import (
	"net"
	"syscall"
)

// alive reports whether an idle connection is still open, with one
// non-blocking peek at its socket: the server may have closed it while it
// sat in the pool (its keep-alive timeout), and a request sent on it then
// fails. Bytes waiting on a plain connection are a response nobody asked
// for (a 408 before the server closes, say): not reused. Under TLS they
// can be the server's session tickets, which the next read handles.
func alive(nc net.Conn) bool {
	underTLS := false
	for {
		u, ok := nc.(interface{ NetConn() net.Conn })
		if !ok {
			break
		}
		nc, underTLS = u.NetConn(), true
	}
	sc, ok := nc.(syscall.Conn)
	if !ok {
		return true
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return false
	}
	var (
		n    int
		perr error
		b    [1]byte
	)
	err = rc.Read(func(fd uintptr) bool {
		n, _, perr = syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		return true
	})
	switch {
	case err != nil:
		return false
	case perr == syscall.EAGAIN:
		return true // open, nothing waiting
	case perr != nil, n == 0:
		return false // reset, or closed by the server
	default:
		return underTLS
	}
}
