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
	const queue = 1 << 16
	w, err := audit.New(audit.Config{Path: filepath.Join(b.TempDir(), "audit.jsonl"), Queue: queue})
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); w.Run(ctx) }()
	e := audit.Event{Type: audit.TypeDecision, Time: time.Now(), Listener: "app", Direction: "inbound", Transport: "http",
		PeerID: "spiffe://example.org/ns/prod/sa/frontend", Decision: audit.Allow, Route: "orders", Method: "POST",
		Path: "/v1/orders/42", Group: "X25519MLKEM768"}
	// The writer drops what does not fit its queue, and a dropped event
	// costs next to nothing: so the loop never has more than half a queue
	// outstanding, and every event is written.
	caughtUp := func(n int) {
		for s := w.Stats(); s.Events+s.Dropped < uint64(n); s = w.Stats() {
			time.Sleep(100 * time.Microsecond)
		}
	}
	b.ResetTimer()
	for i := range b.N {
		w.Write(e)
		if (i+1)%(queue/2) == 0 {
			caughtUp(i + 1)
		}
	}
	caughtUp(b.N)
	b.StopTimer()
	if d := w.Stats().Dropped; d > 0 {
		b.Fatalf("%d of %d events dropped: the figure would not be the writer's", d, b.N)
	}
	cancel()
	<-done
}
