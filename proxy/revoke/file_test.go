package revoke_test

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/credflow/credflow/proxy/revoke"
)

// waitTimeout bounds every wait for a source to catch up.
const waitTimeout = 10 * time.Second

// eventually polls cond until it holds, failing t after waitTimeout.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("after %v: %s", waitTimeout, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// logBuffer is a concurrency-safe log sink.
type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) count(s string) int { return strings.Count(l.String(), s) }

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func (l *logBuffer) logger() *slog.Logger {
	return slog.New(slog.NewTextHandler(l, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// TestParseFile: an empty list must be written as one; anything else that
// is not a list of valid entries is an error naming the bad ones.
func TestParseFile(t *testing.T) {
	for _, tc := range []struct {
		name, in, wantErr string
	}{
		{"empty list", `{"entries": []}`, ""},
		{"entries", `{"entries": [{"kind": "jti", "value": "a", "expires": "2030-01-02T03:04:05Z", "future": 1}]}`, ""},
		{"empty file", ``, "unexpected end of JSON input"},
		{"null", `null`, `no "entries" array`},
		{"no entries", `{}`, `no "entries" array`},
		{"null entries", `{"entries": null}`, `no "entries" array`},
		{"trailing", `{"entries": []} x`, "invalid character"},
		{"bad time", `{"entries": [{"kind": "jti", "value": "a", "expires": "tomorrow"}]}`, "tomorrow"},
		{"bad entries", `{"entries": [{"kind": "jti", "value": "a"}, {"kind": "serial", "value": "zz"}, {"kind": "spiffe_id", "value": "x"}]}`,
			"entries[1]: revoke: invalid entry: serial \"zz\""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := revoke.ParseFile([]byte(tc.in))
			switch {
			case tc.wantErr == "" && err != nil:
				t.Fatal(err)
			case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
				t.Fatalf("error %v, want one with %q", err, tc.wantErr)
			}
		})
	}
	_, err := revoke.ParseFile([]byte(`{"entries": [{"kind": "jti", "value": "a"}, {"kind": "serial", "value": "zz"}, {"kind": "spiffe_id", "value": "x"}]}`))
	if !strings.Contains(err.Error(), "entries[2]") {
		t.Errorf("the error names only the first bad entry: %v", err)
	}
}

// FuzzParseFile: whatever a file holds, a file that parses is made of
// valid canonical entries and formats back to the same entries.
func FuzzParseFile(f *testing.F) {
	f.Add([]byte(`{"entries": [{"kind": "spiffe_id", "value": "spiffe://example.org/ns/prod/*", "expires": "2030-01-02T03:04:05Z", "reason": "r", "added": "2029-01-02T03:04:05.5+02:00"}]}`))
	f.Add([]byte(`{"entries": [{"kind": "serial", "value": "00:3A:8f:01"}, {"kind": "jti", "value": "x"}]}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		entries, err := revoke.ParseFile(data)
		if err != nil {
			return
		}
		for _, e := range entries {
			c, err := e.Canonical()
			if err != nil || c != e {
				t.Fatalf("ParseFile returned %+v, not canonical (%+v, %v)", e, c, err)
			}
		}
		out, err := revoke.FormatFile(entries)
		if err != nil {
			t.Fatal(err)
		}
		again, err := revoke.ParseFile(out)
		if err != nil {
			t.Fatalf("the formatted file does not parse: %v\n%s", err, out)
		}
		var want, got revoke.List
		want.Replace(entries)
		got.Replace(again)
		if d := cmp.Diff(want.Entries(), got.Entries()); d != "" {
			t.Fatalf("format and parse changed the entries (-want +got):\n%s", d)
		}
	})
}

func writeFile(t *testing.T, path string, entries ...revoke.Entry) {
	t.Helper()
	data, err := revoke.FormatFile(entries)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
}

// runSource runs src until the test ends.
func runSource(t *testing.T, run func(context.Context) error) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
}

func denies(l *revoke.List, jti string) func() bool {
	return func() bool { _, ok := l.JTI(jti, time.Now()); return ok }
}

// TestFileSourceEdit: a missing file fails the first load; an edit in
// place is picked up through the directory watch (the periodic read is an
// hour away), and so is a bad edit, which keeps the last good list.
func TestFileSourceEdit(t *testing.T) {
	path := filepath.Join(t.TempDir(), "revocations.json")
	var (
		list revoke.List
		logs logBuffer
	)
	src := &revoke.FileSource{Path: path, Interval: time.Hour, List: &list, Logger: logs.logger()}
	if err := src.Load(); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("Load of a missing file: %v, want not exist", err)
	}
	writeFile(t, path, revoke.Entry{Kind: revoke.JTI, Value: "one"},
		revoke.Entry{Kind: revoke.JTI, Value: "gone", Expires: time.Now().Add(-time.Second)})
	if err := src.Load(); err != nil {
		t.Fatal(err)
	}
	if !denies(&list, "one")() || list.Len() != 1 {
		t.Fatalf("after Load: %v, want the live entry only", list.Entries())
	}
	runSource(t, src.Run)
	eventually(t, "Run does not start watching", func() bool { return logs.count("watching the file") > 0 })

	writeFile(t, path, revoke.Entry{Kind: revoke.JTI, Value: "one"}, revoke.Entry{Kind: revoke.JTI, Value: "two"})
	eventually(t, "the edit is not seen", denies(&list, "two"))

	changed := list.Changed()
	if err := os.WriteFile(path, []byte(`{"entries": [{"kind": "jti", "value": "three"}, {"kind": "jti"}]}`), 0o644); err != nil {
		t.Fatal(err)
	}
	// An in-place write can be read half done: wait for the report of the
	// whole bad file, which names its bad entry.
	eventually(t, "the bad edit is not reported", func() bool { return logs.count("entries[1]") > 0 })
	if !denies(&list, "one")() || !denies(&list, "two")() || denies(&list, "three")() {
		t.Fatalf("after a bad edit: %v, want the last good list", list.Entries())
	}
	select {
	case <-changed:
		t.Fatal("a bad edit changed the list")
	default:
	}

	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	writeFile(t, path, revoke.Entry{Kind: revoke.JTI, Value: "three"})
	eventually(t, "the fixed file is not seen", func() bool {
		return denies(&list, "three")() && !denies(&list, "one")()
	})
}

// TestFileSourceConfigMap: a ConfigMap volume's update, which writes a new
// timestamped directory and renames a new ..data symlink over the old one,
// is picked up through the directory watch.
func TestFileSourceConfigMap(t *testing.T) {
	dir := t.TempDir()
	version := func(name string, entries ...revoke.Entry) {
		t.Helper()
		if err := os.Mkdir(filepath.Join(dir, name), 0o755); err != nil {
			t.Fatal(err)
		}
		writeFile(t, filepath.Join(dir, name, "revocations.json"), entries...)
		if err := os.Symlink(name, filepath.Join(dir, "..data_tmp")); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(filepath.Join(dir, "..data_tmp"), filepath.Join(dir, "..data")); err != nil {
			t.Fatal(err)
		}
	}
	version("..2030_01_01_00_00_00.1", revoke.Entry{Kind: revoke.JTI, Value: "one"})
	if err := os.Symlink("..data/revocations.json", filepath.Join(dir, "revocations.json")); err != nil {
		t.Fatal(err)
	}
	var (
		list revoke.List
		logs logBuffer
	)
	src := &revoke.FileSource{Path: filepath.Join(dir, "revocations.json"), Interval: time.Hour, List: &list, Logger: logs.logger()}
	if err := src.Load(); err != nil || !denies(&list, "one")() {
		t.Fatalf("Load: %v, %v", err, list.Entries())
	}
	runSource(t, src.Run)
	eventually(t, "Run does not start watching", func() bool { return logs.count("watching the file") > 0 })

	version("..2030_01_01_00_00_01.2", revoke.Entry{Kind: revoke.JTI, Value: "two"})
	eventually(t, "the ConfigMap update is not seen", func() bool {
		return denies(&list, "two")() && !denies(&list, "one")()
	})
}

// TestFileSourcePolls: where nothing reports the edit (the file's
// directory is not watched: its path came through a symlink that now
// points elsewhere), the periodic read still picks it up.
func TestFileSourcePolls(t *testing.T) {
	dir := t.TempDir()
	a, b := filepath.Join(dir, "a"), filepath.Join(dir, "b")
	for _, d := range []string{a, b} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	writeFile(t, filepath.Join(a, "revocations.json"), revoke.Entry{Kind: revoke.JTI, Value: "one"})
	writeFile(t, filepath.Join(b, "revocations.json"), revoke.Entry{Kind: revoke.JTI, Value: "two"})
	link := filepath.Join(dir, "current")
	if err := os.Symlink("a", link); err != nil {
		t.Fatal(err)
	}
	var list revoke.List
	src := &revoke.FileSource{Path: filepath.Join(link, "revocations.json"), Interval: 50 * time.Millisecond, List: &list}
	if err := src.Load(); err != nil {
		t.Fatal(err)
	}
	runSource(t, src.Run)
	// Swap the parent directory's link: the watch on "current" (inode of
	// a) sees nothing of it.
	if err := os.Symlink("b", link+".tmp"); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(link+".tmp", link); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the periodic read does not see the change", denies(&list, "two"))
}

// TestFileStore: Add creates the file and replaces an entry of the same
// Key, Remove names a missing key, and every write leaves a file that
// FileSource reads, with no temporary file behind.
func TestFileStore(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	path := filepath.Join(dir, "revocations.json")
	s := &revoke.FileStore{Path: path}
	if _, err := s.List(ctx); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("List of a missing file: %v", err)
	}
	exp := time.Now().Add(time.Hour).Truncate(time.Second).UTC()
	for _, e := range []revoke.Entry{
		{Kind: revoke.Serial, Value: "0A:0B", Reason: "first"},
		{Kind: revoke.SPIFFEID, Value: "spiffe://example.org/a/*", Expires: exp},
		{Kind: revoke.Serial, Value: "a0b", Reason: "second"}, // the same Key
	} {
		if err := s.Add(ctx, e); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Add(ctx, revoke.Entry{Kind: revoke.JTI, Value: "x", Expires: time.Now().Add(-time.Second)}); !errors.Is(err, revoke.ErrInvalid) {
		t.Errorf("Add of an expired entry: %v", err)
	}
	if err := s.Add(ctx, revoke.Entry{Kind: revoke.JTI}); !errors.Is(err, revoke.ErrInvalid) {
		t.Errorf("Add of an invalid entry: %v", err)
	}
	got, err := s.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range got {
		if e.Added.IsZero() {
			t.Errorf("%s: no Added time", e.Key())
		}
	}
	want := []revoke.Entry{
		{Kind: revoke.Serial, Value: "a0b", Reason: "second"},
		{Kind: revoke.SPIFFEID, Value: "spiffe://example.org/a/*", Expires: exp},
	}
	if d := cmp.Diff(want, got, cmpIgnoreAdded); d != "" {
		t.Errorf("entries (-want +got):\n%s", d)
	}

	err = s.Remove(ctx, "serial:ffff")
	if !errors.Is(err, revoke.ErrNotFound) || !strings.Contains(err.Error(), `"serial:ffff"`) {
		t.Errorf("Remove of a missing key: %v", err)
	}
	if err := s.Remove(ctx, revoke.Entry{Kind: revoke.Serial, Value: "0A0B"}.Key()); err != nil {
		t.Fatal(err)
	}
	var list revoke.List
	if err := (&revoke.FileSource{Path: path, List: &list}).Load(); err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff(want[1:], list.Entries(), cmpIgnoreAdded); d != "" {
		t.Errorf("what FileSource reads after Remove (-want +got):\n%s", d)
	}
	names, _ := filepath.Glob(filepath.Join(dir, "*"))
	hidden, _ := filepath.Glob(filepath.Join(dir, ".*"))
	if len(names) != 1 || len(hidden) != 0 {
		t.Errorf("files left: %v %v", names, hidden)
	}
}

var cmpIgnoreAdded = cmpopts.IgnoreFields(revoke.Entry{}, "Added")
