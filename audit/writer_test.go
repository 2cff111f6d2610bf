package audit_test

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	crand "crypto/rand"
	"crypto/rsa"
	"encoding/base64"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"testing/synctest"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/credflow/credflow/audit"
	"github.com/credflow/credflow/internal/testca"
)

// TestRotation: files rotate past MaxBytes, named after their first
// record; the chain goes on across them; verifying all of them, in any
// order, passes, and leaving out a middle one names the records missing.
func TestRotation(t *testing.T) {
	ca := testca.New(t, td)
	dir := t.TempDir()
	path := filepath.Join(dir, "audit.jsonl")
	reg := prometheus.NewRegistry()
	r := start(t, audit.Config{Path: path, MaxBytes: 4 << 10, CheckpointEvery: 10, CheckpointInterval: time.Hour,
		SVIDs: ca.Issue(t, writerID), Metrics: audit.NewMetrics(reg)})
	writeEvents(t, r, 100)
	r.stop(t)

	files, err := filepath.Glob(path + "*")
	if err != nil {
		t.Fatal(err)
	}
	if len(files) < 4 {
		t.Fatalf("%d files, want several: %v", len(files), files)
	}
	var total int
	for _, f := range files {
		rs := records(t, f)
		total += len(rs)
		if f != path {
			if want := path + "." + strconv.FormatUint(rs[0].Seq, 10); f != want {
				t.Errorf("rotated file %s holds records from %d: want it named %s", f, rs[0].Seq, want)
			}
			if last := rs[len(rs)-1]; last.Checkpoint != audit.CheckpointRotate {
				t.Errorf("%s ends with %+v, not a rotate checkpoint", f, last)
			}
			if fi, _ := os.Stat(f); fi.Size() > 4<<10+2<<10 {
				t.Errorf("%s has %d bytes, more than MaxBytes and a checkpoint", f, fi.Size())
			}
		}
	}
	if got := r.w.Stats().Rotations; got != uint64(len(files)-1) {
		t.Errorf("Stats().Rotations = %d, want %d", got, len(files)-1)
	}
	if got := metric(t, reg, "credflow_audit_rotations_total", ""); got != float64(len(files)-1) {
		t.Errorf("credflow_audit_rotations_total = %v, want %d", got, len(files)-1)
	}

	shuffled := slices.Clone(files)
	rand.Shuffle(len(shuffled), func(i, j int) { shuffled[i], shuffled[j] = shuffled[j], shuffled[i] })
	rep, err := audit.Verify(shuffled, bundles(ca))
	if err != nil {
		t.Fatal(err)
	}
	if rep.Records != total || rep.Files[len(rep.Files)-1] != path {
		t.Errorf("report %+v: want %d records, %s last", rep, total, path)
	}

	// Leave out the second file.
	rotated := slices.DeleteFunc(slices.Clone(files), func(f string) bool { return f == path })
	slices.SortFunc(rotated, func(a, b string) int { return cmpSeq(t, a, b) })
	missing := rotated[1]
	rest := slices.DeleteFunc(slices.Clone(files), func(f string) bool { return f == missing })
	_, err = audit.Verify(rest, bundles(ca))
	var p *audit.Problem
	if !errors.As(err, &p) || p.Kind != audit.Removed || p.Line != 1 || !strings.Contains(p.Detail, "between "+rotated[0]) {
		t.Errorf("without %s: %v, want records removed between %s and the next", missing, err, rotated[0])
	}
}

// cmpSeq orders rotated files by the seq in their names.
func cmpSeq(t *testing.T, a, b string) int {
	ra, rb := records(t, a), records(t, b)
	return int(ra[0].Seq) - int(rb[0].Seq)
}

// TestMaxFiles: only MaxFiles rotated files are kept; what is left
// verifies as a partial trail only.
func TestMaxFiles(t *testing.T) {
	ca := testca.New(t, td)
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	r := start(t, audit.Config{Path: path, MaxBytes: 2 << 10, MaxFiles: 2, CheckpointInterval: time.Hour, SVIDs: ca.Issue(t, writerID)})
	writeEvents(t, r, 100)
	r.stop(t)
	files, _ := filepath.Glob(path + "*")
	if len(files) != 3 {
		t.Fatalf("files %v: want the current one and 2 rotated", files)
	}
	if _, err := audit.Verify(files, bundles(ca)); err == nil || !strings.Contains(err.Error(), "records 1 to") {
		t.Errorf("Verify of a pruned trail: %v, want the first records missing", err)
	}
	opts := bundles(ca)
	opts.Partial = true
	if _, err := audit.Verify(files, opts); err != nil {
		t.Errorf("Verify with Partial: %v", err)
	}
}

// TestRestart: a writer started on an existing trail goes on with its
// chain; after a crash it writes a gap first; a partial last line is cut
// off. Each time the whole trail verifies.
func TestRestart(t *testing.T) {
	ca := testca.New(t, td)
	svid := ca.Issue(t, writerID)
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	cfg := audit.Config{Path: path, CheckpointEvery: 4, CheckpointInterval: time.Hour, SVIDs: svid}
	for range 2 {
		r := start(t, cfg)
		writeEvents(t, r, 5)
		r.stop(t)
	}
	rep, err := audit.Verify([]string{path}, bundles(ca))
	if err != nil {
		t.Fatal(err)
	}
	if rep.Records != 14 || rep.Gaps != 0 {
		t.Errorf("after a clean restart: %+v, want 14 records, no gap", rep)
	}

	// A crash: the final checkpoint and a record never written, and a
	// line half-written.
	lines := readLines(t, path)
	data := append(bytes.Join(lines[:len(lines)-2], []byte("\n")), "\n"...)
	data = append(data, lines[len(lines)-2][:25]...)
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	r := start(t, cfg)
	writeEvents(t, r, 1)
	r.stop(t)
	rs := records(t, path)
	if gap := rs[len(lines)-2]; gap.Type != audit.TypeGap || gap.Reason != audit.GapPartialRecord || gap.Seq != 13 {
		t.Errorf("after the crash, record %+v: want a gap of reason partial_record, seq 13", gap)
	}
	if _, err := audit.Verify([]string{path}, bundles(ca)); err != nil {
		t.Errorf("after the crash: %v", err)
	}

	// Stopped without the final checkpoint, and the file rotated away
	// with no new one: the chain goes on from the rotated file.
	rotated := path + ".1"
	lines = readLines(t, path)
	writeLines(t, filepath.Dir(path), filepath.Base(rotated), lines[:len(lines)-1])
	os.Remove(path)
	r = start(t, cfg)
	writeEvents(t, r, 1)
	r.stop(t)
	rs = records(t, path)
	if rs[0].Type != audit.TypeGap || rs[0].Reason != audit.GapRestart || rs[0].Seq != uint64(len(lines)) {
		t.Errorf("first record of the new file %+v: want a gap of reason restart, seq %d", rs[0], len(lines))
	}
	if _, err := audit.Verify([]string{rotated, path}, bundles(ca)); err != nil {
		t.Errorf("after the restart from a rotated file: %v", err)
	}

	// A file that does not end with a record is not written after.
	if err := os.WriteFile(path, []byte("not a record\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := audit.New(cfg); err == nil || !strings.Contains(err.Error(), "not a record") {
		t.Errorf("New on a file of junk: %v", err)
	}
}

// faultyFile is an audit file whose writes fail, half-way, while full
// is set, as on a full disk, and block while gate is closed.
type faultyFile struct {
	*os.File
	full  *atomic.Bool
	gate  *sync.RWMutex
	calls *atomic.Int64
}

func (f faultyFile) Write(p []byte) (int, error) {
	f.calls.Add(1)
	f.gate.RLock()
	defer f.gate.RUnlock()
	if f.full.Load() {
		n, _ := f.File.Write(p[:len(p)/2])
		return n, &os.PathError{Op: "write", Path: f.Name(), Err: syscall.ENOSPC}
	}
	return f.File.Write(p)
}

// faulty is a Config.Open whose files fail while full is set.
type faulty struct {
	full  atomic.Bool
	gate  sync.RWMutex
	calls atomic.Int64
}

func (fy *faulty) open(path string) (audit.File, error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	return faultyFile{File: f, full: &fy.full, gate: &fy.gate, calls: &fy.calls}, nil
}

// TestDiskFull: while writes fail, events are lost and counted and Write
// goes on returning; when writing works again the trail records a gap of
// the events lost, and verifies.
func TestDiskFull(t *testing.T) {
	ca := testca.New(t, td)
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	var fy faulty
	reg := prometheus.NewRegistry()
	r := start(t, audit.Config{Path: path, CheckpointEvery: 7, CheckpointInterval: time.Hour,
		SVIDs: ca.Issue(t, writerID), Open: fy.open, Metrics: audit.NewMetrics(reg)})
	writeEvents(t, r, 10)

	fy.full.Store(true)
	for i := range 50 {
		r.w.Write(request(1000 + i))
	}
	waitFor(t, "50 events lost", func() bool { return r.w.Stats().Failed == 50 })
	s := r.w.Stats()
	if s.WriteErrors == 0 || s.Dropped != 0 {
		t.Errorf("stats %+v: want write errors, nothing dropped", s)
	}
	if got := metric(t, reg, "credflow_audit_dropped_total", "write_error"); got != 50 {
		t.Errorf(`credflow_audit_dropped_total{reason="write_error"} = %v, want 50`, got)
	}
	if got := metric(t, reg, "credflow_audit_write_errors_total", ""); got != float64(s.WriteErrors) {
		t.Errorf("credflow_audit_write_errors_total = %v, want %d", got, s.WriteErrors)
	}

	fy.full.Store(false)
	writeEvents(t, r, 3)
	r.stop(t)
	rep, err := audit.Verify([]string{path}, bundles(ca))
	if err != nil {
		t.Fatal(err)
	}
	if rep.Gaps != 1 || rep.Failed != 50 || rep.Dropped != 0 {
		t.Errorf("report %+v: want one gap of 50 failed events", rep)
	}
	if strings.Contains(string(readAll(t, path)), "/items/1000") {
		t.Errorf("an event lost to the full disk is in the trail")
	}
}

// TestQueueFull: when the writer cannot keep up, Write drops, counts,
// and never waits; the trail then has a gap of exactly the events
// dropped.
func TestQueueFull(t *testing.T) {
	ca := testca.New(t, td)
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	var fy faulty
	reg := prometheus.NewRegistry()
	r := start(t, audit.Config{Path: path, Queue: 8, CheckpointInterval: time.Hour,
		SVIDs: ca.Issue(t, writerID), Open: fy.open, Metrics: audit.NewMetrics(reg)})

	fy.gate.Lock() // the disk hangs
	r.w.Write(request(0))
	waitFor(t, "the writer to be stuck in a write", func() bool { return fy.calls.Load() == 1 })
	const n = 100_000
	for i := range n { // would hang here if Write waited for the writer
		r.w.Write(request(i + 1))
	}
	if got := r.w.Stats().Dropped; got != n-8 {
		t.Errorf("Stats().Dropped = %d, want %d", got, n-8)
	}
	if got := metric(t, reg, "credflow_audit_dropped_total", "queue_full"); got != n-8 {
		t.Errorf(`credflow_audit_dropped_total{reason="queue_full"} = %v, want %d`, got, n-8)
	}
	fy.gate.Unlock()
	waitFor(t, "the queue written", func() bool { return r.w.Stats().Events == 9 })
	r.stop(t)

	r.w.Write(request(-1)) // after Run: dropped
	if got := r.w.Stats().Dropped; got != n-7 {
		t.Errorf("after Run returned, Stats().Dropped = %d, want %d", got, n-7)
	}

	rep, err := audit.Verify([]string{path}, bundles(ca))
	if err != nil {
		t.Fatal(err)
	}
	if rep.Gaps != 1 || rep.Dropped != n-8 {
		t.Errorf("report %+v: want one gap of %d dropped events", rep, n-8)
	}
}

// TestCheckpointInterval: with records written, a checkpoint follows
// within CheckpointInterval; with none, none is written.
func TestCheckpointInterval(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "audit.jsonl")
		w, err := audit.New(audit.Config{Path: path, CheckpointInterval: 10 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error)
		go func() { done <- w.Run(ctx) }()

		w.Write(request(1))
		time.Sleep(9 * time.Second)
		synctest.Wait()
		if got := w.Stats().Checkpoints; got != 0 {
			t.Errorf("after 9s: %d checkpoints, want 0", got)
		}
		time.Sleep(time.Second)
		synctest.Wait()
		if got := w.Stats().Checkpoints; got != 1 {
			t.Errorf("after 10s: %d checkpoints, want 1", got)
		}
		time.Sleep(time.Minute) // nothing written: no checkpoint
		synctest.Wait()
		if got := w.Stats().Checkpoints; got != 1 {
			t.Errorf("a minute later, nothing written: %d checkpoints, want 1", got)
		}
		cancel()
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		if got := w.Stats().Checkpoints; got != 2 {
			t.Errorf("after Run: %d checkpoints, want 2 (with the final one)", got)
		}
	})
}

// TestNoSecrets: a token given to an event as its fingerprint and jti,
// as the callers are meant to, is not in the trail; and no field of an
// event is meant for a secret.
func TestNoSecrets(t *testing.T) {
	const token = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJzZWNyZXQifQ.c2lnbmF0dXJlLXNlY3JldA"
	ca := testca.New(t, td)
	svid := ca.Issue(t, writerID)
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	r := start(t, audit.Config{Path: path, SVIDs: svid})
	r.w.Write(audit.Event{Type: audit.TypeCredential, Kind: audit.KindTxnMinted, JTI: "jti-42",
		Audience: "spiffe://example.org/backend", Fingerprint: audit.Fingerprint([]byte(token))})
	r.w.Write(audit.Event{Type: audit.TypeCredential, Kind: audit.KindSVIDRotated,
		Serial: svid.Certificates[0].SerialNumber.Text(16), Fingerprint: audit.Fingerprint(svid.Certificates[0].Raw)})
	waitFor(t, "2 events", func() bool { return r.w.Stats().Events == 2 })
	r.stop(t)

	data := string(readAll(t, path))
	for _, secret := range []string{token, "eyJ", "c2lnbmF0dXJl"} {
		if strings.Contains(data, secret) {
			t.Errorf("the trail holds %q", secret)
		}
	}
	if !strings.Contains(data, `"jti":"jti-42"`) || !strings.Contains(data, audit.Fingerprint([]byte(token))) {
		t.Errorf("the trail does not name the token by its jti and fingerprint:\n%s", data)
	}
	_, key, err := svid.MarshalRaw()
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains([]byte(data), key) || strings.Contains(data, base64.StdEncoding.EncodeToString(key)) {
		t.Errorf("the trail holds the SVID's private key")
	}

	// Every field of an event is named for an identifier, a name or a
	// code.
	allowed := []string{"type", "time", "listener", "direction", "transport", "peer_id", "decision", "reason", "route",
		"method", "path", "group", "kind", "audience", "jti", "key_id", "fingerprint", "subject", "issuer",
		"trust_domain", "credential", "detector", "serial", "until", "changed"}
	var got []string
	et := reflect.TypeFor[audit.Event]()
	for i := range et.NumField() {
		got = append(got, strings.Split(et.Field(i).Tag.Get("json"), ",")[0])
	}
	if d := cmp.Diff(allowed, got); d != "" {
		t.Errorf("Event's fields changed; a new one must not hold a secret, then add it here (-want +got):\n%s", d)
	}
}

// TestWriteReserved: events that pose as the writer's own are dropped.
func TestWriteReserved(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	r := start(t, audit.Config{Path: path})
	for _, typ := range []audit.Type{audit.TypeCheckpoint, audit.TypeGap, ""} {
		r.w.Write(audit.Event{Type: typ})
	}
	writeEvents(t, r, 1)
	r.stop(t)
	if s := r.w.Stats(); s.Dropped != 3 || s.Events != 1 {
		t.Errorf("stats %+v: want 3 dropped, 1 written", s)
	}
}

func readAll(t *testing.T, path string) []byte {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// metric is the value of the counter name of reg, with its one label
// value when there is one.
func metric(t *testing.T, reg *prometheus.Registry, name, label string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			if label == "" || (len(m.GetLabel()) == 1 && m.GetLabel()[0].GetValue() == label) {
				return m.GetCounter().GetValue()
			}
		}
	}
	return 0
}

// TestKeyTypes: checkpoints signed with ECDSA P-384, RSA and Ed25519
// SVIDs verify against the bundle, and fail when altered.
func TestKeyTypes(t *testing.T) {
	ca := testca.New(t, td)
	rsaKey, err := rsa.GenerateKey(crand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	p384, err := ecdsa.GenerateKey(elliptic.P384(), crand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	_, edKey, err := ed25519.GenerateKey(crand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	for name, key := range map[string]crypto.Signer{"ecdsa-p384": p384, "rsa": rsaKey, "ed25519": edKey} {
		t.Run(name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "audit.jsonl")
			r := start(t, audit.Config{Path: path, SVIDs: ca.Issue(t, writerID, testca.WithKey(key))})
			writeEvents(t, r, 2)
			r.stop(t)
			if _, err := audit.Verify([]string{path}, bundles(ca)); err != nil {
				t.Fatal(err)
			}
			lines := readLines(t, path)
			last, _ := audit.ParseRecord(lines[len(lines)-1])
			last.Time = last.Time.Add(time.Nanosecond)
			lines[len(lines)-1], _ = audit.Marshal(&last)
			_, err := audit.Verify([]string{writeLines(t, t.TempDir(), "audit.jsonl", lines)}, bundles(ca))
			if p := (*audit.Problem)(nil); !errors.As(err, &p) || p.Kind != audit.Forged {
				t.Errorf("the final checkpoint's time changed: %v, want forged", err)
			}
		})
	}
}

// countingFile counts the writes to it.
type countingFile struct {
	*os.File
	writes *atomic.Int64
}

func (f countingFile) Write(p []byte) (int, error) {
	f.writes.Add(1)
	return f.File.Write(p)
}

// TestWritesGathered: events written within FlushDelay of the first of a
// batch reach the file in one write, FlushDelay after that first event;
// with a negative FlushDelay each is written as it comes.
func TestWritesGathered(t *testing.T) {
	for _, tc := range []struct {
		delay      time.Duration
		wantWrites int64
	}{{20 * time.Millisecond, 1}, {-1, 10}} {
		t.Run(fmt.Sprint(tc.delay), func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				path := filepath.Join(t.TempDir(), "audit.jsonl")
				var writes atomic.Int64
				open := func(path string) (audit.File, error) {
					f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
					return countingFile{File: f, writes: &writes}, err
				}
				w, err := audit.New(audit.Config{Path: path, CheckpointInterval: time.Hour, FlushDelay: tc.delay, Open: open})
				if err != nil {
					t.Fatal(err)
				}
				ctx, cancel := context.WithCancel(context.Background())
				done := make(chan error)
				go func() { done <- w.Run(ctx) }()

				for i := range 10 {
					w.Write(request(i))
					time.Sleep(time.Millisecond)
					synctest.Wait()
				}
				if tc.delay > 0 {
					if got := writes.Load(); got != 0 {
						t.Errorf("10 ms after the first event: %d writes, want 0 (still gathering)", got)
					}
					time.Sleep(tc.delay)
					synctest.Wait()
				}
				if got, events := writes.Load(), w.Stats().Events; got != tc.wantWrites || events != 10 {
					t.Errorf("%d events in %d writes, want 10 in %d", events, got, tc.wantWrites)
				}
				cancel()
				if err := <-done; err != nil {
					t.Fatal(err)
				}
			})
		})
	}
}
