package pqc_test

import (
	"crypto/tls"
	"errors"
	"slices"
	"testing"

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

func TestHybridAvailable(t *testing.T) {
	if err := pqc.HybridAvailable(); err != nil {
		t.Fatalf("this toolchain should offer hybrid groups: %v", err)
	}
	t.Setenv("GODEBUG", "tlsmlkem=0")
	if err := pqc.HybridAvailable(); err == nil {
		t.Fatal("HybridAvailable succeeded with GODEBUG=tlsmlkem=0")
	}
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
