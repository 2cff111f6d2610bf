package capture

import (
	"context"
	"errors"
	"flag"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata")

// fakeTables is an in-memory netfilter (the nat and filter tables) that
// answers iptables argument lists the way iptables does for the
// operations Apply, Install and Remove use. A table in broken refuses
// every operation, as ip6tables does when the kernel lacks it.
type fakeTables struct {
	chains map[string][]string // "table/chain" -> rules ("-p tcp -j X")
	broken map[string]bool     // table -> every operation fails
	calls  int
}

func newFakeTables() *fakeTables {
	f := &fakeTables{chains: map[string][]string{}, broken: map[string]bool{}}
	for _, c := range []string{"nat/PREROUTING", "nat/OUTPUT", "filter/INPUT", "filter/OUTPUT"} {
		f.chains[c] = nil
	}
	return f
}

var errIPTables = errors.New("iptables: failed")

func (f *fakeTables) run(_ context.Context, args ...string) error {
	f.calls++
	if len(args) < 4 || args[0] != "-t" || f.broken[args[1]] {
		return errIPTables
	}
	op, chain, rule := args[2], args[1]+"/"+args[3], strings.Join(args[4:], " ")
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
	case "-A", "-I":
		if !exists {
			return errIPTables
		}
		if op == "-I" {
			f.chains[chain] = append([]string{rule}, rules...)
		} else {
			f.chains[chain] = append(rules, rule)
		}
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

var testConfig = Config{ProxyUID: 1337, ExcludeInboundPorts: []uint16{15000}, ExcludeOutboundPorts: []uint16{443},
	ExcludeOutboundCIDRs: []netip.Prefix{
		netip.MustParsePrefix("169.254.169.254/32"),
		netip.MustParsePrefix("fd00:ec2::254/128"),
		netip.MustParsePrefix("10.96.1.2/12"), // not masked
		netip.MustParsePrefix("2001:db8:1::5/48"),
	}}

// TestRulesGolden: the rules of each family, against testdata. Each family
// excludes its own loopback and only its own networks.
func TestRulesGolden(t *testing.T) {
	for _, f := range []Family{IPv4, IPv6} {
		t.Run(f.String(), func(t *testing.T) {
			rules, err := Rules(testConfig, f)
			if err != nil {
				t.Fatal(err)
			}
			var got strings.Builder
			for _, r := range rules {
				got.WriteString(strings.Join(r, " ") + "\n")
			}
			path := filepath.Join("testdata", "rules_"+strings.ToLower(f.String())+".golden")
			if *update {
				if err := os.WriteFile(path, []byte(got.String()), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(string(want), got.String()); diff != "" {
				t.Errorf("%s rules (-want +got):\n%s", f, diff)
			}
		})
	}
	if _, err := Rules(testConfig, Family(5)); err == nil {
		t.Error("family 5 accepted")
	}
}

func TestApplyIdempotentAndRemove(t *testing.T) {
	for _, f := range []Family{IPv4, IPv6} {
		t.Run(f.String(), func(t *testing.T) {
			nat := newFakeTables()
			ctx := context.Background()
			for range 3 {
				if err := Apply(ctx, nat.run, testConfig, f); err != nil {
					t.Fatal(err)
				}
			}
			rules, err := Rules(testConfig, f)
			if err != nil {
				t.Fatal(err)
			}
			want := map[string][]string{
				"nat/PREROUTING": {"-p tcp -j CREDFLOW_INBOUND"},
				"nat/OUTPUT":     {"-p tcp -j CREDFLOW_OUTPUT"},
				"filter/INPUT":   nil,
				"filter/OUTPUT":  nil,
			}
			for _, r := range rules {
				c := "nat/" + r[3]
				want[c] = append(want[c], strings.Join(r[4:], " "))
			}
			if diff := cmp.Diff(want, nat.chains); diff != "" {
				t.Errorf("after three applies (-want +got):\n%s", diff)
			}
			if err := Remove(ctx, nat.run); err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(newFakeTables().chains, nat.chains, cmpopts.EquateEmpty()); diff != "" {
				t.Errorf("after Remove (-want +got):\n%s", diff)
			}
			if err := Remove(ctx, nat.run); err != nil {
				t.Errorf("a second Remove: %v", err)
			}
		})
	}
}

// TestInstallIPv6: Install captures IPv6 beside IPv4; with IPv6 disabled it
// leaves ip6tables alone; when the IPv6 nat rules cannot be installed it
// drops non-loopback IPv6 TCP and says why; when even that fails it
// returns an error; and a later successful run lifts the drop.
func TestInstallIPv6(t *testing.T) {
	ctx := context.Background()
	drops := []string{"-p tcp ! -i lo -j DROP", "-p tcp ! -o lo -j DROP"}
	t.Run("captured", func(t *testing.T) {
		v4, v6 := newFakeTables(), newFakeTables()
		res, err := Install(ctx, Setup{IPv4: v4.run, IPv6: v6.run, IPv6Enabled: func() bool { return true }}, testConfig)
		if err != nil || res.IPv6 != IPv6Captured {
			t.Fatalf("Install: %+v, %v", res, err)
		}
		for _, x := range []struct {
			tables *fakeTables
			f      Family
		}{{v4, IPv4}, {v6, IPv6}} {
			rules, _ := Rules(testConfig, x.f)
			var want []string
			for _, r := range rules {
				if r[3] == OutputChain {
					want = append(want, strings.Join(r[4:], " "))
				}
			}
			if diff := cmp.Diff(want, x.tables.chains["nat/"+OutputChain]); diff != "" {
				t.Errorf("%s %s (-want +got):\n%s", x.f, OutputChain, diff)
			}
		}
	})
	t.Run("disabled", func(t *testing.T) {
		v4, v6 := newFakeTables(), newFakeTables()
		res, err := Install(ctx, Setup{IPv4: v4.run, IPv6: v6.run, IPv6Enabled: func() bool { return false }}, testConfig)
		if err != nil || res.IPv6 != IPv6Disabled {
			t.Fatalf("Install: %+v, %v", res, err)
		}
		if v6.calls != 0 || len(v4.chains["nat/"+OutputChain]) == 0 {
			t.Errorf("%d ip6tables calls with IPv6 disabled; IPv4 output chain %q", v6.calls, v4.chains["nat/"+OutputChain])
		}
	})
	t.Run("fails closed", func(t *testing.T) {
		v4, v6 := newFakeTables(), newFakeTables()
		v6.broken["nat"] = true
		s := Setup{IPv4: v4.run, IPv6: v6.run, IPv6Enabled: func() bool { return true }}
		for range 2 {
			res, err := Install(ctx, s, testConfig)
			if err != nil || res.IPv6 != IPv6Dropped || !errors.Is(res.IPv6Err, errIPTables) {
				t.Fatalf("Install with no IPv6 nat table: %+v, %v", res, err)
			}
		}
		if diff := cmp.Diff(drops[:1], v6.chains["filter/INPUT"]); diff != "" {
			t.Errorf("IPv6 INPUT after two installs (-want +got):\n%s", diff)
		}
		if diff := cmp.Diff(drops[1:], v6.chains["filter/OUTPUT"]); diff != "" {
			t.Errorf("IPv6 OUTPUT after two installs (-want +got):\n%s", diff)
		}
		if len(v4.chains["filter/INPUT"])+len(v4.chains["filter/OUTPUT"]) != 0 {
			t.Errorf("IPv4 traffic dropped too: %q", v4.chains)
		}
		// The nat table is back: the IPv6 rules go in and the drop goes.
		v6.broken["nat"] = false
		if res, err := Install(ctx, s, testConfig); err != nil || res.IPv6 != IPv6Captured {
			t.Fatalf("Install: %+v, %v", res, err)
		}
		if len(v6.chains["filter/INPUT"])+len(v6.chains["filter/OUTPUT"]) != 0 {
			t.Errorf("the drop outlived a successful install: %q", v6.chains)
		}
		// Uninstall removes the drop too.
		v6.broken["nat"] = true
		if _, err := Install(ctx, s, testConfig); err != nil {
			t.Fatal(err)
		}
		v6.broken["nat"] = false
		if err := Uninstall(ctx, s); err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(newFakeTables().chains, v6.chains, cmpopts.EquateEmpty()); diff != "" {
			t.Errorf("IPv6 after Uninstall (-want +got):\n%s", diff)
		}
	})
	t.Run("cannot even drop", func(t *testing.T) {
		v4, v6 := newFakeTables(), newFakeTables()
		v6.broken["nat"], v6.broken["filter"] = true, true
		res, err := Install(ctx, Setup{IPv4: v4.run, IPv6: v6.run, IPv6Enabled: func() bool { return true }}, testConfig)
		if err == nil || !strings.Contains(err.Error(), "IPv6") || !errors.Is(err, errIPTables) {
			t.Fatalf("Install with neither IPv6 table: %+v, %v", res, err)
		}
	})
	t.Run("IPv4 fails", func(t *testing.T) {
		v4, v6 := newFakeTables(), newFakeTables()
		v4.broken["nat"] = true
		if _, err := Install(ctx, Setup{IPv4: v4.run, IPv6: v6.run, IPv6Enabled: func() bool { return true }}, testConfig); !errors.Is(err, errIPTables) {
			t.Fatalf("Install with no IPv4 nat table: %v", err)
		}
	})
}

// TestIPv6Enabled: IPv6 is on unless the kernel lacks it or every setting
// but lo's says disable_ipv6 = 1; an unreadable setting counts as on.
func TestIPv6Enabled(t *testing.T) {
	if IPv6Enabled(filepath.Join(t.TempDir(), "none")) {
		t.Error("no conf directory (a kernel without IPv6): enabled")
	}
	for _, c := range []struct {
		name string
		conf map[string]string // interface -> disable_ipv6 ("" for no file)
		want bool
	}{
		{"all enabled", map[string]string{"all": "0", "default": "0", "lo": "0", "eth0": "0"}, true},
		{"all disabled", map[string]string{"all": "1", "default": "1", "lo": "1", "eth0": "1"}, false},
		{"lo aside", map[string]string{"all": "1", "default": "1", "lo": "0", "eth0": "1"}, false},
		{"one interface enabled", map[string]string{"all": "1", "default": "1", "lo": "1", "eth0": "0"}, true},
		{"new interfaces enabled", map[string]string{"all": "1", "default": "0", "lo": "1"}, true},
		{"unreadable", map[string]string{"all": "1", "default": "1", "eth0": ""}, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			for iface, v := range c.conf {
				if err := os.Mkdir(filepath.Join(dir, iface), 0o755); err != nil {
					t.Fatal(err)
				}
				if v != "" {
					if err := os.WriteFile(filepath.Join(dir, iface, "disable_ipv6"), []byte(v+"\n"), 0o644); err != nil {
						t.Fatal(err)
					}
				}
			}
			if got := IPv6Enabled(dir); got != c.want {
				t.Errorf("IPv6Enabled = %v, want %v", got, c.want)
			}
		})
	}
}

func TestIP6TablesFor(t *testing.T) {
	for in, want := range map[string]string{
		"iptables":                "ip6tables",
		"iptables-legacy":         "ip6tables-legacy",
		"/usr/sbin/iptables-nft":  "/usr/sbin/ip6tables-nft",
		"/sbin/iptables":          "/sbin/ip6tables",
		"/opt/fw/my-iptables":     "ip6tables",
		"/opt/iptables/bin/xtabl": "ip6tables",
	} {
		if got := IP6TablesFor(in); got != want {
			t.Errorf("IP6TablesFor(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestConfigErrors(t *testing.T) {
	for _, c := range []Config{{ProxyUID: -1}, {ProxyUID: 1, InboundPort: 15001}} {
		for _, f := range []Family{IPv4, IPv6} {
			if _, err := Rules(c, f); err == nil {
				t.Errorf("%+v accepted for %s", c, f)
			}
		}
	}
}
