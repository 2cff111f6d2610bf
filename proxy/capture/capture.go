// Package capture is the data plane's side of transparent capture: the
// netfilter rules `credflow init` installs (internal/capture) redirect the
// pod's outbound TCP to a capture listener, and this package binds that
// listener on both loopback addresses (Listen), reads each redirected
// connection's original destination (Target) and chooses the server
// identities expected there (Capture). The proxy relays the connection.
package capture

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"sync"
	"syscall"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/credflow/credflow/proxy/authz"
)

// Capture makes an outbound listener transparent: the pod's outbound TCP is
// redirected to it by the rules `credflow init` installs, and each
// connection goes to its original destination (SO_ORIGINAL_DST, or
// IP6T_SO_ORIGINAL_DST for IPv6) over mTLS. Those rules send IPv4 to
// 127.0.0.1 and IPv6 to ::1 at the listener's port: a capture listener on
// either loopback address also listens on the other one (see Listen).
// The server identity expected there is the first Destination that
// matches (by network, port and host name); when none does, the listener's Expect policy, and when that is
// empty, any identity in this workload's own trust domain. That last
// default is a trade-off: it proves the peer is a workload of the mesh, not
// which one.
type Capture struct {
	Destinations []Destination
	// Resolve looks up the addresses of a Destination's Host; default the
	// system resolver.
	Resolve func(ctx context.Context, host string) ([]netip.Addr, error)

	mu    sync.Mutex
	hosts map[string]resolved
}

// resolved is a host's addresses, looked up at a time.
type resolved struct {
	addrs []netip.Addr
	at    time.Time
}

// HostTTL is how long a Destination's Host lookup is reused.
const HostTTL = 30 * time.Second

// Destination maps original destinations to the identities expected there.
type Destination struct {
	// Prefix matches the destination address; the zero Prefix matches any.
	Prefix netip.Prefix
	// Port matches the destination port; 0 matches any.
	Port uint16
	// Host, if set, matches the addresses the name resolves to (a
	// Service's cluster IP, say), looked up at most every HostTTL. A
	// lookup that fails matches nothing.
	Host string
	// Expect is the server identities accepted.
	Expect authz.Policy
	// Egress, if set, names the egress listener that takes the captured
	// connections to this destination: an external API the app calls in
	// plain HTTP, which the sidecar calls over TLS with the credentials it
	// injects. Expect is then unused.
	Egress string
}

// ErrNoOriginalDst reports a connection that was not redirected to the
// capture listener (the app connected to it directly), or whose original
// destination is the listener itself.
var ErrNoOriginalDst = errors.New("capture: no original destination")

// Expect returns the server identities expected at dst, the original
// destination of a captured connection: those of the first Destination
// that matches; else fallback, the listener's policy, when it has
// patterns; else any identity in the trust domain self.
func (c *Capture) Expect(ctx context.Context, dst netip.AddrPort, fallback authz.Policy, self spiffeid.TrustDomain) authz.Policy {
	return Policy(c.Match(ctx, dst), fallback, self)
}

// Match returns the first Destination that matches dst, or nil.
func (c *Capture) Match(ctx context.Context, dst netip.AddrPort) *Destination {
	for i := range c.Destinations {
		d := &c.Destinations[i]
		if (!d.Prefix.IsValid() || d.Prefix.Contains(dst.Addr())) && (d.Port == 0 || d.Port == dst.Port()) &&
			(d.Host == "" || slices.Contains(c.lookup(ctx, d.Host), dst.Addr().Unmap())) {
			return d
		}
	}
	return nil
}

// Policy returns the server identities expected at a destination: d's,
// when it matched (d not nil); else fallback, the listener's policy, when
// it has patterns; else any identity in the trust domain self.
func Policy(d *Destination, fallback authz.Policy, self spiffeid.TrustDomain) authz.Policy {
	if d != nil {
		return d.Expect
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

// lookup returns host's addresses, from the cache while it is fresh.
func (c *Capture) lookup(ctx context.Context, host string) []netip.Addr {
	c.mu.Lock()
	r, ok := c.hosts[host]
	c.mu.Unlock()
	if ok && time.Since(r.at) < HostTTL {
		return r.addrs
	}
	resolve := c.Resolve
	if resolve == nil {
		resolve = func(ctx context.Context, host string) ([]netip.Addr, error) {
			return net.DefaultResolver.LookupNetIP(ctx, "ip", host)
		}
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	addrs, err := resolve(ctx, host)
	if err != nil {
		addrs = nil
	}
	for i, a := range addrs {
		addrs[i] = a.Unmap()
	}
	c.mu.Lock()
	if c.hosts == nil {
		c.hosts = map[string]resolved{}
	}
	c.hosts[host] = resolved{addrs: addrs, at: time.Now()}
	c.mu.Unlock()
	return addrs
}

// Target returns the original destination of c, a connection accepted on
// the capture listener whose address is listen. It fails with
// ErrNoOriginalDst for a connection that was not redirected, or whose
// original destination is the listener itself.
func Target(c net.Conn, listen net.Addr) (netip.AddrPort, error) {
	dst, err := originalDst(c)
	if err != nil {
		return netip.AddrPort{}, err
	}
	if la, ok := listen.(*net.TCPAddr); ok && int(dst.Port()) == la.Port && (la.IP.IsUnspecified() || la.IP.Equal(dst.Addr().AsSlice())) {
		return netip.AddrPort{}, ErrNoOriginalDst
	}
	if local, ok := c.LocalAddr().(*net.TCPAddr); ok && local.AddrPort() == dst {
		return netip.AddrPort{}, ErrNoOriginalDst
	}
	return dst, nil
}

// Listen binds a capture listener at addr and, when that is a
// loopback address, the other family's loopback address at the same port:
// `credflow init` redirects the pod's outbound IPv4 to 127.0.0.1 and its
// IPv6 to ::1 (REDIRECT sends a connection made on the host to the loopback
// address of its family), and the listener must take both. An unspecified
// address (0.0.0.0 or [::]) takes both families already, and any other
// address is left as it is. twin is nil when the other family is not
// available on this host (no ::1 where IPv6 is disabled, so there is no
// IPv6 to capture); any other failure to bind it is an error, since
// whatever holds that port would receive the pod's traffic in clear.
func Listen(addr string) (ln, twin net.Listener, err error) {
	for attempt := 0; ; attempt++ {
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			return nil, nil, err
		}
		bound, ok := ln.Addr().(*net.TCPAddr)
		if !ok || !bound.IP.IsLoopback() {
			return ln, nil, nil
		}
		other := net.JoinHostPort("::1", fmt.Sprint(bound.Port))
		if bound.IP.To4() == nil {
			other = net.JoinHostPort("127.0.0.1", fmt.Sprint(bound.Port))
		}
		twin, err := net.Listen("tcp", other)
		switch {
		case err == nil:
			return ln, twin, nil
		case errors.Is(err, syscall.EADDRNOTAVAIL) || errors.Is(err, syscall.EAFNOSUPPORT):
			return ln, nil, nil
		}
		ln.Close()
		// A port the kernel chose for the first family may be taken in
		// the other: choose again.
		_, port, _ := net.SplitHostPort(addr)
		if port != "0" || attempt == 10 || !errors.Is(err, syscall.EADDRINUSE) {
			return nil, nil, err
		}
	}
}
