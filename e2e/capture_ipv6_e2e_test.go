package e2e_test

import (
	"bufio"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// sharedTestBinary copies the test binary where any uid can run it, for
// helper processes run as a pod's uids.
func sharedTestBinary(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "credflow-test-bin-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	data, err := os.ReadFile(os.Args[0])
	if err != nil {
		t.Fatal(err)
	}
	dst := filepath.Join(dir, "app.test")
	if err := os.WriteFile(dst, data, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dst
}

// podPair makes two network namespaces joined by a veth pair, each end
// with an IPv4 address in 10.232.0.0/24 and ULA IPv6 addresses in
// fd00:cf6::/64 (no duplicate address detection, so they are usable at
// once). Deleting the namespaces at cleanup removes the pair and the rules.
func podPair(t *testing.T, v4 [2]string, v6 [2][]string) (a, b netns) {
	t.Helper()
	suffix := strconv.Itoa(os.Getpid() % 100000)
	a, b = netns{"cf6a" + suffix}, netns{"cf6b" + suffix}
	vethA, vethB := "cf6va"+suffix, "cf6vb"+suffix
	for _, n := range []netns{a, b} {
		mustRun(t, "ip", "netns", "add", n.name)
		t.Cleanup(func() { exec.Command("ip", "netns", "del", n.name).Run() })
	}
	mustRun(t, "ip", "link", "add", vethA, "type", "veth", "peer", "name", vethB)
	mustRun(t, "ip", "link", "set", vethA, "netns", a.name)
	mustRun(t, "ip", "link", "set", vethB, "netns", b.name)
	for i, x := range []struct {
		n   netns
		dev string
	}{{a, vethA}, {b, vethB}} {
		mustRun(t, "ip", "-n", x.n.name, "addr", "add", v4[i]+"/24", "dev", x.dev)
		for _, ip := range v6[i] {
			mustRun(t, "ip", "-n", x.n.name, "addr", "add", ip+"/64", "dev", x.dev, "nodad")
		}
		mustRun(t, "ip", "-n", x.n.name, "link", "set", x.dev, "up")
		mustRun(t, "ip", "-n", x.n.name, "link", "set", "lo", "up")
	}
	return a, b
}

// tagServer starts, in n as uid, a listener on addr that writes tag to
// each connection, and waits until it listens.
func tagServer(ctx context.Context, t *testing.T, self string, n netns, uid int, addr, tag string) {
	t.Helper()
	cmd := n.command(ctx, uid, self)
	cmd.Env = append(os.Environ(), "CREDFLOW_TEST_APP=tag", "CREDFLOW_TEST_ADDR="+addr, "CREDFLOW_TEST_TAG="+tag)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Cancel(); cmd.Wait() })
	line, err := bufio.NewReader(out).ReadString('\n')
	if strings.TrimSpace(line) != "listening" {
		cmd.Cancel()
		cmd.Wait()
		t.Fatalf("%s in %s on %s: %q %v %s", tag, n.name, addr, line, err, stderr.String())
	}
}

// dialTag connects, in n as uid, to addr and returns "tag=NAME ..." for
// the listener reached, or "dial error: ...".
func dialTag(ctx context.Context, t *testing.T, self string, n netns, uid int, addr string) string {
	t.Helper()
	cmd := n.command(ctx, uid, self)
	cmd.Env = append(os.Environ(), "CREDFLOW_TEST_APP=dialtag", "CREDFLOW_TEST_ADDR="+addr)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("dial %s in %s as %d: %v\n%s", addr, n.name, uid, err, out)
	}
	return strings.TrimSpace(string(out))
}

// TestCaptureIPv6Init: `credflow init` captures IPv6 TCP as it does IPv4,
// and where it cannot, IPv6 TCP does not flow at all. Two pods (network
// namespaces joined by a veth pair, dual-stack with ULA addresses); the
// apps and the sidecars' listeners are stand-ins that name themselves to
// each connection, so what a connection reached is plain to see.
//
//   - IPv6 inbound to the app's port reaches the inbound listener, never the
//     app; an excluded inbound port is left alone.
//   - IPv6 outbound from the app reaches the capture listener on
//     [::1]:15001; the sidecar's uid, loopback and an excluded IPv6
//     network are left alone.
//   - When ip6tables cannot install the nat rules, init drops non-loopback
//     IPv6 TCP both ways, says so, and IPv4 capture still works; when it
//     cannot even do that, init fails and names the problem; -remove
//     removes the drop.
//   - With IPv6 disabled in the namespace init installs nothing for it.
func TestCaptureIPv6Init(t *testing.T) {
	for _, tool := range []string{"ip", "iptables", "ip6tables", "nsenter", "sysctl"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s is missing (make deps installs it): %v", tool, err)
		}
	}
	bin := sidecarBinary(t)
	self := sharedTestBinary(t)
	const (
		proxyUID = 1337
		v4A, v4B = "10.232.0.1", "10.232.0.2"
		v6A, v6B = "fd00:cf6::1", "fd00:cf6::2"
		v6BAlt   = "fd00:cf6::3" // excluded from capture by the client pod
	)
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	a, b := podPair(t, [2]string{v4A, v4B}, [2][]string{{v6A}, {v6B, v6BAlt}})

	initIn := func(n netns, args ...string) (string, error) {
		out, err := n.command(ctx, 0, bin, append([]string{"init"}, args...)...).CombinedOutput()
		return string(out), err
	}
	uid := strconv.Itoa(proxyUID)
	for range 2 {
		if out, err := initIn(a, "-proxy-uid", uid, "-exclude-outbound-cidrs", "169.254.169.254/32,"+v6BAlt+"/128"); err != nil {
			t.Fatalf("credflow init in the client pod: %v\n%s", err, out)
		}
		if out, err := initIn(b, "-proxy-uid", uid, "-exclude-inbound-ports", "15000"); err != nil {
			t.Fatalf("credflow init in the server pod: %v\n%s", err, out)
		}
	}
	for _, n := range []netns{a, b} {
		rules := mustRun(t, "ip", "netns", "exec", n.name, "ip6tables", "-t", "nat", "-S")
		for _, chain := range []string{"CREDFLOW_INBOUND", "CREDFLOW_OUTPUT"} {
			if c := strings.Count(rules, "-j "+chain); c != 1 {
				t.Fatalf("%s: %d ip6tables jumps to %s after two runs of init, want 1:\n%s", n.name, c, chain, rules)
			}
		}
	}

	tagServer(ctx, t, self, b, 0, "[::]:8080", "server-app")
	tagServer(ctx, t, self, b, 0, "[::]:15006", "server-inbound-listener")
	tagServer(ctx, t, self, b, 0, "[::]:15000", "server-admin")
	tagServer(ctx, t, self, a, 0, "[::]:8080", "client-app")
	tagServer(ctx, t, self, a, 0, "[::1]:15001", "client-capture-listener")
	tagServer(ctx, t, self, a, 0, "[::1]:9090", "client-local")

	for _, c := range []struct {
		what string
		n    netns
		uid  int
		addr string
		want string
	}{
		{"IPv6 inbound to the app port", a, proxyUID, "[" + v6B + "]:8080", "tag=server-inbound-listener"},
		{"IPv4 inbound to the app port", a, proxyUID, v4B + ":8080", "tag=server-inbound-listener"},
		{"IPv6 inbound to an excluded port", a, proxyUID, "[" + v6B + "]:15000", "tag=server-admin"},
		{"IPv6 outbound from the app", a, 0, "[" + v6B + "]:8080", "tag=client-capture-listener"},
		{"IPv6 outbound from the app to another port", a, 0, "[" + v6B + "]:15000", "tag=client-capture-listener"},
		{"IPv6 outbound to loopback", a, 0, "[::1]:9090", "tag=client-local"},
		{"IPv6 outbound to an excluded network", a, 0, "[" + v6BAlt + "]:8080", "tag=server-inbound-listener"},
	} {
		if got := dialTag(ctx, t, self, c.n, c.uid, c.addr); !strings.HasPrefix(got, c.want+" ") {
			t.Errorf("%s (%s as uid %d): %s, want %s", c.what, c.addr, c.uid, got, c.want)
		}
	}
	if t.Failed() {
		return
	}

	// ip6tables without a nat table: init falls back to dropping
	// non-loopback IPv6 TCP, and says so.
	realIP6, err := exec.LookPath("ip6tables")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	noNAT := filepath.Join(dir, "ip6tables")
	script := "#!/bin/sh\nfor a in \"$@\"; do\n  if [ \"$a\" = nat ]; then echo \"ip6tables v1.8.9: can't initialize ip6tables table 'nat': Table does not exist\" >&2; exit 3; fi\ndone\nexec " + realIP6 + " \"$@\"\n"
	if err := os.WriteFile(noNAT, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	if out, err := initIn(a, "-remove"); err != nil {
		t.Fatalf("credflow init -remove: %v\n%s", err, out)
	}
	if rules := mustRun(t, "ip", "netns", "exec", a.name, "ip6tables", "-t", "nat", "-S"); strings.Contains(rules, "CREDFLOW") {
		t.Fatalf("ip6tables rules left after -remove:\n%s", rules)
	}
	for range 2 {
		out, err := initIn(a, "-proxy-uid", uid, "-ip6tables", noNAT)
		if err != nil {
			t.Fatalf("credflow init with ip6tables lacking nat: %v\n%s", err, out)
		}
		if !strings.Contains(out, "IPv6") || !strings.Contains(out, "dropped") || !strings.Contains(out, "Table does not exist") {
			t.Errorf("credflow init does not say that IPv6 TCP is dropped, and why:\n%s", out)
		}
	}
	if rules := mustRun(t, "ip", "netns", "exec", a.name, "ip6tables", "-S"); strings.Count(rules, "-j DROP") != 2 {
		t.Errorf("after two runs of init, want 2 ip6tables DROP rules (INPUT, OUTPUT):\n%s", rules)
	}
	for _, c := range []struct {
		what string
		n    netns
		uid  int
		addr string
		want string
	}{
		{"IPv6 outbound, fail-closed", a, proxyUID, "[" + v6B + "]:8080", "dial error"},
		{"IPv6 inbound, fail-closed", b, proxyUID, "[" + v6A + "]:8080", "dial error"},
		{"IPv6 loopback, fail-closed", a, 0, "[::1]:9090", "tag=client-local"},
		{"IPv4 outbound, fail-closed IPv6", a, proxyUID, v4B + ":8080", "tag=server-inbound-listener"},
	} {
		if got := dialTag(ctx, t, self, c.n, c.uid, c.addr); !strings.HasPrefix(got, c.want) {
			t.Errorf("%s (%s as uid %d): %s, want %s", c.what, c.addr, c.uid, got, c.want)
		}
	}
	if out, err := initIn(a, "-remove"); err != nil {
		t.Fatalf("credflow init -remove: %v\n%s", err, out)
	}
	if rules := mustRun(t, "ip", "netns", "exec", a.name, "ip6tables", "-S"); strings.Contains(rules, "DROP") {
		t.Errorf("the IPv6 drop is left after -remove:\n%s", rules)
	}

	// No ip6tables at all: nothing can stop IPv6 bypassing the sidecar, so
	// init fails and says why.
	missing := filepath.Join(dir, "missing", "ip6tables")
	out, err := initIn(a, "-proxy-uid", uid, "-ip6tables", missing)
	if err == nil {
		t.Errorf("credflow init without ip6tables succeeded with IPv6 enabled:\n%s", out)
	} else if !strings.Contains(out, "IPv6") || !strings.Contains(out, missing) {
		t.Errorf("credflow init without ip6tables does not name the problem:\n%s", out)
	}

	// IPv6 disabled in a pod: nothing to capture, nothing to fail.
	c := netns{"cf6c" + strconv.Itoa(os.Getpid()%100000)}
	mustRun(t, "ip", "netns", "add", c.name)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", c.name).Run() })
	mustRun(t, "ip", "netns", "exec", c.name, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1")
	out, err = initIn(c, "-proxy-uid", uid, "-ip6tables", missing)
	if err != nil || !strings.Contains(out, "IPv6 is disabled") {
		t.Errorf("credflow init with IPv6 disabled: %v\n%s", err, out)
	}
}
