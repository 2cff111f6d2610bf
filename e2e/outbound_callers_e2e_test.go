package e2e_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/credflow/credflow/internal/peercred"
	"github.com/credflow/credflow/internal/sidecartest"
)

// getAs runs curl as uid (gid the same, no supplementary groups) to GET u.
// exit is curl's exit code: 52 is an empty reply, 56 a connection closed
// while receiving.
func getAs(t *testing.T, ctx context.Context, dir string, uid int, u string) (exit, status int, reason, body string) {
	t.Helper()
	cmd := exec.CommandContext(ctx, "curl", "-q", "-sS", "-i", "--max-time", "20", u)
	cmd.Dir = dir
	cmd.Env = []string{"PATH=/usr/bin:/bin", "HOME=/"}
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(uid), Groups: []uint32{}}}
	out, err := cmd.Output()
	if err != nil {
		return cmd.ProcessState.ExitCode(), 0, "", string(out)
	}
	resp, err := http.ReadResponse(bufio.NewReader(strings.NewReader(string(out))), nil)
	if err != nil {
		t.Fatalf("curl as uid %d: %v\n%s", uid, err, out)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return 0, resp.StatusCode, resp.Header.Get("X-Credflow-Reason"), string(b)
}

// TestE2EOutboundCallers: on real SPIRE, the frontend's sidecar (uid 1001)
// has a TCP and an HTTP outbound listener to the backend whose callers are
// uid 1001: the TCP listener lists them in the file, the HTTP one takes
// them from $CREDFLOW_CALLER_UIDS, as an injected sidecar does. The
// frontend's uid gets through both; another uid on the same host (1003),
// root included, is refused with caller_not_allowed: its TCP connection is
// closed at accept, its HTTP requests are answered 403 with
// X-Credflow-Reason, never reaching the backend. The refusals are in the
// access log, with the caller's uid, and in credflow_refusals_total. A
// reload (SIGHUP) that adds uid 1003 to the TCP listener's callers lets it
// through.
func TestE2EOutboundCallers(t *testing.T) {
	s, bin, _ := startWorkloads(t, 0, map[int]string{uidFrontend: "/frontend", uidBackend: "/backend"})
	ctx := t.Context()

	appLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var requests []string
	reqs := make(chan string, 64)
	app := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		reqs <- r.URL.Path
		fmt.Fprintf(w, "peer=%s", r.Header.Get("X-Credflow-Peer-Id"))
	})}
	go app.Serve(appLn)
	t.Cleanup(func() { app.Close() })
	drain := func() {
		for {
			select {
			case p := <-reqs:
				requests = append(requests, p)
			default:
				return
			}
		}
	}

	addrs := make([]string, 4)
	for i := range addrs {
		if addrs[i], err = sidecartest.FreeAddr(); err != nil {
			t.Fatal(err)
		}
	}
	inTCP, inHTTP, outTCP, outHTTP := addrs[0], addrs[1], addrs[2], addrs[3]
	common := fmt.Sprintf("workload_api: %s\nadmin: \"{{admin}}\"\n", s.AgentAddr())
	startSidecar(t, s, bin, uidBackend, "backend", common+fmt.Sprintf(`inbound:
  - {name: tcp, listen: %q, app: %q, allow: [spiffe://example.org/frontend]}
  - name: web
    listen: %q
    app: %q
    protocol: http
    allow: [spiffe://example.org/frontend]
    routes: [{peers: [spiffe://example.org/frontend], paths: [/*]}]
`, inTCP, appLn.Addr(), inHTTP, appLn.Addr()))
	// The HTTP listener names no callers: it takes the uids the injector
	// puts in $CREDFLOW_CALLER_UIDS (the pod's containers).
	frontend, err := sidecartest.StartWrapped(ctx, s, []string{"env", fmt.Sprintf("%s=%d", peercred.EnvCallerUIDs, uidFrontend)},
		bin, uidFrontend, "frontend", common+fmt.Sprintf(`outbound:
  - name: tcp
    listen: %q
    upstream: %q
    expect: [spiffe://example.org/backend]
    callers: {uids: [%d]}
  - name: web
    listen: %q
    upstream: %q
    protocol: http
    expect: [spiffe://example.org/backend]
`, outTCP, inTCP, uidFrontend, outHTTP, inHTTP), 60*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		frontend.Stop(10 * time.Second)
		if t.Failed() {
			t.Logf("--- frontend log ---\n%s", frontend.Tail(6000))
		}
	})
	if l := frontend.LogLines("local callers"); len(l) != 1 || !strings.Contains(l[0], `"fields":["outbound[1].callers"]`) {
		t.Fatalf("start-up log %q, want the callers of outbound[1] from $%s", l, peercred.EnvCallerUIDs)
	}

	// The frontend's uid: through both listeners.
	if exit, code, _, body := getAs(t, ctx, s.Dir(), uidFrontend, "http://"+outTCP+"/tcp/allowed"); exit != 0 || code != 200 || body != "peer=" {
		t.Fatalf("TCP listener, uid %d: curl exit %d, %d %q, want 200", uidFrontend, exit, code, body)
	}
	if exit, code, reason, body := getAs(t, ctx, s.Dir(), uidFrontend, "http://"+outHTTP+"/http/allowed"); exit != 0 || code != 200 || body != "peer=spiffe://example.org/frontend" {
		t.Fatalf("HTTP listener, uid %d: curl exit %d, %d %q %q, want 200 from the backend", uidFrontend, exit, code, reason, body)
	}

	// Another uid: the TCP connection is closed at accept, the HTTP
	// request refused.
	if exit, code, _, body := getAs(t, ctx, s.Dir(), uidIntruder, "http://"+outTCP+"/tcp/refused"); exit == 0 || code != 0 {
		t.Fatalf("TCP listener, uid %d: curl exit %d, %d %q, want the connection closed", uidIntruder, exit, code, body)
	}
	if exit, code, reason, body := getAs(t, ctx, s.Dir(), uidIntruder, "http://"+outHTTP+"/http/refused"); exit != 0 || code != 403 || reason != "caller_not_allowed" {
		t.Fatalf("HTTP listener, uid %d: curl exit %d, %d %q %q, want 403 caller_not_allowed", uidIntruder, exit, code, reason, body)
	}
	// Root is not a caller either.
	resp, err := httpc.Get("http://" + outHTTP + "/http/root")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 403 || resp.Header.Get("X-Credflow-Reason") != "caller_not_allowed" {
		t.Fatalf("HTTP listener, root: %d %q, want 403 caller_not_allowed", resp.StatusCode, resp.Header.Get("X-Credflow-Reason"))
	}

	waitAccessLine(t, frontend, "direction=outbound", "listener=tcp", "decision=deny", "reason=caller_not_allowed", fmt.Sprintf("uid=%d", uidIntruder))
	waitAccessLine(t, frontend, "direction=outbound", "listener=web", "transport=http", "decision=deny", "reason=caller_not_allowed",
		"path=/http/refused", "status=403", fmt.Sprintf("uid=%d", uidIntruder))
	if n, err := frontend.Metric(ctx, "credflow_refusals_total", "direction=outbound", "reason=caller_not_allowed"); err != nil || n != 3 {
		t.Errorf("credflow_refusals_total{direction=outbound,reason=caller_not_allowed} = %v (%v), want 3", n, err)
	}
	drain()
	if strings.Join(requests, " ") != "/tcp/allowed /http/allowed" {
		t.Fatalf("the backend's app got %v, want only the allowed requests", requests)
	}

	// SIGHUP with uid 1003 added to the TCP listener's callers: it gets
	// through from then on.
	cfg, err := os.ReadFile(frontend.Config)
	if err != nil {
		t.Fatal(err)
	}
	widened := strings.Replace(string(cfg), fmt.Sprintf("callers: {uids: [%d]}", uidFrontend), fmt.Sprintf("callers: {uids: [%d, %d]}", uidFrontend, uidIntruder), 1)
	if widened == string(cfg) {
		t.Fatal("the callers of the TCP listener are not in the file")
	}
	if err := os.WriteFile(frontend.Config, []byte(widened), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := frontend.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(30 * time.Second); len(frontend.LogLines("configuration reloaded")) == 0; time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("no reload in the log after SIGHUP:\n%s", frontend.Tail(2000))
		}
	}
	if l := frontend.LogLines("configuration reloaded"); !strings.Contains(l[0], `"changed":["outbound[0].callers.uids"]`) {
		t.Fatalf("reload: %s, want outbound[0].callers.uids changed", l[0])
	}
	if exit, code, _, body := getAs(t, ctx, s.Dir(), uidIntruder, "http://"+outTCP+"/tcp/reloaded"); exit != 0 || code != 200 || body != "peer=" {
		t.Fatalf("TCP listener after the reload, uid %d: curl exit %d, %d %q, want 200", uidIntruder, exit, code, body)
	}
}
