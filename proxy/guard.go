package proxy

import (
	"crypto/tls"
	"crypto/x509"
	"log/slog"
	"net/netip"
	"slices"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/credflow/credflow/internal/logkey"
	"github.com/credflow/credflow/proxy/anomaly"
	"github.com/credflow/credflow/proxy/mtls"
	"github.com/credflow/credflow/proxy/revoke"
	"github.com/credflow/credflow/reason"
)

// Two things bar peers whatever the policy says.
//
// The deny list (Config.Revoked, and the jtis anomaly detection revoked
// here, p.localDeny): a peer whose SPIFFE ID, or the serial of a
// certificate in whose chain, is on it. It is applied at every handshake,
// both directions (TLS and QUIC), to every inbound HTTP request, and to
// established connections, which are re-checked as soon as the list
// changes.
//
// The quarantine (Config.Anomaly's): inbound peers, by SPIFFE ID or by
// source address, that a detector caught. A quarantined address is closed
// at accept; a quarantined ID is refused at the handshake and per request,
// and its established inbound connections are closed when it is put
// there.

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
	if dir == dirInbound && p.quarantined(anomaly.Peer(peer), now) {
		return reason.Quarantined
	}
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

// quarantined reports whether s is in quarantine now.
func (p *Proxy) quarantined(s anomaly.Subject, now time.Time) bool {
	if p.cfg.Anomaly == nil {
		return false
	}
	_, ok := p.cfg.Anomaly.Quarantine().Quarantined(s, now)
	return ok
}

// revokedJTI reports whether the transaction token jti is revoked: on
// the operators' list or by anomaly detection here.
func (p *Proxy) revokedJTI(jti string, now time.Time) bool {
	if jti == "" {
		return false
	}
	if deny := p.cfg.Revoked; deny != nil {
		if _, ok := deny.JTI(jti, now); ok {
			return true
		}
	}
	_, ok := p.localDeny.JTI(jti, now)
	return ok
}

// maxLocalRevocations caps the jtis anomaly detection revokes on this
// sidecar: past it, the entry that ends first makes room.
const maxLocalRevocations = 10000

// RevokeJTI revokes the transaction token jti on this sidecar until the
// time until, for anomaly detection's revoke action (which also writes
// it to the shared list, when there is one, to reach every sidecar).
func (p *Proxy) RevokeJTI(jti string, until time.Time, why string) {
	if jti == "" {
		return
	}
	p.localMu.Lock()
	defer p.localMu.Unlock()
	now := time.Now()
	entries := slices.DeleteFunc(p.localDeny.Entries(), func(e revoke.Entry) bool { return !e.Live(now) })
	if len(entries) >= maxLocalRevocations {
		slices.SortFunc(entries, func(a, b revoke.Entry) int { return a.Expires.Compare(b.Expires) })
		entries = entries[len(entries)-maxLocalRevocations+1:]
	}
	entries = append(entries, revoke.Entry{Kind: revoke.JTI, Value: jti, Expires: until, Reason: why, Added: now})
	if _, err := p.localDeny.Replace(entries); err != nil {
		p.log.Warn("proxy: cannot revoke a token locally", slog.String(logkey.Error, err.Error()))
	}
}

// Revalidate re-checks the established connections now, as a change of
// policy does: anomaly detection calls it when it quarantines a peer.
// It does not block.
func (p *Proxy) Revalidate() {
	select {
	case p.revalNow <- struct{}{}:
	default: // one is pending
	}
}

// observe hands the outcome of an inbound connection or request on l to
// anomaly detection, unless l is unobserved.
func (p *Proxy) observe(l *listener, o anomaly.Observation) {
	if d := p.cfg.Anomaly; d != nil && l.observed.Load() {
		d.Observe(o)
	}
}

// subjectOf is whom an inbound outcome is about: the verified peer, else
// the source address.
func subjectOf(peer spiffeid.ID, src netip.Addr) anomaly.Subject {
	if !peer.IsZero() {
		return anomaly.Peer(peer)
	}
	return anomaly.Source(src)
}

// barredRequest is barred for a request on an established inbound
// connection, between a change of the list and the re-check that closes
// the connection: by the peer's ID alone (its chain was checked when the
// connection was made, and the re-check follows within milliseconds).
func (p *Proxy) barredRequest(peer spiffeid.ID, now time.Time) reason.Reason {
	if p.quarantined(anomaly.Peer(peer), now) {
		return reason.Quarantined
	}
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
