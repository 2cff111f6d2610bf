// Package capture builds and applies the netfilter rules that make a pod's
// TCP go through its sidecar: inbound connections are redirected to the
// sidecar's inbound listener, outbound ones to its capture listener, except
// the sidecar's own (by uid), loopback traffic and excluded ports and
// networks. The rules live in two chains of the nat table, CREDFLOW_INBOUND
// (from PREROUTING) and CREDFLOW_OUTPUT (from OUTPUT); applying them again
// rebuilds the chains and never duplicates a jump, and Remove undoes them.
package capture

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os/exec"
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

// Rules returns the iptables argument lists that build both chains (after
// they exist and are empty).
func Rules(cfg Config) ([][]string, error) {
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
		nat("-A", OutputChain, "-d", "127.0.0.0/8", "-j", "RETURN"),
	)
	for _, p := range c.ExcludeOutboundPorts {
		rules = append(rules, nat("-A", OutputChain, "-p", "tcp", "--dport", port(p), "-j", "RETURN"))
	}
	for _, n := range c.ExcludeOutboundCIDRs {
		rules = append(rules, nat("-A", OutputChain, "-d", n.Masked().String(), "-j", "RETURN"))
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

// Runner runs iptables with the given arguments.
type Runner func(ctx context.Context, args ...string) error

// IPTables runs the iptables binary at path ("iptables" from $PATH when
// empty).
func IPTables(path string) Runner {
	if path == "" {
		path = "iptables"
	}
	return func(ctx context.Context, args ...string) error {
		var stderr bytes.Buffer
		cmd := exec.CommandContext(ctx, path, append([]string{"-w", "5"}, args...)...)
		cmd.Stderr = &stderr
		if err := cmd.Run(); err != nil {
			return fmt.Errorf("capture: iptables %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
		}
		return nil
	}
}

// Apply installs the rules: it creates the chains if needed, rebuilds
// them, and adds each jump unless it is already there.
func Apply(ctx context.Context, run Runner, cfg Config) error {
	rules, err := Rules(cfg)
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

// Remove deletes the jumps and the chains; what is already gone is skipped.
func Remove(ctx context.Context, run Runner) error {
	for _, j := range jumps {
		for run(ctx, jump("-C", j)...) == nil {
			if err := run(ctx, jump("-D", j)...); err != nil {
				return err
			}
		}
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
