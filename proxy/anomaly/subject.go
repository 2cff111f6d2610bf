package anomaly

import (
	"net/netip"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Subject is whom an observation is about: a peer's verified SPIFFE ID or,
// where there is none (a handshake that failed or has not finished), the
// connection's source address. Subjects are comparable and serve as map
// keys; a peer and an address are never equal. The zero Subject is no one:
// the Detector ignores observations of it.
type Subject struct {
	id   spiffeid.ID
	addr netip.Addr
}

// Peer is the Subject of a verified SPIFFE ID; the zero ID gives the zero
// Subject.
func Peer(id spiffeid.ID) Subject { return Subject{id: id} }

// Source is the Subject of a source address. An IPv4-mapped IPv6 address
// is its IPv4 address and a zone is dropped, so that one host is one
// subject however the listener saw it.
func Source(a netip.Addr) Subject { return Subject{addr: a.Unmap().WithZone("")} }

// Peer returns the subject's SPIFFE ID and true, or false when s is an
// address.
func (s Subject) Peer() (spiffeid.ID, bool) { return s.id, !s.id.IsZero() }

// Source returns the subject's address and true, or false when s is a
// peer.
func (s Subject) Source() (netip.Addr, bool) { return s.addr, s.addr.IsValid() }

// IsZero reports whether s is no one.
func (s Subject) IsZero() bool { return s.id.IsZero() && !s.addr.IsValid() }

// String is the SPIFFE ID (spiffe://…), the address, or "" for the zero
// Subject.
func (s Subject) String() string {
	if !s.id.IsZero() {
		return s.id.String()
	}
	if s.addr.IsValid() {
		return s.addr.String()
	}
	return ""
}
