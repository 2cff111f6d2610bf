// Package mtls builds the TLS configurations the sidecar uses between
// workloads: TLS 1.3 only, the current X.509-SVID presented on every
// handshake (read from an x509svid.Source, so rotation never rebuilds a
// config), and the peer verified and authorized in VerifyConnection, which
// Go also runs on resumed sessions, so a session ticket never outlives a
// change of policy or trust bundle.
//
// Peer verification is done here rather than by crypto/x509's defaults:
// the trust bundle is chosen by the trust domain of the peer's SPIFFE ID,
// the leaf must carry exactly one URI SAN that parses as a canonical SPIFFE
// ID, must not be a CA, and must carry the extended key usage of its role
// (clientAuth for clients, serverAuth for servers; never "any").
package mtls

import (
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/credflow/credflow/reason"
)

// ErrNoSVID is the error a handshake fails with when this side has no valid
// SVID to present (reason.NoSVIDYet).
var ErrNoSVID error = noSVID{}

type noSVID struct{}

func (noSVID) Error() string      { return "mtls: no SVID to present" }
func (noSVID) Why() reason.Reason { return reason.NoSVIDYet }

// Refusal is the error a handshake fails with when this side refuses the
// peer.
type Refusal struct {
	Reason reason.Reason
	// Peer is the peer's SPIFFE ID when its chain verified and it was
	// refused on other grounds (policy, key exchange); zero otherwise.
	Peer spiffeid.ID
	// Claimed is the SPIFFE ID read from a certificate that did not
	// verify: what the peer claims to be, not an identity.
	Claimed spiffeid.ID
	Err     error
}

func (r *Refusal) Error() string {
	peer := "peer"
	switch {
	case !r.Peer.IsZero():
		peer = r.Peer.String()
	case !r.Claimed.IsZero():
		peer = "peer claiming " + r.Claimed.String()
	}
	if r.Err != nil {
		return fmt.Sprintf("mtls: %s refused (%s): %v", peer, r.Reason, r.Err)
	}
	return fmt.Sprintf("mtls: %s refused (%s)", peer, r.Reason)
}

func (r *Refusal) Unwrap() error { return r.Err }

// Why returns the refusal's reason.
func (r *Refusal) Why() reason.Reason { return r.Reason }

// Alert is the TLS alert that tells the peer why it was refused (RFC 8446,
// section 6.2), from the reason's Info; bad_certificate for a reason that
// names no alert.
func (r *Refusal) Alert() tls.AlertError {
	if a := r.Reason.Info().Alert; a != 0 {
		return tls.AlertError(a)
	}
	return 42 // bad_certificate
}

// As makes a Refusal match *tls.AlertError with its Alert. QUIC sends the
// alert a handshake error wraps (quic-go reads it with errors.As), so a
// refused QUIC peer learns the reason. crypto/tls over TCP (as of Go 1.27)
// sends bad_certificate for every error VerifyConnection returns
// (golang/go#77378 discusses letting the callback choose).
func (r *Refusal) As(target any) bool {
	if a, ok := target.(*tls.AlertError); ok {
		*a = r.Alert()
		return true
	}
	return false
}

// Authorizer decides whether a verified peer ID may connect. It is called
// on every handshake, resumed ones included, so it should read the current
// policy (for example through an atomic pointer) rather than a copy.
type Authorizer func(spiffeid.ID) bool

// Config describes one side of mutual TLS. SVIDs, Bundles and Authorize are
// required.
type Config struct {
	SVIDs     x509svid.Source
	Bundles   x509bundle.Source
	Authorize Authorizer
	// VerifyConnection, if set, runs after the peer is verified and
	// authorized, with the peer's ID; it can refuse the connection on
	// other grounds (the key-exchange policy, for instance).
	VerifyConnection func(tls.ConnectionState, spiffeid.ID) error
}

// Server returns a TLS 1.3 server configuration that requires a client
// SVID with the clientAuth usage.
func (c Config) Server() *tls.Config {
	certs := &certCache{src: c.SVIDs}
	verified := newVerifyCache()
	conf := &tls.Config{
		MinVersion: tls.VersionTLS13,
		// Request rather than require a certificate, so that a client
		// without one reaches VerifyConnection and is refused there with
		// the reason no_peer_cert; the chain is verified there too.
		ClientAuth: tls.RequestClientCert,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			return certs.get()
		},
		VerifyConnection: func(cs tls.ConnectionState) error {
			return c.verify(cs, x509.ExtKeyUsageClientAuth, verified)
		},
		Time: resumeClock,
	}
	c.epoch().serverTickets(conf)
	return conf
}

// Client returns a TLS 1.3 client configuration that presents the SVID and
// requires a server SVID with the serverAuth usage. It keeps a small
// session cache, so reconnections to a peer resume; resumption re-runs
// VerifyConnection. Sessions are not resumed across a change of the SVID
// or of a bundle (see epoch).
func (c Config) Client() *tls.Config {
	certs := &certCache{src: c.SVIDs}
	verified := newVerifyCache()
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		// The server's chain and identity are verified in
		// VerifyConnection against the bundle of its trust domain, not
		// by crypto/tls against system roots and a host name.
		InsecureSkipVerify: true,
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			return certs.get()
		},
		VerifyConnection: func(cs tls.ConnectionState) error {
			return c.verify(cs, x509.ExtKeyUsageServerAuth, verified)
		},
		ClientSessionCache: c.epoch().clientCache(tls.NewLRUClientSessionCache(64)),
		Time:               resumeClock,
	}
}

// ResumeMargin is how long before its peer certificate expires a TLS
// session stops being resumed. A resumed session carries the peer
// certificate of its first handshake; resumed at the last moment, it
// would expire during the handshake and VerifyConnection would refuse it,
// where a full handshake would have brought the peer's current one.
const ResumeMargin = 5 * time.Second

// resumeClock is the configurations' clock: ResumeMargin ahead. With the
// peer verified in VerifyConnection (on time.Now), crypto/tls uses this
// clock only to age session tickets, consistently, and to refuse to resume
// a session whose peer certificate has expired by it.
func resumeClock() time.Time { return time.Now().Add(ResumeMargin) }

func (c Config) verify(cs tls.ConnectionState, eku x509.ExtKeyUsage, cache *verifyCache) error {
	id, err := cache.verify(cs.PeerCertificates, c.Bundles, eku, time.Now())
	if err != nil {
		return err
	}
	if c.Authorize == nil || !c.Authorize(id) {
		return &Refusal{Reason: reason.Unauthorized, Peer: id}
	}
	if c.VerifyConnection != nil {
		return c.VerifyConnection(cs, id)
	}
	return nil
}

// ClockSkew is how far in the future a peer's certificates may start: a
// peer whose clock runs ahead by up to this much is accepted. Expiry is
// not stretched: a certificate is refused from its NotAfter on.
const ClockSkew = 30 * time.Second

// Verify checks that chain is a valid X.509-SVID for the extended key usage
// eku at time now, chained to the bundle of the trust domain its ID names,
// and returns the ID. Failures are *Refusal, with the ID the leaf claims in
// Claimed.
func Verify(chain []*x509.Certificate, bundles x509bundle.Source, eku x509.ExtKeyUsage, now time.Time) (spiffeid.ID, error) {
	return verifyChain(chain, bundles, eku, now, true)
}

// Reverify checks again, against the current bundles, a chain that
// verified at the start of a connection, so that an established
// connection can be closed once its peer's authority leaves the bundle.
// Expiry is not checked: the chain is verified as of now or, once its
// first certificate has expired, as of that expiry. An established
// connection does not depend on its peer's certificate staying valid (its
// keys were agreed at the handshake), and a peer that rotated its SVID
// keeps the connection it opened with the previous one.
func Reverify(chain []*x509.Certificate, bundles x509bundle.Source, eku x509.ExtKeyUsage, now time.Time) (spiffeid.ID, error) {
	for _, c := range chain {
		if !now.Before(c.NotAfter) {
			now = c.NotAfter.Add(-time.Nanosecond)
		}
	}
	return verifyChain(chain, bundles, eku, now, false)
}

// verifyChain is Verify; with expiry false, an expired certificate in the
// chain is not a refusal.
func verifyChain(chain []*x509.Certificate, bundles x509bundle.Source, eku x509.ExtKeyUsage, now time.Time, expiry bool) (spiffeid.ID, error) {
	if len(chain) == 0 {
		return spiffeid.ID{}, &Refusal{Reason: reason.NoPeerCert}
	}
	leaf := chain[0]
	id, err := idFromLeaf(leaf)
	if err != nil {
		return spiffeid.ID{}, &Refusal{Reason: reason.InvalidSVID, Err: err}
	}
	switch {
	case leaf.IsCA:
		return id, &Refusal{Reason: reason.InvalidSVID, Claimed: id, Err: errors.New("leaf is a CA")}
	case leaf.KeyUsage&(x509.KeyUsageCertSign|x509.KeyUsageCRLSign) != 0:
		return id, &Refusal{Reason: reason.InvalidSVID, Claimed: id, Err: errors.New("leaf may sign certificates or CRLs")}
	case !hasEKU(leaf, eku):
		return id, &Refusal{Reason: reason.BadEKU, Claimed: id, Err: fmt.Errorf("leaf lacks the %s extended key usage", ekuName(eku))}
	case now.Add(ClockSkew).Before(leaf.NotBefore):
		return id, &Refusal{Reason: reason.NotYetValid, Claimed: id, Err: fmt.Errorf("valid from %s", leaf.NotBefore.UTC().Format(time.RFC3339))}
	case expiry && !now.Before(leaf.NotAfter):
		return id, &Refusal{Reason: reason.Expired, Claimed: id, Err: fmt.Errorf("expired at %s", leaf.NotAfter.UTC().Format(time.RFC3339))}
	}
	bundle, err := bundles.GetX509BundleForTrustDomain(id.TrustDomain())
	if err != nil {
		return id, &Refusal{Reason: reason.Untrusted, Claimed: id, Err: err}
	}
	roots := x509.NewCertPool()
	for _, c := range bundle.X509Authorities() {
		roots.AddCert(c)
	}
	inter := x509.NewCertPool()
	for _, c := range chain[1:] {
		inter.AddCert(c)
	}
	// A chain issued by a clock up to ClockSkew ahead is verified at its
	// latest NotBefore; every certificate must still be unexpired now.
	at := now
	for _, c := range chain {
		if c.NotBefore.After(at) && !c.NotBefore.After(now.Add(ClockSkew)) {
			at = c.NotBefore
		}
	}
	chains, err := leaf.Verify(x509.VerifyOptions{
		Roots:         roots,
		Intermediates: inter,
		KeyUsages:     []x509.ExtKeyUsage{eku},
		CurrentTime:   at,
	})
	if err != nil {
		var inv x509.CertificateInvalidError
		if errors.As(err, &inv) && inv.Reason == x509.Expired {
			if at.Before(inv.Cert.NotBefore) {
				return id, &Refusal{Reason: reason.NotYetValid, Claimed: id, Err: err}
			}
			return id, &Refusal{Reason: reason.Expired, Claimed: id, Err: err}
		}
		return id, &Refusal{Reason: reason.Untrusted, Claimed: id, Err: err}
	}
	if !expiry {
		return id, nil
	}
	var expired *x509.Certificate
	for _, ch := range chains {
		expired = nil
		for _, c := range ch {
			if !now.Before(c.NotAfter) {
				expired = c
				break
			}
		}
		if expired == nil {
			return id, nil
		}
	}
	return id, &Refusal{Reason: reason.Expired, Claimed: id, Err: fmt.Errorf("%s expired at %s", expired.Subject, expired.NotAfter.UTC().Format(time.RFC3339))}
}

// idFromLeaf returns the SPIFFE ID of a leaf that carries exactly one URI
// SAN, in canonical form.
func idFromLeaf(leaf *x509.Certificate) (spiffeid.ID, error) {
	switch len(leaf.URIs) {
	case 0:
		return spiffeid.ID{}, errors.New("no URI SAN")
	case 1:
	default:
		return spiffeid.ID{}, fmt.Errorf("%d URI SANs, want exactly one", len(leaf.URIs))
	}
	raw := leaf.URIs[0].String()
	id, err := spiffeid.FromString(raw)
	if err != nil {
		return spiffeid.ID{}, err
	}
	if id.String() != raw {
		return spiffeid.ID{}, errors.New("URI SAN is not a canonical SPIFFE ID")
	}
	return id, nil
}

func hasEKU(c *x509.Certificate, want x509.ExtKeyUsage) bool {
	for _, u := range c.ExtKeyUsage {
		if u == want {
			return true
		}
	}
	return false
}

func ekuName(u x509.ExtKeyUsage) string {
	switch u {
	case x509.ExtKeyUsageClientAuth:
		return "clientAuth"
	case x509.ExtKeyUsageServerAuth:
		return "serverAuth"
	}
	return fmt.Sprint(u)
}

// certCache turns the Source's current SVID into a tls.Certificate, once
// per SVID rather than once per handshake.
type certCache struct {
	src x509svid.Source
	cur atomic.Pointer[cachedCert]
}

type cachedCert struct {
	svid *x509svid.SVID
	cert *tls.Certificate
}

func (c *certCache) get() (*tls.Certificate, error) {
	svid, err := c.src.GetX509SVID()
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrNoSVID, err)
	}
	if len(svid.Certificates) == 0 || !time.Now().Before(svid.Certificates[0].NotAfter) {
		return nil, fmt.Errorf("%w: the SVID has expired", ErrNoSVID)
	}
	if cc := c.cur.Load(); cc != nil && cc.svid == svid {
		return cc.cert, nil
	}
	cert := &tls.Certificate{PrivateKey: svid.PrivateKey, Leaf: svid.Certificates[0]}
	for _, x := range svid.Certificates {
		cert.Certificate = append(cert.Certificate, x.Raw)
	}
	c.cur.Store(&cachedCert{svid: svid, cert: cert})
	return cert, nil
}

// verifyCache remembers chains that verified, so that a peer reconnecting
// (resumed or not) is not verified again while nothing that the result
// depends on has changed: the exact chain, the bundle object its trust
// domain had (a Source hands out a new one on every update), the key usage
// and the validity window of every certificate in the chain. Policy and
// key-exchange checks are not cached; they run on every handshake.
type verifyCache struct {
	mu sync.Mutex
	m  map[[sha256.Size]byte]verified
}

type verified struct {
	id                  spiffeid.ID
	bundle              *x509bundle.Bundle
	notBefore, notAfter time.Time
}

// maxVerified bounds the cache; when full it is emptied, which costs one
// verification per peer afterwards. From sweepVerified entries on, expired
// ones are dropped at each insertion.
const (
	maxVerified   = 4096
	sweepVerified = 64
)

func newVerifyCache() *verifyCache {
	return &verifyCache{m: make(map[[sha256.Size]byte]verified)}
}

func (vc *verifyCache) verify(chain []*x509.Certificate, bundles x509bundle.Source, eku x509.ExtKeyUsage, now time.Time) (spiffeid.ID, error) {
	if len(chain) == 0 {
		return Verify(chain, bundles, eku, now)
	}
	h := sha256.New()
	h.Write([]byte{byte(eku)})
	for _, c := range chain {
		h.Write(c.Raw)
	}
	var key [sha256.Size]byte
	h.Sum(key[:0])

	vc.mu.Lock()
	v, ok := vc.m[key]
	vc.mu.Unlock()
	if ok && !now.Before(v.notBefore) && now.Before(v.notAfter) {
		if b, err := bundles.GetX509BundleForTrustDomain(v.id.TrustDomain()); err == nil && b == v.bundle {
			return v.id, nil
		}
	}
	id, err := Verify(chain, bundles, eku, now)
	if err != nil {
		return id, err
	}
	b, err := bundles.GetX509BundleForTrustDomain(id.TrustDomain())
	if err != nil {
		return id, nil // verified, but nothing to key the cache on
	}
	v = verified{id: id, bundle: b, notBefore: chain[0].NotBefore, notAfter: chain[0].NotAfter}
	for _, c := range chain[1:] {
		if c.NotBefore.After(v.notBefore) {
			v.notBefore = c.NotBefore
		}
		if c.NotAfter.Before(v.notAfter) {
			v.notAfter = c.NotAfter
		}
	}
	vc.mu.Lock()
	if len(vc.m) >= sweepVerified {
		// Each entry holds the bundle it was verified against; drop
		// those whose chain has expired, so that the cache holds about
		// as many entries as there are peer certificates in use.
		for k, e := range vc.m {
			if !now.Before(e.notAfter) {
				delete(vc.m, k)
			}
		}
	}
	if len(vc.m) >= maxVerified {
		clear(vc.m)
	}
	vc.m[key] = v
	vc.mu.Unlock()
	return id, nil
}

// len returns the number of verified chains remembered.
func (vc *verifyCache) len() int {
	vc.mu.Lock()
	defer vc.mu.Unlock()
	return len(vc.m)
}
