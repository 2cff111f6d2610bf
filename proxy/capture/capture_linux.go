package capture

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"syscall"
	"unsafe"
)

// The socket options that read the destination a netfilter REDIRECT (or
// DNAT) rewrote, from the connection's conntrack entry: SO_ORIGINAL_DST of
// linux/netfilter_ipv4.h at level SOL_IP, and IP6T_SO_ORIGINAL_DST of
// linux/netfilter_ipv6/ip6_tables.h at level SOL_IPV6. Both are 80.
const (
	soOriginalDst     = 80
	ip6tSoOriginalDst = 80
)

// originalDst reads the destination a REDIRECT rule rewrote. The family is
// the connection's: an IPv4 connection accepted on a dual-stack socket (a
// local address such as ::ffff:127.0.0.1) is read with SO_ORIGINAL_DST,
// which the kernel answers from the IPv4 conntrack entry, an IPv6 one with
// IP6T_SO_ORIGINAL_DST.
func originalDst(c net.Conn) (netip.AddrPort, error) {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return netip.AddrPort{}, ErrNoOriginalDst
	}
	local, ok := tc.LocalAddr().(*net.TCPAddr)
	if !ok {
		return netip.AddrPort{}, ErrNoOriginalDst
	}
	raw, err := tc.SyscallConn()
	if err != nil {
		return netip.AddrPort{}, err
	}
	var (
		sa4  syscall.RawSockaddrInet4
		sa6  syscall.RawSockaddrInet6
		is6  = local.IP.To4() == nil
		serr error
	)
	err = raw.Control(func(fd uintptr) {
		if is6 {
			serr = getsockopt(fd, syscall.SOL_IPV6, ip6tSoOriginalDst, unsafe.Pointer(&sa6), unsafe.Sizeof(sa6))
		} else {
			serr = getsockopt(fd, syscall.SOL_IP, soOriginalDst, unsafe.Pointer(&sa4), unsafe.Sizeof(sa4))
		}
	})
	if err != nil {
		return netip.AddrPort{}, err
	}
	if serr != nil {
		return netip.AddrPort{}, fmt.Errorf("%w: %v", ErrNoOriginalDst, serr)
	}
	// The port is in network byte order in both sockaddrs.
	if is6 {
		if sa6.Family != syscall.AF_INET6 {
			return netip.AddrPort{}, fmt.Errorf("%w: address family %d", ErrNoOriginalDst, sa6.Family)
		}
		port := binary.BigEndian.Uint16((*[2]byte)(unsafe.Pointer(&sa6.Port))[:])
		// Unmap: an IPv4-mapped destination is matched against IPv4
		// networks, like the addresses Capture resolves.
		return netip.AddrPortFrom(netip.AddrFrom16(sa6.Addr).Unmap(), port), nil
	}
	port := binary.BigEndian.Uint16((*[2]byte)(unsafe.Pointer(&sa4.Port))[:])
	return netip.AddrPortFrom(netip.AddrFrom4(sa4.Addr), port), nil
}

// getsockopt calls getsockopt(2) with a buffer of size bytes at p, which
// must point to a value of that size that outlives the call (the kernel
// writes at most size bytes: it is told so in the length argument, and
// refuses with EINVAL a buffer too small for its answer).
func getsockopt(fd uintptr, level, opt int, p unsafe.Pointer, size uintptr) error {
	n := uint32(size)
	_, _, errno := syscall.Syscall6(syscall.SYS_GETSOCKOPT, fd, uintptr(level), uintptr(opt),
		uintptr(p), uintptr(unsafe.Pointer(&n)), 0)
	if errno != 0 {
		return errno
	}
	return nil
}
