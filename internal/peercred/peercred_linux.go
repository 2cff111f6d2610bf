package peercred

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"

	"golang.org/x/sys/unix"
)

func unixPeer(c *net.UnixConn) (Cred, error) {
	raw, err := c.SyscallConn()
	if err != nil {
		return Cred{}, fmt.Errorf("peercred: %w", err)
	}
	var (
		uc   *unix.Ucred
		oerr error
	)
	if err := raw.Control(func(fd uintptr) {
		uc, oerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return Cred{}, fmt.Errorf("peercred: %w", err)
	}
	if oerr != nil {
		return Cred{}, fmt.Errorf("peercred: SO_PEERCRED: %w", oerr)
	}
	if uc.Uid == NoID {
		// An unconnected or socketpair-less peer: the kernel has no
		// credentials for it.
		return Cred{}, ErrNoOwner
	}
	return Cred{UID: uc.Uid, GID: uc.Gid, PID: uc.Pid}, nil
}

// inet_diag (linux/inet_diag.h) and TCP states (net/tcp_states.h). The
// structures are fixed by the kernel ABI; x/sys/unix does not define them.
const (
	sizeofSockID   = 48 // struct inet_diag_sockid
	sizeofReqV2    = 8 + sizeofSockID
	sizeofDiagMsg  = 4 + sizeofSockID + 20 // struct inet_diag_msg
	sizeofNlmsghdr = 16

	tcpEstablished = 1
	tcpFinWait1    = 4
	tcpFinWait2    = 5
	tcpCloseWait   = 8
	tcpLastAck     = 9
	tcpClosing     = 11
)

// TCPOwner returns the owner of the TCP socket of this network namespace
// whose local address is client and whose peer is server: the client side
// of a connection that a listener on server accepted from client (Of uses
// the accepted connection's remote and local addresses). Cred.GID is NoID
// and Cred.PID 0: a TCP socket records its owner's uid only.
//
// The lookup is one exact NETLINK_SOCK_DIAG request (the 4-tuple, IPv4 or
// IPv6), answered from the kernel's connection table; it needs no
// privilege. A socket that is no longer held by any process (closed by
// its owner: orphaned, or in TIME_WAIT) is ErrNoOwner: the kernel reports
// a TIME_WAIT socket, and older kernels an orphaned one too, as uid 0, and
// a caller must not pass as root by closing its end early.
func TCPOwner(client, server netip.AddrPort) (Cred, error) {
	client = netip.AddrPortFrom(client.Addr().Unmap().WithZone(""), client.Port())
	server = netip.AddrPortFrom(server.Addr().Unmap().WithZone(""), server.Port())
	if client.Addr().Is4() != server.Addr().Is4() || !client.Addr().IsValid() || !server.Addr().IsValid() {
		return Cred{}, fmt.Errorf("peercred: %v and %v are not one TCP connection", client, server)
	}
	family := uint8(unix.AF_INET6)
	if client.Addr().Is4() {
		family = unix.AF_INET
	}
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, unix.NETLINK_SOCK_DIAG)
	if err != nil {
		return Cred{}, fmt.Errorf("peercred: sock_diag socket: %w", err)
	}
	defer unix.Close(fd)
	// The kernel answers from the request itself; the timeout only bounds
	// a broken kernel.
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Sec: 2}); err != nil {
		return Cred{}, fmt.Errorf("peercred: %w", err)
	}

	const seq = 1
	req := make([]byte, sizeofNlmsghdr+sizeofReqV2)
	ne := binary.NativeEndian
	ne.PutUint32(req[0:], uint32(len(req)))
	ne.PutUint16(req[4:], unix.SOCK_DIAG_BY_FAMILY)
	ne.PutUint16(req[6:], unix.NLM_F_REQUEST)
	ne.PutUint32(req[8:], seq)
	r := req[sizeofNlmsghdr:]
	r[0], r[1] = family, unix.IPPROTO_TCP
	ne.PutUint32(r[4:], ^uint32(0)) // every state; checked on the answer
	putSockID(r[8:], client, server)
	if err := unix.Sendto(fd, req, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return Cred{}, fmt.Errorf("peercred: sock_diag request: %w", err)
	}
	buf := make([]byte, 4096)
	n, from, err := unix.Recvfrom(fd, buf, 0)
	if err != nil {
		return Cred{}, fmt.Errorf("peercred: sock_diag answer: %w", err)
	}
	if nl, ok := from.(*unix.SockaddrNetlink); !ok || nl.Pid != 0 {
		return Cred{}, errors.New("peercred: sock_diag answer not from the kernel")
	}
	return parseAnswer(buf[:n], seq, client, server)
}

func putSockID(b []byte, local, remote netip.AddrPort) {
	binary.BigEndian.PutUint16(b[0:], local.Port())
	binary.BigEndian.PutUint16(b[2:], remote.Port())
	l, rm := local.Addr().AsSlice(), remote.Addr().AsSlice()
	copy(b[4:20], l)
	copy(b[20:36], rm)
	// idiag_if 0; idiag_cookie INET_DIAG_NOCOOKIE: no cookie to match.
	binary.NativeEndian.PutUint32(b[40:], ^uint32(0))
	binary.NativeEndian.PutUint32(b[44:], ^uint32(0))
}

// sockID decodes the addresses of an inet_diag_sockid, IPv4-mapped IPv6
// addresses unmapped.
func sockID(family uint8, b []byte) (local, remote netip.AddrPort) {
	addr := func(a []byte) netip.Addr {
		if family == unix.AF_INET {
			return netip.AddrFrom4([4]byte(a[:4]))
		}
		return netip.AddrFrom16([16]byte(a[:16])).Unmap()
	}
	return netip.AddrPortFrom(addr(b[4:20]), binary.BigEndian.Uint16(b[0:])),
		netip.AddrPortFrom(addr(b[20:36]), binary.BigEndian.Uint16(b[2:]))
}

// parseAnswer reads the kernel's answer to one exact-socket request.
func parseAnswer(b []byte, seq uint32, client, server netip.AddrPort) (Cred, error) {
	ne := binary.NativeEndian
	if len(b) < sizeofNlmsghdr {
		return Cred{}, errors.New("peercred: short sock_diag answer")
	}
	mlen, typ, mseq := ne.Uint32(b[0:]), ne.Uint16(b[4:]), ne.Uint32(b[8:])
	if mlen < sizeofNlmsghdr || int(mlen) > len(b) || mseq != seq {
		return Cred{}, errors.New("peercred: malformed sock_diag answer")
	}
	body := b[sizeofNlmsghdr:mlen]
	switch typ {
	case unix.NLMSG_ERROR:
		if len(body) < 4 {
			return Cred{}, errors.New("peercred: malformed sock_diag error")
		}
		errno := unix.Errno(-int32(ne.Uint32(body)))
		if errno == unix.ENOENT {
			return Cred{}, fmt.Errorf("%w (%v from %v)", ErrNoOwner, server, client)
		}
		return Cred{}, fmt.Errorf("peercred: sock_diag: %w", errno)
	case unix.SOCK_DIAG_BY_FAMILY:
	default:
		return Cred{}, fmt.Errorf("peercred: unexpected sock_diag message type %d", typ)
	}
	if len(body) < sizeofDiagMsg {
		return Cred{}, errors.New("peercred: short inet_diag_msg")
	}
	// The kernel answers with the socket's own 4-tuple, in the socket's
	// family (a dual-stack socket shows IPv4 addresses as mapped IPv6).
	if local, remote := sockID(body[0], body[4:4+sizeofSockID]); local != client || remote != server {
		return Cred{}, fmt.Errorf("peercred: sock_diag answered about another socket (%v to %v)", local, remote)
	}
	state := body[1]
	uid := ne.Uint32(body[4+sizeofSockID+12:])
	inode := ne.Uint32(body[4+sizeofSockID+16:])
	switch state {
	case tcpEstablished, tcpFinWait1, tcpFinWait2, tcpCloseWait, tcpLastAck, tcpClosing:
	default:
		return Cred{}, fmt.Errorf("%w (%v from %v: TCP state %d)", ErrNoOwner, server, client, state)
	}
	if inode == 0 || uid == NoID {
		return Cred{}, fmt.Errorf("%w (%v from %v: the socket was closed by its process)", ErrNoOwner, server, client)
	}
	return Cred{UID: uid, GID: NoID}, nil
}
