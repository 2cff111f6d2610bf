package testca_test

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/credflow/credflow/internal/testca"
)

var _ x509bundle.Source = (*x509bundle.Bundle)(nil)

var (
	tdA = spiffeid.RequireTrustDomainFromString("a.test")
	tdB = spiffeid.RequireTrustDomainFromString("b.test")
	idA = spiffeid.RequireFromPath(tdA, "/web")
)

// san is one GeneralName as found in the DER: its context tag (2 dNSName,
// 6 uniformResourceIdentifier) and its bytes.
type san struct {
	Tag   int
	Value string
}

// rawSANs returns the subject alternative names of a DER certificate without
// crypto/x509, which refuses some of the names these tests put there.
func rawSANs(t *testing.T, der []byte) []san {
	t.Helper()
	var cert struct {
		TBS struct {
			Version    int `asn1:"optional,explicit,default:0,tag:0"`
			Serial     *big.Int
			Algorithm  asn1.RawValue
			Issuer     asn1.RawValue
			Validity   asn1.RawValue
			Subject    asn1.RawValue
			PublicKey  asn1.RawValue
			Extensions []pkix.Extension `asn1:"optional,explicit,tag:3"`
		}
		Algorithm asn1.RawValue
		Signature asn1.BitString
	}
	if _, err := asn1.Unmarshal(der, &cert); err != nil {
		t.Fatalf("decoding certificate: %v", err)
	}
	var sans []san
	for _, ext := range cert.TBS.Extensions {
		if !ext.Id.Equal(asn1.ObjectIdentifier{2, 5, 29, 17}) {
			continue
		}
		var names []asn1.RawValue
		if _, err := asn1.Unmarshal(ext.Value, &names); err != nil {
			t.Fatalf("decoding subjectAltName: %v", err)
		}
		for _, n := range names {
			sans = append(sans, san{Tag: n.Tag, Value: string(n.Bytes)})
		}
	}
	return sans
}

func uriSAN(s string) san { return san{Tag: 6, Value: s} }
func dnsSAN(s string) san { return san{Tag: 2, Value: s} }

func rawChain(svid *x509svid.SVID) [][]byte {
	var raw [][]byte
	for _, c := range svid.Certificates {
		raw = append(raw, c.Raw)
	}
	return raw
}

// parseRaw runs go-spiffe's validating parser on the SVID's DER.
func parseRaw(t *testing.T, svid *x509svid.SVID) error {
	t.Helper()
	key, err := x509.MarshalPKCS8PrivateKey(svid.PrivateKey)
	if err != nil {
		t.Fatal(err)
	}
	_, err = x509svid.ParseRaw(bytes.Join(rawChain(svid), nil), key)
	return err
}

// checkErr reports whether err is nil when want is empty, or mentions want.
// go-spiffe's errors are unexported errors.New values, so the message is the
// only way to tell which rule refused a certificate.
func checkErr(t *testing.T, what string, err error, want string) {
	t.Helper()
	switch {
	case want == "" && err != nil:
		t.Errorf("%s: unexpected error: %v", what, err)
	case want != "" && err == nil:
		t.Errorf("%s: accepted, want an error mentioning %q", what, want)
	case want != "" && !strings.Contains(err.Error(), want):
		t.Errorf("%s: error %q, want one mentioning %q", what, err, want)
	}
}

func TestIssueDefaults(t *testing.T) {
	ca := testca.New(t, tdA)
	before := time.Now()
	svid := ca.Issue(t, idA)
	after := time.Now()

	if svid.ID != idA {
		t.Errorf("SVID ID = %q, want %q", svid.ID, idA)
	}
	id, chains, err := x509svid.Verify(svid.Certificates, ca.Bundle())
	if err != nil {
		t.Fatalf("x509svid.Verify: %v", err)
	}
	if id != idA || len(chains) != 1 || len(chains[0]) != 2 {
		t.Errorf("x509svid.Verify = %q with %d chains, want %q with one chain leaf → root", id, len(chains), idA)
	}
	if err := parseRaw(t, svid); err != nil {
		t.Errorf("x509svid.ParseRaw: %v", err)
	}

	type leafProps struct {
		URIs        []string
		DNSNames    []string
		KeyUsage    x509.KeyUsage
		ExtKeyUsage []x509.ExtKeyUsage
		IsCA        bool
		Curve       string
		Chain       int
	}
	leaf := svid.Certificates[0]
	got := leafProps{
		KeyUsage:    leaf.KeyUsage,
		ExtKeyUsage: leaf.ExtKeyUsage,
		IsCA:        leaf.IsCA,
		DNSNames:    leaf.DNSNames,
		Chain:       len(svid.Certificates),
	}
	for _, u := range leaf.URIs {
		got.URIs = append(got.URIs, u.String())
	}
	if pub, ok := leaf.PublicKey.(*ecdsa.PublicKey); ok {
		got.Curve = pub.Curve.Params().Name
	}
	want := leafProps{
		URIs:        []string{idA.String()},
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		Curve:       "P-256",
		Chain:       1,
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("leaf (-want +got):\n%s", diff)
	}
	// Certificate times are in whole seconds.
	if nb := leaf.NotBefore; nb.Before(before.Add(-time.Minute-time.Second)) || nb.After(after.Add(-time.Minute)) {
		t.Errorf("NotBefore = %v, want about now-1m", nb)
	}
	if na := leaf.NotAfter; na.Before(before.Add(time.Hour-time.Second)) || na.After(after.Add(time.Hour)) {
		t.Errorf("NotAfter = %v, want about now+1h", na)
	}
	if svid.PrivateKey == nil || !leaf.PublicKey.(*ecdsa.PublicKey).Equal(svid.PrivateKey.Public()) {
		t.Error("private key does not match the leaf")
	}
	if other := ca.Issue(t, idA).Certificates[0]; other.SerialNumber.Cmp(leaf.SerialNumber) == 0 {
		t.Errorf("two leaves share serial %x", leaf.SerialNumber)
	}
}

func TestCA(t *testing.T) {
	ca := testca.New(t, tdA)
	if ca.TrustDomain() != tdA {
		t.Errorf("TrustDomain = %q, want %q", ca.TrustDomain(), tdA)
	}
	roots := ca.Roots()
	if len(roots) != 1 {
		t.Fatalf("%d roots, want 1", len(roots))
	}
	root := roots[0]
	if !root.IsCA || root.CheckSignatureFrom(root) != nil {
		t.Errorf("root is not a self-signed CA")
	}
	if len(root.URIs) != 1 || root.URIs[0].String() != tdA.IDString() {
		t.Errorf("root URIs = %v, want [%s]", root.URIs, tdA.IDString())
	}
	if d := root.NotAfter.Sub(root.NotBefore); d != 25*time.Hour {
		t.Errorf("root validity spans %v, want 25h (now-1h..now+24h)", d)
	}
	b := ca.Bundle()
	if b.TrustDomain() != tdA || !b.HasX509Authority(root) || len(b.X509Authorities()) != 1 {
		t.Errorf("bundle = %q with %d authorities, want %q with the root", b.TrustDomain(), len(b.X509Authorities()), tdA)
	}
	b.RemoveX509Authority(root)
	if !ca.Bundle().HasX509Authority(root) {
		t.Error("changing one Bundle changed the next")
	}
}

// TestIssue documents each malformed leaf: what is in its DER, and which
// go-spiffe check refuses it (or that go-spiffe accepts it, when the sidecar
// must refuse it itself).
func TestIssue(t *testing.T) {
	ca := testca.New(t, tdA)
	other := testca.New(t, tdB)
	now := time.Now()
	roots := x509.NewCertPool()
	roots.AddCert(ca.Roots()[0])
	ed25519Pub, ed25519Key, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	p384Key, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name string
		id   spiffeid.ID // idA when zero
		opts []testca.Option
		// wantSANs is what the DER holds, read without crypto/x509.
		wantSANs []san
		// wantVerifyErr is part of the error of x509svid.ParseAndVerify
		// against ca.Bundle(), or "" when it accepts the chain.
		wantVerifyErr string
		// wantParseRawErr is part of the error of x509svid.ParseRaw, or ""
		// when it accepts the SVID.
		wantParseRawErr string
		// wantX509Err is part of the error of x509.ParseCertificate on the
		// leaf, or "" when it parses; check then inspects the parsed leaf.
		wantX509Err string
		check       func(t *testing.T, leaf *x509.Certificate)
	}{
		{
			name:     "valid",
			wantSANs: []san{uriSAN(idA.String())},
		},
		{
			name:            "B5 no URI SAN",
			opts:            []testca.Option{testca.WithURIs()},
			wantVerifyErr:   "certificate contains no URI SAN",
			wantParseRawErr: "certificate contains no URI SAN",
			check: func(t *testing.T, leaf *x509.Certificate) {
				if len(leaf.URIs) != 0 {
					t.Errorf("URIs = %v, want none", leaf.URIs)
				}
			},
		},
		{
			name:            "B5 two URI SANs",
			opts:            []testca.Option{testca.WithURIs(idA.String(), "spiffe://a.test/admin")},
			wantSANs:        []san{uriSAN(idA.String()), uriSAN("spiffe://a.test/admin")},
			wantVerifyErr:   "certificate contains more than one URI SAN",
			wantParseRawErr: "certificate contains more than one URI SAN",
			check: func(t *testing.T, leaf *x509.Certificate) {
				if len(leaf.URIs) != 2 {
					t.Errorf("len(URIs) = %d, want 2", len(leaf.URIs))
				}
			},
		},
		{
			name:            "B5 https URI SAN",
			opts:            []testca.Option{testca.WithURIs("https://a.test/web")},
			wantSANs:        []san{uriSAN("https://a.test/web")},
			wantVerifyErr:   "scheme is missing or invalid",
			wantParseRawErr: "scheme is missing or invalid",
			check: func(t *testing.T, leaf *x509.Certificate) {
				if len(leaf.URIs) != 1 || leaf.URIs[0].Scheme != "https" {
					t.Errorf("URIs = %v, want one https URI", leaf.URIs)
				}
			},
		},
		{
			name:            "B5 SPIFFE ID only in a DNS SAN",
			opts:            []testca.Option{testca.WithURIs(), testca.WithDNSNames(idA.String())},
			wantSANs:        []san{dnsSAN(idA.String())},
			wantVerifyErr:   "certificate contains no URI SAN",
			wantParseRawErr: "certificate contains no URI SAN",
			check: func(t *testing.T, leaf *x509.Certificate) {
				if diff := cmp.Diff([]string{idA.String()}, leaf.DNSNames); diff != "" || len(leaf.URIs) != 0 {
					t.Errorf("DNSNames (-want +got):\n%s; URIs = %v", diff, leaf.URIs)
				}
			},
		},
		{
			// crypto/x509 refuses the whole certificate (net/url rejects
			// control bytes), so a Go peer refuses it before go-spiffe sees it.
			name:            "B6 NUL in URI SAN",
			opts:            []testca.Option{testca.WithURIs("spiffe://a.test/web\x00.evil.test")},
			wantSANs:        []san{uriSAN("spiffe://a.test/web\x00.evil.test")},
			wantVerifyErr:   "invalid control character in URL",
			wantParseRawErr: "invalid control character in URL",
			wantX509Err:     "invalid control character in URL",
		},
		{
			name:            "B6 percent-encoded NUL in URI SAN",
			opts:            []testca.Option{testca.WithURIs("spiffe://a.test/web%00.evil.test")},
			wantSANs:        []san{uriSAN("spiffe://a.test/web%00.evil.test")},
			wantVerifyErr:   "path segment characters are limited",
			wantParseRawErr: "path segment characters are limited",
			check: func(t *testing.T, leaf *x509.Certificate) {
				if len(leaf.URIs) != 1 || !strings.Contains(leaf.URIs[0].Path, "\x00") {
					t.Errorf("URIs = %v, want one whose decoded path holds a NUL", leaf.URIs)
				}
			},
		},
		{
			// go-spiffe ignores DNS SANs, so it accepts this: the sidecar
			// must never authorise on a DNS SAN.
			name:     "B6 NUL in DNS SAN",
			opts:     []testca.Option{testca.WithDNSNames("web.a.test\x00.evil.test")},
			wantSANs: []san{dnsSAN("web.a.test\x00.evil.test"), uriSAN(idA.String())},
			check: func(t *testing.T, leaf *x509.Certificate) {
				if diff := cmp.Diff([]string{"web.a.test\x00.evil.test"}, leaf.DNSNames); diff != "" {
					t.Errorf("DNSNames (-want +got):\n%s", diff)
				}
			},
		},
		{
			// go-spiffe verifies with ExtKeyUsageAny, so it accepts a client
			// certificate without clientAuth: the sidecar must check the EKU
			// itself, as crypto/x509 does when asked for clientAuth.
			name:     "B7 ServerAuth only",
			opts:     []testca.Option{testca.WithExtKeyUsage(x509.ExtKeyUsageServerAuth)},
			wantSANs: []san{uriSAN(idA.String())},
			check: func(t *testing.T, leaf *x509.Certificate) {
				if diff := cmp.Diff([]x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, leaf.ExtKeyUsage); diff != "" {
					t.Errorf("ExtKeyUsage (-want +got):\n%s", diff)
				}
				_, err := leaf.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
				var invalid x509.CertificateInvalidError
				if !errors.As(err, &invalid) || invalid.Reason != x509.IncompatibleUsage {
					t.Errorf("x509 Verify for clientAuth: %v, want IncompatibleUsage", err)
				}
			},
		},
		{
			name:            "B7 leaf with CA=true",
			opts:            []testca.Option{testca.WithCA()},
			wantSANs:        []san{uriSAN(idA.String())},
			wantVerifyErr:   "leaf certificate with CA flag set to true",
			wantParseRawErr: "leaf certificate must not have CA flag set to true",
			check: func(t *testing.T, leaf *x509.Certificate) {
				if !leaf.IsCA || !leaf.BasicConstraintsValid || leaf.KeyUsage&x509.KeyUsageCertSign == 0 {
					t.Errorf("IsCA = %v, KeyUsage = %b, want a CA with CertSign", leaf.IsCA, leaf.KeyUsage)
				}
			},
		},
		{
			name:            "no DigitalSignature key usage",
			opts:            []testca.Option{testca.WithKeyUsage(x509.KeyUsageKeyEncipherment)},
			wantSANs:        []san{uriSAN(idA.String())},
			wantParseRawErr: "leaf certificate must have 'digitalSignature' set as key usage",
			check: func(t *testing.T, leaf *x509.Certificate) {
				if leaf.KeyUsage != x509.KeyUsageKeyEncipherment {
					t.Errorf("KeyUsage = %b, want KeyEncipherment only", leaf.KeyUsage)
				}
			},
		},
		{
			name:          "B8 signed by another trust domain",
			opts:          []testca.Option{testca.WithSigner(other)},
			wantSANs:      []san{uriSAN(idA.String())},
			wantVerifyErr: "certificate signed by unknown authority",
			check: func(t *testing.T, leaf *x509.Certificate) {
				if err := leaf.CheckSignatureFrom(other.Roots()[0]); err != nil {
					t.Errorf("leaf not signed by the other root: %v", err)
				}
			},
		},
		{
			name:          "B8 signed by another trust domain's intermediate",
			opts:          []testca.Option{testca.WithSigner(other), testca.WithIntermediate()},
			wantSANs:      []san{uriSAN(idA.String())},
			wantVerifyErr: "certificate signed by unknown authority",
		},
		{
			name:     "intermediate",
			opts:     []testca.Option{testca.WithIntermediate()},
			wantSANs: []san{uriSAN(idA.String())},
			check: func(t *testing.T, leaf *x509.Certificate) {
				if err := leaf.CheckSignatureFrom(ca.Roots()[0]); err == nil {
					t.Error("leaf signed by the root, want the intermediate")
				}
			},
		},
		{
			name:          "expired",
			opts:          []testca.Option{testca.WithValidity(now.Add(-2*time.Hour), now.Add(-time.Hour))},
			wantSANs:      []san{uriSAN(idA.String())},
			wantVerifyErr: "certificate has expired or is not yet valid",
			check: func(t *testing.T, leaf *x509.Certificate) {
				if !leaf.NotAfter.Before(now) {
					t.Errorf("NotAfter = %v, want before %v", leaf.NotAfter, now)
				}
			},
		},
		{
			name:          "not yet valid",
			opts:          []testca.Option{testca.WithValidity(now.Add(time.Hour), now.Add(2*time.Hour))},
			wantSANs:      []san{uriSAN(idA.String())},
			wantVerifyErr: "certificate has expired or is not yet valid",
			check: func(t *testing.T, leaf *x509.Certificate) {
				if !leaf.NotBefore.After(now) {
					t.Errorf("NotBefore = %v, want after %v", leaf.NotBefore, now)
				}
			},
		},
		{
			name:            "trust domain ID without path",
			id:              tdA.ID(),
			wantSANs:        []san{uriSAN(tdA.IDString())},
			wantParseRawErr: "leaf certificate SPIFFE ID must have a non-root path",
		},
		{
			name:     "ed25519 key",
			opts:     []testca.Option{testca.WithKey(ed25519Key)},
			wantSANs: []san{uriSAN(idA.String())},
			check: func(t *testing.T, leaf *x509.Certificate) {
				if !ed25519Pub.Equal(leaf.PublicKey) {
					t.Errorf("public key %T is not the given ed25519 key", leaf.PublicKey)
				}
			},
		},
		{
			name:     "ECDSA P-384 key",
			opts:     []testca.Option{testca.WithKey(p384Key)},
			wantSANs: []san{uriSAN(idA.String())},
			check: func(t *testing.T, leaf *x509.Certificate) {
				if !p384Key.PublicKey.Equal(leaf.PublicKey) {
					t.Errorf("public key is not the given P-384 key")
				}
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			id := tt.id
			if id.IsZero() {
				id = idA
			}
			svid := ca.Issue(t, id, tt.opts...)
			if svid.ID != id {
				t.Errorf("SVID ID = %q, want %q", svid.ID, id)
			}
			leafDER := svid.Certificates[0].Raw
			if diff := cmp.Diff(tt.wantSANs, rawSANs(t, leafDER)); diff != "" {
				t.Errorf("SANs in DER (-want +got):\n%s", diff)
			}
			_, _, err := x509svid.ParseAndVerify(rawChain(svid), ca.Bundle())
			checkErr(t, "x509svid.ParseAndVerify", err, tt.wantVerifyErr)
			checkErr(t, "x509svid.ParseRaw", parseRaw(t, svid), tt.wantParseRawErr)

			leaf, err := x509.ParseCertificate(leafDER)
			checkErr(t, "x509.ParseCertificate", err, tt.wantX509Err)
			if err == nil && tt.check != nil {
				tt.check(t, leaf)
			}
		})
	}
}

// TestIssueUnparseable checks the leaf Issue returns when crypto/x509 cannot
// parse the DER: exact bytes, signed by the CA, usable fields.
func TestIssueUnparseable(t *testing.T) {
	ca := testca.New(t, tdA)
	uri := "spiffe://a.test/web\x00.evil.test"
	svid := ca.Issue(t, idA, testca.WithURIs(uri), testca.WithDNSNames("web.a.test"), testca.WithIntermediate())
	leaf := svid.Certificates[0]

	if _, err := x509.ParseCertificate(leaf.Raw); err == nil {
		t.Fatal("x509.ParseCertificate accepted the leaf")
	}
	if !bytes.Contains(leaf.Raw, []byte(uri)) {
		t.Error("leaf DER does not hold the URI with its NUL byte")
	}
	if !bytes.Contains(leaf.Raw, leaf.RawTBSCertificate) || !bytes.Contains(leaf.Raw, leaf.Signature) {
		t.Error("RawTBSCertificate or Signature not taken from the leaf DER")
	}
	if err := leaf.CheckSignatureFrom(svid.Certificates[1]); err != nil {
		t.Errorf("leaf signature does not verify with the intermediate: %v", err)
	}
	if diff := cmp.Diff([]string{"web.a.test"}, leaf.DNSNames); diff != "" || len(leaf.URIs) != 0 {
		t.Errorf("DNSNames (-want +got):\n%s; URIs = %v, want none", diff, leaf.URIs)
	}
	if !leaf.PublicKey.(*ecdsa.PublicKey).Equal(svid.PrivateKey.Public()) {
		t.Error("private key does not match the leaf")
	}
}

// TestWithSignerBundles checks that a leaf claiming trust domain A but
// signed by B is refused whichever bundles the verifier holds (B8).
func TestWithSignerBundles(t *testing.T) {
	caA, caB := testca.New(t, tdA), testca.New(t, tdB)
	tests := []struct {
		name    string
		bundles x509bundle.Source
		want    string
	}{
		{name: "A's bundle", bundles: caA.Bundle(), want: "certificate signed by unknown authority"},
		{name: "B's bundle", bundles: caB.Bundle(), want: `no X.509 bundle found for trust domain: "a.test"`},
		{name: "both bundles", bundles: x509bundle.NewSet(caA.Bundle(), caB.Bundle()), want: "certificate signed by unknown authority"},
	}
	for _, intermediate := range []bool{false, true} {
		opts := []testca.Option{testca.WithSigner(caB)}
		if intermediate {
			opts = append(opts, testca.WithIntermediate())
		}
		t.Run(fmt.Sprintf("intermediate=%v", intermediate), func(t *testing.T) {
			svid := caA.Issue(t, idA, opts...)
			if err := svid.Certificates[len(svid.Certificates)-1].CheckSignatureFrom(caB.Roots()[0]); err != nil {
				t.Fatalf("chain does not end at B's root: %v", err)
			}
			for _, tt := range tests {
				t.Run(tt.name, func(t *testing.T) {
					_, _, err := x509svid.Verify(svid.Certificates, tt.bundles)
					checkErr(t, "x509svid.Verify", err, tt.want)
				})
			}
		})
	}
}

func TestWithIntermediate(t *testing.T) {
	ca := testca.New(t, tdA)
	svid := ca.Issue(t, idA, testca.WithIntermediate())
	if len(svid.Certificates) != 2 {
		t.Fatalf("%d certificates, want leaf and intermediate", len(svid.Certificates))
	}
	inter := svid.Certificates[1]
	if !inter.IsCA || !inter.MaxPathLenZero || inter.CheckSignatureFrom(ca.Roots()[0]) != nil {
		t.Errorf("second certificate is not an intermediate CA signed by the root")
	}
	_, chains, err := x509svid.Verify(svid.Certificates, ca.Bundle())
	if err != nil {
		t.Fatalf("x509svid.Verify: %v", err)
	}
	if len(chains) != 1 || len(chains[0]) != 3 {
		t.Errorf("chains = %d of length %d, want one leaf → intermediate → root", len(chains), len(chains[0]))
	}
	if err := parseRaw(t, svid); err != nil {
		t.Errorf("x509svid.ParseRaw: %v", err)
	}
}

func TestWritePEM(t *testing.T) {
	ca := testca.New(t, tdA)
	dir := t.TempDir()
	tests := []struct {
		name string
		svid *x509svid.SVID
	}{
		{name: "valid with intermediate", svid: ca.Issue(t, idA, testca.WithIntermediate())},
		{name: "NUL in URI SAN", svid: ca.Issue(t, idA, testca.WithURIs("spiffe://a.test/web\x00"))},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			certPath, keyPath := testca.WritePEM(t, dir, tt.svid)
			certPEM, err := os.ReadFile(certPath)
			if err != nil {
				t.Fatal(err)
			}
			var got [][]byte
			for block, rest := pem.Decode(certPEM); block != nil; block, rest = pem.Decode(rest) {
				if block.Type != "CERTIFICATE" {
					t.Errorf("block type %q", block.Type)
				}
				got = append(got, block.Bytes)
			}
			if diff := cmp.Diff(rawChain(tt.svid), got); diff != "" {
				t.Errorf("certificate file (-want +got):\n%s", diff)
			}
			keyPEM, err := os.ReadFile(keyPath)
			if err != nil {
				t.Fatal(err)
			}
			block, _ := pem.Decode(keyPEM)
			if block == nil || block.Type != "PRIVATE KEY" {
				t.Fatalf("key file holds no PRIVATE KEY block")
			}
			key, err := x509.ParsePKCS8PrivateKey(block.Bytes)
			if err != nil {
				t.Fatal(err)
			}
			if !key.(*ecdsa.PrivateKey).Equal(tt.svid.PrivateKey) {
				t.Error("key file holds another key")
			}
			if fi, err := os.Stat(keyPath); err != nil || fi.Mode().Perm() != 0o600 {
				t.Errorf("key file mode: %v, %v; want 0600", fi.Mode(), err)
			}
		})
	}

	loaded, err := x509svid.Load(testca.WritePEM(t, dir, tests[0].svid))
	if err != nil {
		t.Fatalf("x509svid.Load of a valid SVID: %v", err)
	}
	if loaded.ID != idA {
		t.Errorf("loaded ID = %q, want %q", loaded.ID, idA)
	}

	bundle, err := x509bundle.Load(tdA, testca.WriteBundlePEM(t, dir, ca))
	if err != nil {
		t.Fatalf("x509bundle.Load: %v", err)
	}
	if !bundle.Equal(ca.Bundle()) {
		t.Error("bundle file differs from the CA's bundle")
	}
}
