package testenv

import (
	"os"
	"os/exec"
	"strings"
	"testing"
)

// TestSkipFailsUnderCI runs a test that needs root as a child process: it
// must skip without CI=true and fail with it. The child is this test binary
// with -test.short, so NeedsSPIRE skips whoever runs it.
func TestSkipFailsUnderCI(t *testing.T) {
	if os.Getenv("TESTENV_CHILD") == "1" {
		NeedsSPIRE(t)
		t.Fatal("NeedsSPIRE did not stop a -short test")
	}
	for _, tc := range []struct {
		ci       string
		wantFail bool
		wantOut  string
	}{
		{ci: "", wantFail: false, wantOut: "--- SKIP"},
		{ci: "true", wantFail: true, wantOut: "must run"},
	} {
		cmd := exec.Command(os.Args[0], "-test.run=^TestSkipFailsUnderCI$", "-test.short", "-test.v")
		cmd.Env = append(os.Environ(), "TESTENV_CHILD=1", "CI="+tc.ci)
		out, err := cmd.CombinedOutput()
		if failed := err != nil; failed != tc.wantFail {
			t.Errorf("CI=%q: failed=%v, want %v\n%s", tc.ci, failed, tc.wantFail, out)
		}
		if !strings.Contains(string(out), tc.wantOut) {
			t.Errorf("CI=%q: output lacks %q:\n%s", tc.ci, tc.wantOut, out)
		}
	}
}
