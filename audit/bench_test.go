package audit_test

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/credflow/credflow/audit"
)

// BenchmarkWriter is the trail's cost per event: Write on the caller's
// goroutine and the writer's encoding, hashing and writing, until the
// event is in the file.
func BenchmarkWriter(b *testing.B) {
	w, err := audit.New(audit.Config{Path: filepath.Join(b.TempDir(), "audit.jsonl"), Queue: 1 << 16})
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); w.Run(ctx) }()
	e := audit.Event{Type: audit.TypeDecision, Time: time.Now(), Listener: "app", Direction: "inbound", Transport: "http",
		PeerID: "spiffe://example.org/ns/prod/sa/frontend", Decision: audit.Allow, Route: "orders", Method: "POST",
		Path: "/v1/orders/42", Group: "X25519MLKEM768"}
	b.ResetTimer()
	for range b.N {
		w.Write(e)
	}
	for w.Stats().Events+w.Stats().Dropped < uint64(b.N) {
		time.Sleep(time.Millisecond)
	}
	b.StopTimer()
	if d := w.Stats().Dropped; d > 0 {
		b.Logf("%d dropped", d)
	}
	cancel()
	<-done
}
