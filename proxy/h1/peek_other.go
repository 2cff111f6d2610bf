//go:build !linux

package h1

import "net"

// peek looks at an idle connection's socket. Off Linux it does not look: a
// request on a connection the server closed is sent again when that is
// safe (Client.RoundTrip).
func peek(net.Conn) sockState { return sockOpen }
