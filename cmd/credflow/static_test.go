package main

import (
	"debug/elf"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// TestStaticBuild builds the binary with the Dockerfile's flags and checks
// that it is static (no interpreter, no dynamic section) and stamped with
// its version, so that it runs on distroless or scratch.
func TestStaticBuild(t *testing.T) {
	docker, err := os.ReadFile("../../Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	joined := strings.ReplaceAll(string(docker), "\\\n", " ") // continuation lines
	line := regexp.MustCompile(`(?m)^RUN (CGO_ENABLED=0 go build .*)$`).FindStringSubmatch(joined)
	if line == nil {
		t.Fatal("the Dockerfile has no CGO_ENABLED=0 go build step")
	}
	step := line[1]
	for _, flag := range []string{"CGO_ENABLED=0", "-trimpath", "internal/app.version="} {
		if !strings.Contains(step, flag) {
			t.Fatalf("the Dockerfile's build step lacks %s: %s", flag, step)
		}
	}
	out := filepath.Join(t.TempDir(), "credflow")
	cmd := exec.Command("go", "build", "-trimpath", "-ldflags",
		"-w -X github.com/credflow/credflow/internal/app.version=v0.0.0-test", "-o", out, ".")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, b)
	}
	f, err := elf.Open(out)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP || p.Type == elf.PT_DYNAMIC {
			t.Fatalf("the binary has a %v program header: it is not static", p.Type)
		}
	}
	if libs, _ := f.ImportedLibraries(); len(libs) > 0 {
		t.Fatalf("the binary imports %v", libs)
	}
	v, err := exec.Command(out, "version").Output()
	if err != nil || !strings.HasPrefix(string(v), "credflow v0.0.0-test ") {
		t.Fatalf("version: %q, %v", v, err)
	}
}
