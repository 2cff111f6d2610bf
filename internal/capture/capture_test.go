package capture

import (
	"context"
	"errors"
	"net/netip"
	"slices"
	"strings"
	"testing"
)

// fakeNAT is an in-memory nat table that answers iptables argument lists
// the way iptables does for the operations Apply and Remove use.
type fakeNAT struct {
	chains map[string][]string // chain -> rules ("-p tcp -j X")
	calls  int
}

func newFakeNAT() *fakeNAT {
	return &fakeNAT{chains: map[string][]string{"PREROUTING": nil, "OUTPUT": nil}}
}

var errIPTables = errors.New("iptables: failed")

func (f *fakeNAT) run(_ context.Context, args ...string) error {
	f.calls++
	if len(args) < 4 || args[0] != "-t" || args[1] != "nat" {
		return errIPTables
	}
	op, chain, rule := args[2], args[3], strings.Join(args[4:], " ")
	rules, exists := f.chains[chain]
	switch op {
	case "-L":
		if !exists {
			return errIPTables
		}
	case "-N":
		if exists {
			return errIPTables
		}
		f.chains[chain] = nil
	case "-F":
		if !exists {
			return errIPTables
		}
		f.chains[chain] = nil
	case "-X":
		if !exists || len(rules) > 0 {
			return errIPTables
		}
		delete(f.chains, chain)
	case "-A":
		if !exists {
			return errIPTables
		}
		f.chains[chain] = append(rules, rule)
	case "-C":
		if !slices.Contains(rules, rule) {
			return errIPTables
		}
	case "-D":
		i := slices.Index(rules, rule)
		if i < 0 {
			return errIPTables
		}
		f.chains[chain] = slices.Delete(rules, i, i+1)
	default:
		return errIPTables
	}
	return nil
}

func TestApplyIdempotentAndRemove(t *testing.T) {
	cfg := Config{ProxyUID: 1337, ExcludeInboundPorts: []uint16{15000}, ExcludeOutboundPorts: []uint16{443},
		ExcludeOutboundCIDRs: []netip.Prefix{netip.MustParsePrefix("169.254.169.254/32")}}
	nat := newFakeNAT()
	ctx := context.Background()
	for range 3 {
		if err := Apply(ctx, nat.run, cfg); err != nil {
			t.Fatal(err)
		}
	}
	want := map[string][]string{
		"PREROUTING": {"-p tcp -j CREDFLOW_INBOUND"},
		"OUTPUT":     {"-p tcp -j CREDFLOW_OUTPUT"},
		InboundChain: {"-p tcp --dport 15000 -j RETURN", "-p tcp -j REDIRECT --to-ports 15006"},
		OutputChain: {"-m owner --uid-owner 1337 -j RETURN", "-d 127.0.0.0/8 -j RETURN", "-p tcp --dport 443 -j RETURN",
			"-d 169.254.169.254/32 -j RETURN", "-p tcp -j REDIRECT --to-ports 15001"},
	}
	for chain, rules := range want {
		if !slices.Equal(nat.chains[chain], rules) {
			t.Errorf("%s after three applies:\n got %q\nwant %q", chain, nat.chains[chain], rules)
		}
	}
	if err := Remove(ctx, nat.run); err != nil {
		t.Fatal(err)
	}
	if len(nat.chains) != 2 || len(nat.chains["PREROUTING"]) != 0 || len(nat.chains["OUTPUT"]) != 0 {
		t.Errorf("after Remove: %q", nat.chains)
	}
	if err := Remove(ctx, nat.run); err != nil {
		t.Errorf("a second Remove: %v", err)
	}
}

func TestConfigErrors(t *testing.T) {
	for _, c := range []Config{{ProxyUID: -1}, {ProxyUID: 1, InboundPort: 15001}} {
		if _, err := Rules(c); err == nil {
			t.Errorf("%+v accepted", c)
		}
	}
}
