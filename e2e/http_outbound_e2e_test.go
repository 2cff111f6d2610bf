package e2e_test

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/credflow/credflow/internal/sidecartest"
)

// TestE2EHTTPClientSide is S15-16 on real SPIRE: the client-side sidecar
// in HTTP mode records a successful request (an access-log line naming the
// verified upstream, the key-exchange group in its metrics and in
// /debug/identity's negotiated_groups), and a request to an upstream whose
// identity is not the one expected, or that refuses the client, is
// answered with the reason, over HTTP and gRPC, not just
// upstream_unavailable.
func TestE2EHTTPClientSide(t *testing.T) {
	s, bin, _ := startWorkloads(t, 0, map[int]string{uidFrontend: "/frontend", uidBackend: "/backend", uidIntruder: "/intruder"})
	ctx := t.Context()

	appLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	app := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "peer=%s", r.Header.Get("X-Credflow-Peer-Id"))
	})}
	go app.Serve(appLn)
	t.Cleanup(func() { app.Close() })

	addrs := make([]string, 4)
	for i := range addrs {
		if addrs[i], err = sidecartest.FreeAddr(); err != nil {
			t.Fatal(err)
		}
	}
	inWeb, outWeb, outWrong, outIntruder := addrs[0], addrs[1], addrs[2], addrs[3]
	common := fmt.Sprintf("workload_api: %s\nadmin: \"{{admin}}\"\n", s.AgentAddr())
	startSidecar(t, s, bin, uidBackend, "backend", common+fmt.Sprintf(`inbound:
  - name: web
    listen: %q
    app: %q
    protocol: http
    allow: [spiffe://example.org/frontend]
    routes:
      - peers: [spiffe://example.org/frontend]
        paths: [/*]
`, inWeb, appLn.Addr()))
	outbound := func(name, listen, expect string) string {
		return fmt.Sprintf("  - name: %s\n    listen: %q\n    upstream: %q\n    protocol: http\n    expect: [%s]\n", name, listen, inWeb, expect)
	}
	frontend := startSidecar(t, s, bin, uidFrontend, "frontend", common+"outbound:\n"+
		outbound("web", outWeb, "spiffe://example.org/backend")+outbound("wrong", outWrong, "spiffe://example.org/other"))
	intruder := startSidecar(t, s, bin, uidIntruder, "intruder", common+"outbound:\n"+outbound("web", outIntruder, "spiffe://example.org/backend"))

	get := func(addr string) (int, string, string) {
		req, _ := http.NewRequestWithContext(ctx, "GET", "http://"+addr+"/api/thing", nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, resp.Header.Get("X-Credflow-Reason"), string(b)
	}
	if code, _, body := get(outWeb); code != 200 || body != "peer=spiffe://example.org/frontend" {
		t.Fatalf("through the sidecars: %d %s", code, body)
	}
	waitAccessLine(t, frontend, "direction=outbound", "listener=web", "transport=http", "decision=allow",
		"peer_id=spiffe://example.org/backend", "method=GET", "path=/api/thing", "status=200")
	if n, err := frontend.Metric(ctx, "credflow_tls_connections_total", "direction=outbound", "group=X25519MLKEM768"); err != nil || n != 1 {
		t.Errorf("frontend outbound connections with X25519MLKEM768 = %v (%v), want 1", n, err)
	}
	_, body, err := frontend.Get(ctx, "/debug/identity")
	if err != nil {
		t.Fatal(err)
	}
	var identity struct {
		NegotiatedGroups map[string]int64 `json:"negotiated_groups"`
	}
	if err := json.Unmarshal([]byte(body), &identity); err != nil || identity.NegotiatedGroups["X25519MLKEM768"] != 1 {
		t.Errorf("frontend negotiated_groups %v (%v), want X25519MLKEM768: 1\n%s", identity.NegotiatedGroups, err, body)
	}

	// The upstream is not who this listener expects: unauthorized.
	if code, reason, body := get(outWrong); code != http.StatusBadGateway || reason != "unauthorized" {
		t.Errorf("an upstream with an unexpected identity: %d %q %s, want 502 unauthorized", code, reason, body)
	}
	conn, err := grpc.NewClient("passthrough:///"+outWrong, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_, err = healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
	if st := status.Convert(err); st.Code() != codes.Unavailable || st.Message() != "credflow: unauthorized" {
		t.Errorf("gRPC to an upstream with an unexpected identity: %v, want Unavailable \"credflow: unauthorized\"", err)
	}
	waitAccessLine(t, frontend, "direction=outbound", "listener=wrong", "transport=http", "decision=deny",
		"reason=unauthorized", "peer_id=spiffe://example.org/backend", "method=GET", "status=502")

	// The upstream does not allow this client: peer_refused.
	if code, reason, body := get(outIntruder); code != http.StatusBadGateway || reason != "peer_refused" {
		t.Errorf("an upstream that refuses the client: %d %q %s, want 502 peer_refused", code, reason, body)
	}
	waitAccessLine(t, intruder, "direction=outbound", "listener=web", "transport=http", "decision=deny",
		"reason=peer_refused", "method=GET", "status=502")
}

// waitAccessLine waits up to 5s for an access-log line of sc with every
// key=value of want.
func waitAccessLine(t *testing.T, sc *sidecartest.Sidecar, want ...string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		for _, line := range sc.LogLines(`"msg":"access"`) {
			var m map[string]any
			if json.Unmarshal([]byte(line), &m) != nil {
				continue
			}
			ok := true
			for _, kv := range want {
				k, v, _ := strings.Cut(kv, "=")
				if got, found := m[k]; !found || strings.Trim(fmt.Sprint(got), `"`) != v {
					ok = false
					break
				}
			}
			if ok {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no access-log line of %s with %v in:\n%s", sc.Name, want, strings.Join(sc.LogLines(`"msg":"access"`), "\n"))
		}
		time.Sleep(50 * time.Millisecond)
	}
}
