package proxy_test

import (
	"os/exec"
	"slices"
	"strings"
	"testing"
)

// TestSubpackagesDoNotImportProxy: arrows point down. The packages under
// proxy/ serve the proxy and never import it, directly or not.
func TestSubpackagesDoNotImportProxy(t *testing.T) {
	const proxy = "github.com/credflow/credflow/proxy"
	out, err := exec.Command("go", "list", "-f", "{{.ImportPath}} {{join .Deps \" \"}}", "./...").CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	checked := 0
	for line := range strings.Lines(string(out)) {
		fields := strings.Fields(line)
		if len(fields) == 0 || fields[0] == proxy {
			continue
		}
		checked++
		if slices.Contains(fields[1:], proxy) {
			t.Errorf("%s imports %s", fields[0], proxy)
		}
	}
	if checked == 0 {
		t.Fatal("go list named no package under proxy/: the list is not what this test expects")
	}
}
