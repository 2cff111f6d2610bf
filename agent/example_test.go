package agent_test

import (
	"context"
	"fmt"
	"log"
	"time"

	"github.com/credflow/credflow/agent"
	"github.com/credflow/credflow/reason"
)

// A Source reports why it cannot hand out an identity: here no SPIRE agent
// listens on the socket.
func ExampleSource_Ready() {
	src, err := agent.New(agent.Config{Addr: "unix:///nonexistent/credflow-example/api.sock"})
	if err != nil {
		log.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- src.Run(ctx) }()

	deadline := time.Now().Add(5 * time.Second)
	for agent.ReasonOf(src.Ready()) == reason.Starting && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	fmt.Println(agent.ReasonOf(src.Ready()))
	cancel()
	<-done
	fmt.Println(agent.ReasonOf(src.Ready()))
	// Output:
	// agent_unavailable
	// closed
}

// The data plane reads the current SVID on every handshake and waits on
// Changed to learn of rotations; workloads ask for JWT-SVIDs per audience.
func ExampleSource() {
	src, err := agent.New(agent.Config{Addr: "unix:///run/spire/agent/public/api.sock"})
	if err != nil {
		log.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		if err := src.Run(ctx); err != nil {
			log.Print(err)
		}
	}()

	for {
		changed := src.Changed() // take it before checking, so no update is missed
		if src.Ready() == nil {
			break
		}
		<-changed
	}
	svid, err := src.GetX509SVID()
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("identity:", svid.ID)

	token, err := src.FetchJWTSVID(ctx, "spiffe://example.org/backend")
	if err != nil {
		log.Fatal(err)
	}
	// Validated by the receiver against the same trust domain's JWT bundle.
	if _, err := agent.ValidateJWTSVID(token.Marshal(), src, "spiffe://example.org/backend"); err != nil {
		log.Fatal(err)
	}
}
