package h1

import (
	"net"
	"syscall"
	"unsafe"
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
		n    uintptr
		perr syscall.Errno
		b    [1]byte
	)
	err = rc.Read(func(fd uintptr) bool {
		// A raw call, as proxy/rawio makes for the connection's reads and
		// writes: it cannot block, and this is on every reuse.
		for {
			n, _, perr = syscall.RawSyscall6(syscall.SYS_RECVFROM, fd, uintptr(unsafe.Pointer(&b[0])), 1,
				syscall.MSG_PEEK|syscall.MSG_DONTWAIT, 0, 0)
			if perr != syscall.EINTR {
				return true // never wait: an empty socket is the answer
			}
		}
	})
	switch {
	case err != nil:
		return sockClosed
	case perr == syscall.EAGAIN:
		return sockOpen
	case perr != 0, n == 0:
		return sockClosed // reset, or closed by the server
	}
	return sockPending
}
