package app

import (
	"context"
	"fmt"
	"io"
	"os"
	"time"

	entryv1 "github.com/spiffe/spire-api-sdk/proto/spire/api/server/entry/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/credflow/credflow/register"
)

// defaultServerSocket is the SPIRE server's default admin API socket.
const defaultServerSocket = "/tmp/spire-server/private/api.sock"

type registerFlags struct {
	file         string
	dryRun       bool
	prune        bool
	serverSocket string
	timeout      time.Duration
}

const registerUsage = "credflow register apply -f FILE [-dry-run] [-prune] [-server-socket PATH] [-timeout DURATION]"

// runRegister implements `credflow register apply`.
func runRegister(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] != "apply" {
		return fmt.Errorf("%w: want the subcommand apply", errUsage)
	}
	var f registerFlags
	fs := newFlagSet("register apply", registerUsage, stderr)
	fs.StringVar(&f.file, "f", "", "registration file (YAML; see README)")
	fs.BoolVar(&f.dryRun, "dry-run", false, "print the changes without applying them")
	fs.BoolVar(&f.prune, "prune", false, "delete entries created by credflow that are no longer in the file")
	fs.StringVar(&f.serverSocket, "server-socket", defaultServerSocket, "SPIRE server admin API socket")
	fs.DurationVar(&f.timeout, "timeout", 30*time.Second, "time limit for the whole reconciliation")
	if err := parseFlags(fs, args[1:]); err != nil {
		return err
	}
	if f.file == "" {
		return fmt.Errorf("%w: -f FILE is required", errUsage)
	}
	data, err := os.ReadFile(f.file)
	if err != nil {
		return err
	}
	file, err := register.Parse(data)
	if err != nil {
		return fmt.Errorf("%s: %w", f.file, err)
	}

	ctx, cancel := context.WithTimeout(ctx, f.timeout)
	defer cancel()
	conn, err := grpc.NewClient("unix://"+f.serverSocket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return fmt.Errorf("SPIRE server API at %s: %w", f.serverSocket, err)
	}
	defer conn.Close()
	client := entryv1.NewEntryClient(conn)
	existing, err := register.List(ctx, client)
	if err != nil {
		return fmt.Errorf("SPIRE server API at %s: %w", f.serverSocket, err)
	}
	plan := register.NewPlan(file, existing, f.prune)
	if err := plan.Print(stdout); err != nil {
		return err
	}
	if f.dryRun {
		_, err := fmt.Fprintln(stdout, "dry run: nothing applied")
		return err
	}
	if err := plan.Apply(ctx, client); err != nil {
		return err
	}
	_, err = fmt.Fprintln(stdout, "applied")
	return err
}
