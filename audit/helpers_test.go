package audit_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/credflow/credflow/audit"
	"github.com/credflow/credflow/internal/testca"
)

var (
	td       = spiffeid.RequireTrustDomainFromString("example.org")
	writerID = spiffeid.RequireFromPath(td, "/frontend")
)

// running is a writer whose Run runs until stop.
type running struct {
	w      *audit.Writer
	cancel context.CancelFunc
	done   chan error
}

// start creates a writer for cfg and runs it until the test ends or stop.
func start(t *testing.T, cfg audit.Config) *running {
	t.Helper()
	w, err := audit.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{w: w, cancel: cancel, done: make(chan error, 1)}
	go func() { r.done <- w.Run(ctx) }()
	t.Cleanup(func() { r.stop(t) })
	return r
}

// stop ends Run and waits for it.
func (r *running) stop(t *testing.T) {
	t.Helper()
	r.cancel()
	if err := <-r.done; err != nil {
		t.Errorf("Run: %v", err)
	}
	r.done <- nil // for a second stop
}

// waitFor waits until cond holds. Progress of the writer goroutine is
// waited for, never timed.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("gave up waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// request is the decision about request i.
func request(i int) audit.Event {
	return audit.Event{
		Type: audit.TypeDecision, Listener: "api", Direction: "inbound", Transport: "tcp",
		PeerID: "spiffe://example.org/client", Decision: audit.Allow, Route: "items",
		Method: "GET", Path: fmt.Sprintf("/items/%d", i), Group: "X25519MLKEM768",
	}
}

// writeEvents writes n requests and waits until the writer has written
// them.
func writeEvents(t *testing.T, r *running, n int) {
	t.Helper()
	before := r.w.Stats().Events
	for i := range n {
		r.w.Write(request(i))
	}
	waitFor(t, fmt.Sprintf("%d events written", n), func() bool { return r.w.Stats().Events >= before+uint64(n) })
}

// signedTrail writes a trail of n requests into a new directory, a
// checkpoint every 5 records, signed by an SVID of ca, and returns its
// path. Its records are on the lines of their seq: requests 1-5, a
// checkpoint 6, requests 7-11, a checkpoint 12, and so on, and a final
// checkpoint last.
func signedTrail(t *testing.T, ca *testca.CA, n int) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	r := start(t, audit.Config{Path: path, CheckpointEvery: 5, CheckpointInterval: time.Hour, SVIDs: ca.Issue(t, writerID)})
	writeEvents(t, r, n)
	r.stop(t)
	return path
}

// readLines reads the lines of a file, without their "\n".
func readLines(t *testing.T, path string) [][]byte {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return bytes.Split(bytes.TrimSuffix(data, []byte("\n")), []byte("\n"))
}

// writeLines writes lines into a new file of dir named name and returns
// its path.
func writeLines(t *testing.T, dir, name string, lines [][]byte) string {
	t.Helper()
	path := filepath.Join(dir, name)
	var data []byte
	for _, l := range lines {
		data = append(append(data, l...), '\n')
	}
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// records parses every line of path.
func records(t *testing.T, path string) []audit.Record {
	t.Helper()
	var rs []audit.Record
	for i, line := range readLines(t, path) {
		r, err := audit.ParseRecord(line)
		if err != nil {
			t.Fatalf("line %d of %s: %v", i+1, path, err)
		}
		rs = append(rs, r)
	}
	return rs
}

// bundles is the trust bundle of ca.
func bundles(ca *testca.CA) audit.VerifyOptions {
	return audit.VerifyOptions{Bundles: ca.Bundle()}
}

var _ x509svid.Source = (*x509svid.SVID)(nil)
