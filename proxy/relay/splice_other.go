//go:build !linux

package relay

// useKernel reports false: outside Linux, (*net.TCPConn).ReadFrom has no
// splice and would copy through a fresh buffer on every call, so the
// buffered path is used for every pair of connections.
func useKernel(ab, ba *direction) bool { return false }
