package app_test

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/credflow/credflow/internal/app"
	"github.com/credflow/credflow/internal/redistest"
	"github.com/credflow/credflow/proxy/revoke"
)

// credflow runs the command line args and returns its exit code and
// output.
func credflow(args ...string) (code int, stdout, stderr string) {
	var out, errb strings.Builder
	code = app.Run(context.Background(), args, &out, &errb)
	return code, out.String(), errb.String()
}

// TestRevokeCommand: `credflow revoke` adds, lists and removes entries in
// a file and in Redis, and what it writes is what the sidecar's sources
// read; a bad command line exits 2 and says why.
func TestRevokeCommand(t *testing.T) {
	for _, backend := range []string{"file", "redis"} {
		t.Run(backend, func(t *testing.T) {
			var (
				where []string
				src   func(*revoke.List) error
			)
			if backend == "file" {
				path := filepath.Join(t.TempDir(), "revocations.json")
				where = []string{"-file", path}
				src = func(l *revoke.List) error { return (&revoke.FileSource{Path: path, List: l}).Load() }
			} else {
				srv := redistest.Start(t)
				where = []string{"-redis", srv.Addr, "-redis-key", "test:rev"}
				src = func(l *revoke.List) error {
					c := redis.NewClient(&redis.Options{Addr: srv.Addr})
					defer c.Close()
					return (&revoke.RedisSource{Client: c, Key: "test:rev", List: l}).Load(context.Background())
				}
			}
			run := func(wantCode int, args ...string) string {
				t.Helper()
				code, out, errs := credflow(append(append([]string{"revoke"}, args[:1]...), append(where, args[1:]...)...)...)
				if code != wantCode {
					t.Fatalf("credflow revoke %s: exit %d, want %d\nstdout: %s\nstderr: %s", strings.Join(args, " "), code, wantCode, out, errs)
				}
				return out + errs
			}

			before := time.Now()
			run(0, "add", "--spiffe-id", "spiffe://example.org/ns/dev/*", "--reason", "incident 42")
			run(0, "add", "-serial", "00:3A:8F:01", "-ttl", "0")
			run(0, "add", "-jti", "tok-1", "-ttl", "1h")
			out := run(0, "list")
			lines := strings.Split(strings.TrimSpace(out), "\n")
			if len(lines) != 4 {
				t.Fatalf("list printed %d lines, want a header and 3:\n%s", len(lines), out)
			}
			for i, want := range [][]string{
				{"KIND", "VALUE", "EXPIRES", "REASON"},
				{"jti", "tok-1", before.Add(time.Hour).UTC().Format("2006-01-02T15")},
				{"serial", "3a8f01", "never"},
				{"spiffe_id", "spiffe://example.org/ns/dev/*", before.Add(24 * time.Hour).UTC().Format("2006-01-02T15"), "incident 42"},
			} {
				for _, w := range want {
					if !strings.Contains(lines[i], w) {
						t.Errorf("list line %d %q lacks %q", i, lines[i], w)
					}
				}
			}

			var l revoke.List
			if err := src(&l); err != nil {
				t.Fatal(err)
			}
			now := time.Now()
			if _, ok := l.ID(spiffeid.RequireFromString("spiffe://example.org/ns/dev/web"), now); !ok {
				t.Error("the sidecar does not deny the revoked pattern")
			}
			e, ok := l.JTI("tok-1", now)
			if !ok || e.Expires.Sub(before) < time.Hour-time.Second || e.Expires.Sub(now) > time.Hour {
				t.Errorf("jti entry %+v, %v: want one expiring an hour after the add", e, ok)
			}
			if _, ok := l.JTI("tok-1", now.Add(time.Hour+time.Second)); ok {
				t.Error("the jti entry outlives its -ttl")
			}

			run(0, "remove", "-serial", "3A8F01")
			if out := run(1, "remove", "-serial", "3A8F01"); !strings.Contains(out, `"serial:3a8f01"`) {
				t.Errorf("removing a missing entry: %s", out)
			}
			if out := run(0, "list"); strings.Contains(out, "3a8f01") {
				t.Errorf("the removed entry is still listed:\n%s", out)
			}

			for _, bad := range [][]string{
				{"add", "-jti", "a", "-serial", "b"},
				{"add"},
				{"add", "-serial", "xyz"},
				{"add", "-jti", "a", "-ttl", "-1h"},
				{"remove", "-jti", "a", "-reason", "r"}, // remove takes no -reason
				{"list", "-jti", "a"},
			} {
				if out := run(2, bad...); !strings.Contains(out, "usage:") {
					t.Errorf("%v: no usage in %q", bad, out)
				}
			}
		})
	}
	// The help names every flag the command takes.
	code, _, help := credflow("revoke", "add", "-help")
	for _, flag := range []string{"-redis ", "-redis-key", "-file", "-spiffe-id", "-serial", "-jti", "-ttl", "-reason", "default 24h"} {
		if code != 0 || !strings.Contains(help, flag) {
			t.Errorf("revoke add -help: exit %d, no %q in:\n%s", code, flag, help)
		}
	}
	for _, bad := range [][]string{
		{"revoke"},
		{"revoke", "purge"},
		{"revoke", "list"},
		{"revoke", "list", "-file", "f", "-redis", "127.0.0.1:1"},
	} {
		if code, _, errs := credflow(bad...); code != 2 || !strings.Contains(errs, "usage:") {
			t.Errorf("%v: exit %d, %q", bad, code, errs)
		}
	}
}
