package e2e_test

import (
	"bytes"
	"crypto/rand"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/credflow/credflow/internal/sidecartest"
	"github.com/credflow/credflow/internal/spiretest"
	"github.com/credflow/credflow/internal/testenv"
)

const (
	uidFrontend = 1001
	uidBackend  = 1002
	uidIntruder = 1003
)

// mesh is a real SPIRE with a backend echo app behind an inbound sidecar
// (uid 1002), a frontend outbound sidecar (uid 1001) and an intruder
// outbound sidecar (uid 1003) that the backend does not allow.
type mesh struct {
	spire                       *spiretest.SPIRE
	backend, frontend, intruder *sidecartest.Sidecar
	frontAddr, intruderAddr     string // outbound listeners, for the app side
	inboundAddr                 string
}

func startMesh(t *testing.T, x509TTL time.Duration) *mesh {
	t.Helper()
	return startMeshWith(t, x509TTL, false, "")
}

// startWorkloads starts a real SPIRE, registers each uid's workload with the
// given X.509-SVID lifetime (0: the server's default), and installs the
// credflow and spire-agent binaries where those uids can run them. It needs
// root, to run workloads as other uids.
func startWorkloads(t *testing.T, x509TTL time.Duration, workloads map[int]string) (s *spiretest.SPIRE, credflowBin, agentBin string) {
	t.Helper()
	return startWorkloadsOn(t, spiretest.Options{}, x509TTL, workloads)
}

// startWorkloadsOn is startWorkloads with SPIRE started with opts.
func startWorkloadsOn(t *testing.T, opts spiretest.Options, x509TTL time.Duration, workloads map[int]string) (s *spiretest.SPIRE, credflowBin, agentBin string) {
	t.Helper()
	bin := sidecarBinary(t)
	s = startSPIREWith(t, opts)
	var err error
	if credflowBin, err = s.InstallBinary(bin); err != nil {
		t.Fatal(err)
	}
	if agentBin, err = s.InstallBinary(s.AgentBin()); err != nil {
		t.Fatal(err)
	}
	for uid, path := range workloads {
		if _, err := s.Register(t.Context(), spiretest.Entry{ID: s.ID(path), UID: uid, X509SVIDTTL: x509TTL}); err != nil {
			t.Fatal(err)
		}
	}
	return s, credflowBin, agentBin
}

// sidecarBinary builds the credflow binary once per test run; the
// end-to-end tests that use it run workloads as distinct uids, which
// needs root.
func sidecarBinary(t *testing.T) string {
	t.Helper()
	testenv.NeedsSPIRE(t)
	testenv.NeedsRoot(t, "running workloads as distinct uids")
	bin, err := buildOnce()
	if err != nil {
		t.Fatal(err)
	}
	return bin
}

// startSidecar starts a sidecar process as uid with cfg, stops it at the
// end of the test, and shows its log if the test failed.
func startSidecar(t *testing.T, s *spiretest.SPIRE, bin string, uid int, name, cfg string) *sidecartest.Sidecar {
	t.Helper()
	sc, err := sidecartest.Start(t.Context(), s, bin, uid, name, cfg, 60*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		sc.Stop(10 * time.Second)
		if t.Failed() {
			t.Logf("--- %s log ---\n%s", name, sc.Tail(6000))
		}
	})
	return sc
}

// startMeshWith starts the mesh; with useQUIC the backend also listens for
// QUIC and the frontend and intruder reach it over QUIC. extraOut is added
// to their outbound listener's configuration.
func startMeshWith(t *testing.T, x509TTL time.Duration, useQUIC bool, extraOut string) *mesh {
	t.Helper()
	return startMeshOn(t, spiretest.Options{}, x509TTL, useQUIC, extraOut)
}

// startMeshOn is startMeshWith with SPIRE started with opts.
func startMeshOn(t *testing.T, opts spiretest.Options, x509TTL time.Duration, useQUIC bool, extraOut string) *mesh {
	t.Helper()
	s, bin, _ := startWorkloadsOn(t, opts, x509TTL, map[int]string{uidFrontend: "/frontend", uidBackend: "/backend", uidIntruder: "/intruder"})
	ctx := t.Context()
	echo, err := sidecartest.Echo(ctx)
	if err != nil {
		t.Fatal(err)
	}
	m := &mesh{spire: s}
	addrs := make([]string, 3)
	for i := range addrs {
		if addrs[i], err = sidecartest.FreeAddr(); err != nil {
			t.Fatal(err)
		}
	}
	m.inboundAddr, m.frontAddr, m.intruderAddr = addrs[0], addrs[1], addrs[2]
	start := func(uid int, name, cfg string) *sidecartest.Sidecar {
		sc, err := sidecartest.Start(ctx, s, bin, uid, name, cfg, 60*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			if err := sc.Stop(15 * time.Second); err != nil {
				t.Error(err)
			}
			if t.Failed() {
				t.Logf("--- %s log ---\n%s", name, sc.Tail(4000))
			}
		})
		return sc
	}
	common := fmt.Sprintf("workload_api: %s\nadmin: \"{{admin}}\"\nlog: {level: debug}\ntimeouts: {revalidate: 1s, drain: 10s}\nquic: {handshake_timeout: 1s}\n", s.AgentAddr())
	quicIn, quicOut := "", ""
	if useQUIC {
		quicIn = fmt.Sprintf("    quic_listen: %q\n", m.inboundAddr) // the same port number, over UDP
		quicOut = "    transport: quic\n"
	}
	quicOut += extraOut
	m.backend = start(uidBackend, "backend", common+fmt.Sprintf(`
inbound:
  - name: app
    listen: %q
    app: %q
    allow: [spiffe://example.org/frontend]
`, m.inboundAddr, echo)+quicIn)
	for _, w := range []struct {
		sc   **sidecartest.Sidecar
		uid  int
		name string
		addr string
	}{{&m.frontend, uidFrontend, "frontend", m.frontAddr}, {&m.intruder, uidIntruder, "intruder", m.intruderAddr}} {
		*w.sc = start(w.uid, w.name, common+fmt.Sprintf(`
outbound:
  - name: backend
    listen: %q
    upstream: %q
    expect: [spiffe://example.org/backend]
`, w.addr, m.inboundAddr)+quicOut)
	}
	return m
}

// roundTrip sends payload through the outbound listener at addr, half-closes,
// and returns everything echoed back.
func roundTrip(addr string, payload []byte) ([]byte, error) {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	errc := make(chan error, 1)
	go func() {
		_, err := c.Write(payload)
		if err == nil {
			err = c.(*net.TCPConn).CloseWrite()
		}
		errc <- err
	}()
	got, rerr := io.ReadAll(c)
	if err := <-errc; err != nil {
		return got, err
	}
	return got, rerr
}

func TestE2EPayloadsAndRefusal(t *testing.T) {
	m := startMesh(t, 0)
	ctx := t.Context()
	// Leak check, measured in the sidecar processes themselves (their
	// go_goroutines and process_open_fds), with a baseline taken after a
	// first connection and the admin requests have warmed everything up.
	if _, err := roundTrip(m.frontAddr, []byte("warm-up")); err != nil {
		t.Fatal(err)
	}
	baseline := leakFigures(t, m.backend, m.frontend)
	g0 := runtime.NumGoroutine()
	for _, size := range []int{1, 64 << 10, 10 << 20} {
		payload := make([]byte, size)
		rand.Read(payload)
		got, err := roundTrip(m.frontAddr, payload)
		if err != nil {
			t.Fatalf("%d bytes: %v", size, err)
		}
		if !bytes.Equal(got, payload) {
			t.Fatalf("%d bytes sent, %d came back, equal=%v", size, len(got), bytes.Equal(got, payload))
		}
	}
	allowed, err := m.backend.Metric(ctx, "credflow_connections_total", "direction=inbound", "result=allowed")
	if err != nil || allowed != 4 {
		t.Fatalf("backend inbound allowed connections = %v (%v), want 4", allowed, err)
	}

	// The default key-exchange policy negotiated the hybrid group on every
	// connection between the sidecars.
	if n, _ := m.backend.Metric(ctx, "credflow_tls_connections_total", "direction=inbound", "group=X25519MLKEM768"); n != 4 {
		t.Fatalf("inbound connections with X25519MLKEM768 = %v, want 4", n)
	}

	_, body, err := m.backend.Get(ctx, "/debug/identity")
	if err != nil || !strings.Contains(body, `"X25519MLKEM768": 4`) || !strings.Contains(body, `"key_exchange": "hybrid-preferred"`) {
		t.Fatalf("/debug/identity: %v\n%s", err, body)
	}
	if strings.Contains(body, "PRIVATE") || strings.Contains(body, "BEGIN") {
		t.Fatalf("/debug/identity shows key or certificate material:\n%s", body)
	}

	// The intruder's connection is refused at the handshake by the backend.
	got, _ := roundTrip(m.intruderAddr, []byte("let me in"))
	if len(got) != 0 {
		t.Fatalf("the intruder got %q back", got)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		n, err := m.backend.Metric(ctx, "credflow_refusals_total", "direction=inbound", "reason=unauthorized")
		if err == nil && n == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("credflow_refusals_total{reason=unauthorized} = %v (%v), want 1", n, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	lines := m.backend.LogLines(`"decision":"deny"`)
	if len(lines) != 1 || !strings.Contains(lines[0], `"reason":"unauthorized"`) || !strings.Contains(lines[0], `"peer_id":"spiffe://example.org/intruder"`) {
		t.Fatalf("backend access log deny lines:\n%s", strings.Join(lines, "\n"))
	}
	if n, _ := m.intruder.Metric(ctx, "credflow_refusals_total", "direction=outbound", "reason=peer_refused"); n != 1 {
		t.Errorf("intruder outbound peer_refused = %v, want 1", n)
	}
	// Allowed connections were logged with the key-exchange group.
	if lines := m.backend.LogLines(`"decision":"allow"`); len(lines) != 4 || !strings.Contains(lines[0], `"group":"X25519MLKEM768"`) {
		t.Errorf("backend allow lines:\n%s", strings.Join(lines, "\n"))
	}
	// The test process holds no goroutines for the finished connections.
	time.Sleep(200 * time.Millisecond)
	if g1 := runtime.NumGoroutine(); g1 > g0+2 {
		t.Errorf("goroutines %d -> %d after the traffic", g0, g1)
	}
	for _, sc := range []*sidecartest.Sidecar{m.backend, m.frontend} {
		if n, _ := sc.Metric(ctx, "credflow_active_connections"); n != 0 {
			t.Errorf("%s: %v connections still active", sc.Name, n)
		}
	}
	deadline = time.Now().Add(5 * time.Second)
	for {
		after := leakFigures(t, m.backend, m.frontend)
		leaked := ""
		for k, v := range after {
			if v > baseline[k]+2 {
				leaked += fmt.Sprintf(" %s %v -> %v;", k, baseline[k], v)
			}
		}
		if leaked == "" {
			t.Logf("sidecar goroutines and fds before/after: %v / %v", baseline, after)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("sidecar resources grew after the traffic:%s", leaked)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// leakFigures reads each sidecar's goroutine and open-descriptor counts.
func leakFigures(t *testing.T, scs ...*sidecartest.Sidecar) map[string]float64 {
	t.Helper()
	out := map[string]float64{}
	for _, sc := range scs {
		for _, name := range []string{"go_goroutines", "process_open_fds"} {
			v, err := sc.Metric(t.Context(), name)
			if err != nil || v == 0 {
				t.Fatalf("%s %s = %v, %v", sc.Name, name, v, err)
			}
			out[sc.Name+"/"+name] = v
		}
	}
	return out
}

// TestE2ERotationUnderTraffic is F4 in short form: SVIDs of ~10 s, a steady
// client across at least three rotations, no failed request.
func TestE2ERotationUnderTraffic(t *testing.T) {
	trafficAcrossRotations(t, startMesh(t, 10*time.Second), 3)
}

// trafficAcrossRotations sends requests through the frontend at a steady
// pace until both sidecars have rotated their SVIDs n times, and fails on
// any failed request.
func trafficAcrossRotations(t *testing.T, m *mesh, n float64) {
	t.Helper()
	ctx := t.Context()
	rot := func() float64 {
		a, _ := m.backend.Metric(ctx, "credflow_svid_rotations_total")
		b, _ := m.frontend.Metric(ctx, "credflow_svid_rotations_total")
		return min(a, b)
	}
	start := rot()
	var ok, failed int
	deadline := time.Now().Add(90 * time.Second)
	for rot()-start < n {
		if time.Now().After(deadline) {
			t.Fatalf("only %v rotations in 90s", rot()-start)
		}
		msg := []byte(fmt.Sprintf("request %d", ok+failed))
		got, err := roundTrip(m.frontAddr, msg)
		if err != nil || !bytes.Equal(got, msg) {
			failed++
			t.Errorf("request %d failed: %v (got %q)", ok+failed, err, got)
		} else {
			ok++
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Logf("%d requests across %v rotations, %d failed", ok, rot()-start, failed)
}

// TestE2EDrain is F12: on SIGTERM the inbound sidecar is not ready at
// once, finishes the connection in flight, and exits.
func TestE2EDrain(t *testing.T) {
	m := startMesh(t, 0)
	ctx := t.Context()
	c, err := net.Dial("tcp", m.frontAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := c.Write([]byte("before")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 6)
	if _, err := io.ReadFull(c, buf); err != nil {
		t.Fatal(err)
	}
	if err := m.backend.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(2 * time.Second)
	for {
		code, _, err := m.backend.Get(ctx, "/readyz")
		if err == nil && code == 503 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("/readyz still %d (%v) 2s after SIGTERM", code, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	// New inbound connections are refused; the one in flight still works.
	if raw, err := net.DialTimeout("tcp", m.inboundAddr, time.Second); err == nil {
		raw.Close()
		t.Error("the inbound listener still accepts while draining")
	}
	if _, err := c.Write([]byte("during")); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "during" {
		t.Fatalf("in-flight connection during drain: %q, %v", buf, err)
	}
	c.(*net.TCPConn).CloseWrite()
	if rest, err := io.ReadAll(c); err != nil || len(rest) != 0 {
		t.Fatalf("after half-close: %q, %v", rest, err)
	}
	select {
	case <-m.backend.Done():
		if code := m.backend.ExitCode(); code != 0 {
			t.Fatalf("backend exited %d", code)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("backend did not exit after its last connection finished")
	}
}

// TestE2EReload is B22's reload half and F8 through SIGHUP: an invalid file
// is refused and the running policy kept; a valid one that no longer allows
// the frontend closes its open connection and refuses new ones.
func TestE2EReload(t *testing.T) {
	m := startMesh(t, 0)
	c, err := net.Dial("tcp", m.frontAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(20 * time.Second))
	ping := func() error {
		if _, err := c.Write([]byte("ping")); err != nil {
			return err
		}
		buf := make([]byte, 4)
		_, err := io.ReadFull(c, buf)
		return err
	}
	if err := ping(); err != nil {
		t.Fatal(err)
	}
	orig, err := os.ReadFile(m.backend.Config)
	if err != nil {
		t.Fatal(err)
	}
	reload := func(content string, wantLog string) {
		t.Helper()
		if err := os.WriteFile(m.backend.Config, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		before := len(m.backend.LogLines(wantLog))
		if err := m.backend.Signal(syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(5 * time.Second)
		for len(m.backend.LogLines(wantLog)) == before {
			if time.Now().After(deadline) {
				t.Fatalf("no %q in the log after SIGHUP:\n%s", wantLog, m.backend.Tail(2000))
			}
			time.Sleep(50 * time.Millisecond)
		}
	}

	// A typo: refused, the field named, the old policy still in force.
	reload(strings.Replace(string(orig), "allow:", "alow:", 1), "reload refused")
	if lines := m.backend.LogLines("reload refused"); !strings.Contains(lines[len(lines)-1], "inbound[0].alow: unknown field (did you mean allow?)") {
		t.Fatalf("the refusal does not name the field: %s", lines[len(lines)-1])
	}
	if err := ping(); err != nil {
		t.Fatalf("the open connection broke after an invalid reload: %v", err)
	}
	if got, err := roundTrip(m.frontAddr, []byte("new")); err != nil || string(got) != "new" {
		t.Fatalf("a new connection after an invalid reload: %q, %v", got, err)
	}

	// Wait until the backend has seen the end of that connection, so that
	// the open one is the only one the policy change can close (on a
	// loaded machine the close may still be on its way).
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		n, err := m.backend.Metric(t.Context(), "credflow_active_connections", "direction=inbound")
		if err == nil && n == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the backend still holds %v inbound connections (%v), want the open one only", n, err)
		}
	}

	// A valid file that allows someone else: the open connection is closed
	// within the revalidation interval (1s here), new ones are refused.
	reload(strings.Replace(string(orig), "spiffe://example.org/frontend", "spiffe://example.org/someone-else", 1), "configuration reloaded")
	c.SetReadDeadline(time.Now().Add(3 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err == nil || isTimeout(err) {
		t.Fatalf("the frontend's connection survived the policy change: %v", err)
	}
	if got, _ := roundTrip(m.frontAddr, []byte("denied")); len(got) != 0 {
		t.Fatalf("a new connection after the policy change got %q", got)
	}
	if n, _ := m.backend.Metric(t.Context(), "credflow_connections_closed_total", "reason=policy_revoked"); n != 1 {
		t.Fatalf("policy_revoked closures = %v, want 1", n)
	}
}

func isTimeout(err error) bool {
	ne, ok := err.(net.Error)
	return ok && ne.Timeout()
}
