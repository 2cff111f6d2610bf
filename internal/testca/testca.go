// Package testca is a certificate authority for tests: it issues SPIFFE
// X.509-SVIDs for one trust domain, including deliberately malformed ones
// that a real SPIRE server would never sign (no or two URI SANs, a non-spiffe
// URI, a NUL byte in a SAN, a leaf with CA=true, a leaf without the clientAuth
// EKU, a leaf signed by another trust domain's CA, expired or not-yet-valid
// leaves, other key types).
//
// Malformed SVIDs are not passed through x509svid.ParseRaw, which would refuse
// them: Issue builds the *x509svid.SVID directly so that a test client or
// server can present it anyway, and the subject alternative name extension is
// encoded by hand, so the DER carries exactly the strings asked for, byte for
// byte, even where crypto/x509 would refuse to write or read them.
//
// A CA never changes after New and is safe for concurrent use. Failures are
// reported through the testing.TB passed in; nothing here returns an error.
package testca

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"math/big"
	"net/url"
	"slices"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// organization is the subject organization of every certificate issued here,
// so that a stray test certificate is recognisable.
const organization = "credflow testca"

// Default lifetimes, relative to the time of New or Issue.
const (
	caBackdate   = time.Hour
	caLifetime   = 24 * time.Hour
	leafBackdate = time.Minute
	leafLifetime = time.Hour
)

// Tags of GeneralName (RFC 5280, section 4.2.1.6) used in the SAN extension.
const (
	tagDNSName = 2
	tagURI     = 6
)

// CA is a root (optionally with an intermediate) for one trust domain.
//
// New creates both the self-signed root and an intermediate signed by it;
// Issue signs leaves with the root unless WithIntermediate is given. Only the
// root is a trust anchor (Roots, Bundle).
type CA struct {
	td       spiffeid.TrustDomain
	root     *x509.Certificate
	rootKey  crypto.Signer
	inter    *x509.Certificate
	interKey crypto.Signer
}

// New returns a CA for td: an ECDSA P-256 self-signed root, valid from one
// hour ago until 24 hours from now, whose only URI SAN is the trust domain's
// SPIFFE ID (as SPIRE does), and an intermediate CA signed by the root with
// the same validity and a path length of zero.
func New(t testing.TB, td spiffeid.TrustDomain) *CA {
	t.Helper()
	if td.IsZero() {
		t.Fatal("testca: New: zero trust domain")
	}
	now := time.Now()
	ca := &CA{td: td, rootKey: newKey(t), interKey: newKey(t)}
	ca.root = ca.signCA(t, "root", now, nil, nil, ca.rootKey)
	ca.inter = ca.signCA(t, "intermediate", now, ca.root, ca.rootKey, ca.interKey)
	return ca
}

// signCA issues a CA certificate for key. With a nil parent it is
// self-signed (a root); otherwise it is an intermediate that may sign only
// leaves.
func (ca *CA) signCA(t testing.TB, role string, now time.Time, parent *x509.Certificate, parentKey, key crypto.Signer) *x509.Certificate {
	t.Helper()
	serial := randomSerial(t)
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject: pkix.Name{
			Organization: []string{organization},
			CommonName:   ca.td.Name() + " " + role,
			SerialNumber: serial.Text(16),
		},
		NotBefore:             now.Add(-caBackdate),
		NotAfter:              now.Add(caLifetime),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		URIs:                  []*url.URL{ca.td.ID().URL()},
	}
	if parent == nil {
		parent, parentKey = tmpl, key
	} else {
		tmpl.MaxPathLenZero = true
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, key.Public(), parentKey)
	if err != nil {
		t.Fatalf("testca: creating %s CA for %q: %v", role, ca.td, err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatalf("testca: parsing %s CA for %q: %v", role, ca.td, err)
	}
	return cert
}

// TrustDomain returns the trust domain the CA was created for.
func (ca *CA) TrustDomain() spiffeid.TrustDomain { return ca.td }

// Bundle returns the CA's root as a go-spiffe bundle for its trust domain
// (a *x509bundle.Bundle is also an x509bundle.Source). Each call returns a
// new bundle, so a test may add or remove authorities without affecting
// others.
func (ca *CA) Bundle() *x509bundle.Bundle {
	return x509bundle.FromX509Authorities(ca.td, ca.Roots())
}

// Roots returns the CA's trust anchors: its one self-signed root. The slice is
// the caller's; the certificates are shared and must not be modified.
func (ca *CA) Roots() []*x509.Certificate {
	return []*x509.Certificate{ca.root}
}

// Option changes what Issue puts into a leaf. Options apply in order; where
// two set the same thing, the later wins.
type Option func(*issueConfig)

type issueConfig struct {
	uris         []string
	urisSet      bool
	dnsNames     []string
	extKeyUsage  []x509.ExtKeyUsage
	ekuSet       bool
	keyUsage     x509.KeyUsage
	keyUsageSet  bool
	isCA         bool
	notBefore    time.Time
	notAfter     time.Time
	validitySet  bool
	signer       *CA
	intermediate bool
	key          crypto.Signer
}

// WithURIs replaces the default URI SAN (the SPIFFE ID given to Issue) with
// uris, written verbatim into the SAN extension, in order: none (no URI SAN
// at all), several, another scheme ("https://…"), or a string with a NUL or
// other byte that crypto/x509 would not write or parse.
func WithURIs(uris ...string) Option {
	return func(c *issueConfig) {
		c.uris, c.urisSet = slices.Clone(uris), true
	}
}

// WithDNSNames adds DNS SANs, written verbatim (no validation, so a NUL byte
// or a SPIFFE ID in a dNSName is possible). The default leaf has none.
func WithDNSNames(names ...string) Option {
	return func(c *issueConfig) {
		c.dnsNames = slices.Clone(names)
	}
}

// WithExtKeyUsage replaces the default extended key usages (ServerAuth and
// ClientAuth), e.g. ServerAuth only. With no arguments the leaf has no
// extended key usage extension at all.
func WithExtKeyUsage(usages ...x509.ExtKeyUsage) Option {
	return func(c *issueConfig) {
		c.extKeyUsage, c.ekuSet = slices.Clone(usages), true
	}
}

// WithKeyUsage replaces the default key usage (DigitalSignature), e.g.
// KeyEncipherment alone for a leaf that may not sign handshakes.
func WithKeyUsage(usage x509.KeyUsage) Option {
	return func(c *issueConfig) {
		c.keyUsage, c.keyUsageSet = usage, true
	}
}

// WithCA marks the leaf as a CA: basic constraints CA=true and
// KeyUsageCertSign added to whatever key usage it has.
func WithCA() Option {
	return func(c *issueConfig) { c.isCA = true }
}

// WithValidity replaces the default validity (one minute ago until one hour
// from now), for expired or not-yet-valid leaves. The times are not checked
// against each other nor against the issuer's validity.
func WithValidity(notBefore, notAfter time.Time) Option {
	return func(c *issueConfig) {
		c.notBefore, c.notAfter, c.validitySet = notBefore, notAfter, true
	}
}

// WithSigner signs the leaf with other's key (its root, or its intermediate
// with WithIntermediate) and chain, while the URI SAN still claims the SPIFFE
// ID given to Issue in the issuing CA's trust domain: a leaf that claims trust
// domain A but chains to trust domain B's root.
func WithSigner(other *CA) Option {
	return func(c *issueConfig) { c.signer = other }
}

// WithIntermediate signs the leaf with the signing CA's intermediate instead
// of its root; the SVID's Certificates are then leaf, intermediate.
func WithIntermediate() Option {
	return func(c *issueConfig) { c.intermediate = true }
}

// WithKey uses key as the leaf's key pair instead of a fresh ECDSA P-256 key,
// e.g. an ed25519, ECDSA P-384 or RSA key for key-type cases.
func WithKey(key crypto.Signer) Option {
	return func(c *issueConfig) { c.key = key }
}

// Issue returns a valid X.509-SVID for id unless options say otherwise: leaf ECDSA P-256,
// exactly one URI SAN = id, KeyUsage DigitalSignature, ExtKeyUsage ServerAuth+ClientAuth,
// IsCA=false, NotBefore now-1m, NotAfter now+1h, serial random.
//
// id must be in the CA's trust domain (use WithSigner to have another trust
// domain sign it); it may be zero only when WithURIs is given. The SVID's ID
// is id whatever the certificate says, and Certificates holds the leaf and,
// with WithIntermediate, the intermediate; never the root.
//
// If crypto/x509 cannot parse the leaf that was asked for (a URI SAN with a
// NUL or other control byte, a URI that net/url rejects, a name that is not
// ASCII), the SVID is returned all the same: Certificates[0].Raw is the exact
// DER that goes on the wire, and the other fields of Certificates[0] come from
// an otherwise identical certificate without the SAN extension, so its URIs
// is empty and its DNSNames are the strings given. Parsing Raw reproduces the
// error a peer gets.
func (ca *CA) Issue(t testing.TB, id spiffeid.ID, opts ...Option) *x509svid.SVID {
	t.Helper()
	var cfg issueConfig
	for _, opt := range opts {
		opt(&cfg)
	}
	switch {
	case id.IsZero() && !cfg.urisSet:
		t.Fatal("testca: Issue: zero SPIFFE ID and no WithURIs")
	case !id.IsZero() && !id.MemberOf(ca.td):
		t.Fatalf("testca: Issue: %q is not in trust domain %q (use WithSigner to sign with another CA)", id, ca.td)
	}
	if !cfg.urisSet {
		cfg.uris = []string{id.String()}
	}

	signer := ca
	if cfg.signer != nil {
		signer = cfg.signer
	}
	parent, parentKey := signer.root, signer.rootKey
	if cfg.intermediate {
		parent, parentKey = signer.inter, signer.interKey
	}

	key := cfg.key
	if key == nil {
		key = newKey(t)
	}

	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          randomSerial(t),
		Subject:               pkix.Name{Organization: []string{organization}},
		NotBefore:             now.Add(-leafBackdate),
		NotAfter:              now.Add(leafLifetime),
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
	}
	if cfg.validitySet {
		tmpl.NotBefore, tmpl.NotAfter = cfg.notBefore, cfg.notAfter
	}
	if cfg.keyUsageSet {
		tmpl.KeyUsage = cfg.keyUsage
	}
	if cfg.ekuSet {
		tmpl.ExtKeyUsage = cfg.extKeyUsage
	}
	if cfg.isCA {
		tmpl.IsCA = true
		tmpl.KeyUsage |= x509.KeyUsageCertSign
	}
	san, hasSAN := sanExtension(t, cfg.dnsNames, cfg.uris)
	if hasSAN {
		tmpl.ExtraExtensions = []pkix.Extension{san}
	}

	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, key.Public(), parentKey)
	if err != nil {
		t.Fatalf("testca: signing leaf for %q: %v", id, err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		leaf = shadowLeaf(t, der, tmpl, parent, parentKey, key, san, cfg.dnsNames)
	}

	chain := []*x509.Certificate{leaf}
	if cfg.intermediate {
		chain = append(chain, signer.inter)
	}
	return &x509svid.SVID{ID: id, Certificates: chain, PrivateKey: key}
}

// sanExtension encodes a subjectAltName extension (RFC 5280, 4.2.1.6) holding
// dnsNames as dNSName and uris as uniformResourceIdentifier, in that order,
// with the bytes of each string as given. It reports false when there are no
// names: an empty GeneralNames is not allowed, so the extension is left out.
func sanExtension(t testing.TB, dnsNames, uris []string) (pkix.Extension, bool) {
	t.Helper()
	names := make([]asn1.RawValue, 0, len(dnsNames)+len(uris))
	for _, n := range dnsNames {
		names = append(names, asn1.RawValue{Class: asn1.ClassContextSpecific, Tag: tagDNSName, Bytes: []byte(n)})
	}
	for _, u := range uris {
		names = append(names, asn1.RawValue{Class: asn1.ClassContextSpecific, Tag: tagURI, Bytes: []byte(u)})
	}
	if len(names) == 0 {
		return pkix.Extension{}, false
	}
	value, err := asn1.Marshal(names)
	if err != nil {
		t.Fatalf("testca: encoding subject alternative names: %v", err)
	}
	return pkix.Extension{Id: asn1.ObjectIdentifier{2, 5, 29, 17}, Value: value}, true
}

// shadowLeaf builds the *x509.Certificate for a leaf whose DER crypto/x509
// refuses to parse: the fields are parsed from a twin signed without the SAN
// extension, then the raw bytes, signature and extensions are replaced by the
// real ones.
func shadowLeaf(t testing.TB, der []byte, tmpl, parent *x509.Certificate, parentKey, key crypto.Signer, san pkix.Extension, dnsNames []string) *x509.Certificate {
	t.Helper()
	twin := *tmpl
	twin.ExtraExtensions = nil
	twinDER, err := x509.CreateCertificate(rand.Reader, &twin, parent, key.Public(), parentKey)
	if err != nil {
		t.Fatalf("testca: signing shadow leaf: %v", err)
	}
	leaf, err := x509.ParseCertificate(twinDER)
	if err != nil {
		t.Fatalf("testca: parsing shadow leaf: %v", err)
	}
	var outer struct {
		TBS       asn1.RawValue
		Algorithm asn1.RawValue
		Signature asn1.BitString
	}
	if rest, err := asn1.Unmarshal(der, &outer); err != nil || len(rest) != 0 {
		t.Fatalf("testca: splitting leaf DER: %v (%d trailing bytes)", err, len(rest))
	}
	leaf.Raw = der
	leaf.RawTBSCertificate = outer.TBS.FullBytes
	leaf.Signature = outer.Signature.RightAlign()
	leaf.Extensions = append(leaf.Extensions, san)
	leaf.DNSNames = slices.Clone(dnsNames)
	return leaf
}

func newKey(t testing.TB) crypto.Signer {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatalf("testca: generating key: %v", err)
	}
	return key
}

// randomSerial returns a random positive 128-bit serial number.
func randomSerial(t testing.TB) *big.Int {
	t.Helper()
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
	if err != nil {
		t.Fatalf("testca: generating serial number: %v", err)
	}
	return serial.Add(serial, big.NewInt(1))
}

// TLSCertificate returns svid as a tls.Certificate: its chain as raw DER (so
// malformed leaves go on the wire unchanged), its private key, and Leaf set to
// the parsed leaf, so crypto/tls does not re-parse a leaf it would refuse
// before sending it.
func TLSCertificate(svid *x509svid.SVID) tls.Certificate {
	cert := tls.Certificate{PrivateKey: svid.PrivateKey}
	for _, c := range svid.Certificates {
		cert.Certificate = append(cert.Certificate, c.Raw)
	}
	if len(svid.Certificates) > 0 {
		cert.Leaf = svid.Certificates[0]
	}
	return cert
}
