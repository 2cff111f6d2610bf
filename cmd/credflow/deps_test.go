package main

import (
	"os/exec"
	"strings"
	"testing"
)

// TestBinaryLinksNoExperiments: the sidecar binary links the key-exchange
// policy but none of the post-quantum experiments, the benchmark harness or
// the test harnesses.
func TestBinaryLinksNoExperiments(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	deps := map[string]bool{}
	for _, p := range strings.Fields(string(out)) {
		deps[p] = true
	}
	if !deps["github.com/credflow/credflow/pqc"] || !deps["github.com/credflow/credflow/proxy"] {
		t.Fatal("the binary does not link pqc and proxy: the dependency list is not what this test expects")
	}
	for p := range deps {
		for _, banned := range []string{
			"github.com/cloudflare/circl",
			"github.com/credflow/credflow/pqc/mldsatoken",
			"github.com/credflow/credflow/bench",
			"github.com/credflow/credflow/internal/testca",
			"github.com/credflow/credflow/internal/spiretest",
			"github.com/credflow/credflow/internal/sidecartest",
			"github.com/credflow/credflow/internal/demo",
			"github.com/credflow/credflow/internal/wlapitest",
			"gonum.org/v1/plot",
		} {
			if p == banned || strings.HasPrefix(p, banned+"/") {
				t.Errorf("the credflow binary links %s", p)
			}
		}
	}
}
