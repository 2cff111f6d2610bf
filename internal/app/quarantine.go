package app

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/credflow/credflow/internal/admin"
)

// quarantineUsage is the usage of `credflow quarantine`.
const quarantineUsage = "credflow quarantine list [-admin 127.0.0.1:15000]\n" +
	"       credflow quarantine lift [-admin 127.0.0.1:15000] SPIFFE-ID|IP"

// runQuarantine implements `credflow quarantine list|lift`, through the
// admin endpoints of the sidecar on this host.
func runQuarantine(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		return fmt.Errorf("%w: want list or lift", errUsage)
	}
	op := args[0]
	var addr string
	fs := newFlagSet("quarantine "+op, quarantineUsage, stderr)
	fs.StringVar(&addr, "admin", "127.0.0.1:15000", "the sidecar's admin address")
	if op != "list" && op != "lift" {
		return fmt.Errorf("%w: unknown quarantine command %q (want list or lift)", errUsage, op)
	}
	// Not parseFlags: lift takes its subject as an argument.
	if err := fs.Parse(args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return fmt.Errorf("%w: %v", errUsage, err)
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if op == "list" {
		if fs.NArg() != 0 {
			return fmt.Errorf("%w: quarantine list takes no argument", errUsage)
		}
		body, err := adminCall(ctx, http.MethodGet, "http://"+addr+"/quarantine")
		if err != nil {
			return err
		}
		var doc struct{ Quarantined []admin.Quarantined }
		if err := json.Unmarshal(body, &doc); err != nil {
			return fmt.Errorf("quarantine list: %w", err)
		}
		tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "SUBJECT\tUNTIL\tDETECTOR")
		for _, q := range doc.Quarantined {
			fmt.Fprintf(tw, "%s\t%s\t%s\n", q.Subject, q.Until.Format(time.RFC3339), q.Detector)
		}
		return tw.Flush()
	}
	if fs.NArg() != 1 {
		return fmt.Errorf("%w: quarantine lift takes one SPIFFE ID or IP address", errUsage)
	}
	subject := fs.Arg(0)
	if _, err := adminCall(ctx, http.MethodPost, "http://"+addr+"/quarantine/lift?subject="+url.QueryEscape(subject)); err != nil {
		return err
	}
	_, err := fmt.Fprintf(stdout, "lifted %s\n", subject)
	return err
}

// adminCall makes one request to the admin endpoints and returns the body
// of a 200, or an error with the sidecar's answer.
func adminCall(ctx context.Context, method, target string) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, method, target, nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, fmt.Errorf("quarantine: the sidecar's admin endpoint: %w", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return nil, err
	}
	switch {
	case resp.StatusCode == http.StatusNotFound && strings.HasSuffix(req.URL.Path, "/quarantine"):
		return nil, fmt.Errorf("quarantine: the sidecar has no anomaly detection configured")
	case resp.StatusCode != http.StatusOK:
		return nil, fmt.Errorf("quarantine: %s", strings.TrimSpace(string(body)))
	}
	return body, nil
}
