package proxy

import (
	"errors"
	"net"
	"net/netip"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/credflow/credflow/proxy/authz"
)

// Capture makes an outbound listener transparent: the pod's outbound TCP is
// redirected to it by the rules `credflow init` installs, and each
// connection goes to its original destination (SO_ORIGINAL_DST) over mTLS.
// The server identity expected there is the first Destination that
// matches; when none does, the listener's Expect policy, and when that is
// empty, any identity in this workload's own trust domain. That last
// default is a trade-off: it proves the peer is a workload of the mesh, not
// which one.
type Capture struct {
	Destinations []Destination
}

// Destination maps original destinations to the identities expected there.
type Destination struct {
	// Prefix matches the destination address; the zero Prefix matches any.
	Prefix netip.Prefix
	// Port matches the destination port; 0 matches any.
	Port uint16
	// Expect is the server identities accepted.
	Expect authz.Policy
}

// errNoOriginalDst reports a connection that was not redirected to the
// capture listener (the app connected to it directly), or whose original
// destination is the listener itself.
var errNoOriginalDst = errors.New("proxy: no original destination")

// expectFor returns the policy for a captured connection to dst.
func (c *Capture) expectFor(dst netip.AddrPort, fallback authz.Policy, self spiffeid.TrustDomain) authz.Policy {
	for _, d := range c.Destinations {
		if (!d.Prefix.IsValid() || d.Prefix.Contains(dst.Addr())) && (d.Port == 0 || d.Port == dst.Port()) {
			return d.Expect
		}
	}
	if len(fallback.Patterns()) > 0 {
		return fallback
	}
	p, err := authz.ParsePolicy([]string{self.IDString()})
	if err != nil {
		return authz.Policy{}
	}
	return p
}

// capturedTarget returns the original destination of a redirected
// connection, refusing one that points back at the listener.
func capturedTarget(c net.Conn, listen net.Addr) (netip.AddrPort, error) {
	dst, err := originalDst(c)
	if err != nil {
		return netip.AddrPort{}, err
	}
	if la, ok := listen.(*net.TCPAddr); ok && int(dst.Port()) == la.Port && (la.IP.IsUnspecified() || la.IP.Equal(dst.Addr().AsSlice())) {
		return netip.AddrPort{}, errNoOriginalDst
	}
	if local, ok := c.LocalAddr().(*net.TCPAddr); ok && local.AddrPort() == dst {
		return netip.AddrPort{}, errNoOriginalDst
	}
	return dst, nil
}
