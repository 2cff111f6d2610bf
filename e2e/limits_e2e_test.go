package e2e_test

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/credflow/credflow/internal/sidecartest"
)

// TestE2EDescriptorLimit covers L2 on the real binary: the backend sidecar
// runs with a hard limit of 256 descriptors, lowers max_connections to
// what that allows and says so, and a flood of 300 connections is shed
// with the reason "limit" while an established connection keeps relaying
// and /metrics and /readyz keep answering; afterwards new connections are
// served again.
func TestE2EDescriptorLimit(t *testing.T) {
	s, bin, _ := startWorkloads(t, 0, map[int]string{uidFrontend: "/frontend", uidBackend: "/backend"})
	ctx := t.Context()
	echo, err := sidecartest.Echo(ctx)
	if err != nil {
		t.Fatal(err)
	}
	inAddr, outAddr := freeAddr(t), freeAddr(t)
	// The flood comes from one address and sends nothing: the handshake
	// budget and the first-byte deadline are opened wide so that the
	// descriptor budget is what it meets (TestIdleConnectionsFlood covers
	// them).
	common := fmt.Sprintf("workload_api: %s\nadmin: \"{{admin}}\"\ntimeouts: {handshake: 60s, first_byte: 60s}\nlimits: {handshakes_per_source: 1000}\n", s.AgentAddr())
	backend, err := sidecartest.StartWrapped(ctx, s, []string{"prlimit", "--nofile=256:256", "--"}, bin, uidBackend, "backend",
		common+fmt.Sprintf("inbound:\n  - {name: app, listen: %q, app: %q, allow: [spiffe://example.org/frontend]}\n", inAddr, echo), 60*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		backend.Stop(10 * time.Second)
		if t.Failed() {
			t.Logf("--- backend log ---\n%s", backend.Tail(4000))
		}
	})
	startSidecar(t, s, bin, uidFrontend, "frontend",
		common+fmt.Sprintf("outbound:\n  - {name: backend, listen: %q, upstream: %q, expect: [spiffe://example.org/backend]}\n", outAddr, inAddr))

	if lines := backend.LogLines("max_connections lowered"); len(lines) != 1 || !strings.Contains(lines[0], `"max_connections":96`) {
		t.Fatalf("want one warning that max_connections was lowered to 96 (256 descriptors), got %q", lines)
	}

	live, err := net.Dial("tcp", outAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer live.Close()
	echoOn := func(msg string) {
		t.Helper()
		live.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := live.Write([]byte(msg)); err != nil {
			t.Fatalf("established connection: %v", err)
		}
		buf := make([]byte, len(msg))
		if _, err := io.ReadFull(live, buf); err != nil || string(buf) != msg {
			t.Fatalf("established connection: %q, %v", buf, err)
		}
	}
	echoOn("before the flood")

	const flood = 300
	conns := make([]net.Conn, 0, flood)
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for range flood {
		c, err := net.DialTimeout("tcp", inAddr, 2*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
	}
	// The sidecar holds what its budget allows (95 with the relayed one)
	// and closes the rest at accept.
	var shed int
	for _, c := range conns {
		c.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
		if _, err := c.Read(make([]byte, 1)); err != nil && !isTimeout(err) {
			shed++
		}
	}
	if want := flood - 95; shed != want {
		t.Errorf("%d of %d connections shed, want %d", shed, flood, want)
	}
	if code, _, err := backend.Get(ctx, "/readyz"); err != nil || code != 200 {
		t.Errorf("/readyz during the flood: %d, %v", code, err)
	}
	limit, err := backend.Metric(ctx, "credflow_refusals_total", "reason=limit")
	if err != nil || limit != float64(flood-95) {
		t.Errorf("/metrics during the flood: limit refusals %v (want %d), %v", limit, flood-95, err)
	}
	echoOn("during the flood")

	for _, c := range conns {
		c.Close()
	}
	conns = nil
	msg := []byte("after the flood")
	deadline := time.Now().Add(10 * time.Second)
	for {
		got, err := roundTrip(outAddr, msg)
		if err == nil && bytes.Equal(got, msg) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no recovery after the flood: %q, %v", got, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("shed %d of %d; limit refusals %v; /metrics and /readyz answered; established connection relayed throughout", shed, flood, limit)
}

func freeAddr(t *testing.T) string {
	t.Helper()
	a, err := sidecartest.FreeAddr()
	if err != nil {
		t.Fatal(err)
	}
	return a
}
