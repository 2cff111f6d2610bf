package proxy

import (
	"crypto/tls"
	"crypto/x509"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/credflow/credflow/proxy/mtls"
	"github.com/credflow/credflow/reason"
)

// The deny list (Config.Revoked) bars peers whatever the policy says:
// their SPIFFE ID, or the serial of a certificate in their chain, on the
// list. It is applied at every handshake, both directions (TLS and QUIC),
// to every inbound HTTP request, and to established connections, which
// are re-checked as soon as the list changes.

// verifyInbound is an inbound handshake's last check, once the peer's
// chain is verified and authorized: the key-exchange policy, then the
// deny list.
func (p *Proxy) verifyInbound(cs tls.ConnectionState, peer spiffeid.ID) error {
	if err := p.checkKeyExchange(cs, peer); err != nil {
		return err
	}
	return p.barredAt(dirInbound, peer, cs.PeerCertificates)
}

// verifyOutbound is an outbound handshake's last check, as verifyInbound.
func (p *Proxy) verifyOutbound(cs tls.ConnectionState, peer spiffeid.ID) error {
	if err := p.checkKeyExchange(cs, peer); err != nil {
		return err
	}
	return p.barredAt(dirOutbound, peer, cs.PeerCertificates)
}

func (p *Proxy) barredAt(dir direction, peer spiffeid.ID, chain []*x509.Certificate) error {
	if why := p.barred(dir, peer, chain, time.Now()); why != "" {
		return &mtls.Refusal{Reason: why, Peer: peer}
	}
	return nil
}

// barred returns why peer, with its certificate chain, may not be
// connected to now ("" when nothing bars it): revoked, its ID or one of
// its certificates' serials on the deny list.
func (p *Proxy) barred(dir direction, peer spiffeid.ID, chain []*x509.Certificate, now time.Time) reason.Reason {
	deny := p.cfg.Revoked
	if deny == nil {
		return ""
	}
	if _, ok := deny.ID(peer, now); ok {
		return reason.Revoked
	}
	for _, c := range chain {
		if _, ok := deny.Serial(c.SerialNumber, now); ok {
			return reason.Revoked
		}
	}
	return ""
}

// barredRequest is barred for a request on an established inbound
// connection, between a change of the list and the re-check that closes
// the connection: by the peer's ID alone (its chain was checked when the
// connection was made, and the re-check follows within milliseconds).
func (p *Proxy) barredRequest(peer spiffeid.ID, now time.Time) reason.Reason {
	if deny := p.cfg.Revoked; deny != nil {
		if _, ok := deny.ID(peer, now); ok {
			return reason.Revoked
		}
	}
	return ""
}

// guardFilter, first in an inbound listener's pipeline, refuses a request
// of a barred peer.
type guardFilter struct{ p *Proxy }

func (f guardFilter) Filter(r *Request) reason.Reason {
	return f.p.barredRequest(r.Peer, time.Now())
}

// revokedChanged returns a channel closed at the deny list's next change,
// or nil (which never fires) without a list.
func (p *Proxy) revokedChanged() <-chan struct{} {
	if p.cfg.Revoked == nil {
		return nil
	}
	return p.cfg.Revoked.Changed()
}
