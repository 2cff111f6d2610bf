package app

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/credflow/credflow/agent"
)

// defaultWorkloadAPIAddr is used when neither -socket nor
// SPIFFE_ENDPOINT_SOCKET is set: the SPIRE agent's default socket.
const defaultWorkloadAPIAddr = "unix:///tmp/spire-agent/public/api.sock"

// workloadAPIAddr picks the Workload API address: the flag, then
// SPIFFE_ENDPOINT_SOCKET, then the SPIRE default.
func workloadAPIAddr(flagValue string) string {
	if flagValue != "" {
		return flagValue
	}
	if env := os.Getenv("SPIFFE_ENDPOINT_SOCKET"); env != "" {
		return env
	}
	return defaultWorkloadAPIAddr
}

type identityFlags struct {
	socket string
	wait   time.Duration
}

// runIdentity waits for the workload's X.509-SVID and prints its SPIFFE ID,
// validity and trust domains; never key material. It fails, with the
// not-ready reason, if no SVID arrives within -wait.
func runIdentity(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var f identityFlags
	fs := newFlagSet("identity", "credflow identity [-socket ADDR] [-wait DURATION]", stderr)
	fs.StringVar(&f.socket, "socket", "", "Workload API address (default $SPIFFE_ENDPOINT_SOCKET, else "+defaultWorkloadAPIAddr+")")
	fs.DurationVar(&f.wait, "wait", 10*time.Second, "how long to wait for an SVID")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	src, err := agent.New(agent.Config{
		Addr:   workloadAPIAddr(f.socket),
		Logger: slog.New(slog.NewJSONHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
	})
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- src.Run(ctx) }()
	defer func() {
		cancel()
		<-done
	}()

	deadline := time.After(f.wait)
	for {
		ch := src.Changed()
		if src.Ready() == nil {
			break
		}
		select {
		case <-ch:
		case <-time.After(100 * time.Millisecond):
		case <-deadline:
			var nre *agent.NotReadyError
			if errors.As(src.Ready(), &nre) {
				return fmt.Errorf("no identity after %s: reason %s: %v", f.wait, nre.Reason, nre.Err)
			}
			return fmt.Errorf("no identity after %s: %w", f.wait, src.Ready())
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	svid, err := src.GetX509SVID()
	if err != nil {
		return err
	}
	leaf := svid.Certificates[0]
	var tds []string
	for _, td := range src.TrustDomains() {
		tds = append(tds, td.Name())
	}
	_, err = fmt.Fprintf(stdout, "spiffe_id:     %s\nserial:        %s\nnot_before:    %s\nnot_after:     %s\ntrust_domains: %s\n",
		svid.ID, leaf.SerialNumber.Text(16), leaf.NotBefore.UTC().Format(time.RFC3339),
		leaf.NotAfter.UTC().Format(time.RFC3339), strings.Join(tds, ","))
	return err
}
