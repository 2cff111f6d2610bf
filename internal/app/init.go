package app

import (
	"context"
	"fmt"
	"io"
	"net/netip"
	"strconv"
	"strings"

	"github.com/credflow/credflow/internal/capture"
)

// runInit installs or removes the capture rules in the current network
// namespace (an init container's, which is the pod's), for IPv4 and IPv6.
func runInit(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var (
		cfg                         capture.Config
		inPort, outPort             uint
		exIn, exOut, exCIDRs, iptab string
		ip6tab                      string
		dryRun, remove              bool
	)
	fs := newFlagSet("init", commands()["init"].usage, stderr)
	fs.IntVar(&cfg.ProxyUID, "proxy-uid", -1, "the sidecar's uid, whose own connections are not redirected (required)")
	fs.UintVar(&inPort, "inbound-port", capture.DefaultInPort, "the sidecar's inbound listener port")
	fs.UintVar(&outPort, "outbound-port", capture.DefaultOutPort, "the sidecar's capture listener port")
	fs.StringVar(&exIn, "exclude-inbound-ports", "", "comma-separated inbound destination ports left alone")
	fs.StringVar(&exOut, "exclude-outbound-ports", "", "comma-separated outbound destination ports left alone")
	fs.StringVar(&exCIDRs, "exclude-outbound-cidrs", "", "comma-separated outbound destination networks left alone")
	fs.StringVar(&iptab, "iptables", "iptables", "the iptables command")
	fs.StringVar(&ip6tab, "ip6tables", "", "the ip6tables command (default: the one beside -iptables, e.g. ip6tables-legacy for iptables-legacy)")
	fs.BoolVar(&dryRun, "dry-run", false, "print the rules, change nothing")
	fs.BoolVar(&remove, "remove", false, "remove the rules")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if ip6tab == "" {
		ip6tab = capture.IP6TablesFor(iptab)
	}
	setup := capture.Setup{IPv4: capture.IPTables(iptab), IPv6: capture.IPTables(ip6tab)}
	if remove {
		if dryRun {
			return fmt.Errorf("%w: -remove and -dry-run together", errUsage)
		}
		if err := capture.Uninstall(ctx, setup); err != nil {
			return err
		}
		_, err := fmt.Fprintln(stdout, "credflow init: capture rules removed")
		return err
	}
	if cfg.ProxyUID < 0 {
		return fmt.Errorf("%w: -proxy-uid is required", errUsage)
	}
	var err error
	if cfg.InboundPort, err = port16("inbound-port", inPort); err != nil {
		return err
	}
	if cfg.OutboundPort, err = port16("outbound-port", outPort); err != nil {
		return err
	}
	if cfg.ExcludeInboundPorts, err = portList("exclude-inbound-ports", exIn); err != nil {
		return err
	}
	if cfg.ExcludeOutboundPorts, err = portList("exclude-outbound-ports", exOut); err != nil {
		return err
	}
	for s := range strings.SplitSeq(exCIDRs, ",") {
		if s = strings.TrimSpace(s); s == "" {
			continue
		}
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return fmt.Errorf("%w: -exclude-outbound-cidrs: %q is not a CIDR", errUsage, s)
		}
		cfg.ExcludeOutboundCIDRs = append(cfg.ExcludeOutboundCIDRs, p)
	}
	if dryRun {
		for _, f := range []struct {
			fam capture.Family
			cmd string
		}{{capture.IPv4, iptab}, {capture.IPv6, ip6tab}} {
			rules, err := capture.Rules(cfg, f.fam)
			if err != nil {
				return err
			}
			for _, r := range rules {
				if _, err := fmt.Fprintln(stdout, f.cmd, strings.Join(r, " ")); err != nil {
					return err
				}
			}
		}
		return nil
	}
	res, err := capture.Install(ctx, setup, cfg)
	if err != nil {
		return err
	}
	if _, err := fmt.Fprintf(stdout, "credflow init: inbound TCP -> :%d, outbound TCP -> :%d (uid %d exempt)\n", cfg.InboundPort, cfg.OutboundPort, cfg.ProxyUID); err != nil {
		return err
	}
	switch res.IPv6 {
	case capture.IPv6Captured:
		_, err = fmt.Fprintln(stdout, "credflow init: IPv6 captured too (ip6tables)")
	case capture.IPv6Disabled:
		_, err = fmt.Fprintln(stdout, "credflow init: IPv6 is disabled in this network namespace; no IPv6 rules installed")
	case capture.IPv6Dropped:
		_, err = fmt.Fprintf(stderr, "credflow init: warning: the IPv6 capture rules could not be installed, so IPv6 TCP other than loopback is dropped, in and out (the pod talks over IPv4): %v\n", res.IPv6Err)
	}
	return err
}

func port16(flag string, v uint) (uint16, error) {
	if v == 0 || v > 65535 {
		return 0, fmt.Errorf("%w: -%s %d is not a port", errUsage, flag, v)
	}
	return uint16(v), nil
}

func portList(flag, s string) ([]uint16, error) {
	var out []uint16
	for f := range strings.SplitSeq(s, ",") {
		if f = strings.TrimSpace(f); f == "" {
			continue
		}
		n, err := strconv.ParseUint(f, 10, 16)
		if err != nil || n == 0 {
			return nil, fmt.Errorf("%w: -%s: %q is not a port", errUsage, flag, f)
		}
		out = append(out, uint16(n))
	}
	return out, nil
}
