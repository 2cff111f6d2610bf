package e2e_test

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/credflow/credflow/internal/jaegertest"
	"github.com/credflow/credflow/internal/sidecartest"
	"github.com/credflow/credflow/internal/testenv"
)

// TestE2EAuditTrail runs a frontend, a backend and an intruder on real
// SPIRE with audit trails, sends HTTP requests (JWT-SVIDs required) and
// TCP connections, has the intruder refused, stops the sidecars, and
// reads the trails: every access decision of the backend's access log is
// in its trail once, with its fields; each trail holds the SVID and
// bundle events and transaction-free requests' decisions; `credflow audit
// verify` passes against the SPIRE bundle and names the writer; the
// backend's events reached a real collector (Jaeger) once each; and no
// token, key or certificate is in any trail.
func TestE2EAuditTrail(t *testing.T) {
	s, bin, _ := startWorkloads(t, 0, map[int]string{uidFrontend: "/frontend", uidBackend: "/backend", uidIntruder: "/intruder"})
	ctx := t.Context()
	// The sidecars run as their workloads' uids: a directory they can
	// reach (t.TempDir's parent is root's alone).
	dir, err := os.MkdirTemp("", "credflow-audit-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o777); err != nil {
		t.Fatal(err)
	}
	httpLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hs := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") })}
	go hs.Serve(httpLn)
	t.Cleanup(func() { hs.Close() })
	echo, err := sidecartest.Echo(ctx)
	if err != nil {
		t.Fatal(err)
	}
	addrs := make([]string, 5)
	for i := range addrs {
		if addrs[i], err = sidecartest.FreeAddr(); err != nil {
			t.Fatal(err)
		}
	}
	inWeb, inTCP, outWeb, outTCP, intruderTCP := addrs[0], addrs[1], addrs[2], addrs[3], addrs[4]
	// The backend also exports its trail to a collector: a real one.
	testenv.NeedsJaeger(t)
	j, err := jaegertest.Start(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(j.Close)
	common := fmt.Sprintf("workload_api: %s\nadmin: \"{{admin}}\"\n", s.AgentAddr())
	trailOf := func(name string) string { return filepath.Join(dir, name+"-audit.jsonl") }
	auditConf := func(name string) string {
		return fmt.Sprintf("audit: {path: %q, checkpoint_every: 25}\n", trailOf(name))
	}
	backendAudit := fmt.Sprintf("audit: {path: %q, checkpoint_every: 25, export: {endpoint: %q, insecure: true}}\n", trailOf("backend"), j.OTLP)
	backend := startSidecar(t, s, bin, uidBackend, "backend", common+backendAudit+fmt.Sprintf(`inbound:
  - name: web
    listen: %q
    app: %q
    protocol: http
    allow: [spiffe://example.org/frontend]
    routes: [{name: orders, peers: [spiffe://example.org/frontend], paths: [/orders/*]}]
    jwt: {require: true}
  - name: tcp
    listen: %q
    app: %q
    allow: [spiffe://example.org/frontend]
`, inWeb, httpLn.Addr(), inTCP, echo))
	frontend := startSidecar(t, s, bin, uidFrontend, "frontend", common+auditConf("frontend")+fmt.Sprintf(`outbound:
  - name: web
    listen: %q
    upstream: %q
    expect: [spiffe://example.org/backend]
    protocol: http
  - name: tcp
    listen: %q
    upstream: %q
    expect: [spiffe://example.org/backend]
`, outWeb, inWeb, outTCP, inTCP))
	intruder := startSidecar(t, s, bin, uidIntruder, "intruder", common+fmt.Sprintf(`outbound:
  - name: tcp
    listen: %q
    upstream: %q
    expect: [spiffe://example.org/backend]
`, intruderTCP, inTCP))

	for i := range 20 {
		path := "/orders/1"
		if i%5 == 4 {
			path = "/admin" // no route: route_denied
		}
		resp, err := http.Get("http://" + outWeb + path)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	for range 3 {
		if reply, err := exchange(outTCP, "hello"); err != nil || reply != "hello" {
			t.Fatalf("tcp through the sidecars: %q %v", reply, err)
		}
	}
	if reply, _ := exchange(intruderTCP, "let me in"); reply != "" {
		t.Fatalf("the intruder was answered: %q", reply)
	}
	time.Sleep(200 * time.Millisecond) // the last access lines
	for _, sc := range []*sidecartest.Sidecar{frontend, backend, intruder} {
		if err := sc.Stop(20 * time.Second); err != nil {
			t.Fatalf("%s: %v", sc.Name, err)
		}
	}

	// Every decision of the backend's access log, once, in its trail.
	key := func(m map[string]any) string {
		return fmt.Sprintf("%v|%v|%v|%v|%v|%v", m["listener"], m["decision"], m["reason"], m["peer_id"], m["path"], m["method"])
	}
	logged := map[string]int{}
	for _, line := range backend.LogLines(`"msg":"access"`) {
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatal(err)
		}
		logged[key(m)]++
	}
	records := readTrail(t, trailOf("backend"))
	audited := map[string]int{}
	kinds := map[string]int{}
	for _, r := range records {
		switch r["type"] {
		case "decision":
			audited[key(r)]++
			if r["listener"] == "web" && r["decision"] == "allow" && (r["route"] != "orders" || r["group"] == nil || r["transport"] != "http") {
				t.Errorf("an allowed request's record lacks its route, group or transport: %v", r)
			}
		case "credential":
			kinds[fmt.Sprint(r["kind"])]++
		}
	}
	if len(logged) == 0 || fmt.Sprint(logged) != fmt.Sprint(audited) {
		t.Errorf("the backend's decisions:\nlogged  %v\naudited %v", logged, audited)
	}
	if logged["web|deny|route_denied|spiffe://example.org/frontend|/admin|GET"] != 4 ||
		logged["tcp|deny|unauthorized|spiffe://example.org/intruder|<nil>|<nil>"] != 1 {
		t.Errorf("the run's decisions are not the ones sent: %v", logged)
	}
	if kinds["svid_rotated"] == 0 || kinds["bundle_updated"] == 0 {
		t.Errorf("the backend's trail lacks the SVID and bundle events: %v", kinds)
	}
	// The frontend fetched a JWT-SVID for the backend's audience (once:
	// then it is cached).
	fetched := 0
	for _, r := range readTrail(t, trailOf("frontend")) {
		if r["kind"] == "jwt_svid_fetched" {
			fetched++
			if r["audience"] != "spiffe://example.org/backend" || r["until"] == nil {
				t.Errorf("jwt_svid_fetched: %v", r)
			}
		}
	}
	if fetched == 0 {
		t.Error("the frontend's trail has no jwt_svid_fetched")
	}

	// Each of the backend's events and gaps reached the collector once,
	// its body exactly its line in the trail; the sidecar sent what it
	// held before it stopped.
	raw, err := os.ReadFile(trailOf("backend"))
	if err != nil {
		t.Fatal(err)
	}
	var lines []string
	for line := range strings.Lines(string(raw)) {
		if !strings.Contains(line, `"type":"checkpoint"`) {
			lines = append(lines, strings.TrimSuffix(line, "\n"))
		}
	}
	var exported []string
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) { // Jaeger's output, through a pipe
		if exported = j.LogBodies(); len(exported) >= len(lines) || time.Now().After(deadline) {
			break
		}
	}
	slices.Sort(lines)
	slices.Sort(exported)
	if len(lines) == 0 || !slices.Equal(lines, exported) {
		t.Errorf("the collector has %d records of the backend's trail, want its %d event lines exactly once", len(exported), len(lines))
	}

	// Verified against the trust bundle, and nothing secret in any trail.
	bundle := filepath.Join(dir, "bundle.pem")
	pem, err := exec.CommandContext(ctx, s.ServerBin(), "bundle", "show", "-socketPath", s.ServerSocket()).Output()
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bundle, pem, 0o644); err != nil {
		t.Fatal(err)
	}
	for name, writer := range map[string]string{"backend": "spiffe://example.org/backend", "frontend": "spiffe://example.org/frontend"} {
		out, err := exec.CommandContext(ctx, bin, "audit", "verify", "-bundle", bundle, trailOf(name)).CombinedOutput()
		if err != nil || !strings.Contains(string(out), "signed by "+writer) {
			t.Errorf("credflow audit verify %s: %v\n%s", name, err, out)
		}
		raw, err := os.ReadFile(trailOf(name))
		if err != nil {
			t.Fatal(err)
		}
		for _, secret := range []string{"eyJ", "PRIVATE KEY", "BEGIN CERTIFICATE", "Bearer"} {
			if strings.Contains(string(raw), secret) {
				t.Errorf("the %s trail holds %q", name, secret)
			}
		}
	}
}

// readTrail returns the records of an audit trail.
func readTrail(t *testing.T, path string) []map[string]any {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var records []map[string]any
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var m map[string]any
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		records = append(records, m)
	}
	return records
}

// exchange sends msg through addr, half-closes and reads the reply.
func exchange(addr, msg string) (string, error) {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, msg); err != nil {
		return "", err
	}
	c.(*net.TCPConn).CloseWrite()
	b, err := io.ReadAll(c)
	return string(b), err
}
