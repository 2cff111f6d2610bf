// Package pqc is the sidecar's key-exchange policy: which TLS 1.3 groups
// it offers and accepts, classical or hybrid post-quantum, per peer trust
// domain.
//
// A Policy is a value, safe when zero (hybrid-preferred), applied to the
// tls.Config the data plane builds:
//
//	classical         X25519, P-256 only
//	hybrid-preferred  X25519MLKEM768, SecP256r1MLKEM768, then X25519, P-256
//	                  (crypto/tls always picks a hybrid group when both
//	                  sides support one)
//	hybrid-required   hybrid groups only; a peer that negotiates a
//	                  classical group is refused with the reason pq_required
//
// Overrides set another mode for the peers of given trust domains: outbound
// by the trust domain of the expected server, inbound by the trust domain of
// the client's SVID, checked after the handshake from the negotiated group
// (tls.ConnectionState.CurveID), so one sidecar can require hybrid from some
// trust domains and still accept classical from legacy ones.
package pqc

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"math/big"
	"net"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Mode is a key-exchange policy mode.
type Mode string

// Modes. The empty Mode means HybridPreferred.
const (
	Classical       Mode = "classical"
	HybridPreferred Mode = "hybrid-preferred"
	HybridRequired  Mode = "hybrid-required"
)

// ParseMode parses a mode name; "" is HybridPreferred.
func ParseMode(s string) (Mode, error) {
	switch m := Mode(s); m {
	case "":
		return HybridPreferred, nil
	case Classical, HybridPreferred, HybridRequired:
		return m, nil
	}
	return "", fmt.Errorf("pqc: mode %q is not classical, hybrid-preferred or hybrid-required", s)
}

func (m Mode) orDefault() Mode {
	if m == "" {
		return HybridPreferred
	}
	return m
}

// Groups of each kind, in order of preference.
var (
	hybridGroups    = []tls.CurveID{tls.X25519MLKEM768, tls.SecP256r1MLKEM768, tls.SecP384r1MLKEM1024}
	classicalGroups = []tls.CurveID{tls.X25519, tls.CurveP256}
)

// IsHybrid reports whether id is a hybrid post-quantum group.
func IsHybrid(id tls.CurveID) bool { return slices.Contains(hybridGroups, id) }

// ParseGroup parses a group name as crypto/tls prints it (X25519MLKEM768,
// SecP256r1MLKEM768, SecP384r1MLKEM1024, X25519, CurveP256, CurveP384).
func ParseGroup(s string) (tls.CurveID, error) {
	for _, id := range []tls.CurveID{tls.X25519MLKEM768, tls.SecP256r1MLKEM768, tls.SecP384r1MLKEM1024,
		tls.X25519, tls.CurveP256, tls.CurveP384, tls.CurveP521} {
		if id.String() == s {
			return id, nil
		}
	}
	return 0, fmt.Errorf("pqc: unknown key-exchange group %q", s)
}

// Policy is the key-exchange policy. The zero value is hybrid-preferred
// everywhere.
type Policy struct {
	// Mode applies to peers whose trust domain has no override.
	Mode Mode
	// Groups, if set, restricts the groups offered and accepted in every
	// mode to this list (still filtered by each mode's kind).
	Groups []tls.CurveID
	// Overrides sets the mode for the peers of specific trust domains.
	Overrides map[spiffeid.TrustDomain]Mode
}

// ModeFor returns the mode that applies to peers of td (the default mode
// for the zero trust domain).
func (p Policy) ModeFor(td spiffeid.TrustDomain) Mode {
	if m, ok := p.Overrides[td]; ok {
		return m.orDefault()
	}
	return p.Mode.orDefault()
}

// groups returns the groups of a mode, in preference order.
func (p Policy) groups(m Mode) []tls.CurveID {
	var g []tls.CurveID
	switch m.orDefault() {
	case Classical:
		g = slices.Clone(classicalGroups)
	case HybridRequired:
		g = slices.Clone(hybridGroups)
	default:
		g = append(slices.Clone(hybridGroups[:2]), classicalGroups...)
	}
	if len(p.Groups) > 0 {
		g = slices.DeleteFunc(g, func(id tls.CurveID) bool { return !slices.Contains(p.Groups, id) })
	}
	return g
}

// ClientGroups returns the groups a client offers to a server of trust
// domain td.
func (p Policy) ClientGroups(td spiffeid.TrustDomain) []tls.CurveID {
	return p.groups(p.ModeFor(td))
}

// ServerGroups returns the groups a server accepts: the union over the
// default mode and every override, since the client's trust domain is known
// only after the handshake; Check then applies the client's own mode. When
// any mode is hybrid-required the classical groups are accepted too, so a
// classical-only client completes the handshake and is refused by Check
// with the reason pq_required rather than with a bare "no common group".
// crypto/tls's server always picks a hybrid group when the client offers
// one, and the choice is covered by the handshake transcript, so accepting
// classical groups does not let anyone downgrade a client that can do
// hybrid.
func (p Policy) ServerGroups() []tls.CurveID {
	var all []tls.CurveID
	add := func(m Mode) {
		for _, id := range p.groups(m) {
			if !slices.Contains(all, id) {
				all = append(all, id)
			}
		}
	}
	add(p.Mode)
	for _, m := range p.Overrides {
		add(m)
	}
	if p.Requires() {
		add(Classical)
	}
	return all
}

// ErrPQRequired is the refusal of a connection that negotiated a classical
// group where hybrid is required.
var ErrPQRequired = errors.New("pqc: hybrid post-quantum key exchange required")

// Check verifies the group a connection negotiated against the mode for
// the peer's trust domain: under hybrid-required a classical group is
// refused with ErrPQRequired.
func (p Policy) Check(group tls.CurveID, peer spiffeid.TrustDomain) error {
	if p.ModeFor(peer) == HybridRequired && !IsHybrid(group) {
		return fmt.Errorf("%w: %s negotiated %s", ErrPQRequired, peerName(peer), group)
	}
	return nil
}

func peerName(td spiffeid.TrustDomain) string {
	if td.IsZero() {
		return "peer"
	}
	return "peer of " + td.Name()
}

// Classical reports whether group is classical while the mode for peer is
// hybrid-preferred: a connection that blocks a move to hybrid-required.
func (p Policy) Classical(group tls.CurveID, peer spiffeid.TrustDomain) bool {
	return p.ModeFor(peer) == HybridPreferred && !IsHybrid(group)
}

// Requires reports whether any mode of the policy is hybrid-required.
func (p Policy) Requires() bool {
	if p.Mode == HybridRequired {
		return true
	}
	for _, m := range p.Overrides {
		if m == HybridRequired {
			return true
		}
	}
	return false
}

// String describes the policy, for logs and /debug/identity.
func (p Policy) String() string {
	var b strings.Builder
	b.WriteString(string(p.Mode.orDefault()))
	if len(p.Groups) > 0 {
		var names []string
		for _, g := range p.Groups {
			names = append(names, g.String())
		}
		fmt.Fprintf(&b, " groups=%s", strings.Join(names, ","))
	}
	var tds []string
	for td, m := range p.Overrides {
		tds = append(tds, td.Name()+"="+string(m.orDefault()))
	}
	sort.Strings(tds)
	for _, o := range tds {
		b.WriteString(" " + o)
	}
	return b.String()
}

// HybridAvailable checks that this process can negotiate a hybrid group:
// the toolchain offers one and GODEBUG has not disabled it (Go 1.26's
// tlsmlkem=0 removes hybrid groups even from explicit preferences; from Go
// 1.27 it changes only the defaults, which the sidecar does not use).
// It runs a TLS 1.3 handshake in memory restricted to hybrid groups.
func HybridAvailable() error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("pqc: %w", err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return fmt.Errorf("pqc: %w", err)
	}
	cert := tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
	groups := slices.Clone(hybridGroups)
	c, s := net.Pipe()
	defer c.Close()
	defer s.Close()
	deadline := time.Now().Add(5 * time.Second)
	c.SetDeadline(deadline)
	s.SetDeadline(deadline)
	srv := tls.Server(s, &tls.Config{MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{cert}, CurvePreferences: groups})
	errc := make(chan error, 1)
	go func() { errc <- srv.Handshake() }()
	cli := tls.Client(c, &tls.Config{MinVersion: tls.VersionTLS13, InsecureSkipVerify: true, CurvePreferences: groups})
	cerr := cli.Handshake()
	if cerr != nil {
		c.Close() // unblock the server
	}
	serr := <-errc
	if cerr != nil || serr != nil {
		return fmt.Errorf("pqc: hybrid key exchange is unavailable (GODEBUG tlsmlkem=0 under Go 1.26?): %v", errors.Join(cerr, serr))
	}
	if g := cli.ConnectionState().CurveID; !IsHybrid(g) {
		return fmt.Errorf("pqc: hybrid key exchange is unavailable: negotiated %s", g)
	}
	return nil
}
