package app_test

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/credflow/credflow/audit"
	"github.com/credflow/credflow/internal/testca"
)

// TestAuditVerifyCommand: `credflow audit verify` passes an untouched
// trail with a summary, fails a tampered one naming the record, refuses a
// signer from outside the bundle, and explains a bad command line.
func TestAuditVerifyCommand(t *testing.T) {
	td := spiffeid.RequireTrustDomainFromString("example.org")
	ca := testca.New(t, td)
	dir := t.TempDir()
	path := filepath.Join(dir, "audit.jsonl")
	w, err := audit.New(audit.Config{Path: path, CheckpointEvery: 5, CheckpointInterval: time.Hour,
		SVIDs: ca.Issue(t, spiffeid.RequireFromPath(td, "/frontend"))})
	if err != nil {
		t.Fatal(err)
	}
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- w.Run(ctx) }()
	for i := range 8 {
		w.Write(audit.Event{Type: audit.TypeDecision, PeerID: "spiffe://example.org/client", Decision: audit.Allow,
			Method: "GET", Path: "/items/" + string(rune('a'+i))})
	}
	for w.Stats().Events < 8 {
		time.Sleep(time.Millisecond)
	}
	stop()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	bundle := testca.WriteBundlePEM(t, dir, ca)
	otherBundle := testca.WriteBundlePEM(t, dir, testca.New(t, td))

	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	tampered := filepath.Join(dir, "tampered.jsonl")
	if err := os.WriteFile(tampered, bytes.Replace(data, []byte("/items/c"), []byte("/items/x"), 1), 0o600); err != nil {
		t.Fatal(err)
	}

	for _, tc := range []struct {
		name     string
		args     []string
		code     int
		out, err string
	}{
		{"untouched", []string{"-bundle", bundle, path}, 0,
			"ok: 10 records, 2 checkpoints signed by spiffe://example.org/frontend, 0 gaps\n", ""},
		{"flags after the file", []string{path, "-bundle", bundle}, 0, "ok: 10 records", ""},
		{"no bundle", []string{"-insecure-no-bundle", path}, 0, "(not checked against a trust bundle)", ""},
		{"tampered", []string{"-bundle", bundle, tampered}, 1, "",
			"credflow audit: record 3 (line 3 of " + tampered + ") (altered): its hash is not the prev of record 4"},
		{"another CA", []string{"-bundle", otherBundle, path}, 1, "", "(forged): checkpoint signer's chain does not verify against the trust bundle"},
		{"bundle for another trust domain", []string{"-bundle", bundle, "-trust-domain", "other.org", path}, 1, "", "(forged)"},
		{"neither bundle nor -insecure-no-bundle", []string{path}, 2, "", "want exactly one of -bundle FILE.pem or -insecure-no-bundle"},
		{"no file", []string{"-insecure-no-bundle"}, 2, "", "no FILE"},
		{"missing file", []string{"-insecure-no-bundle", filepath.Join(dir, "nope")}, 1, "", "no such file"},
		{"bundle not PEM", []string{"-bundle", path, path}, 1, "", "no PEM CERTIFICATE block"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, out, errs := credflow(append([]string{"audit", "verify"}, tc.args...)...)
			if code != tc.code || !strings.Contains(out, tc.out) || !strings.Contains(errs, tc.err) {
				t.Errorf("credflow audit verify %s: exit %d, want %d\nstdout: %s(want %q)\nstderr: %s(want %q)",
					strings.Join(tc.args, " "), code, tc.code, out, tc.out, errs, tc.err)
			}
		})
	}

	// The help names every flag, and `credflow help audit` the usage.
	code, _, help := credflow("audit", "verify", "-help")
	for _, flag := range []string{"-bundle", "-trust-domain", "-insecure-no-bundle", "-allow-unsigned", "-open", "-partial"} {
		if code != 0 || !strings.Contains(help, flag) {
			t.Errorf("audit verify -help: exit %d, no %q in:\n%s", code, flag, help)
		}
	}
	if code, out, _ := credflow("help", "audit"); code != 0 || !strings.Contains(out, "credflow audit verify (-bundle FILE.pem") {
		t.Errorf("credflow help audit: exit %d:\n%s", code, out)
	}
	if code, _, errs := credflow("audit", "check"); code != 2 || !strings.Contains(errs, `unknown audit command "check"`) {
		t.Errorf("credflow audit check: exit %d:\n%s", code, errs)
	}
}
