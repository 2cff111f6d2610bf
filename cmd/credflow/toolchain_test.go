package main

import (
	"os"
	"regexp"
	"strings"
	"testing"
)

// TestToolchainPinned: the image is built with the toolchain the tests and
// govulncheck run with. The Go version the Dockerfile's build stage uses
// (its GOTOOLCHAIN, else its golang image's tag) equals the toolchain line
// of go.mod, bench/go.mod and deploy/k8s/go.mod and the Makefile's
// GOTOOLCHAIN; every base image is pinned by digest; make vulncheck scans
// a binary built with the Dockerfile's flags; and the build context leaves
// out build output and VCS data.
func TestToolchainPinned(t *testing.T) {
	read := func(path string) string {
		t.Helper()
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		return strings.ReplaceAll(string(b), "\\\n", " ") // continuation lines
	}
	one := func(name, text, pattern string) string {
		t.Helper()
		m := regexp.MustCompile(pattern).FindAllStringSubmatch(text, -1)
		if len(m) != 1 {
			t.Fatalf("%s: %d matches of %s, want one", name, len(m), pattern)
		}
		return m[0][1]
	}
	want := one("go.mod", read("../../go.mod"), `(?m)^toolchain (go[0-9.]+)$`)
	makefile := read("../../Makefile")
	docker := read("../../Dockerfile")
	got := map[string]string{
		"deploy/k8s/go.mod":      one("deploy/k8s/go.mod", read("../../deploy/k8s/go.mod"), `(?m)^toolchain (go[0-9.]+)$`),
		"bench/go.mod":           one("bench/go.mod", read("../../bench/go.mod"), `(?m)^toolchain (go[0-9.]+)$`),
		"Makefile's GOTOOLCHAIN": one("Makefile", makefile, `(?m)^export GOTOOLCHAIN := (\S+)$`),
	}

	// The build stage: the first FROM, up to the next.
	froms := regexp.MustCompile(`(?m)^FROM\s+(\S+)(?:\s+AS\s+\S+)?\s*$`).FindAllStringSubmatchIndex(docker, -1)
	if len(froms) < 2 {
		t.Fatalf("the Dockerfile has %d FROM lines, want a build stage and a runtime stage", len(froms))
	}
	build := docker[froms[0][0]:froms[1][0]]
	goImage := docker[froms[0][2]:froms[0][3]]
	if env := regexp.MustCompile(`(?m)^ENV GOTOOLCHAIN=(\S+)$`).FindStringSubmatch(build); env != nil && env[1] != "local" {
		got["Dockerfile's GOTOOLCHAIN"] = env[1]
	} else {
		// Without GOTOOLCHAIN, the official image's own Go (it sets
		// GOTOOLCHAIN=local).
		tag := regexp.MustCompile(`^golang:([0-9]+\.[0-9]+\.[0-9]+)[-@]`).FindStringSubmatch(goImage)
		if tag == nil {
			t.Fatalf("the Dockerfile's build stage %s names no exact Go version and sets no GOTOOLCHAIN", goImage)
		}
		got["Dockerfile's golang image"] = "go" + tag[1]
	}
	for where, v := range got {
		if v != want {
			t.Errorf("%s is %s, go.mod's toolchain is %s", where, v, want)
		}
	}

	digest := regexp.MustCompile(`^[^@\s]+:[^@\s]+@sha256:[0-9a-f]{64}$`)
	for _, f := range froms {
		if image := docker[f[2]:f[3]]; !digest.MatchString(image) {
			t.Errorf("FROM %s: not pinned by digest (image:tag@sha256:...)", image)
		}
	}

	// make vulncheck: a binary built as the Dockerfile builds it, scanned.
	step := one("Dockerfile", docker, `(?m)^RUN (CGO_ENABLED=0 go build .*)$`)
	recipe := one("Makefile", makefile, `(?ms)^vulncheck:.*?\n((?:\t.*\n)+)`)
	scan := one("Makefile vulncheck", recipe, `(?m)^\t\S*govulncheck .*-mode=binary (\S+)$`)
	build = one("Makefile vulncheck", recipe, `(?m)^\t(CGO_ENABLED=0 \$\(GO\) build .*-o `+regexp.QuoteMeta(scan)+` .*)$`)
	ldflags := `-ldflags "([^"]*)"`
	imageFlags := strings.ReplaceAll(one("Dockerfile", step, ldflags), "${VERSION}", "$(VERSION)")
	scanFlags := strings.ReplaceAll(one("Makefile vulncheck", build, ldflags), "$(LDFLAGS)",
		one("Makefile", makefile, `(?m)^LDFLAGS := (.*)$`))
	if imageFlags != scanFlags {
		t.Errorf("make vulncheck scans a binary linked with -ldflags %q, the image's is linked with %q", scanFlags, imageFlags)
	}
	for _, flag := range []string{"-trimpath", "./cmd/credflow"} {
		if !strings.Contains(build, flag) {
			t.Errorf("make vulncheck's build of %s lacks the Dockerfile's %s: %s", scan, flag, build)
		}
	}

	ignore := regexp.MustCompile(`(?m)^\s*#.*$`).ReplaceAllString(read("../../.dockerignore"), "")
	for _, p := range []string{".git", "bin", "dist", "*.test", "bench/results", "docs/soak"} {
		if !regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(p) + `/?$`).MatchString(ignore) {
			t.Errorf(".dockerignore does not leave out %s", p)
		}
	}
}
