package h1

import (
	"net"
	"syscall"
)

// peek looks at an idle connection's socket once, without blocking or
// consuming: the server may have closed it while it sat in the pool (its
// keep-alive timeout), or sent something.
func peek(nc net.Conn) sockState {
	for {
		u, ok := nc.(interface{ NetConn() net.Conn })
		if !ok {
			break
		}
		nc = u.NetConn() // under TLS, and any wrapper that says what it wraps
	}
	sc, ok := nc.(syscall.Conn)
	if !ok {
		return sockOpen
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return sockClosed
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
		return sockClosed
	case perr == syscall.EAGAIN:
		return sockOpen
	case perr != nil, n == 0:
		return sockClosed // reset, or closed by the server
	}
	return sockPending
}
