//go:build !linux

package peercred

import (
	"net"
	"net/netip"
)

func unixPeer(*net.UnixConn) (Cred, error) { return Cred{}, ErrUnsupported }

// TCPOwner returns the owner of the client socket of a local TCP
// connection; only Linux can say, elsewhere it is ErrUnsupported.
func TCPOwner(client, server netip.AddrPort) (Cred, error) { return Cred{}, ErrUnsupported }
