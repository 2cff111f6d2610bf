package e2e_test

import (
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/credflow/credflow/internal/sidecartest"
)

// TestInteropCurlAndOpenSSL: clients nobody here wrote. curl, presenting an
// SVID that `spire-agent api fetch x509 -write` saved for a registered
// workload, reaches an HTTP app through the inbound sidecar; `openssl
// s_client` without a client certificate is refused (no_peer_cert).
func TestInteropCurlAndOpenSSL(t *testing.T) {
	for _, tool := range []string{"curl", "openssl"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s is not installed: make test installs it (make deps)", tool)
		}
	}
	s, bin, agentBin := startWorkloads(t, 0, map[int]string{uidFrontend: "/frontend", uidBackend: "/backend"})
	ctx := t.Context()

	appLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "hello from the app, path %s\n", r.URL.Path)
	})}
	go srv.Serve(appLn)
	t.Cleanup(func() { srv.Close() })

	inbound, err := sidecartest.FreeAddr()
	if err != nil {
		t.Fatal(err)
	}
	backend, err := sidecartest.Start(ctx, s, bin, uidBackend, "backend", fmt.Sprintf(`workload_api: %s
admin: "{{admin}}"
inbound:
  - name: app
    listen: %q
    app: %q
    allow: [spiffe://example.org/frontend]
`, s.AgentAddr(), inbound, appLn.Addr()), 60*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { backend.Stop(10 * time.Second) })

	// The frontend's SVID, written by SPIRE's own CLI running as the frontend.
	svidDir := filepath.Join(s.Dir(), "frontend-svid")
	if err := os.MkdirAll(svidDir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(svidDir, uidFrontend, uidFrontend); err != nil {
		t.Fatal(err)
	}
	var fetchOut []byte
	deadline := time.Now().Add(30 * time.Second)
	for {
		cmd := s.Command(ctx, uidFrontend, agentBin, "api", "fetch", "x509", "-socketPath", s.AgentSocket(), "-write", svidDir)
		if fetchOut, err = cmd.CombinedOutput(); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("spire-agent api fetch x509: %v\n%s", err, fetchOut)
		}
		time.Sleep(500 * time.Millisecond)
	}

	// curl verifies nothing of the server here (-k: the sidecar's SVID has
	// a URI SAN, not a host name); the point is the client side.
	curl := exec.CommandContext(ctx, "curl", "-sS", "-k", "--tlsv1.3", "--max-time", "10",
		"--cert", filepath.Join(svidDir, "svid.0.pem"), "--key", filepath.Join(svidDir, "svid.0.key"),
		"https://"+inbound+"/through-the-mesh")
	out, err := curl.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "hello from the app, path /through-the-mesh") {
		t.Fatalf("curl with the frontend's SVID: %v\n%s", err, out)
	}

	// openssl without a client certificate: the handshake is refused.
	ossl := exec.CommandContext(ctx, "openssl", "s_client", "-connect", inbound, "-tls1_3", "-quiet")
	ossl.Stdin = strings.NewReader("GET / HTTP/1.0\r\n\r\n")
	out, _ = ossl.CombinedOutput()
	if strings.Contains(string(out), "hello from the app") {
		t.Fatalf("openssl without a client certificate reached the app:\n%s", out)
	}
	deadline = time.Now().Add(5 * time.Second)
	for {
		n, err := backend.Metric(ctx, "credflow_refusals_total", "direction=inbound", "reason=no_peer_cert")
		if err == nil && n == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no_peer_cert refusals = %v (%v); openssl said:\n%s", n, err, out)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
