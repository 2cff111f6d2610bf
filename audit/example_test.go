package audit_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/credflow/credflow/audit"
)

// The proxy writes an event for each decision; Run writes them, and a
// final checkpoint when it stops. This trail has no SVID to sign with, so
// it verifies only when unsigned trails are accepted.
func Example() {
	dir, err := os.MkdirTemp("", "audit")
	if err != nil {
		panic(err)
	}
	defer os.RemoveAll(dir)
	path := filepath.Join(dir, "audit.jsonl")

	w, err := audit.New(audit.Config{Path: path}) // Config.SVIDs: the workload's X.509-SVID source
	if err != nil {
		panic(err)
	}
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- w.Run(ctx) }()

	w.Write(audit.Event{Type: audit.TypeDecision, Listener: "api", Direction: "inbound",
		PeerID: "spiffe://example.org/frontend", Decision: audit.Deny, Reason: "route_denied",
		Method: "POST", Path: "/admin", Time: time.Now()})
	w.Write(audit.Event{Type: audit.TypeConfig, Changed: []string{"inbound[0].allow"}})
	for w.Stats().Events < 2 {
		time.Sleep(time.Millisecond)
	}
	stop()
	if err := <-done; err != nil {
		panic(err)
	}

	rep, err := audit.Verify([]string{path}, audit.VerifyOptions{AllowUnsigned: true})
	if err != nil {
		panic(err)
	}
	fmt.Println(rep.Summary())
	// Output:
	// 3 records, 1 checkpoints (1 unsigned), 0 gaps
}
