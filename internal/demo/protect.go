package demo

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/credflow/credflow/internal/sidecartest"
)

// The demo's orders API: an HTTP app behind the backend sidecar, reached
// by the frontend and the intruder through outbound HTTP listeners.
const (
	// ordersLimit is the frontend's limit on the orders API: per second,
	// and the burst.
	ordersRate, ordersBurst = 5, 10
	// badTokens is how many bad tokens the intruder may send before it is
	// quarantined.
	badTokens = 5
)

// protection is the demo's third act: per-identity limits, anomaly
// detection with quarantine, and an operator's revocation.
type protection struct {
	api        string // the orders app's address
	apiIn      string // the backend sidecar's HTTP inbound listener
	frontAPI   string // the frontend sidecar's outbound HTTP listener to it
	intrudeAPI string // the intruder sidecar's
	denyFile   string // the revocation list the backend sidecar watches
	srv        *http.Server
}

// startProtection starts the orders app and writes an empty revocation
// list into dir.
func startProtection(dir string) (*protection, error) {
	var pr protection
	for _, a := range []*string{&pr.apiIn, &pr.frontAPI, &pr.intrudeAPI} {
		var err error
		if *a, err = sidecartest.FreeAddr(); err != nil {
			return nil, err
		}
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	pr.api = ln.Addr().String()
	pr.srv = &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "order for %s\n", r.Header.Get("X-Credflow-Peer-Id"))
	}), ReadHeaderTimeout: 5 * time.Second}
	go pr.srv.Serve(ln)
	pr.denyFile = filepath.Join(dir, "revocations.json")
	if err := os.WriteFile(pr.denyFile, []byte(`{"entries": []}`+"\n"), 0o644); err != nil {
		return nil, err
	}
	return &pr, nil
}

func (pr *protection) close() { pr.srv.Close() }

// backendConfig is what the backend sidecar adds: the orders API as an
// HTTP inbound listener with a limit per identity and JWT-SVIDs required,
// the revocation file, and anomaly detection that quarantines a burst of
// bad tokens.
func (pr *protection) backendConfig() string {
	return fmt.Sprintf(`  - name: orders
    listen: %q
    app: %q
    allow: [spiffe://example.org/frontend, spiffe://example.org/intruder]
    protocol: http
    routes:
      - {name: orders, peers: [spiffe://example.org/frontend, spiffe://example.org/intruder], paths: [/orders/*]}
    jwt: {require: true}
    limits:
      requests:
        per_identity: {rate: %d, burst: %d}
revocation: {file: %q, interval: 1s}
anomaly:
  token_failures: {count: %d, window: 1m, action: quarantine, for: 10m}
`, pr.apiIn, pr.api, ordersRate, ordersBurst, pr.denyFile, badTokens)
}

// outboundConfig is the outbound HTTP listener, at listen, a caller
// sidecar adds to reach the orders API.
func (pr *protection) outboundConfig(listen string) string {
	return fmt.Sprintf("  - name: orders\n    listen: %q\n    upstream: %q\n    expect: [spiffe://example.org/backend]\n    protocol: http\n", listen, pr.apiIn)
}

// story shows the limits, the quarantine and a revocation on the running
// sidecars. frontOut is the frontend's TCP outbound listener to the echo
// app, for the live connection the revocation closes.
func (pr *protection) story(ctx context.Context, say func(string, ...any), bin string, backend *sidecartest.Sidecar, frontOut string) error {
	client := &http.Client{Timeout: 10 * time.Second}
	get := func(listen, auth string) (int, string, error) {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+listen+"/orders/42", nil)
		if auth != "" {
			req.Header.Set("Authorization", auth)
		}
		resp, err := client.Do(req)
		if err != nil {
			return 0, "", err
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode, resp.Header.Get("X-Credflow-Reason"), nil
	}

	say("\n== rate limits: the frontend app sends 40 requests at once to the orders API (limit: %d a second, burst %d, per identity)", ordersRate, ordersBurst)
	var mu sync.Mutex
	byStatus := map[int]int{}
	var wg sync.WaitGroup
	var failed error
	for range 40 {
		wg.Go(func() {
			code, _, err := get(pr.frontAPI, "")
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				failed = err
			}
			byStatus[code]++
		})
	}
	wg.Wait()
	if failed != nil {
		return fmt.Errorf("orders API: %w", failed)
	}
	if byStatus[http.StatusOK] == 0 || byStatus[http.StatusTooManyRequests] == 0 {
		return fmt.Errorf("40 requests past a burst of %d: %v; want some 200 and some 429", ordersBurst, byStatus)
	}
	say("   %d answered 200, %d refused 429 rate_limited (with Retry-After) by the backend sidecar", byStatus[http.StatusOK], byStatus[http.StatusTooManyRequests])

	say("\n== abuse: the intruder app sends forged tokens (Authorization: Bearer forged) to the orders API")
	var answers []string
	for range badTokens + 3 {
		code, why, err := get(pr.intrudeAPI, "Bearer forged.token.value")
		if err != nil {
			answers = append(answers, "connection closed")
		} else {
			answers = append(answers, fmt.Sprintf("%d %s", code, why))
		}
	}
	say("   answers: %s", strings.Join(answers, ", "))
	say("   (after the %dth, the backend sidecar refuses the intruder's sidecar at the handshake: quarantined)", badTokens+1)
	for _, line := range backend.LogLines(`"msg":"anomaly"`) {
		say("   backend sidecar log: %s", describeAnomaly(line))
	}
	list, err := exec.CommandContext(ctx, bin, "quarantine", "list", "-admin", backend.Admin).CombinedOutput()
	if err != nil {
		return fmt.Errorf("credflow quarantine list: %v\n%s", err, list)
	}
	if !strings.Contains(string(list), "spiffe://example.org/intruder") {
		return fmt.Errorf("%d bad tokens past a burst of %d: the intruder is not in quarantine (%s)\n%s", badTokens+3, badTokens, strings.Join(answers, ", "), list)
	}
	say("   $ credflow quarantine list -admin %s", backend.Admin)
	for _, l := range strings.Split(strings.TrimSpace(string(list)), "\n") {
		say("     %s", l)
	}
	lift := []string{"quarantine", "lift", "-admin", backend.Admin, "spiffe://example.org/intruder"}
	if out, err := exec.CommandContext(ctx, bin, lift...).CombinedOutput(); err != nil {
		return fmt.Errorf("credflow quarantine lift: %v\n%s", err, out)
	}
	say("   $ credflow %s", strings.Join(lift, " "))
	code, why, err := get(pr.intrudeAPI, "Bearer forged.token.value")
	if err != nil || why != "bad_token" {
		return fmt.Errorf("the intruder after its quarantine was lifted: %d %q %v; want its forged token refused (bad_token)", code, why, err)
	}
	say("   the intruder's sidecar connects again; its next forged token: %d %s (the detector stays quiet for its cooldown)", code, why)
	if code, _, err := get(pr.frontAPI, ""); err != nil || code != http.StatusOK {
		// The limit's bucket refills at 5 a second: wait a moment.
		time.Sleep(time.Second)
		if code, _, err = get(pr.frontAPI, ""); err != nil || code != http.StatusOK {
			return fmt.Errorf("the frontend while the intruder is quarantined: %d %v", code, err)
		}
	}
	say("   meanwhile the frontend's calls still answer 200")

	say("\n== revocation: the frontend holds a live connection to the echo app; an operator revokes its identity")
	live, err := net.DialTimeout("tcp", frontOut, 5*time.Second)
	if err != nil {
		return err
	}
	defer live.Close()
	if _, err := io.WriteString(live, "still here?"); err != nil {
		return err
	}
	live.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(live, make([]byte, len("still here?"))); err != nil {
		return fmt.Errorf("the live connection does not echo: %w", err)
	}
	say("   the live connection echoes")
	revoke := []string{"revoke", "add", "-file", pr.denyFile, "-spiffe-id", frontendID, "-ttl", "1h", "-reason", "demo: leaked credentials"}
	say("   $ credflow %s", strings.Join(revoke, " "))
	revoked := time.Now()
	if out, err := exec.CommandContext(ctx, bin, revoke...).CombinedOutput(); err != nil {
		return fmt.Errorf("credflow revoke add: %v\n%s", err, out)
	}
	live.SetReadDeadline(revoked.Add(10 * time.Second))
	_, err = live.Read(make([]byte, 1))
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return errors.New("the frontend's live connection is still open 10 s after its revocation")
	}
	say("   the backend sidecar closed the live connection %v after the revocation (it watches the file; a ConfigMap in a cluster, or Redis)",
		time.Since(revoked).Round(10*time.Millisecond))
	if reply, err := exchange(frontOut, "and now?"); err == nil && reply != "" {
		return fmt.Errorf("the revoked frontend was answered: %q", reply)
	}
	say("   a new connection of the frontend is refused at the handshake (reason revoked)")
	return nil
}

// describeAnomaly shortens an anomaly log line for the narrative.
func describeAnomaly(line string) string {
	var parts []string
	for _, key := range []string{"detector", "subject", "action", "until"} {
		v := jsonField(line, key)
		if t, err := time.Parse(time.RFC3339Nano, v); err == nil {
			v = t.Format(time.RFC3339)
		}
		if v != "" {
			parts = append(parts, key+"="+v)
		}
	}
	return "anomaly " + strings.Join(parts, " ")
}

// jsonField returns the string value of "key" in a JSON log line, or "".
func jsonField(line, key string) string {
	_, rest, ok := strings.Cut(line, `"`+key+`":"`)
	if !ok {
		return ""
	}
	v, _, _ := strings.Cut(rest, `"`)
	return v
}
