//go:build !linux

package capture

import (
	"net"
	"net/netip"
)

// originalDst is Linux-only: transparent capture relies on netfilter.
func originalDst(net.Conn) (netip.AddrPort, error) {
	return netip.AddrPort{}, ErrNoOriginalDst
}
