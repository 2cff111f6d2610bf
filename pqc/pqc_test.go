package pqc_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"math/big"
	"net"
	"slices"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/credflow/credflow/pqc"
)

var (
	legacy = spiffeid.RequireTrustDomainFromString("legacy.example")
	secure = spiffeid.RequireTrustDomainFromString("secure.example")
	plain  = spiffeid.RequireTrustDomainFromString("example.org")
)

func TestGroups(t *testing.T) {
	p := pqc.Policy{Overrides: map[spiffeid.TrustDomain]pqc.Mode{legacy: pqc.Classical, secure: pqc.HybridRequired}}
	tests := []struct {
		name string
		got  []tls.CurveID
		want []tls.CurveID
	}{
		{"zero policy, any peer", pqc.Policy{}.ClientGroups(plain), []tls.CurveID{tls.X25519MLKEM768, tls.SecP256r1MLKEM768, tls.X25519, tls.CurveP256}},
		{"classical override", p.ClientGroups(legacy), []tls.CurveID{tls.X25519, tls.CurveP256}},
		{"required override", p.ClientGroups(secure), []tls.CurveID{tls.X25519MLKEM768, tls.SecP256r1MLKEM768, tls.SecP384r1MLKEM1024}},
		{"default mode for others", p.ClientGroups(plain), []tls.CurveID{tls.X25519MLKEM768, tls.SecP256r1MLKEM768, tls.X25519, tls.CurveP256}},
		{"server accepts the union", p.ServerGroups(), []tls.CurveID{tls.X25519MLKEM768, tls.SecP256r1MLKEM768, tls.X25519, tls.CurveP256, tls.SecP384r1MLKEM1024}},
		{"explicit groups filter", pqc.Policy{Groups: []tls.CurveID{tls.X25519MLKEM768, tls.X25519}}.ClientGroups(plain), []tls.CurveID{tls.X25519MLKEM768, tls.X25519}},
		{"required server still completes classical handshakes", pqc.Policy{Mode: pqc.HybridRequired}.ServerGroups(),
			[]tls.CurveID{tls.X25519MLKEM768, tls.SecP256r1MLKEM768, tls.SecP384r1MLKEM1024, tls.X25519, tls.CurveP256}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if d := cmp.Diff(tt.want, tt.got); d != "" {
				t.Fatalf("groups (-want +got):\n%s", d)
			}
		})
	}
}

func TestCheck(t *testing.T) {
	p := pqc.Policy{Mode: pqc.HybridRequired, Overrides: map[spiffeid.TrustDomain]pqc.Mode{legacy: pqc.HybridPreferred}}
	tests := []struct {
		group     tls.CurveID
		peer      spiffeid.TrustDomain
		refused   bool
		classical bool
	}{
		{tls.X25519MLKEM768, plain, false, false},
		{tls.SecP256r1MLKEM768, plain, false, false},
		{tls.X25519, plain, true, false},
		{tls.CurveP256, plain, true, false},
		{tls.X25519, legacy, false, true},
		{tls.X25519MLKEM768, legacy, false, false},
	}
	for _, tt := range tests {
		err := p.Check(tt.group, tt.peer)
		if (err != nil) != tt.refused || (err != nil && !errors.Is(err, pqc.ErrPQRequired)) {
			t.Errorf("Check(%s, %s) = %v, refused want %v", tt.group, tt.peer.Name(), err, tt.refused)
		}
		if got := p.Classical(tt.group, tt.peer); got != tt.classical {
			t.Errorf("Classical(%s, %s) = %v, want %v", tt.group, tt.peer.Name(), got, tt.classical)
		}
	}
	if !p.Requires() || (pqc.Policy{}).Requires() {
		t.Error("Requires is wrong")
	}
}

func TestParse(t *testing.T) {
	for _, s := range []string{"", "classical", "hybrid-preferred", "hybrid-required"} {
		if _, err := pqc.ParseMode(s); err != nil {
			t.Errorf("ParseMode(%q): %v", s, err)
		}
	}
	if _, err := pqc.ParseMode("hybrid"); err == nil {
		t.Error(`ParseMode("hybrid") succeeded`)
	}
	for _, s := range []string{"X25519MLKEM768", "SecP256r1MLKEM768", "SecP384r1MLKEM1024", "X25519", "CurveP256"} {
		if id, err := pqc.ParseGroup(s); err != nil || id.String() != s {
			t.Errorf("ParseGroup(%q) = %v, %v", s, id, err)
		}
	}
	if _, err := pqc.ParseGroup("Kyber512"); err == nil {
		t.Error("ParseGroup(Kyber512) succeeded")
	}
}

// TestHybridAvailable: the start-up self-test agrees with a handshake
// restricted to the hybrid groups, with GODEBUG as it is and with
// tlsmlkem=0. Go 1.26 applies that setting to explicit preferences too, so
// the self-test fails and hybrid-required refuses to start; from Go 1.27 it
// changes only crypto/tls's defaults, which the sidecar never uses, so
// hybrid stays available and the self-test must say so.
func TestHybridAvailable(t *testing.T) {
	if err := pqc.HybridAvailable(); err != nil {
		t.Fatalf("this toolchain should offer hybrid groups: %v", err)
	}
	t.Setenv("GODEBUG", "tlsmlkem=0")
	err := pqc.HybridAvailable()
	if negotiated := hybridHandshake(t); (err == nil) != negotiated {
		t.Fatalf("with GODEBUG=tlsmlkem=0 the self-test says %v, but a hybrid-only handshake negotiated a hybrid group: %v", err, negotiated)
	}
}

// hybridHandshake reports whether a TLS 1.3 handshake whose both sides
// offer only the hybrid groups completes with one of them.
func hybridHandshake(t *testing.T) bool {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(7), NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	groups := []tls.CurveID{tls.X25519MLKEM768, tls.SecP256r1MLKEM768, tls.SecP384r1MLKEM1024}
	c, s := net.Pipe()
	defer c.Close()
	defer s.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	s.SetDeadline(time.Now().Add(5 * time.Second))
	srv := tls.Server(s, &tls.Config{MinVersion: tls.VersionTLS13, CurvePreferences: groups,
		Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}})
	errc := make(chan error, 1)
	go func() { errc <- srv.Handshake() }()
	cli := tls.Client(c, &tls.Config{MinVersion: tls.VersionTLS13, InsecureSkipVerify: true, CurvePreferences: groups})
	cerr := cli.Handshake()
	if cerr != nil {
		c.Close()
	}
	serr := <-errc
	return cerr == nil && serr == nil && pqc.IsHybrid(cli.ConnectionState().CurveID)
}

func TestIsHybrid(t *testing.T) {
	for _, id := range []tls.CurveID{tls.X25519MLKEM768, tls.SecP256r1MLKEM768, tls.SecP384r1MLKEM1024} {
		if !pqc.IsHybrid(id) {
			t.Errorf("%s is hybrid", id)
		}
	}
	if slices.ContainsFunc([]tls.CurveID{tls.X25519, tls.CurveP256, tls.CurveP384}, pqc.IsHybrid) {
		t.Error("a classical group counted as hybrid")
	}
}
