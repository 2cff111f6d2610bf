package e2e_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/credflow/credflow/internal/sidecartest"
)

// curlResult is a token endpoint's answer to a curl run as some uid.
type curlResult struct {
	exit   int // curl's exit code: 7 is "could not connect"
	status int
	reason string // X-Credflow-Reason
	body   map[string]any
	raw    string
}

// curlAs posts form to url with curl running as uid:gid (no supplementary
// groups), so that the sidecar sees a caller of that uid. extra goes
// before the URL (--unix-socket PATH, -H ...).
func curlAs(t *testing.T, ctx context.Context, dir string, uid, gid int, form url.Values, u string, extra ...string) curlResult {
	t.Helper()
	args := append([]string{"-q", "-sS", "-i", "--max-time", "20", "-d", form.Encode()}, extra...)
	cmd := exec.CommandContext(ctx, "curl", append(args, u)...)
	cmd.Dir = dir
	cmd.Env = []string{"PATH=/usr/bin:/bin", "HOME=/"}
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), Groups: []uint32{}}}
	out, err := cmd.Output()
	r := curlResult{exit: cmd.ProcessState.ExitCode(), raw: string(out)}
	if err != nil {
		return r
	}
	resp, err := http.ReadResponse(bufio.NewReader(strings.NewReader(string(out))), nil)
	if err != nil {
		t.Fatalf("curl as uid %d: %v\n%s", uid, err, out)
	}
	defer resp.Body.Close()
	r.status, r.reason = resp.StatusCode, resp.Header.Get("X-Credflow-Reason")
	json.NewDecoder(resp.Body).Decode(&r.body)
	return r
}

// TestE2ETokenEndpointCallers: a workload's sidecar on real SPIRE serves
// its token endpoint, over loopback TCP and over a unix socket, to the
// uid it is configured for; another uid on the same host, root included,
// is refused (caller_not_allowed) and gets no token; an audience outside
// the list and a Host that is not loopback are refused; each request is
// logged with the caller's uid and never the token. A reload that adds a
// uid to the callers serves it.
func TestE2ETokenEndpointCallers(t *testing.T) {
	s, bin, _ := startWorkloads(t, 0, map[int]string{uidFrontend: "/frontend", uidIntruder: "/intruder"})
	ctx := t.Context()
	const backend = "spiffe://example.org/backend"
	addrs := make([]string, 3)
	for i := range addrs {
		var err error
		if addrs[i], err = sidecartest.FreeAddr(); err != nil {
			t.Fatal(err)
		}
	}
	tokTCP := addrs[0]
	// The unix socket lives in a directory of the workload's uid.
	sockDir := filepath.Join(s.Dir(), "frontend-run")
	if err := os.Mkdir(sockDir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(sockDir, uidFrontend, uidFrontend); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(sockDir, "token.sock")
	common := fmt.Sprintf("workload_api: %s\nadmin: \"{{admin}}\"\n", s.AgentAddr())
	out := func(listen string) string {
		return fmt.Sprintf("outbound:\n  - {name: b, listen: %q, upstream: \"127.0.0.1:1\", expect: [%s]}\n", listen, backend)
	}
	tcpSidecar := startSidecar(t, s, bin, uidFrontend, "frontend-tcp", common+fmt.Sprintf(
		"token_endpoint: {listen: %q, callers: {uids: [%d]}, audiences: [%s]}\n", tokTCP, uidFrontend, backend)+out(addrs[1]))
	unixSidecar := startSidecar(t, s, bin, uidFrontend, "frontend-unix", common+fmt.Sprintf(
		"token_endpoint: {listen: \"unix://%s\", socket_group: %d, callers: {uids: [%d]}, audiences: [%s]}\n", sock, uidFrontend, uidFrontend, backend)+out(addrs[2]))

	ok := url.Values{"grant_type": {"urn:ietf:params:oauth:grant-type:token-exchange"}, "audience": {backend}}
	tcpURL := "http://" + tokTCP + "/token"
	var issued []string
	check := func(name string, r curlResult, wantStatus int, wantReason string) {
		t.Helper()
		if r.exit != 0 || r.status != wantStatus || r.reason != wantReason {
			head, _, _ := strings.Cut(r.raw, "\r\n\r\n") // not the body: no token in the test output
			t.Fatalf("%s: curl exit %d, %d %q (error %v, token issued: %v), want %d %q\n%s",
				name, r.exit, r.status, r.reason, r.body["error"], r.body["access_token"] != nil, wantStatus, wantReason, head)
		}
		tok, _ := r.body["access_token"].(string)
		if wantStatus != 200 {
			if tok != "" || strings.Contains(r.raw, "eyJ") {
				t.Fatalf("%s: a refusal carried a token", name)
			}
			return
		}
		c := claimsOf(tok)
		if c["sub"] != "spiffe://example.org/frontend" || fmt.Sprint(c["aud"]) != "["+backend+"]" {
			t.Fatalf("%s: token claims %v, want the frontend's JWT-SVID for %s", name, c, backend)
		}
		issued = append(issued, tok)
	}

	// Loopback TCP: the workload's uid gets its JWT-SVID; the other
	// workload's uid, on the same host, is refused.
	check("TCP, uid 1001", curlAs(t, ctx, s.Dir(), uidFrontend, uidFrontend, ok, tcpURL), 200, "")
	check("TCP, uid 1003", curlAs(t, ctx, s.Dir(), uidIntruder, uidIntruder, ok, tcpURL), 403, "caller_not_allowed")
	other := url.Values{"grant_type": ok["grant_type"], "audience": {"spiffe://example.org/intruder"}}
	check("TCP, uid 1001, an audience not listed", curlAs(t, ctx, s.Dir(), uidFrontend, uidFrontend, other, tcpURL), 400, "audience_not_allowed")
	check("TCP, uid 1001, Host not loopback", curlAs(t, ctx, s.Dir(), uidFrontend, uidFrontend, ok, tcpURL, "-H", "Host: rebound.example"), 400, "bad_host")
	// Root is not a caller either, unless listed.
	resp, err := http.PostForm(tcpURL, ok)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 403 || resp.Header.Get("X-Credflow-Reason") != "caller_not_allowed" {
		t.Fatalf("TCP, root: %d %q, want 403 caller_not_allowed", resp.StatusCode, resp.Header.Get("X-Credflow-Reason"))
	}

	// Unix socket, mode 0660 group 1001: the workload's uid is served; uid
	// 1003 in group 1001 can open the socket and is refused by SO_PEERCRED;
	// uid 1003 outside the group cannot open it.
	fi, err := os.Lstat(sock)
	if err != nil {
		t.Fatal(err)
	}
	if st := fi.Sys().(*syscall.Stat_t); fi.Mode().Type() != os.ModeSocket || fi.Mode().Perm() != 0o660 || st.Uid != uidFrontend || st.Gid != uidFrontend {
		t.Fatalf("token socket %v owned by %d:%d, want a 0660 socket of %d:%d", fi.Mode(), st.Uid, st.Gid, uidFrontend, uidFrontend)
	}
	unixURL := "http://localhost/token"
	check("unix, uid 1001", curlAs(t, ctx, s.Dir(), uidFrontend, uidFrontend, ok, unixURL, "--unix-socket", sock), 200, "")
	check("unix, uid 1003 in group 1001", curlAs(t, ctx, s.Dir(), uidIntruder, uidFrontend, ok, unixURL, "--unix-socket", sock), 403, "caller_not_allowed")
	if r := curlAs(t, ctx, s.Dir(), uidIntruder, uidIntruder, ok, unixURL, "--unix-socket", sock); r.exit != 7 {
		t.Fatalf("unix, uid 1003 outside the group: curl exit %d, want 7 (could not connect)\n%s", r.exit, r.raw)
	}

	// The log: one line per request with the caller's uid and the reason,
	// never a token.
	lines := tcpSidecar.LogLines(`"msg":"token"`)
	want := []string{`"uid":1001,"audience":"` + backend + `","token_type"`, `"uid":1003,"audience":"` + backend + `","reason":"caller_not_allowed"`,
		`"uid":1001,"audience":"spiffe://example.org/intruder","reason":"audience_not_allowed"`, `"uid":1001,"audience":"` + backend + `","reason":"bad_host"`,
		`"uid":0,"audience":"` + backend + `","reason":"caller_not_allowed"`}
	if len(lines) != len(want) {
		t.Fatalf("TCP sidecar token log lines:\n%s\nwant %d", strings.Join(lines, "\n"), len(want))
	}
	for i, w := range want {
		if !strings.Contains(lines[i], w) {
			t.Errorf("TCP sidecar token log line %d: %s\nwant %s", i, lines[i], w)
		}
	}
	if lines := unixSidecar.LogLines(`"reason":"caller_not_allowed"`); len(lines) != 1 || !strings.Contains(lines[0], `"uid":1003,"gid":1001,"pid":`) {
		t.Errorf("unix sidecar refusal log: %v, want uid 1003 gid 1001 and its pid", lines)
	}
	if n, _ := tcpSidecar.Metric(ctx, "credflow_refusals_total", "direction=token_endpoint", "reason=caller_not_allowed"); n != 2 {
		t.Errorf("credflow_refusals_total{direction=token_endpoint,reason=caller_not_allowed} = %v, want 2", n)
	}

	// SIGHUP with uid 1003 added to the callers: it is served from then on.
	cfg, err := os.ReadFile(tcpSidecar.Config)
	if err != nil {
		t.Fatal(err)
	}
	widened := strings.Replace(string(cfg), fmt.Sprintf("uids: [%d]", uidFrontend), fmt.Sprintf("uids: [%d, %d]", uidFrontend, uidIntruder), 1)
	if err := os.WriteFile(tcpSidecar.Config, []byte(widened), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := tcpSidecar.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(30 * time.Second); len(tcpSidecar.LogLines("configuration reloaded")) == 0; time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("no reload in the log after SIGHUP:\n%s", tcpSidecar.Tail(2000))
		}
	}
	r := curlAs(t, ctx, s.Dir(), uidIntruder, uidIntruder, ok, tcpURL)
	if r.status != 200 || claimsOf(fmt.Sprint(r.body["access_token"]))["sub"] != "spiffe://example.org/frontend" {
		t.Fatalf("uid 1003 after it was added to the callers: %d %q", r.status, r.reason)
	}
	issued = append(issued, fmt.Sprint(r.body["access_token"]))
	if len(issued) != 3 {
		t.Fatalf("%d tokens issued, want 3", len(issued))
	}
	for _, sc := range []*sidecartest.Sidecar{tcpSidecar, unixSidecar} {
		b, _ := os.ReadFile(sc.Log)
		for _, tok := range issued {
			if strings.Contains(string(b), tok[:40]) || strings.Contains(string(b), "eyJ") {
				t.Errorf("%s log holds a token", sc.Name)
			}
		}
	}
}
