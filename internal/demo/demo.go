// Package demo is `make demo`: it starts a real SPIRE server and agent,
// registers three workloads with `credflow register apply`, runs a backend
// echo app behind an inbound sidecar and two outbound sidecars (an allowed
// frontend and an intruder) as distinct uids, sends traffic, and prints
// what happened. Then the frontend app calls an external HTTPS API with no
// credential of its own: its sidecar obtains an OAuth token from a real
// Ory Hydra with its JWT-SVID, reads an API key from a mounted secret,
// injects both, and moves to a rotated key. Last, the frontend hits its
// rate limit on an orders API, the intruder's burst of forged tokens gets
// it quarantined, and an operator's revocation closes the frontend's live
// connection. It stops every process it started.
package demo

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/credflow/credflow/internal/sidecartest"
	"github.com/credflow/credflow/internal/spiretest"
)

const registration = `# Workload identities, applied with: credflow register apply -f entries.yaml
entries:
  - spiffe_id: spiffe://example.org/frontend
    parent_id: spiffe://example.org/node
    selectors: [unix:uid:1001]
  - spiffe_id: spiffe://example.org/backend
    parent_id: spiffe://example.org/node
    selectors: [unix:uid:1002]
  - spiffe_id: spiffe://example.org/intruder
    parent_id: spiffe://example.org/node
    selectors: [unix:uid:1003]
`

// Run runs the demo, writing its narrative to out.
func Run(ctx context.Context, out io.Writer) error {
	if os.Getuid() != 0 {
		return errors.New("the demo runs workloads as uids 1001-1003 and needs root")
	}
	say := func(format string, args ...any) { fmt.Fprintf(out, format+"\n", args...) }
	began := time.Now()

	tmp, err := os.MkdirTemp("", "credflow-demo-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	say("== building credflow")
	bin, err := sidecartest.Build(ctx, tmp)
	if err != nil {
		return err
	}

	say("== starting SPIRE server and agent (join-token node attestation, unix workload attestor)")
	s, err := spiretest.Start(ctx, spiretest.Options{X509SVIDTTL: 2 * time.Minute, JWTIssuer: jwtIssuer})
	if err != nil {
		return err
	}
	defer s.Close()
	if bin, err = s.InstallBinary(bin); err != nil {
		return err
	}

	say("== registering workloads")
	entries := filepath.Join(s.Dir(), "entries.yaml")
	if err := os.WriteFile(entries, []byte(registration), 0o644); err != nil {
		return err
	}
	reg, err := exec.CommandContext(ctx, bin, "register", "apply", "-f", entries, "-server-socket", s.ServerSocket()).CombinedOutput()
	if err != nil {
		return fmt.Errorf("register: %v\n%s", err, reg)
	}
	out.Write(indent(reg))

	echo, err := sidecartest.Echo(ctx)
	if err != nil {
		return err
	}
	say("== starting the payments API outside the mesh, and Ory Hydra, its OAuth server, trusting SPIRE's JWT-SVIDs")
	ext, err := startExternal(ctx, s)
	if err != nil {
		return err
	}
	defer ext.close()
	pr, err := startProtection(s.Dir())
	if err != nil {
		return err
	}
	defer pr.close()

	var addr [4]string
	for i := range addr {
		if addr[i], err = sidecartest.FreeAddr(); err != nil {
			return err
		}
	}
	inbound, frontOut, intruderOut, egress := addr[0], addr[1], addr[2], addr[3]
	common := fmt.Sprintf("workload_api: %s\nadmin: \"{{admin}}\"\n", s.AgentAddr())
	outbound := func(listen string) string {
		return common + fmt.Sprintf("outbound:\n  - name: backend\n    listen: %q\n    upstream: %q\n    expect: [spiffe://example.org/backend]\n", listen, inbound)
	}
	say("== starting sidecars (each waits for its SVID before it is ready)")
	var sidecars []*sidecartest.Sidecar
	defer func() {
		for _, sc := range sidecars {
			sc.Stop(10 * time.Second)
		}
	}()
	for _, w := range []struct {
		uid        int
		name, conf string
	}{
		{1002, "backend", common + fmt.Sprintf("inbound:\n  - name: app\n    listen: %q\n    app: %q\n    allow: [spiffe://example.org/frontend]\n", inbound, echo) +
			pr.backendConfig()},
		{1001, "frontend", outbound(frontOut) + pr.outboundConfig(pr.frontAPI) + ext.config(egress)},
		{1003, "intruder", outbound(intruderOut) + pr.outboundConfig(pr.intrudeAPI)},
	} {
		sc, err := sidecartest.Start(ctx, s, bin, w.uid, w.name, w.conf, time.Minute)
		if err != nil {
			return err
		}
		sidecars = append(sidecars, sc)
		say("   %-8s uid %d  ready  admin http://%s", w.name, w.uid, sc.Admin)
	}
	backend, frontend, intruder := sidecars[0], sidecars[1], sidecars[2]
	say("   backend inbound %s allows spiffe://example.org/frontend only; app (echo) at %s", inbound, echo)

	say("== frontend app -> frontend sidecar %s -> mTLS -> backend sidecar -> echo app", frontOut)
	for i := 1; i <= 3; i++ {
		msg := fmt.Sprintf("hello backend #%d", i)
		reply, err := exchange(frontOut, msg)
		if err != nil {
			return fmt.Errorf("allowed request %d failed: %w", i, err)
		}
		say("   sent %q  got %q", msg, reply)
	}
	say("== intruder app -> intruder sidecar %s -> backend sidecar", intruderOut)
	if reply, err := exchange(intruderOut, "let me in"); err == nil && reply != "" {
		return fmt.Errorf("the intruder was answered: %q", reply)
	}
	say("   refused: no reply, connection closed")
	time.Sleep(300 * time.Millisecond) // let the access log lines land

	if err := ext.story(ctx, say, frontend, egress); err != nil {
		return err
	}
	if err := pr.story(ctx, say, bin, backend, frontOut); err != nil {
		return err
	}
	time.Sleep(300 * time.Millisecond) // let the access log lines land

	say("\n== what happened (backend sidecar access log)")
	orders := map[string]int{}
	var kinds []string
	for _, line := range backend.LogLines(`"msg":"access"`) {
		if !strings.Contains(line, `"listener":"orders"`) {
			say("   %s", describe(line))
			continue
		}
		k := fmt.Sprintf("%-5s %-32s", strings.ToUpper(jsonField(line, "decision")), jsonField(line, "peer_id"))
		if why := jsonField(line, "reason"); why != "" {
			k += " reason=" + why
		}
		if orders[k] == 0 {
			kinds = append(kinds, k)
		}
		orders[k]++
	}
	say("   orders API, by peer and decision:")
	for _, k := range kinds {
		say("   %s x%d", k, orders[k])
	}
	say("\n== identities (from each sidecar's /debug/identity)")
	for _, sc := range sidecars {
		_, body, err := sc.Get(ctx, "/debug/identity")
		if err != nil {
			return err
		}
		var id struct {
			SPIFFEID string    `json:"spiffe_id"`
			NotAfter time.Time `json:"not_after"`
		}
		json.Unmarshal([]byte(body), &id)
		say("   %-8s %-32s SVID expires %s (in %s)", sc.Name, id.SPIFFEID, id.NotAfter.Format(time.TimeOnly), time.Until(id.NotAfter).Round(time.Second))
	}
	say("\n== metrics")
	for _, q := range []struct {
		sc     *sidecartest.Sidecar
		name   string
		labels []string
	}{
		{backend, "credflow_connections_total", []string{"direction=inbound", "result=allowed"}},
		{backend, "credflow_refusals_total", []string{"direction=inbound", "reason=unauthorized"}},
		{backend, "credflow_tls_connections_total", []string{"group=X25519MLKEM768"}},
		{frontend, "credflow_connections_total", []string{"direction=outbound", "result=allowed"}},
		{intruder, "credflow_refusals_total", []string{"direction=outbound", "reason=peer_refused"}},
		{frontend, "credflow_credential_fetches_total", []string{"credential=payments-token"}},
		{frontend, "credflow_credential_usable", []string{"credential=payments-key"}},
		{backend, "credflow_refusals_total", []string{"direction=inbound", "reason=rate_limited"}},
		{backend, "credflow_refusals_total", []string{"direction=inbound", "reason=bad_token"}},
		{backend, "credflow_anomalies_total", []string{"detector=token_failures", "action=quarantine"}},
		{backend, "credflow_connections_closed_total", []string{"direction=inbound", "reason=revoked"}},
	} {
		v, err := q.sc.Metric(ctx, q.name, q.labels...)
		if err != nil {
			return err
		}
		say("   %-8s %s{%s} %v", q.sc.Name, q.name, strings.Join(q.labels, ","), v)
	}
	say("\n== done in %s; stopping sidecars and SPIRE", time.Since(began).Round(time.Second))
	return nil
}

// exchange sends msg through addr, half-closes and reads the reply.
func exchange(addr, msg string) (string, error) {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, msg); err != nil {
		return "", err
	}
	c.(*net.TCPConn).CloseWrite()
	b, err := io.ReadAll(c)
	return string(b), err
}

// describe renders one JSON access-log line for people.
func describe(line string) string {
	var a struct {
		Decision string  `json:"decision"`
		Peer     string  `json:"peer_id"`
		Reason   string  `json:"reason"`
		Group    string  `json:"group"`
		FromApp  int64   `json:"bytes_from_app"`
		ToApp    int64   `json:"bytes_to_app"`
		Duration float64 `json:"duration_ms"`
		Upstream string  `json:"upstream"`
		Cred     string  `json:"credential"`
		Method   string  `json:"method"`
		Path     string  `json:"path"`
		Status   int     `json:"status"`
	}
	if err := json.Unmarshal([]byte(line), &a); err != nil {
		return line
	}
	s := fmt.Sprintf("%-5s %-32s", strings.ToUpper(a.Decision), a.Peer)
	if a.Reason != "" {
		s += " reason=" + a.Reason
	}
	if a.Group != "" {
		s += " kex=" + a.Group
	}
	if a.Method != "" { // an HTTP request's line
		s = fmt.Sprintf("%-5s %s %s %d", strings.ToUpper(a.Decision), a.Method, a.Path, a.Status)
		if a.Upstream != "" {
			s += " upstream=" + a.Upstream
		}
		if a.Cred != "" {
			s += " injected=" + a.Cred
		}
		return s + fmt.Sprintf(" %.1fms", a.Duration)
	}
	return s + fmt.Sprintf(" to_app=%dB from_app=%dB %.1fms", a.ToApp, a.FromApp, a.Duration)
}

func indent(b []byte) []byte {
	var out bytes.Buffer
	for line := range strings.SplitSeq(strings.TrimRight(string(b), "\n"), "\n") {
		out.WriteString("   " + line + "\n")
	}
	return out.Bytes()
}
