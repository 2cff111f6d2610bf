package e2e_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// The helper process: the test binary re-run inside a network namespace
// as an app that knows nothing of the mesh.
func init() {
	switch os.Getenv("CREDFLOW_TEST_APP") {
	case "echo":
		l, err := net.Listen("tcp", os.Getenv("CREDFLOW_TEST_ADDR"))
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		for {
			c, err := l.Accept()
			if err != nil {
				os.Exit(1)
			}
			go func() { defer c.Close(); io.Copy(c, c) }()
		}
	case "dial":
		c, err := net.DialTimeout("tcp", os.Getenv("CREDFLOW_TEST_ADDR"), 5*time.Second)
		if err != nil {
			fmt.Println("dial error:", err)
			os.Exit(0)
		}
		c.SetDeadline(time.Now().Add(5 * time.Second))
		msg := []byte(os.Getenv("CREDFLOW_TEST_MSG"))
		c.Write(msg)
		back := make([]byte, len(msg))
		_, err = io.ReadFull(c, back)
		fmt.Printf("echoed=%q err=%v\n", back, err)
		os.Exit(0)
	case "tag":
		// A listener that names itself to each connection: which of the
		// app, the sidecar's listeners or a peer a connection reached.
		l, err := net.Listen("tcp", os.Getenv("CREDFLOW_TEST_ADDR"))
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		fmt.Println("listening")
		for {
			c, err := l.Accept()
			if err != nil {
				os.Exit(1)
			}
			fmt.Fprintf(c, "%s\n", os.Getenv("CREDFLOW_TEST_TAG"))
			c.Close()
		}
	case "dialtag":
		c, err := net.DialTimeout("tcp", os.Getenv("CREDFLOW_TEST_ADDR"), 5*time.Second)
		if err != nil {
			fmt.Println("dial error:", err)
			os.Exit(0)
		}
		c.SetDeadline(time.Now().Add(5 * time.Second))
		tag, err := io.ReadAll(c)
		fmt.Printf("tag=%s err=%v\n", strings.TrimSpace(string(tag)), err)
		os.Exit(0)
	}
}

// netns is a network namespace made for a test.
type netns struct{ name string }

func mustRun(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// nsCommand runs a program inside ns as uid (root when uid is 0).
func (n netns) command(ctx context.Context, uid int, name string, args ...string) *exec.Cmd {
	full := []string{"--net=/run/netns/" + n.name}
	if uid != 0 {
		full = append(full, "--setuid", strconv.Itoa(uid), "--setgid", strconv.Itoa(uid))
	}
	cmd := exec.CommandContext(ctx, "nsenter", append(append(full, "--", name), args...)...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	return cmd
}

// get fetches a URL from inside ns (a sidecar's loopback admin port).
func (n netns) get(ctx context.Context, url string) (string, error) {
	out, err := n.command(ctx, 0, "curl", "-fsS", "--max-time", "2", url).Output()
	return string(out), err
}

// TestE2ETransparentCapture: two dual-stack "pods" (network namespaces
// joined by a veth pair, with IPv4 and ULA IPv6 addresses), each with an
// app that knows nothing of the mesh, its sidecar (real SPIRE identities)
// and the rules of `credflow init`. The client app connects to the server
// pod's IPv4 and IPv6 addresses in plain TCP; the traffic crosses the veth
// as mutual TLS (a capture on the veth sees TLS records, never the
// payload) and arrives at the server app through the server's sidecar, as
// its metrics show. A connection that bypasses the client's sidecar (made
// as the sidecar's uid) reaches the server pod in plain TCP and is
// refused, over either family.
func TestE2ETransparentCapture(t *testing.T) {
	for _, tool := range []string{"ip", "iptables", "nsenter", "curl", "tcpdump"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s is missing (make deps installs it): %v", tool, err)
		}
	}
	const (
		uidClientPod = uidFrontend
		uidServerPod = uidBackend
		clientIP     = "10.231.0.1"
		serverIP     = "10.231.0.2"
		clientIP6    = "fd00:cf::1"
		serverIP6    = "fd00:cf::2"
	)
	s, bin, _ := startWorkloads(t, 0, map[int]string{uidClientPod: "/client-pod", uidServerPod: "/server-pod"})
	ctx := t.Context()
	self, err := s.InstallBinary(os.Args[0])
	if err != nil {
		t.Fatal(err)
	}

	// Two pods joined by a veth pair. Deleting a namespace removes its end
	// of the pair and its rules.
	suffix := strconv.Itoa(os.Getpid() % 100000)
	a, b := netns{"cfa" + suffix}, netns{"cfb" + suffix}
	vethA, vethB := "cfva"+suffix, "cfvb"+suffix
	for _, n := range []netns{a, b} {
		mustRun(t, "ip", "netns", "add", n.name)
		t.Cleanup(func() { exec.Command("ip", "netns", "del", n.name).Run() })
	}
	mustRun(t, "ip", "link", "add", vethA, "type", "veth", "peer", "name", vethB)
	mustRun(t, "ip", "link", "set", vethA, "netns", a.name)
	mustRun(t, "ip", "link", "set", vethB, "netns", b.name)
	for _, x := range []struct {
		n            netns
		dev, ip, ip6 string
	}{{a, vethA, clientIP, clientIP6}, {b, vethB, serverIP, serverIP6}} {
		mustRun(t, "ip", "-n", x.n.name, "addr", "add", x.ip+"/24", "dev", x.dev)
		mustRun(t, "ip", "-n", x.n.name, "addr", "add", x.ip6+"/64", "dev", x.dev, "nodad")
		mustRun(t, "ip", "-n", x.n.name, "link", "set", x.dev, "up")
		mustRun(t, "ip", "-n", x.n.name, "link", "set", "lo", "up")
	}
	// credflow init in each pod, twice: the second run changes nothing.
	for _, x := range []struct {
		n   netns
		uid int
	}{{a, uidClientPod}, {b, uidServerPod}} {
		for range 2 {
			if out, err := x.n.command(ctx, 0, bin, "init", "-proxy-uid", strconv.Itoa(x.uid), "-exclude-inbound-ports", "15000").CombinedOutput(); err != nil {
				t.Fatalf("credflow init in %s: %v\n%s", x.n.name, err, out)
			}
		}
		rules, err := x.n.command(ctx, 0, "iptables", "-t", "nat", "-S").Output()
		if err != nil {
			t.Fatal(err)
		}
		if n := strings.Count(string(rules), "-j CREDFLOW_OUTPUT"); n != 1 {
			t.Fatalf("%s: %d jumps to CREDFLOW_OUTPUT after two runs of init, want 1:\n%s", x.n.name, n, rules)
		}
		rules6, err := x.n.command(ctx, 0, "ip6tables", "-t", "nat", "-S").Output()
		if err != nil {
			t.Fatal(err)
		}
		if n := strings.Count(string(rules6), "-j CREDFLOW_OUTPUT"); n != 1 {
			t.Fatalf("%s: %d ip6tables jumps to CREDFLOW_OUTPUT after two runs of init, want 1:\n%s", x.n.name, n, rules6)
		}
	}

	// The server pod's app, and both sidecars.
	echo := b.command(ctx, 0, self)
	echo.Env = append(os.Environ(), "CREDFLOW_TEST_APP=echo", "CREDFLOW_TEST_ADDR=0.0.0.0:8080")
	if err := echo.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { echo.Cancel(); echo.Wait() })
	dir := filepath.Join(s.Dir(), "capture")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	startPodSidecar := func(n netns, uid int, name, cfg string) {
		path := filepath.Join(dir, name+".yaml")
		if err := os.WriteFile(path, []byte(fmt.Sprintf("workload_api: %s\nadmin: 127.0.0.1:15000\nlog: {level: debug}\n", s.AgentAddr())+cfg), 0o644); err != nil {
			t.Fatal(err)
		}
		logf, err := os.Create(filepath.Join(dir, name+".log"))
		if err != nil {
			t.Fatal(err)
		}
		cmd := n.command(ctx, uid, bin, "run", "-c", path)
		cmd.Stdout, cmd.Stderr = logf, logf
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			cmd.Process.Signal(syscall.SIGTERM)
			cmd.Wait()
			logf.Close()
			if t.Failed() {
				b, _ := os.ReadFile(logf.Name())
				t.Logf("--- %s log ---\n%s", name, b)
			}
		})
		deadline := time.Now().Add(60 * time.Second)
		for {
			if _, err := n.get(ctx, "http://127.0.0.1:15000/readyz"); err == nil {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("sidecar %s not ready", name)
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
	startPodSidecar(b, uidServerPod, "server-pod", `inbound:
  - name: app
    listen: 0.0.0.0:15006
    app: 127.0.0.1:8080
    allow: [spiffe://example.org/client-pod]
`)
	startPodSidecar(a, uidClientPod, "client-pod", fmt.Sprintf(`outbound:
  - name: capture
    listen: 127.0.0.1:15001
    capture:
      destinations:
        - {cidr: %s/24, port: 8080, expect: [spiffe://example.org/server-pod]}
        - {cidr: "%s/64", port: 8080, expect: [spiffe://example.org/server-pod]}
`, serverIP, serverIP6))

	// A capture on the server pod's end of the veth.
	pcap := filepath.Join(dir, "veth.pcap")
	dump := b.command(ctx, 0, "tcpdump", "-Z", "root", "--immediate-mode", "-i", vethB, "-U", "-w", pcap, "tcp")
	var dumpOut bytes.Buffer
	dump.Stdout, dump.Stderr = &dumpOut, &dumpOut
	if err := dump.Start(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Second) // tcpdump opens the interface

	marker := "credflow-capture-marker-" + suffix
	marker6 := "credflow-capture-marker6-" + suffix
	dial := func(uid int, addr, marker string) string {
		cmd := a.command(ctx, uid, self)
		cmd.Env = append(os.Environ(), "CREDFLOW_TEST_APP=dial", "CREDFLOW_TEST_ADDR="+addr, "CREDFLOW_TEST_MSG="+marker)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("client app: %v\n%s", err, out)
		}
		return strings.TrimSpace(string(out))
	}
	for _, x := range []struct{ addr, marker string }{{serverIP + ":8080", marker}, {"[" + serverIP6 + "]:8080", marker6}} {
		if out := dial(0, x.addr, x.marker); out != fmt.Sprintf("echoed=%q err=<nil>", x.marker) {
			t.Fatalf("the client app through both sidecars to %s: %s", x.addr, out)
		}
		// Bypassing the client's sidecar (its uid is exempt from
		// capture): the server pod takes plain TCP to its mTLS port and
		// refuses it.
		if out := dial(uidClientPod, x.addr, x.marker); strings.Contains(out, "echoed=\""+x.marker) {
			t.Fatalf("plain TCP to %s reached the server app: %s", x.addr, out)
		}
	}
	time.Sleep(500 * time.Millisecond)
	dump.Process.Signal(syscall.SIGINT)
	dump.Wait()

	metrics, err := b.get(ctx, "http://127.0.0.1:15000/metrics")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(metrics, `credflow_connections_total{direction="inbound",result="allowed"} 2`) {
		t.Errorf("the server sidecar's metrics do not show two allowed inbound connections (IPv4, IPv6):\n%s", grepLines(metrics, "credflow_connections_total"))
	}
	if !strings.Contains(metrics, `credflow_refusals_total{direction="inbound",reason="handshake_failed"} 2`) {
		t.Errorf("the plain-TCP bypasses (IPv4, IPv6) were not both refused by the server sidecar:\n%s", grepLines(metrics, "credflow_refusals_total"))
	}
	// B19: the admin port answers inside its pod only; from the other pod
	// the same port on the pod's IP is closed.
	for _, url := range []string{"http://" + serverIP + ":15000/metrics", "http://[" + serverIP6 + "]:15000/metrics"} {
		if out, err := a.get(ctx, url); err == nil {
			t.Errorf("the server pod's admin port answered from another pod at %s: %.80q", url, out)
		}
	}

	v4, v6 := tcpPayloads(t, pcap)
	for _, f := range []struct {
		name     string
		payloads [][]byte
		marker   string
	}{{"IPv4", v4, marker}, {"IPv6", v6, marker6}} {
		var all []byte
		tlsRecords := 0
		for _, p := range f.payloads {
			all = append(all, p...)
			if len(p) >= 3 && p[0] == 0x17 && p[1] == 0x03 && p[2] == 0x03 {
				tlsRecords++
			}
		}
		if tlsRecords == 0 {
			out, _ := exec.Command("tcpdump", "-nr", pcap).CombinedOutput()
			t.Fatalf("no TLS application-data record over %s on the veth (%d TCP payloads captured):\n%s\n%s", f.name, len(f.payloads), dumpOut.String(), out)
		}
		// The marker crossed once in clear: the bypass, which the server
		// pod refused. The mesh's own crossing carried it encrypted.
		if n := bytes.Count(all, []byte(f.marker)); n != 1 {
			t.Fatalf("the %s payload appears %d times in clear on the veth, want 1 (only the refused bypass)", f.name, n)
		}
	}
}

func grepLines(text, substr string) string {
	var out []string
	for line := range strings.SplitSeq(text, "\n") {
		if strings.Contains(line, substr) {
			out = append(out, line)
		}
	}
	return strings.Join(out, "\n")
}

// tcpPayloads reads a pcap file (Ethernet; IPv4, and IPv6 without
// extension headers) and returns the TCP payload of each packet that has
// one, by family.
func tcpPayloads(t *testing.T, path string) (v4, v6 [][]byte) {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(data) < 24 {
		t.Fatalf("pcap of %d bytes", len(data))
	}
	var order binary.ByteOrder = binary.LittleEndian
	if binary.BigEndian.Uint32(data) == 0xa1b2c3d4 {
		order = binary.BigEndian
	}
	for off := 24; off+16 <= len(data); {
		incl := int(order.Uint32(data[off+8:]))
		pkt := data[off+16 : min(off+16+incl, len(data))]
		off += 16 + incl
		if len(pkt) >= 14+40 && binary.BigEndian.Uint16(pkt[12:]) == 0x86dd {
			ip := pkt[14:]
			end := 40 + int(binary.BigEndian.Uint16(ip[4:]))
			if ip[6] != 6 || end > len(ip) || end < 40+20 {
				continue
			}
			tcp := ip[40:end]
			if doff := int(tcp[12]>>4) * 4; len(tcp) > doff {
				v6 = append(v6, tcp[doff:])
			}
			continue
		}
		if len(pkt) < 14+20 || binary.BigEndian.Uint16(pkt[12:]) != 0x0800 {
			continue
		}
		ip := pkt[14:]
		ihl := int(ip[0]&0x0f) * 4
		total := int(binary.BigEndian.Uint16(ip[2:]))
		if ip[9] != 6 || len(ip) < ihl+20 || total > len(ip) {
			continue
		}
		tcp := ip[ihl:total]
		doff := int(tcp[12]>>4) * 4
		if len(tcp) > doff {
			v4 = append(v4, tcp[doff:])
		}
	}
	return v4, v6
}
