package app_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"

	"github.com/credflow/credflow/internal/app"
	"github.com/credflow/credflow/internal/peercred"
	"github.com/credflow/credflow/internal/sidecartest"
	"github.com/credflow/credflow/internal/testca"
	"github.com/credflow/credflow/internal/wlapitest"
)

// httpc is the plain-HTTP client of the tests: every request bounded, so
// a sidecar that never answers fails its test instead of hanging the run.
var httpc = &http.Client{Timeout: 30 * time.Second}

// run runs the credflow command line in-process.
func run(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errOut bytes.Buffer
	code = app.Run(t.Context(), args, &out, &errOut)
	return code, out.String(), errOut.String()
}

// syncBuffer is a bytes.Buffer safe for a logger and a test at once.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

// lines returns the log lines containing substr.
func (s *syncBuffer) lines(substr string) []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	for l := range strings.Lines(s.b.String()) {
		if strings.Contains(l, substr) {
			out = append(out, l)
		}
	}
	return out
}

// inProcess is `credflow run` in this process, on a stand-in Workload API.
type inProcess struct {
	cfg   string // path of the configuration file
	wlapi string // the Workload API address
	admin string
	log   *syncBuffer
	ca    *testca.CA
}

// runInProcess runs `credflow run` in this process until the test ends, on
// a stand-in Workload API serving backend's SVID. config is the file
// without workload_api and admin.
func runInProcess(t *testing.T, config string) *inProcess {
	t.Helper()
	// SIGHUP would end the test binary until the sidecar listens for it.
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	t.Cleanup(func() { signal.Stop(hup) })

	td := spiffeid.RequireTrustDomainFromString("example.org")
	ca := testca.New(t, td)
	dir := t.TempDir()
	wl, err := wlapitest.Start(t.Context(), filepath.Join(dir, "api.sock"), ca.Issue(t, spiffeid.RequireFromPath(td, "/backend")), ca.Bundle())
	if err != nil {
		t.Fatal(err)
	}
	admin, err := sidecartest.FreeAddr()
	if err != nil {
		t.Fatal(err)
	}
	ip := &inProcess{cfg: filepath.Join(dir, "credflow.yaml"), wlapi: wl.Addr(), admin: admin, log: &syncBuffer{}, ca: ca}
	ip.write(t, config)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan int, 1)
	go func() { done <- app.Run(ctx, []string{"run", "-c", ip.cfg}, io.Discard, ip.log) }()
	t.Cleanup(func() {
		cancel()
		if code := <-done; code != 0 {
			t.Errorf("credflow run exited %d", code)
		}
	})
	deadline := time.Now().Add(20 * time.Second)
	for {
		resp, err := httpc.Get("http://" + admin + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return ip
			}
		}
		select {
		case code := <-done:
			done <- code // for the cleanup, which waits for it
			t.Fatalf("credflow run exited %d:\n%s", code, ip.log.lines(""))
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("not ready: %v\n%s", err, ip.log.lines(""))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (ip *inProcess) write(t *testing.T, config string) {
	t.Helper()
	full := fmt.Sprintf("workload_api: %s\nadmin: %q\nlog: {level: debug}\n%s", ip.wlapi, ip.admin, config)
	if err := os.WriteFile(ip.cfg, []byte(full), 0o600); err != nil {
		t.Fatal(err)
	}
}

// reload rewrites the file, sends SIGHUP and returns the log line the
// reload wrote, which contains want.
func (ip *inProcess) reload(t *testing.T, config, want string) string {
	t.Helper()
	ip.write(t, config)
	before := len(ip.log.lines("reload"))
	if err := syscall.Kill(os.Getpid(), syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		if lines := ip.log.lines("reload"); len(lines) > before {
			if !strings.Contains(lines[before], want) {
				t.Fatalf("reload logged %s, want %q", lines[before], want)
			}
			return lines[before]
		}
		if time.Now().After(deadline) {
			t.Fatalf("no reload in the log after SIGHUP:\n%s", ip.log.lines(""))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestRunReloadRoutes: `credflow run` applies a route revoked in its file
// on SIGHUP (the next request is refused with 403 route_denied) and says
// what changed; a file that also changes what needs a restart is refused
// as a whole, each such field named, and nothing of it applied.
func TestRunReloadRoutes(t *testing.T) {
	appSrv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "app:"+r.URL.Path) })}
	appLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go appSrv.Serve(appLn)
	t.Cleanup(func() { appSrv.Close() })
	listen, err := sidecartest.FreeAddr()
	if err != nil {
		t.Fatal(err)
	}
	file := func(paths, extra string) string {
		return fmt.Sprintf(`%sinbound:
  - name: api
    listen: %q
    app: %q
    protocol: http
    allow: [spiffe://example.org/frontend]
    routes:
      - {peers: [spiffe://example.org/frontend], methods: [GET], paths: [%s]}
`, extra, listen, appLn.Addr(), paths)
	}
	ip := runInProcess(t, file("/api/*, /health", ""))

	front := ip.ca.Issue(t, spiffeid.RequireFromPath(ip.ca.TrustDomain(), "/frontend"))
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		TLSClientConfig: tlsconfig.MTLSClientConfig(front, ip.ca.Bundle(), tlsconfig.AuthorizeID(spiffeid.RequireFromPath(ip.ca.TrustDomain(), "/backend"))),
	}}
	get := func(path string) (int, string) {
		t.Helper()
		resp, err := client.Get("https://" + listen + path)
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

	line := ip.reload(t, file("/health", ""), "configuration reloaded")
	if !strings.Contains(line, "inbound[0].routes[0].paths") {
		t.Errorf("the reload does not say what changed: %s", line)
	}
	if code, body := get("/api/orders"); code != 403 || !strings.Contains(body, "route_denied") {
		t.Fatalf("a route revoked by reload: %d %s", code, body)
	}
	if code, _ := get("/health"); code != 200 {
		t.Fatalf("the route kept: %d", code)
	}

	line = ip.reload(t, file("/api/*, /health", "timeouts: {idle: 2h}\nlimits: {max_connections: 5}\n"), "reload refused")
	if !strings.Contains(line, "timeouts.idle, limits.max_connections need a restart") {
		t.Errorf("the refusal does not name the fields: %s", line)
	}
	if code, body := get("/api/orders"); code != 403 {
		t.Fatalf("a refused reload applied its routes: %d %s", code, body)
	}
}

// TestCheckTrustDomains: `credflow check` lists the trust domains its
// policies name; with -socket it compares them with the bundles the
// Workload API holds and warns about each one it holds none for.
func TestCheckTrustDomains(t *testing.T) {
	td := spiffeid.RequireTrustDomainFromString("example.org")
	ca := testca.New(t, td)
	wl, err := wlapitest.Start(t.Context(), filepath.Join(t.TempDir(), "api.sock"), ca.Issue(t, spiffeid.RequireFromPath(td, "/backend")), ca.Bundle())
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "credflow.yaml")
	if err := os.WriteFile(path, []byte(`inbound:
  - name: app
    listen: 127.0.0.1:15006
    app: 127.0.0.1:8080
    allow: [spiffe://example.org/frontend, spiffe://partner.example]
`), 0o600); err != nil {
		t.Fatal(err)
	}
	code, stdout, stderr := run(t, "check", "-c", path)
	if code != 0 || !strings.Contains(stdout, "trust domains named by policies: example.org, partner.example\n") || stderr != "" {
		t.Fatalf("check: %d\n%s\n%s", code, stdout, stderr)
	}
	code, stdout, stderr = run(t, "check", "-c", path, "-socket", wl.Addr())
	if code != 0 || !strings.Contains(stdout, "trust bundles held: example.org\n") {
		t.Fatalf("check -socket: %d\n%s\n%s", code, stdout, stderr)
	}
	want := "warning: partner.example (inbound[0].allow): no trust bundle is held for it, so none of its workloads can be authenticated\n"
	if stderr != want {
		t.Fatalf("check -socket stderr:\n%s\nwant\n%s", stderr, want)
	}
}

// TestRunTrustDomainWithoutBundle: `credflow run` warns once bundles arrive
// about a trust domain its policies name that it holds no bundle for,
// again after a reload, and /debug/identity lists it.
func TestRunTrustDomainWithoutBundle(t *testing.T) {
	listen, err := sidecartest.FreeAddr()
	if err != nil {
		t.Fatal(err)
	}
	file := fmt.Sprintf(`inbound:
  - name: app
    listen: %q
    app: 127.0.0.1:8080
    allow: [spiffe://example.org/frontend, %%s]
`, listen)
	ip := runInProcess(t, fmt.Sprintf(file, "spiffe://partner.example"))
	const warning = "a policy names a trust domain with no trust bundle"
	waitLog := func(n int) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for len(ip.log.lines(warning)) < n {
			if time.Now().After(deadline) {
				t.Fatalf("%d warnings, want %d:\n%s", len(ip.log.lines(warning)), n, ip.log.lines(""))
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	waitLog(1)
	if l := ip.log.lines(warning)[0]; !strings.Contains(l, `"trust_domain":"partner.example"`) || !strings.Contains(l, `"fields":["inbound[0].allow"]`) {
		t.Errorf("warning: %s", l)
	}
	identity := func() string {
		resp, err := httpc.Get("http://" + ip.admin + "/debug/identity")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return string(b)
	}
	if doc := identity(); !strings.Contains(doc, "\"policy_trust_domains_without_bundle\": [\n    \"partner.example\"\n  ]") {
		t.Errorf("/debug/identity:\n%s", doc)
	}
	ip.reload(t, fmt.Sprintf(file, "spiffe://partner.example/x, spiffe://other.example"), "configuration reloaded")
	waitLog(3)
	if doc := identity(); !strings.Contains(doc, "\"policy_trust_domains_without_bundle\": [\n    \"other.example\",\n    \"partner.example\"\n  ]") {
		t.Errorf("/debug/identity after the reload:\n%s", doc)
	}
	if n := len(ip.log.lines(warning)); n != 3 {
		t.Errorf("%d warnings, want 3 (one, then two after the reload)", n)
	}
}

// TestRunWarnsAllowNonLoopback: the sidecar warns at start about each
// outbound listener with allow_non_loopback, naming it and its address,
// and about no other.
func TestRunWarnsAllowNonLoopback(t *testing.T) {
	addrs := make([]string, 2)
	for i := range addrs {
		var err error
		if addrs[i], err = sidecartest.FreeAddr(); err != nil {
			t.Fatal(err)
		}
	}
	ip := runInProcess(t, fmt.Sprintf(`outbound:
  - {name: wide, listen: %q, upstream: 127.0.0.1:1, expect: [spiffe://example.org/b], allow_non_loopback: true}
  - {name: local, listen: %q, upstream: 127.0.0.1:1, expect: [spiffe://example.org/b]}
`, addrs[0], addrs[1]))
	lines := ip.log.lines("allow_non_loopback")
	if len(lines) != 1 || !strings.Contains(lines[0], `"level":"WARN"`) || !strings.Contains(lines[0], `"listener":"wide"`) ||
		!strings.Contains(lines[0], fmt.Sprintf(`"listen":%q`, addrs[0])) {
		t.Fatalf("allow_non_loopback warnings: %q, want one for listener wide at %s", lines, addrs[0])
	}
}

// TestCheckCallersFromEnvironment: $CREDFLOW_CALLER_UIDS, which the
// injector sets, gives the outbound listeners and the token endpoint that
// list no callers theirs; a listener's own callers win; a value that is
// not a list of uids is an error naming the variable.
func TestCheckCallersFromEnvironment(t *testing.T) {
	path := filepath.Join(t.TempDir(), "credflow.yaml")
	if err := os.WriteFile(path, []byte(`token_endpoint: {listen: 127.0.0.1:15080, audiences: [spiffe://example.org/backend]}
outbound:
  - {name: a, listen: 127.0.0.1:15001, upstream: backend:15006, expect: [spiffe://example.org/backend]}
  - {name: b, listen: 127.0.0.1:15002, upstream: backend:15006, expect: [spiffe://example.org/backend], callers: {uids: [7]}}
`), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv(peercred.EnvCallerUIDs, "1000,1002")
	code, stdout, stderr := run(t, "check", "-c", path)
	want := "callers from $CREDFLOW_CALLER_UIDS (1000,1002): outbound[0].callers, token_endpoint.callers\n"
	if code != 0 || !strings.Contains(stdout, want) {
		t.Fatalf("check: %d\n%s\n%s\nwant %q", code, stdout, stderr, want)
	}
	t.Setenv(peercred.EnvCallerUIDs, "1000,app")
	code, _, stderr = run(t, "check", "-c", path)
	if code == 0 || !strings.Contains(stderr, `$CREDFLOW_CALLER_UIDS: peercred: "app" is not a uid`) {
		t.Fatalf("check with a bad $%s: %d %s", peercred.EnvCallerUIDs, code, stderr)
	}
}
