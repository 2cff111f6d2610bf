package e2e_test

import (
	"fmt"
	"io"
	"net"
	"testing"
	"time"

	"github.com/credflow/credflow/internal/sidecartest"
	"github.com/credflow/credflow/internal/spiretest"
)

// TestE2ELongLivedConnectionsSurviveRotation: with 20 s SVIDs (rotated by
// the agent every ~10 s), a long-lived TCP connection through a frontend
// and a backend sidecar keeps carrying data across at least three
// rotations of each and past the expiry of both certificates its
// handshake saw. The same connection to a backend sidecar configured with
// timeouts.close_on_peer_expiry is closed once the frontend's certificate
// of the handshake expires ("peer_expired").
func TestE2ELongLivedConnectionsSurviveRotation(t *testing.T) {
	const ttl = 20 * time.Second
	s, bin, _ := startWorkloadsOn(t, spiretest.Options{X509SVIDTTL: ttl}, ttl, map[int]string{uidFrontend: "/frontend", uidBackend: "/backend"})
	echo, err := sidecartest.Echo(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	addrs := make([]string, 4)
	for i := range addrs {
		if addrs[i], err = sidecartest.FreeAddr(); err != nil {
			t.Fatal(err)
		}
	}
	backAddr, strictAddr, frontAddr, frontStrictAddr := addrs[0], addrs[1], addrs[2], addrs[3]
	common := fmt.Sprintf("workload_api: %s\nadmin: \"{{admin}}\"\nlog: {level: debug}\n", s.AgentAddr())
	inbound := func(listen string) string {
		return fmt.Sprintf("inbound:\n  - name: app\n    listen: %q\n    app: %q\n    allow: [spiffe://example.org/frontend]\n", listen, echo)
	}
	backend := startSidecar(t, s, bin, uidBackend, "backend", common+"timeouts: {revalidate: 1s}\n"+inbound(backAddr))
	strict := startSidecar(t, s, bin, uidBackend, "strict", common+"timeouts: {revalidate: 1s, close_on_peer_expiry: true}\n"+inbound(strictAddr))
	frontend := startSidecar(t, s, bin, uidFrontend, "frontend", common+"timeouts: {revalidate: 1s}\n"+fmt.Sprintf(`
outbound:
  - name: backend
    listen: %q
    upstream: %q
    expect: [spiffe://example.org/backend]
  - name: strict
    listen: %q
    upstream: %q
    expect: [spiffe://example.org/backend]
`, frontAddr, backAddr, frontStrictAddr, strictAddr))

	ctx := t.Context()
	rotations := func() float64 {
		a, _ := backend.Metric(ctx, "credflow_svid_rotations_total")
		b, _ := frontend.Metric(ctx, "credflow_svid_rotations_total")
		return min(a, b)
	}
	dial := func(addr string) net.Conn {
		c, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	echoOn := func(c net.Conn, msg string) error {
		c.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.WriteString(c, msg); err != nil {
			return err
		}
		buf := make([]byte, len(msg))
		if _, err := io.ReadFull(c, buf); err != nil {
			return err
		}
		if string(buf) != msg {
			return fmt.Errorf("echoed %q, want %q", buf, msg)
		}
		return nil
	}

	kept, cut := dial(frontAddr), dial(frontStrictAddr)
	for _, c := range []net.Conn{kept, cut} {
		if err := echoOn(c, "hello"); err != nil {
			t.Fatalf("first echo: %v", err)
		}
	}
	start, startRot := time.Now(), rotations()
	var echoes int
	cutOpen := true
	deadline := start.Add(100 * time.Second)
	for rotations()-startRot < 3 || time.Since(start) < ttl+5*time.Second || cutOpen {
		if time.Now().After(deadline) {
			t.Fatalf("after %s: %v rotations, the close_on_peer_expiry connection open: %v", time.Since(start), rotations()-startRot, cutOpen)
		}
		msg := fmt.Sprintf("message %d", echoes)
		if err := echoOn(kept, msg); err != nil {
			t.Fatalf("the long-lived connection broke after %s, %v rotations, %d echoes: %v",
				time.Since(start).Round(time.Second), rotations()-startRot, echoes, err)
		}
		echoes++
		if cutOpen && echoOn(cut, msg) != nil {
			cutOpen = false
			t.Logf("close_on_peer_expiry: connection closed after %s", time.Since(start).Round(time.Second))
		}
		time.Sleep(500 * time.Millisecond)
	}
	t.Logf("%d echoes over %s on one connection, across %v rotations", echoes, time.Since(start).Round(time.Second), rotations()-startRot)

	if n, _ := strict.Metric(ctx, "credflow_connections_closed_total", "reason=peer_expired"); n < 1 {
		t.Errorf("the close_on_peer_expiry sidecar closed %v connections for peer expiry", n)
	}
	for _, sc := range []*sidecartest.Sidecar{backend, frontend} {
		if n, _ := sc.Metric(ctx, "credflow_connections_closed_total"); n != 0 {
			t.Errorf("%s closed %v connections by default", sc.Name, n)
		}
	}
}
