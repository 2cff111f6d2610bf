package capture

import (
	"context"
	"errors"
	"net/netip"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/credflow/credflow/proxy/authz"
)

func mustPolicy(t *testing.T, p ...string) authz.Policy {
	pol, err := authz.ParsePolicy(p)
	if err != nil {
		t.Fatal(err)
	}
	return pol
}

// TestExpect: destinations match by network, port and host name
// (first match wins); otherwise the listener's policy, otherwise the own
// trust domain.
func TestExpect(t *testing.T) {
	lookups := 0
	c := &Capture{
		Destinations: []Destination{
			{Prefix: netip.MustParsePrefix("10.96.0.0/12"), Port: 8080, Expect: mustPolicy(t, "spiffe://example.org/backend")},
			{Host: "db.example.internal", Expect: mustPolicy(t, "spiffe://example.org/db")},
			{Host: "gone.example.internal", Expect: mustPolicy(t, "spiffe://example.org/gone")},
			{Port: 443, Expect: mustPolicy(t, "spiffe://example.org/tls")},
		},
		Resolve: func(_ context.Context, host string) ([]netip.Addr, error) {
			lookups++
			if host == "db.example.internal" {
				return []netip.Addr{netip.MustParseAddr("10.1.2.3"), netip.MustParseAddr("::ffff:10.1.2.4")}, nil
			}
			return nil, errors.New("no such host")
		},
	}
	self := spiffeid.RequireTrustDomainFromString("example.org")
	ctx := context.Background()
	for _, tc := range []struct {
		dst      string
		fallback authz.Policy
		want     string
	}{
		{"10.96.1.1:8080", authz.Policy{}, "spiffe://example.org/backend"},
		{"10.1.2.3:5432", authz.Policy{}, "spiffe://example.org/db"},
		{"10.1.2.4:5432", authz.Policy{}, "spiffe://example.org/db"},
		{"10.9.9.9:443", authz.Policy{}, "spiffe://example.org/tls"},
		{"10.96.1.1:9090", mustPolicy(t, "spiffe://example.org/ns/prod/*"), "spiffe://example.org/ns/prod/*"},
		{"192.0.2.1:80", authz.Policy{}, "spiffe://example.org"},
	} {
		got := c.Expect(ctx, netip.MustParseAddrPort(tc.dst), tc.fallback, self).Patterns()
		if len(got) != 1 || got[0] != tc.want {
			t.Errorf("%s: %v, want %s", tc.dst, got, tc.want)
		}
	}
	if lookups != 2 {
		t.Errorf("%d lookups for two hosts: the cache is not used", lookups)
	}
}
