package config_test

import (
	"os/exec"
	"slices"
	"strings"
	"testing"
)

// TestLeaf: the configuration imports none of the data plane, none of the
// token code, and none of quic-go, grpc or prometheus; of the project only
// the small packages whose rules it checks a file against.
func TestLeaf(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	deps := strings.Fields(string(out))
	if !slices.Contains(deps, "gopkg.in/yaml.v3") {
		t.Fatal("the dependency list lacks yaml.v3: it is not what this test expects")
	}
	leaves := []string{
		"github.com/credflow/credflow/internal/config",
		"github.com/credflow/credflow/internal/peercred",
		"github.com/credflow/credflow/pqc",
		"github.com/credflow/credflow/proxy/authz",
		"github.com/credflow/credflow/proxy/defaults",
		"github.com/credflow/credflow/proxy/limit",
		"github.com/credflow/credflow/proxy/route",
		"github.com/credflow/credflow/token",
	}
	for _, p := range deps {
		switch {
		case strings.HasPrefix(p, "github.com/credflow/credflow/") && !slices.Contains(leaves, p):
			t.Errorf("internal/config imports %s, which is not one of the small leaves it may use", p)
		case strings.HasPrefix(p, "github.com/quic-go/"), strings.HasPrefix(p, "google.golang.org/grpc"),
			strings.HasPrefix(p, "github.com/prometheus/"):
			t.Errorf("internal/config links %s", p)
		}
	}
}
