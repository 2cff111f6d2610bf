package e2e_test

import (
	"bufio"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/credflow/credflow/internal/sidecartest"
)

// TestE2EHTTPAndGRPC: two sidecars in HTTP mode on real SPIRE. A grpc-go
// client (unary and server-streaming) and an HTTP/1.1 client go through
// them; a route allows some methods and refuses another (403 and
// PermissionDenied); the app receives a JWT-SVID minted by SPIRE for its
// own SPIFFE ID with the caller as subject; a JWT-SVID fetched by another
// workload and replayed through the frontend is refused.
func TestE2EHTTPAndGRPC(t *testing.T) {
	s, bin, agentBin := startWorkloads(t, 0, map[int]string{uidFrontend: "/frontend", uidBackend: "/backend", uidIntruder: "/intruder"})
	ctx := t.Context()

	// The apps: a gRPC health server (h2c) and an HTTP/1.1 app that reports
	// the token it received.
	grpcLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer()
	healthpb.RegisterHealthServer(gs, health.NewServer())
	go gs.Serve(grpcLn)
	t.Cleanup(gs.Stop)
	httpLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hs := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		claims := map[string]any{}
		if tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer "); ok {
			if parts := strings.Split(tok, "."); len(parts) == 3 {
				b, _ := base64.RawURLEncoding.DecodeString(parts[1])
				json.Unmarshal(b, &claims)
			}
		}
		fmt.Fprintf(w, "peer=%s sub=%v aud=%v", r.Header.Get("X-Credflow-Peer-Id"), claims["sub"], claims["aud"])
	})}
	go hs.Serve(httpLn)
	t.Cleanup(func() { hs.Close() })

	addrs := make([]string, 7)
	for i := range addrs {
		if addrs[i], err = sidecartest.FreeAddr(); err != nil {
			t.Fatal(err)
		}
	}
	inGRPC, inHTTP, outGRPC, outHTTP, intruderHTTP, tokenEndpoint := addrs[0], addrs[1], addrs[2], addrs[3], addrs[4], addrs[5]
	common := fmt.Sprintf("workload_api: %s\nadmin: \"{{admin}}\"\nlog: {level: debug}\n", s.AgentAddr())
	start := func(uid int, name, cfg string) *sidecartest.Sidecar { return startSidecar(t, s, bin, uid, name, cfg) }
	backend := start(uidBackend, "backend", common+fmt.Sprintf(`inbound:
  - name: grpc
    listen: %q
    app: %q
    protocol: http
    app_protocol: h2c
    allow: [spiffe://example.org]
    jwt: {require: true}
    routes:
      - peers: [spiffe://example.org/frontend]
        methods: [POST]
        paths: [/grpc.health.v1.Health/Check, /grpc.health.v1.Health/Watch]
  - name: web
    listen: %q
    app: %q
    protocol: http
    allow: [spiffe://example.org]
    jwt: {require: true, pass: true}
    routes:
      - peers: [spiffe://example.org/frontend, spiffe://example.org/intruder]
        methods: [GET]
        paths: [/api/*]
`, inGRPC, grpcLn.Addr(), inHTTP, httpLn.Addr()))
	outbound := func(name, listen, upstream string) string {
		return fmt.Sprintf("  - name: %s\n    listen: %q\n    upstream: %q\n    protocol: http\n    expect: [spiffe://example.org/backend]\n", name, listen, upstream)
	}
	frontend := start(uidFrontend, "frontend", common+fmt.Sprintf("token_endpoint: {listen: %q, audiences: [spiffe://example.org/backend]}\n", tokenEndpoint)+"outbound:\n"+outbound("grpc", outGRPC, inGRPC)+outbound("web", outHTTP, inHTTP))
	intruder := start(uidIntruder, "intruder", common+"outbound:\n"+outbound("web", intruderHTTP, inHTTP))

	// gRPC: unary and server-streaming allowed, another method refused.
	conn, err := grpc.NewClient("passthrough:///"+outGRPC, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	hc := healthpb.NewHealthClient(conn)
	if resp, err := hc.Check(ctx, &healthpb.HealthCheckRequest{}); err != nil || resp.Status != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("unary Check through the sidecars: %v, %v", resp, err)
	}
	stream, err := hc.Watch(ctx, &healthpb.HealthCheckRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if resp, err := stream.Recv(); err != nil || resp.Status != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("server-streaming Watch through the sidecars: %v, %v", resp, err)
	}
	err = conn.Invoke(ctx, "/grpc.health.v1.Health/List", &healthpb.HealthCheckRequest{}, &healthpb.HealthCheckResponse{})
	if status.Code(err) != codes.PermissionDenied {
		t.Fatalf("a method outside the route: %v, want PermissionDenied", err)
	}

	// HTTP/1.1: the app gets the JWT-SVID SPIRE minted for it, with the
	// frontend as subject; a path outside the route is refused.
	get := func(addr, path, auth string) (int, string) {
		req, _ := http.NewRequestWithContext(ctx, "GET", "http://"+addr+path, nil)
		if auth != "" {
			req.Header.Set("Authorization", auth)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	code, body := get(outHTTP, "/api/thing", "")
	if code != 200 || !strings.Contains(body, "peer=spiffe://example.org/frontend sub=spiffe://example.org/frontend aud=[spiffe://example.org/backend]") {
		t.Fatalf("HTTP/1.1 through the sidecars: %d %s", code, body)
	}
	if code, body := get(outHTTP, "/admin", ""); code != 403 {
		t.Fatalf("a path outside the route: %d %s", code, body)
	}

	// The intruder fetches its own JWT-SVID for the backend; the frontend's
	// app replays it: refused, its subject is not the mTLS peer.
	out, err := s.Command(ctx, uidIntruder, agentBin, "api", "fetch", "jwt", "-audience", "spiffe://example.org/backend",
		"-socketPath", s.AgentSocket()).CombinedOutput()
	if err != nil {
		t.Fatalf("spire-agent api fetch jwt: %v\n%s", err, out)
	}
	token := tokenFrom(t, string(out))
	if code, body := get(outHTTP, "/api/thing", "Bearer "+token); code != 401 || !strings.Contains(body, "token_peer_mismatch") {
		t.Fatalf("a replayed token: %d %s", code, body)
	}
	// Through its own sidecar the intruder is served (the route allows it).
	if code, body := get(intruderHTTP, "/api/thing", ""); code != 200 || !strings.Contains(body, "sub=spiffe://example.org/intruder") {
		t.Fatalf("the intruder through its own sidecar: %d %s", code, body)
	}
	if n, _ := backend.Metric(ctx, "credflow_refusals_total", "reason=token_peer_mismatch"); n != 1 {
		t.Errorf("token_peer_mismatch refusals = %v, want 1", n)
	}
	// The RFC 8693 endpoint: a malformed request gets invalid_request; a
	// valid one a JWT-SVID that the backend accepts as the frontend's.
	form := func(body string) (int, map[string]any) {
		resp, err := http.Post("http://"+tokenEndpoint+"/token", "application/x-www-form-urlencoded", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var out map[string]any
		json.NewDecoder(resp.Body).Decode(&out)
		return resp.StatusCode, out
	}
	if code, out := form("grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Atoken-exchange"); code != 400 || out["error"] != "invalid_request" {
		t.Fatalf("token endpoint, no audience: %d %v", code, out)
	}
	code, tokResp := form("grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Atoken-exchange&audience=spiffe%3A%2F%2Fexample.org%2Fbackend")
	exchanged, _ := tokResp["access_token"].(string)
	if code != 200 || exchanged == "" {
		t.Fatalf("token endpoint: %d %v", code, tokResp)
	}
	if code, body := get(outHTTP, "/api/thing", "Bearer "+exchanged); code != 200 || !strings.Contains(body, "sub=spiffe://example.org/frontend") {
		t.Fatalf("the exchanged token through the sidecars: %d %s", code, body)
	}
	// B18: with debug logging on, no token, key or certificate in any
	// sidecar log, admin page or refusal body.
	_, deniedBody := get(outHTTP, "/api/thing", "Bearer "+token)
	_, deniedPath := get(outHTTP, "/admin", "")
	texts := map[string]string{"refusal body (token)": deniedBody, "refusal body (path)": deniedPath}
	for name, sc := range map[string]*sidecartest.Sidecar{"backend": backend, "frontend": frontend, "intruder": intruder} {
		b, _ := os.ReadFile(sc.Log)
		texts[name+" log"] = string(b)
		for _, page := range []string{"/metrics", "/debug/identity"} {
			_, body, err := sc.Get(ctx, page)
			if err != nil {
				t.Fatal(err)
			}
			texts[name+" "+page] = body
		}
	}
	for name, text := range texts {
		for _, secret := range []string{token[:40], exchanged[:40], "eyJ", "PRIVATE KEY", "BEGIN CERTIFICATE"} {
			if strings.Contains(text, secret) {
				t.Errorf("%s holds %q", name, secret)
			}
		}
	}

	// Heap room (internal/heaproom): under a request load that allocates
	// fast the backend raises GOGC above the default, and sets the default
	// back once the load has stopped. Polled with deadlines, not timed.
	heapRoom(t, backend, func(stop <-chan struct{}) {
		big := strings.Repeat("x", 1<<10) // 24 headers of 1 KiB: each request allocates tens of KB per sidecar
		for {
			select {
			case <-stop:
				return
			default:
			}
			req, _ := http.NewRequestWithContext(ctx, "GET", "http://"+outHTTP+"/api/load", nil)
			for i := range 24 {
				req.Header.Set(fmt.Sprintf("X-Load-%d", i), big)
			}
			if resp, err := http.DefaultClient.Do(req); err == nil {
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}
		}
	})
}

// heapRoom waits for sc's go_gc_gogc_percent to be the default, runs load
// on eight goroutines until it is above the default (within a minute),
// stops the load, and waits (at most 30 s) for the default to be back.
func heapRoom(t *testing.T, sc *sidecartest.Sidecar, load func(stop <-chan struct{})) {
	t.Helper()
	ctx := t.Context()
	percent := func() float64 {
		v, err := sc.Metric(ctx, "go_gc_gogc_percent")
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	waitDefault := func(after string) {
		t.Helper()
		p := percent()
		for end := time.Now().Add(30 * time.Second); p != 100 && time.Now().Before(end); p = percent() {
			time.Sleep(200 * time.Millisecond)
		}
		if p != 100 {
			t.Fatalf("%s: go_gc_gogc_percent %v 30 s %s, want the default 100", sc.Name, p, after)
		}
	}
	waitDefault("before the load") // a start that allocated fast may hold room for 5 s
	before, _ := sc.Metric(ctx, "credflow_heap_room_changes_total")
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() { load(stop) })
	}
	raised := 0.0
	for end := time.Now().Add(time.Minute); time.Now().Before(end); time.Sleep(200 * time.Millisecond) {
		if raised = percent(); raised > 100 {
			break
		}
	}
	close(stop)
	wg.Wait()
	if raised <= 100 {
		t.Fatalf("%s: go_gc_gogc_percent still %v after a minute of load, want the heap room (above 100)", sc.Name, raised)
	}
	waitDefault("after the load stopped")
	if n, _ := sc.Metric(ctx, "credflow_heap_room_changes_total"); n-before < 2 {
		t.Errorf("%s: credflow_heap_room_changes_total moved by %v over a raise and a return, want 2 or more", sc.Name, n-before)
	}
}

// tokenFrom finds the token in `spire-agent api fetch jwt` output.
func tokenFrom(t *testing.T, out string) string {
	t.Helper()
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		if strings.HasPrefix(sc.Text(), "token(") && sc.Scan() {
			return strings.TrimSpace(sc.Text())
		}
	}
	t.Fatalf("no token in:\n%s", out)
	return ""
}
