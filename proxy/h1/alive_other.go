//go:build !linux

package h1

import "net"

// alive reports whether an idle connection is still open. Off Linux it
// does not look: a request on a connection the server closed is retried
// when it can be (Client.RoundTrip).
func alive(net.Conn) bool { return true }
