package e2e_test

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	entryv1 "github.com/spiffe/spire-api-sdk/proto/spire/api/server/entry/v1"
	"github.com/spiffe/spire-api-sdk/proto/spire/api/types"

	"github.com/credflow/credflow/internal/app"
	"github.com/credflow/credflow/internal/spiretest"
	"github.com/credflow/credflow/internal/testenv"
	"github.com/credflow/credflow/register"
)

func startSPIRE(t *testing.T) *spiretest.SPIRE {
	t.Helper()
	return startSPIREWith(t, spiretest.Options{})
}

func startSPIREWith(t *testing.T, opts spiretest.Options) *spiretest.SPIRE {
	t.Helper()
	testenv.NeedsSPIRE(t)
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	opts.Logf = t.Logf
	s, err := spiretest.Start(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Log(s.Logs(6000))
		}
		s.Close()
	})
	return s
}

// run runs the credflow command line in-process.
func run(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errOut bytes.Buffer
	code = app.Run(t.Context(), args, &out, &errOut)
	return code, out.String(), errOut.String()
}

func writeFile(t *testing.T, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "entries.yaml")
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// serverEntries returns the entries on the server by SPIFFE ID path.
func serverEntries(t *testing.T, s *spiretest.SPIRE) map[string]*types.Entry {
	t.Helper()
	all, err := register.List(t.Context(), entryv1.NewEntryClient(s.Conn()))
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]*types.Entry{}
	for _, e := range all {
		if e.SpiffeId.Path != "/node" { // the join token's node alias
			out[e.SpiffeId.Path] = e
		}
	}
	return out
}

func selectorsOf(e *types.Entry) string {
	var s []string
	for _, sel := range e.Selectors {
		s = append(s, sel.Type+":"+sel.Value)
	}
	return strings.Join(s, ",")
}

// TestRegisterApply runs `credflow register apply` against a real SPIRE
// server: create, re-apply with no change, dry run, update a selector,
// prune, and leave an entry made with `spire-server entry create` alone.
func TestRegisterApply(t *testing.T) {
	s := startSPIRE(t)
	sock := s.ServerSocket()
	manual := exec.Command(s.ServerBin(), "entry", "create", "-socketPath", sock,
		"-spiffeID", "spiffe://example.org/manual", "-parentID", "spiffe://example.org/node", "-selector", "unix:uid:4242")
	if out, err := manual.CombinedOutput(); err != nil {
		t.Fatalf("spire-server entry create: %v\n%s", err, out)
	}

	v1 := writeFile(t, `
entries:
  - spiffe_id: spiffe://example.org/frontend
    parent_id: spiffe://example.org/node
    selectors: [unix:uid:1001]
    x509_svid_ttl: 5m
    jwt_svid_ttl: 2m
    dns_names: [frontend.local]
  - spiffe_id: spiffe://example.org/backend
    parent_id: spiffe://example.org/node
    selectors: [unix:uid:1002]
`)
	code, out, errOut := run(t, "register", "apply", "-f", v1, "-server-socket", sock)
	if code != 0 {
		t.Fatalf("first apply: exit %d\n%s%s", code, out, errOut)
	}
	if !strings.Contains(out, "2 to create, 0 to update, 0 to delete, 0 unchanged") {
		t.Fatalf("first apply output:\n%s", out)
	}
	got := serverEntries(t, s)
	if len(got) != 3 || selectorsOf(got["/frontend"]) != "unix:uid:1001" || got["/frontend"].X509SvidTtl != 300 ||
		got["/frontend"].JwtSvidTtl != 120 || selectorsOf(got["/backend"]) != "unix:uid:1002" {
		t.Fatalf("server after first apply: %v", got)
	}
	manualEntry := got["/manual"]

	// The same file again changes nothing.
	code, out, errOut = run(t, "register", "apply", "-f", v1, "-server-socket", sock)
	if code != 0 || !strings.Contains(out, "0 to create, 0 to update, 0 to delete, 2 unchanged") {
		t.Fatalf("second apply: exit %d\n%s%s", code, out, errOut)
	}
	revisions := map[string]int64{}
	for p, e := range serverEntries(t, s) {
		revisions[p] = e.RevisionNumber
	}

	v2 := writeFile(t, `
entries:
  - spiffe_id: spiffe://example.org/frontend
    parent_id: spiffe://example.org/node
    selectors: [unix:uid:2001]
    x509_svid_ttl: 5m
    jwt_svid_ttl: 2m
    dns_names: [frontend.local]
`)
	// Dry run: prints the update and the prune, applies nothing.
	code, out, errOut = run(t, "register", "apply", "-f", v2, "-server-socket", sock, "-prune", "-dry-run")
	if code != 0 || !strings.Contains(out, "selectors: [unix:uid:1001] -> [unix:uid:2001]") ||
		!strings.Contains(out, "- delete spiffe://example.org/backend") || !strings.Contains(out, "nothing applied") {
		t.Fatalf("dry run: exit %d\n%s%s", code, out, errOut)
	}
	for p, e := range serverEntries(t, s) {
		if e.RevisionNumber != revisions[p] {
			t.Fatalf("dry run changed %s", p)
		}
	}
	if len(serverEntries(t, s)) != 3 {
		t.Fatal("dry run deleted an entry")
	}

	// Without -prune the removed entry is reported and kept.
	code, out, _ = run(t, "register", "apply", "-f", v2, "-server-socket", sock)
	if code != 0 || !strings.Contains(out, "not in the file, kept") {
		t.Fatalf("apply without prune:\n%s", out)
	}
	got = serverEntries(t, s)
	if selectorsOf(got["/frontend"]) != "unix:uid:2001" || got["/backend"] == nil {
		t.Fatalf("after the update: %v", got)
	}

	// With -prune it is deleted; the manual entry stays as it was.
	code, out, errOut = run(t, "register", "apply", "-f", v2, "-server-socket", sock, "-prune")
	if code != 0 || !strings.Contains(out, "0 to create, 0 to update, 1 to delete, 1 unchanged") {
		t.Fatalf("prune: exit %d\n%s%s", code, out, errOut)
	}
	got = serverEntries(t, s)
	if got["/backend"] != nil {
		t.Fatal("pruned entry still present")
	}
	m := got["/manual"]
	if m == nil || m.Id != manualEntry.Id || m.RevisionNumber != manualEntry.RevisionNumber || selectorsOf(m) != "unix:uid:4242" {
		t.Fatalf("the manually created entry was touched: %v", m)
	}

	// A file that does not validate applies nothing.
	bad := writeFile(t, `
entries:
  - spiffe_id: spiffe://example.org/new
    parent_id: spiffe://example.org/node
    selectors: [unix:uid:3001]
  - spiffe_id: spiffe://example.org/broken
    parent_id: spiffe://example.org/node
    selectors: [nocolon]
`)
	code, _, errOut = run(t, "register", "apply", "-f", bad, "-server-socket", sock)
	if code != 1 || !strings.Contains(errOut, "entries[1] (spiffe://example.org/broken): selectors[0]") {
		t.Fatalf("invalid file: exit %d\n%s", code, errOut)
	}
	if serverEntries(t, s)["/new"] != nil {
		t.Fatal("an entry from an invalid file was applied")
	}
}

var buildOnce = sync.OnceValues(func() (string, error) {
	binDir, err := spiretest.DefaultBinDir()
	if err != nil {
		return "", err
	}
	dir, err := os.MkdirTemp("", "credflow-build-")
	if err != nil {
		return "", err
	}
	out := filepath.Join(dir, "credflow")
	cmd := exec.Command("go", "build", "-o", out, "./cmd/credflow")
	cmd.Dir = filepath.Dir(binDir)
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build: %v\n%s", err, b)
	}
	return out, nil
})

// TestIdentityByUID: workloads running as distinct uids get distinct
// identities from a real SPIRE agent; an unregistered uid gets none, and
// `credflow identity` says why.
func TestIdentityByUID(t *testing.T) {
	testenv.NeedsRoot(t, "running workloads as other uids")
	bin, err := buildOnce()
	if err != nil {
		t.Fatalf("building credflow: %v", err)
	}
	s := startSPIRE(t)
	bin, err = s.InstallBinary(bin)
	if err != nil {
		t.Fatal(err)
	}
	for uid, path := range map[int]string{1001: "/frontend", 1003: "/other"} {
		if _, err := s.Register(t.Context(), spiretest.Entry{ID: s.ID(path), UID: uid}); err != nil {
			t.Fatal(err)
		}
	}
	for _, tc := range []struct {
		uid      int
		wantCode int
		want     string
	}{
		{1001, 0, "spiffe_id:     spiffe://example.org/frontend"},
		{1003, 0, "spiffe_id:     spiffe://example.org/other"},
		{1002, 1, "reason no_identity"},
	} {
		cmd := s.Command(t.Context(), tc.uid, bin, "identity", "-socket", s.AgentAddr(), "-wait", "20s")
		if tc.wantCode != 0 {
			cmd.Args[len(cmd.Args)-1] = "4s"
		}
		out, _ := cmd.CombinedOutput()
		if code := cmd.ProcessState.ExitCode(); code != tc.wantCode || !strings.Contains(string(out), tc.want) {
			t.Errorf("uid %d: exit %d, output:\n%s\nwant exit %d and %q", tc.uid, code, out, tc.wantCode, tc.want)
		}
		if strings.Contains(string(out), "PRIVATE KEY") || strings.Contains(string(out), "BEGIN CERTIFICATE") {
			t.Errorf("uid %d: key or certificate material printed", tc.uid)
		}
	}
}

// httpc is the plain-HTTP client of the tests: every request bounded, so
// a sidecar that never answers fails its test instead of hanging the run.
var httpc = &http.Client{Timeout: 30 * time.Second}
