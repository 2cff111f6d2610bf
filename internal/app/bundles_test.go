package app

import (
	"bytes"
	"log/slog"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/credflow/credflow/internal/config"
)

// TestBundleWarner: a trust domain named by a policy with no bundle held is
// warned about once bundles have arrived, once, again when its bundle goes
// away after being held, and again after a reload; missing lists it.
func TestBundleWarner(t *testing.T) {
	var (
		mu   sync.Mutex
		held []spiffeid.TrustDomain
		buf  bytes.Buffer
	)
	setHeld := func(tds ...string) {
		mu.Lock()
		defer mu.Unlock()
		held = nil
		for _, td := range tds {
			held = append(held, spiffeid.RequireTrustDomainFromString(td))
		}
	}
	named := []config.PolicyTrustDomain{
		{TrustDomain: "example.org", Fields: []string{"inbound[0].allow"}},
		{TrustDomain: "partner.example", Fields: []string{"inbound[0].allow", "outbound[0].expect"}},
	}
	w := newBundleWarner(slog.New(slog.NewTextHandler(&buf, nil)), func() []spiffeid.TrustDomain {
		mu.Lock()
		defer mu.Unlock()
		return held
	}, named)
	warnings := func() []string {
		var out []string
		for l := range strings.Lines(buf.String()) {
			if strings.Contains(l, "level=WARN") {
				out = append(out, l)
			}
		}
		return out
	}

	w.check() // no bundle yet: the Workload API has not answered
	if n := len(warnings()); n != 0 {
		t.Fatalf("%d warnings before any bundle arrived", n)
	}
	setHeld("example.org")
	w.check()
	w.check()
	got := warnings()
	if len(got) != 1 || !strings.Contains(got[0], "trust_domain=partner.example") ||
		!strings.Contains(got[0], "fields=\"[inbound[0].allow outbound[0].expect]\"") {
		t.Fatalf("warnings after the first bundles: %q", got)
	}
	if d := cmp.Diff([]string{"partner.example"}, w.missing()); d != "" {
		t.Errorf("missing (-want +got):\n%s", d)
	}

	setHeld("example.org", "partner.example") // federated
	w.check()
	if len(w.missing()) != 0 || len(warnings()) != 1 {
		t.Fatalf("after federation: missing %v, %d warnings", w.missing(), len(warnings()))
	}
	setHeld("example.org") // federation removed
	w.check()
	if len(warnings()) != 2 {
		t.Fatalf("a bundle gone again: %d warnings, want 2", len(warnings()))
	}
	w.setPolicies(named) // a reload
	if len(warnings()) != 3 {
		t.Fatalf("after a reload: %d warnings, want 3", len(warnings()))
	}
	w.setPolicies(named[:1])
	if len(w.missing()) != 0 || len(warnings()) != 3 {
		t.Fatalf("after a reload without it: missing %v, %d warnings", w.missing(), len(warnings()))
	}
}
