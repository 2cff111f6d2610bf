package e2e_test

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/credflow/credflow/internal/sidecartest"
)

// TestE2EReloadRoutesAndTrustDomains: two HTTP sidecars on real SPIRE.
// The backend's allow list names a trust domain SPIRE holds no bundle for:
// the sidecar warns about it and /debug/identity lists it. A route revoked
// in the backend's file by SIGHUP refuses the next request through the
// frontend (403 route_denied); a file that also changes a timeout is
// refused as a whole, the field named, and its routes not applied.
func TestE2EReloadRoutesAndTrustDomains(t *testing.T) {
	s, bin, _ := startWorkloads(t, 0, map[int]string{uidFrontend: "/frontend", uidBackend: "/backend"})
	ctx := t.Context()
	appLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	appSrv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "app:"+r.URL.Path) })}
	go appSrv.Serve(appLn)
	t.Cleanup(func() { appSrv.Close() })
	inAddr, err := sidecartest.FreeAddr()
	if err != nil {
		t.Fatal(err)
	}
	outAddr, err := sidecartest.FreeAddr()
	if err != nil {
		t.Fatal(err)
	}
	common := fmt.Sprintf("workload_api: %s\nadmin: \"{{admin}}\"\n", s.AgentAddr())
	backendFile := func(paths, extra string) string {
		return common + extra + fmt.Sprintf(`inbound:
  - name: web
    listen: %q
    app: %q
    protocol: http
    allow: [spiffe://example.org, spiffe://partner.example]
    routes:
      - {peers: [spiffe://example.org/frontend], methods: [GET], paths: [%s]}
`, inAddr, appLn.Addr(), paths)
	}
	backend := startSidecar(t, s, bin, uidBackend, "backend", backendFile("/api/*, /health", ""))
	startSidecar(t, s, bin, uidFrontend, "frontend", common+fmt.Sprintf(`outbound:
  - name: web
    listen: %q
    upstream: %q
    protocol: http
    expect: [spiffe://example.org/backend]
`, outAddr, inAddr))

	// The trust domain without a bundle: warned about and listed.
	const warning = "a policy names a trust domain with no trust bundle"
	waitFor := func(what string, ok func() bool) {
		t.Helper()
		deadline := time.Now().Add(15 * time.Second)
		for !ok() {
			if time.Now().After(deadline) {
				t.Fatalf("no %s:\n%s", what, backend.Tail(3000))
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	waitFor("warning", func() bool { return len(backend.LogLines(warning)) > 0 })
	if lines := backend.LogLines(warning); len(lines) != 1 || !strings.Contains(lines[0], `"trust_domain":"partner.example"`) {
		t.Errorf("warnings: %q", lines)
	}
	_, doc, err := backend.Get(ctx, "/debug/identity")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(doc, "\"policy_trust_domains_without_bundle\": [\n    \"partner.example\"\n  ]") {
		t.Errorf("/debug/identity:\n%s", doc)
	}

	get := func(path string) (int, string) {
		t.Helper()
		resp, err := httpc.Get("http://" + outAddr + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, body := get("/api/orders"); code != 200 || body != "app:/api/orders" {
		t.Fatalf("before the reload: %d %s", code, body)
	}
	reload := func(content, want string) string {
		t.Helper()
		if err := os.WriteFile(backend.Config, []byte(strings.ReplaceAll(content, "{{admin}}", backend.Admin)), 0o644); err != nil {
			t.Fatal(err)
		}
		before := len(backend.LogLines("reload"))
		if err := backend.Signal(syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
		waitFor("reload line", func() bool { return len(backend.LogLines("reload")) > before })
		line := backend.LogLines("reload")[before]
		if !strings.Contains(line, want) {
			t.Fatalf("reload logged %s, want %q", line, want)
		}
		return line
	}

	reload(backendFile("/health", ""), "configuration reloaded")
	if code, body := get("/api/orders"); code != 403 || !strings.Contains(body, "route_denied") {
		t.Fatalf("a route revoked by reload: %d %s", code, body)
	}
	if code, _ := get("/health"); code != 200 {
		t.Fatalf("the route kept: %d", code)
	}
	waitFor("warning after the reload", func() bool { return len(backend.LogLines(warning)) == 2 })

	reload(backendFile("/api/*, /health", "timeouts: {idle: 2h}\n"), "timeouts.idle needs a restart")
	if code, body := get("/api/orders"); code != 403 {
		t.Fatalf("a refused reload applied its routes: %d %s", code, body)
	}
	if n, _ := backend.Metric(ctx, "credflow_refusals_total", "reason=route_denied"); n != 2 {
		t.Errorf("route_denied refusals = %v, want 2", n)
	}
}
