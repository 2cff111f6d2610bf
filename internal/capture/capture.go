// Package capture builds and applies the netfilter rules that make a pod's
// TCP go through its sidecar: inbound connections are redirected to the
// sidecar's inbound listener, outbound ones to its capture listener, except
// the sidecar's own (by uid), loopback traffic and excluded ports and
// networks. The rules live in two chains of the nat table, CREDFLOW_INBOUND
// (from PREROUTING) and CREDFLOW_OUTPUT (from OUTPUT); applying them again
// rebuilds the chains and never duplicates a jump, and Remove undoes them.
//
// IPv4 and IPv6 each have their own rules (iptables, ip6tables). Install
// applies both; where IPv6 is enabled but its rules cannot be installed, it
// fails closed and drops non-loopback IPv6 TCP, so that IPv6 can never be a
// way around the sidecar.
package capture

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
)

// Chain names.
const (
	InboundChain   = "CREDFLOW_INBOUND"
	OutputChain    = "CREDFLOW_OUTPUT"
	DefaultInPort  = 15006
	DefaultOutPort = 15001
)

// Config says what to redirect where.
type Config struct {
	// InboundPort receives the pod's inbound TCP; default 15006.
	InboundPort uint16
	// OutboundPort receives the pod's outbound TCP; default 15001.
	OutboundPort uint16
	// ProxyUID is the sidecar's uid, whose connections are never
	// redirected. Required: without it the sidecar's own connections would
	// loop back to itself.
	ProxyUID int
	// ExcludeInboundPorts are destination ports left alone inbound.
	ExcludeInboundPorts []uint16
	// ExcludeOutboundPorts and ExcludeOutboundCIDRs are destinations left
	// alone outbound (the Kubernetes API, a metadata server...).
	ExcludeOutboundPorts []uint16
	ExcludeOutboundCIDRs []netip.Prefix
}

func (c Config) withDefaults() (Config, error) {
	if c.InboundPort == 0 {
		c.InboundPort = DefaultInPort
	}
	if c.OutboundPort == 0 {
		c.OutboundPort = DefaultOutPort
	}
	if c.ProxyUID < 0 {
		return c, errors.New("capture: the sidecar's uid is required (its own connections must not be redirected)")
	}
	if c.InboundPort == c.OutboundPort {
		return c, fmt.Errorf("capture: inbound and outbound ports are both %d", c.InboundPort)
	}
	return c, nil
}

// Family is an IP version: each has its own rules, installed by its own
// command (iptables, ip6tables).
type Family int

// The families.
const (
	IPv4 Family = 4
	IPv6 Family = 6
)

func (f Family) String() string {
	if f == IPv6 {
		return "IPv6"
	}
	return "IPv4"
}

// loopback is the family's loopback network, which outbound capture leaves
// alone.
func (f Family) loopback() string {
	if f == IPv6 {
		return "::1/128"
	}
	return "127.0.0.0/8"
}

// has reports whether p is a network of the family (an IPv4-mapped IPv6
// network is IPv6 to netfilter).
func (f Family) has(p netip.Prefix) bool { return p.Addr().Is4() == (f == IPv4) }

// Rules returns the iptables (IPv4) or ip6tables (IPv6) argument lists that
// build both chains (after they exist and are empty). Each family's rules
// exclude only the ExcludeOutboundCIDRs of that family. REDIRECT sends
// outbound connections to the loopback address of their family, 127.0.0.1
// or ::1, at OutboundPort: the capture listener must accept on both.
func Rules(cfg Config, f Family) ([][]string, error) {
	if f != IPv4 && f != IPv6 {
		return nil, fmt.Errorf("capture: unknown IP family %d", int(f))
	}
	c, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	nat := func(args ...string) []string { return append([]string{"-t", "nat"}, args...) }
	port := func(p uint16) string { return strconv.Itoa(int(p)) }
	var rules [][]string
	for _, p := range c.ExcludeInboundPorts {
		rules = append(rules, nat("-A", InboundChain, "-p", "tcp", "--dport", port(p), "-j", "RETURN"))
	}
	rules = append(rules, nat("-A", InboundChain, "-p", "tcp", "-j", "REDIRECT", "--to-ports", port(c.InboundPort)))

	rules = append(rules,
		nat("-A", OutputChain, "-m", "owner", "--uid-owner", strconv.Itoa(c.ProxyUID), "-j", "RETURN"),
		nat("-A", OutputChain, "-d", f.loopback(), "-j", "RETURN"),
	)
	for _, p := range c.ExcludeOutboundPorts {
		rules = append(rules, nat("-A", OutputChain, "-p", "tcp", "--dport", port(p), "-j", "RETURN"))
	}
	for _, n := range c.ExcludeOutboundCIDRs {
		if f.has(n) {
			rules = append(rules, nat("-A", OutputChain, "-d", n.Masked().String(), "-j", "RETURN"))
		}
	}
	rules = append(rules, nat("-A", OutputChain, "-p", "tcp", "-j", "REDIRECT", "--to-ports", port(c.OutboundPort)))
	return rules, nil
}

// jumps are the rules that send traffic into the chains.
var jumps = [][]string{
	{"-t", "nat", "PREROUTING", "-p", "tcp", "-j", InboundChain},
	{"-t", "nat", "OUTPUT", "-p", "tcp", "-j", OutputChain},
}

func jump(op string, j []string) []string {
	return append([]string{j[0], j[1], op}, j[2:]...)
}

// dropIPv6 are the filter rules that fail closed when the IPv6 capture
// rules cannot be installed: no IPv6 TCP in or out but over loopback.
// Traffic a partial set of nat rules redirected to the sidecar arrives on
// loopback and is not dropped.
var dropIPv6 = [][]string{
	{"-t", "filter", "INPUT", "-p", "tcp", "!", "-i", "lo", "-j", "DROP"},
	{"-t", "filter", "OUTPUT", "-p", "tcp", "!", "-o", "lo", "-j", "DROP"},
}

// Runner runs iptables or ip6tables with the given arguments.
type Runner func(ctx context.Context, args ...string) error

// IPTables runs the iptables (or ip6tables) binary at path ("iptables"
// from $PATH when empty).
func IPTables(path string) Runner {
	if path == "" {
		path = "iptables"
	}
	return func(ctx context.Context, args ...string) error {
		var stderr bytes.Buffer
		cmd := exec.CommandContext(ctx, path, append([]string{"-w", "5"}, args...)...)
		cmd.Stderr = &stderr
		if err := cmd.Run(); err != nil {
			if msg := strings.TrimSpace(stderr.String()); msg != "" {
				return fmt.Errorf("capture: %s %s: %w: %s", path, strings.Join(args, " "), err, msg)
			}
			return fmt.Errorf("capture: %s %s: %w", path, strings.Join(args, " "), err)
		}
		return nil
	}
}

// IP6TablesFor returns the ip6tables command of the same family as the
// iptables command: "ip6tables-legacy" for "iptables-legacy",
// "/usr/sbin/ip6tables-nft" for "/usr/sbin/iptables-nft", and so on, so
// that both use the same netfilter backend. A name it does not recognize
// gives "ip6tables".
func IP6TablesFor(iptables string) string {
	dir, base := filepath.Split(iptables)
	rest, ok := strings.CutPrefix(base, "iptables")
	if !ok {
		return "ip6tables"
	}
	return dir + "ip6tables" + rest
}

// ProcIPv6Conf is where the kernel shows each interface's IPv6 settings in
// the current network namespace.
const ProcIPv6Conf = "/proc/sys/net/ipv6/conf"

// IPv6Enabled reports whether IPv6 is enabled in the network namespace
// whose settings are under dir (ProcIPv6Conf): the kernel has IPv6 and
// disable_ipv6 is 0 for "all", "default" or any interface other than lo.
// An unreadable setting counts as enabled.
func IPv6Enabled(dir string) bool {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return !errors.Is(err, os.ErrNotExist)
	}
	for _, e := range entries {
		if e.Name() == "lo" {
			continue
		}
		b, err := os.ReadFile(filepath.Join(dir, e.Name(), "disable_ipv6"))
		if err != nil || strings.TrimSpace(string(b)) != "1" {
			return true
		}
	}
	return false
}

// Setup is how Install and Uninstall reach netfilter.
type Setup struct {
	// IPv4 runs iptables, IPv6 ip6tables. Both are required.
	IPv4, IPv6 Runner
	// IPv6Enabled reports whether the network namespace has IPv6; nil
	// reads ProcIPv6Conf.
	IPv6Enabled func() bool
}

// IPv6Status says what Install did for IPv6.
type IPv6Status int

// The outcomes for IPv6.
const (
	// IPv6Captured: the IPv6 rules are installed.
	IPv6Captured IPv6Status = iota
	// IPv6Disabled: the network namespace has no IPv6; nothing installed.
	IPv6Disabled
	// IPv6Dropped: the IPv6 rules could not be installed, so IPv6 TCP
	// other than over loopback is dropped, in and out.
	IPv6Dropped
)

// Result is what Install did.
type Result struct {
	IPv6 IPv6Status
	// IPv6Err is why the IPv6 rules could not be installed (IPv6Dropped).
	IPv6Err error
}

// Install applies the IPv4 rules, then, if IPv6 is enabled, the IPv6 rules.
// Where those fail it fails closed: it drops non-loopback IPv6 TCP and
// reports IPv6Dropped with the reason; if even the drop cannot be
// installed, IPv6 would bypass the sidecar, and Install returns an error
// naming both failures. A successful install of the IPv6 rules removes a
// drop left by an earlier run.
func Install(ctx context.Context, s Setup, cfg Config) (Result, error) {
	if err := Apply(ctx, s.IPv4, cfg, IPv4); err != nil {
		return Result{}, err
	}
	enabled := s.IPv6Enabled
	if enabled == nil {
		enabled = func() bool { return IPv6Enabled(ProcIPv6Conf) }
	}
	if !enabled() {
		return Result{IPv6: IPv6Disabled}, nil
	}
	applyErr := Apply(ctx, s.IPv6, cfg, IPv6)
	if applyErr == nil {
		return Result{IPv6: IPv6Captured}, removeRules(ctx, s.IPv6, dropIPv6)
	}
	for _, r := range dropIPv6 {
		if s.IPv6(ctx, jump("-C", r)...) == nil {
			continue
		}
		if err := s.IPv6(ctx, jump("-I", r)...); err != nil {
			return Result{}, fmt.Errorf("capture: IPv6 is enabled, but neither its capture rules nor a drop of its TCP could be installed, so IPv6 would bypass the sidecar: %w",
				errors.Join(applyErr, err))
		}
	}
	return Result{IPv6: IPv6Dropped, IPv6Err: applyErr}, nil
}

// Uninstall removes what Install installed, for both families; what is
// already gone is skipped.
func Uninstall(ctx context.Context, s Setup) error {
	if err := Remove(ctx, s.IPv4); err != nil {
		return err
	}
	if err := Remove(ctx, s.IPv6); err != nil {
		return err
	}
	return removeRules(ctx, s.IPv6, dropIPv6)
}

// removeRules deletes every copy of each rule (table, chain, match...).
func removeRules(ctx context.Context, run Runner, rules [][]string) error {
	for _, r := range rules {
		for run(ctx, jump("-C", r)...) == nil {
			if err := run(ctx, jump("-D", r)...); err != nil {
				return err
			}
		}
	}
	return nil
}

// Apply installs one family's rules: it creates the chains if needed,
// rebuilds them, and adds each jump unless it is already there.
func Apply(ctx context.Context, run Runner, cfg Config, f Family) error {
	rules, err := Rules(cfg, f)
	if err != nil {
		return err
	}
	for _, chain := range []string{InboundChain, OutputChain} {
		if run(ctx, "-t", "nat", "-L", chain, "-n") != nil {
			if err := run(ctx, "-t", "nat", "-N", chain); err != nil {
				return err
			}
		}
		if err := run(ctx, "-t", "nat", "-F", chain); err != nil {
			return err
		}
	}
	for _, r := range rules {
		if err := run(ctx, r...); err != nil {
			return err
		}
	}
	for _, j := range jumps {
		if run(ctx, jump("-C", j)...) == nil {
			continue
		}
		if err := run(ctx, jump("-A", j)...); err != nil {
			return err
		}
	}
	return nil
}

// Remove deletes one family's jumps and chains; what is already gone is
// skipped.
func Remove(ctx context.Context, run Runner) error {
	if err := removeRules(ctx, run, jumps); err != nil {
		return err
	}
	for _, chain := range []string{InboundChain, OutputChain} {
		if run(ctx, "-t", "nat", "-L", chain, "-n") != nil {
			continue
		}
		if err := run(ctx, "-t", "nat", "-F", chain); err != nil {
			return err
		}
		if err := run(ctx, "-t", "nat", "-X", chain); err != nil {
			return err
		}
	}
	return nil
}
