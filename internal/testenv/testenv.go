// Package testenv tells a test whether this machine gives it what it needs
// (root, the real SPIRE binaries) and skips it when not, so that
// `go test -short ./...` is a fast loop a non-root developer can run.
//
// A skip is a failure under CI=true: CI and `make test` run as root with
// SPIRE built, so a test that would skip there has lost its proof, and the
// run must say so rather than pass.
package testenv

import (
	"os"
	"os/exec"
	"testing"
)

// ci reports whether the run is CI's (CI=true), where nothing may skip.
func ci() bool { return os.Getenv("CI") == "true" }

// skip skips t with reason, or fails it under CI=true.
func skip(t testing.TB, reason string) {
	t.Helper()
	if ci() {
		t.Fatalf("%s, and CI=true: under CI this test must run (make test runs as root with SPIRE built)", reason)
	}
	t.Skip(reason)
}

// NeedsRoot skips t unless the process runs as root: the test runs
// workloads as distinct uids, makes network namespaces or installs packet
// filter rules. What names why root is needed.
func NeedsRoot(t testing.TB, what string) {
	t.Helper()
	if os.Geteuid() != 0 {
		skip(t, what+" needs root")
	}
}

// NeedsSPIRE skips t under -short: it runs a real SPIRE server and agent,
// which takes seconds to start and the binaries `make spire` builds.
func NeedsSPIRE(t testing.TB) {
	t.Helper()
	if testing.Short() {
		skip(t, "runs the real SPIRE server and agent (skipped by -short)")
	}
}

// NeedsHydra skips t under -short: it runs a real Ory Hydra, the binary
// `make hydra` builds.
func NeedsHydra(t testing.TB) {
	t.Helper()
	if testing.Short() {
		skip(t, "runs the real Ory Hydra (skipped by -short)")
	}
}

// Long skips t under -short: it runs for tens of seconds (storms, floods,
// rotations) and a shorter test covers the same code in the fast loop.
func Long(t testing.TB) {
	t.Helper()
	if testing.Short() {
		skip(t, "long test (skipped by -short)")
	}
}

// NeedsRateLimitService skips t under -short: it runs Redis and the real
// rate limit service, the binary `make ratelimit` builds.
func NeedsRateLimitService(t testing.TB) {
	t.Helper()
	if testing.Short() {
		skip(t, "runs Redis and the real rate limit service (skipped by -short)")
	}
}

// NeedsCommand skips t when the command name is not on PATH; install says
// how to get it (make deps installs the Debian packages the tests use).
func NeedsCommand(t testing.TB, name, install string) {
	t.Helper()
	if _, err := exec.LookPath(name); err != nil {
		skip(t, name+" is not installed ("+install+")")
	}
}

// NeedsJaeger skips t under -short: it runs a real Jaeger, the binary
// `make jaeger` builds.
func NeedsJaeger(t testing.TB) {
	t.Helper()
	if testing.Short() {
		skip(t, "runs the real Jaeger (skipped by -short)")
	}
}
