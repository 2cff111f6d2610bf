package config

import (
	"fmt"
	"slices"
	"strings"

	"github.com/credflow/credflow/proxy/authz"
)

// PolicyTrustDomain is a trust domain that policies name, with the fields
// naming it. A peer of it can be authenticated only while the sidecar
// holds its trust bundle (its own trust domain's, or a federated one's).
type PolicyTrustDomain struct {
	TrustDomain string
	Fields      []string
}

// PolicyTrustDomains returns the trust domains named by the listeners'
// policies (allow, expect, route peers, transaction-token minters, capture
// destinations), sorted by name.
func (c *Config) PolicyTrustDomains() []PolicyTrustDomain {
	fields := map[string][]string{}
	add := func(field string, p authz.Policy) {
		for _, td := range p.TrustDomains() {
			if f := fields[td.Name()]; len(f) == 0 || f[len(f)-1] != field {
				fields[td.Name()] = append(f, field)
			}
		}
	}
	for i, in := range c.Inbound {
		add(fmt.Sprintf("inbound[%d].allow", i), in.Allow)
		if in.HTTP == nil {
			continue
		}
		for j, r := range in.HTTP.Routes.Rules {
			add(fmt.Sprintf("inbound[%d].routes[%d].peers", i, j), r.Peers)
		}
		add(fmt.Sprintf("inbound[%d].txn_token.minters", i), in.HTTP.TxnMinters)
	}
	for i, out := range c.Outbound {
		add(fmt.Sprintf("outbound[%d].expect", i), out.Expect)
		if out.Capture != nil {
			for j, d := range out.Capture.Destinations {
				add(fmt.Sprintf("outbound[%d].capture.destinations[%d].expect", i, j), d.Expect)
			}
		}
	}
	out := make([]PolicyTrustDomain, 0, len(fields))
	for td, f := range fields {
		out = append(out, PolicyTrustDomain{TrustDomain: td, Fields: f})
	}
	slices.SortFunc(out, func(a, b PolicyTrustDomain) int { return strings.Compare(a.TrustDomain, b.TrustDomain) })
	return out
}
