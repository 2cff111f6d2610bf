// Command credflow is the CredentialFlow sidecar and its tools; see
// `credflow help`.
package main

import (
	"context"
	"os"

	"github.com/credflow/credflow/internal/app"
)

func main() {
	// Signals are handled by app.Run: the sidecar drains on SIGTERM and
	// reloads on SIGHUP; the other commands stop on SIGINT or SIGTERM.
	os.Exit(app.Run(context.Background(), os.Args[1:], os.Stdout, os.Stderr))
}
