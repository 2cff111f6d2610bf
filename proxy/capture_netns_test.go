//go:build linux

package proxy_test

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/credflow/credflow/internal/peercred"
	"github.com/credflow/credflow/internal/sidecartest"
	"github.com/credflow/credflow/internal/testca"
	"github.com/credflow/credflow/internal/testenv"
	"github.com/credflow/credflow/proxy"
	"github.com/credflow/credflow/proxy/capture"
)

// inNetns marks the test binary re-run inside a network namespace of its
// own by inOwnNetns.
const inNetns = "CREDFLOW_TEST_IN_NETNS"

// inOwnNetns reports whether the test runs in a network namespace of its
// own. If not, it re-runs the test alone in a new one (as root, with
// unshare) and reports its result, and the caller returns.
func inOwnNetns(t *testing.T) bool {
	t.Helper()
	if os.Getenv(inNetns) == t.Name() {
		return true
	}
	testenv.NeedsRoot(t, "making a network namespace and installing netfilter rules there")
	for _, tool := range []string{"unshare", "ip", "iptables", "ip6tables"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s is missing (make deps installs it): %v", tool, err)
		}
	}
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "unshare", "--net", "--", os.Args[0], "-test.run=^"+t.Name()+"$", "-test.count=1", "-test.v")
	cmd.Env = append(os.Environ(), inNetns+"="+t.Name())
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "--- PASS: "+t.Name()) {
		t.Fatalf("in a network namespace of its own: %v\n%s", err, out)
	}
	return false
}

// The addresses of the namespace's server and app, on its loopback
// device: startNetnsServer adds them.
const (
	server4, app4 = "10.233.0.2", "10.233.0.3"
	server6, app6 = "fd00:cf6:1::2", "fd00:cf6:1::3"
)

// startNetnsServer adds the server and app addresses to the namespace's
// loopback device and starts an inbound listener on [::] (both families)
// relaying to an echo app, allowing the frontend.
func startNetnsServer(t *testing.T, ca *testca.CA) *proxy.Proxy {
	t.Helper()
	mustExec(t, "ip", "link", "set", "lo", "up")
	for _, a := range []string{server4 + "/32", app4 + "/32"} {
		mustExec(t, "ip", "addr", "add", a, "dev", "lo")
	}
	for _, a := range []string{server6 + "/128", app6 + "/128"} {
		mustExec(t, "ip", "addr", "add", a, "dev", "lo", "nodad")
	}
	echo, err := sidecartest.Echo(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	server, _ := startProxy(t, proxy.Config{
		SVIDs:   static{svid: ca.Issue(t, spiffeid.RequireFromPath(td, "/backend"))},
		Bundles: x509bundle.NewSet(ca.Bundle()),
		Inbound: []proxy.Inbound{{Name: "app", Listen: "[::]:0", App: echo, Allow: policy(t, "spiffe://example.org/frontend")}},
	})
	return server
}

func mustExec(t *testing.T, name string, args ...string) {
	t.Helper()
	if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
}

// TestCaptureOriginalDestination: a capture listener finds the original
// destination of IPv6 connections as well as IPv4 ones, and takes the
// IPv6 connections that REDIRECT sends to ::1 when it listens on
// 127.0.0.1, and the reverse. In a network namespace of its own, the
// app's connections (told apart by their source address) are redirected
// to the capture listener by iptables and ip6tables rules like those of
// `credflow init`; the capture listener relays each over mTLS to an
// inbound listener at the original destination. Destinations name that
// exact address and port, and the listener's fallback policy expects an
// identity nobody has, so a wrong original destination cannot pass.
func TestCaptureOriginalDestination(t *testing.T) {
	if !inOwnNetns(t) {
		return
	}
	ca := testca.New(t, td)
	server := startNetnsServer(t, ca)
	port := uint16(server.Addr("app").(*net.TCPAddr).Port)
	backend := policy(t, "spiffe://example.org/backend")

	for _, listen := range []string{"127.0.0.1:0", "[::1]:0", "[::]:0"} {
		t.Run(listen, func(t *testing.T) {
			p, reg := startProxy(t, proxy.Config{
				SVIDs:   static{svid: ca.Issue(t, spiffeid.RequireFromPath(td, "/frontend"))},
				Bundles: x509bundle.NewSet(ca.Bundle()),
				Outbound: []proxy.Outbound{{Name: "capture", Listen: listen, Expect: policy(t, "spiffe://example.org/nobody"), Capture: &capture.Capture{
					Destinations: []capture.Destination{
						{Prefix: netip.MustParsePrefix(server6 + "/128"), Port: port, Expect: backend},
						{Prefix: netip.MustParsePrefix(server4 + "/32"), Port: port, Expect: backend},
					},
				}}},
			})
			capPort := fmt.Sprint(p.Addr("capture").(*net.TCPAddr).Port)
			mustExec(t, "iptables", "-t", "nat", "-A", "OUTPUT", "-p", "tcp", "-s", app4, "-j", "REDIRECT", "--to-ports", capPort)
			mustExec(t, "ip6tables", "-t", "nat", "-A", "OUTPUT", "-p", "tcp", "-s", app6, "-j", "REDIRECT", "--to-ports", capPort)
			t.Cleanup(func() {
				exec.Command("iptables", "-t", "nat", "-F", "OUTPUT").Run()
				exec.Command("ip6tables", "-t", "nat", "-F", "OUTPUT").Run()
			})
			for i, x := range []struct{ src, dst string }{{app6, server6}, {app4, server4}} {
				d := net.Dialer{Timeout: 3 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(x.src)}}
				c, err := d.Dial("tcp", net.JoinHostPort(x.dst, fmt.Sprint(port)))
				if err != nil {
					t.Fatalf("the app's connection to %s: %v", x.dst, err)
				}
				c.SetDeadline(time.Now().Add(5 * time.Second))
				msg := "through the capture listener to " + x.dst
				io.WriteString(c, msg)
				c.(*net.TCPConn).CloseWrite()
				got, err := io.ReadAll(c)
				c.Close()
				if string(got) != msg {
					t.Errorf("the app's connection to %s: echoed %q (%v), want %q", x.dst, got, err, msg)
				}
				(&inbound{reg: reg}).waitMetric(t, float64(i+1), "credflow_connections_total", "direction=outbound", "result=allowed")
			}
		})
	}
}

// TestCaptureCallers: a capture listener names the caller of a redirected
// connection by the app's socket as it is, connected to the original
// destination (not to the listener): a listener whose callers list this
// process's uid relays the app's IPv4 and IPv6 connections (a lookup by
// the listener's address would find no socket and refuse them as
// caller_unknown), and one whose callers list only another uid closes
// them with caller_not_allowed. In a network namespace of its own, as
// TestCaptureOriginalDestination.
func TestCaptureCallers(t *testing.T) {
	if !inOwnNetns(t) {
		return
	}
	ca := testca.New(t, td)
	server := startNetnsServer(t, ca)
	port := fmt.Sprint(server.Addr("app").(*net.TCPAddr).Port)
	self, other, uid := selfAndOther()

	for _, x := range []struct {
		name    string
		callers peercred.Callers
		want    string // the echo, or "" for refused
	}{
		{"self", self, "echo"},
		{"other", other, ""},
	} {
		t.Run(x.name, func(t *testing.T) {
			acc := &accessLog{}
			p, reg := startProxy(t, proxy.Config{
				SVIDs:     static{svid: ca.Issue(t, spiffeid.RequireFromPath(td, "/frontend"))},
				Bundles:   x509bundle.NewSet(ca.Bundle()),
				AccessLog: acc.logger(),
				Outbound: []proxy.Outbound{{Name: "capture", Listen: "127.0.0.1:0", Expect: policy(t, "spiffe://example.org/backend"),
					Capture: &capture.Capture{}, Callers: x.callers}},
			})
			capPort := fmt.Sprint(p.Addr("capture").(*net.TCPAddr).Port)
			mustExec(t, "iptables", "-t", "nat", "-A", "OUTPUT", "-p", "tcp", "-s", app4, "-j", "REDIRECT", "--to-ports", capPort)
			mustExec(t, "ip6tables", "-t", "nat", "-A", "OUTPUT", "-p", "tcp", "-s", app6, "-j", "REDIRECT", "--to-ports", capPort)
			t.Cleanup(func() {
				exec.Command("iptables", "-t", "nat", "-F", "OUTPUT").Run()
				exec.Command("ip6tables", "-t", "nat", "-F", "OUTPUT").Run()
			})
			for i, c := range []struct{ src, dst string }{{app4, server4}, {app6, server6}} {
				d := net.Dialer{Timeout: 3 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(c.src)}}
				conn, err := d.Dial("tcp", net.JoinHostPort(c.dst, port))
				if err != nil {
					t.Fatalf("the app's connection to %s: %v", c.dst, err)
				}
				conn.SetDeadline(time.Now().Add(5 * time.Second))
				io.WriteString(conn, "echo")
				conn.(*net.TCPConn).CloseWrite()
				got, _ := io.ReadAll(conn)
				conn.Close()
				if string(got) != x.want {
					t.Fatalf("the app's connection to %s: %q, want %q", c.dst, got, x.want)
				}
				if x.want == "" {
					(&inbound{reg: reg}).waitMetric(t, float64(i+1), "credflow_refusals_total", "direction=outbound", "reason=caller_not_allowed")
					acc.waitLine(t, "listener=capture", "reason=caller_not_allowed", fmt.Sprintf("uid=%d", uid))
				}
			}
			if n := (&inbound{reg: reg}).metric(t, "credflow_refusals_total", "reason=caller_unknown"); n != 0 {
				t.Errorf("caller_unknown refusals: %v", n)
			}
		})
	}
}
