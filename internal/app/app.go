// Package app wires CredentialFlow's process: it parses the command line,
// reads the environment, and runs the subcommands of the credflow binary.
// It is the only package that reads flags or environment variables.
package app

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime"
	"sort"
	"strings"
	"syscall"
)

// version is stamped at link time:
// -ldflags "-X github.com/credflow/credflow/internal/app.version=v1.2.3".
var version = "dev"

// command is one subcommand of the credflow binary.
type command struct {
	summary string
	usage   string
	run     func(ctx context.Context, args []string, stdout, stderr io.Writer) error
}

func commands() map[string]command {
	return map[string]command{
		"version": {
			summary: "print the version",
			usage:   "credflow version",
			run: func(_ context.Context, _ []string, stdout, _ io.Writer) error {
				_, err := fmt.Fprintf(stdout, "credflow %s %s %s/%s\n", version, runtime.Version(), runtime.GOOS, runtime.GOARCH)
				return err
			},
		},
		"identity": {
			summary: "show this workload's identity as the Workload API serves it",
			usage:   "credflow identity [-socket ADDR] [-wait DURATION]",
			run:     runIdentity,
		},
		"run": {
			summary: "run the sidecar",
			usage:   "credflow run -c FILE",
			run:     runSidecar,
		},
		"check": {
			summary: "validate a sidecar configuration file",
			usage:   "credflow check -c FILE [-socket ADDR] [-wait DURATION]",
			run:     runCheck,
		},
		"init": {
			summary: "install (or -remove) the iptables and ip6tables rules that send the pod's TCP through its sidecar",
			usage: "credflow init -proxy-uid UID [-inbound-port 15006] [-outbound-port 15001] [-exclude-inbound-ports P,...] " +
				"[-exclude-outbound-ports P,...] [-exclude-outbound-cidrs CIDR,...] [-iptables iptables] [-ip6tables ip6tables] [-dry-run] [-remove]",
			run: runInit,
		},
		"inject": {
			summary: "serve the Kubernetes mutating admission webhook that injects the sidecar",
			usage:   "credflow inject -image IMAGE [-listen :9443] [-cert FILE] [-key FILE] [-proxy-uid 1337] [-configmap NAME] [-socket-host-path DIR]",
			run:     runInject,
		},
		"probe": {
			summary: "exit 0 when the sidecar on this host is ready (for Kubernetes probes)",
			usage:   "credflow probe [-admin 127.0.0.1:15000]",
			run:     runProbe,
		},
		"revoke": {
			summary: "add, list or remove entries of the revocation list in Redis or a file",
			usage:   revokeUsage,
			run:     runRevoke,
		},
		"quarantine": {
			summary: "list the peers this host's sidecar has in quarantine, or lift one",
			usage:   quarantineUsage,
			run:     runQuarantine,
		},
		"audit": {
			summary: "verify an audit trail: its chain of records and its signed checkpoints",
			usage:   auditUsage,
			run:     runAudit,
		},
		"register": {
			summary: "reconcile a file of workload identities with a SPIRE server",
			usage:   "credflow register apply -f FILE [-dry-run] [-prune] [-server-socket PATH]",
			run:     runRegister,
		},
	}
}

// errUsage marks an error in the command line; Run exits 2 for it.
var errUsage = errors.New("usage")

// Run runs the credflow command line args (without the program name) and
// returns the process exit code: 0 on success, 1 on failure, 2 on a usage
// error.
func Run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	cmds := commands()
	if len(args) == 0 {
		printHelp(stderr, cmds)
		return 2
	}
	name, rest := args[0], args[1:]
	switch name {
	case "help", "-h", "-help", "--help":
		if len(rest) > 0 {
			if c, ok := cmds[rest[0]]; ok {
				fmt.Fprintf(stdout, "usage: %s\n\n%s\n", c.usage, c.summary)
				return 0
			}
		}
		printHelp(stdout, cmds)
		return 0
	}
	c, ok := cmds[name]
	if !ok {
		fmt.Fprintf(stderr, "credflow: unknown command %q\n\n", name)
		printHelp(stderr, cmds)
		return 2
	}
	if name != "run" { // the sidecar handles its own signals (drain, reload)
		var stop context.CancelFunc
		ctx, stop = signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
		defer stop()
	}
	err := c.run(ctx, rest, stdout, stderr)
	switch {
	case err == nil:
		return 0
	case errors.Is(err, flag.ErrHelp):
		return 0
	case errors.Is(err, errUsage):
		fmt.Fprintf(stderr, "credflow %s: %v\nusage: %s\n", name, err, c.usage)
		return 2
	default:
		fmt.Fprintf(stderr, "credflow %s: %v\n", name, err)
		return 1
	}
}

func printHelp(w io.Writer, cmds map[string]command) {
	names := make([]string, 0, len(cmds))
	for n := range cmds {
		names = append(names, n)
	}
	sort.Strings(names)
	var b strings.Builder
	b.WriteString("CredentialFlow: a service-mesh sidecar for SPIFFE workload identities.\n\nusage: credflow COMMAND [FLAGS]\n\ncommands:\n")
	for _, n := range names {
		fmt.Fprintf(&b, "  %-10s %s\n", n, cmds[n].summary)
	}
	b.WriteString("  help       show this help, or `credflow help COMMAND`\n")
	io.WriteString(w, b.String())
}

// newFlagSet returns a flag set that reports errors instead of exiting and
// prints its usage to w.
func newFlagSet(name, usage string, w io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(w)
	fs.Usage = func() {
		fmt.Fprintf(w, "usage: %s\n\nflags:\n", usage)
		fs.PrintDefaults()
	}
	return fs
}

// parseFlags parses args into fs, turning a parse error into errUsage.
// Positional arguments are refused.
func parseFlags(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return fmt.Errorf("%w: %v", errUsage, err)
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("%w: unexpected argument %q", errUsage, fs.Arg(0))
	}
	return nil
}
