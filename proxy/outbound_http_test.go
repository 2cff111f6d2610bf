package proxy_test

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/credflow/credflow/internal/testca"
	"github.com/credflow/credflow/pqc"
	"github.com/credflow/credflow/proxy"
	"github.com/credflow/credflow/proxy/route"
)

// accessLog collects access-log lines written as JSON.
type accessLog struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (a *accessLog) Write(p []byte) (int, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.buf.Write(p)
}

func (a *accessLog) logger() *slog.Logger { return slog.New(slog.NewJSONHandler(a, nil)) }

// lines returns the lines that have every key=value of want.
func (a *accessLog) lines(t *testing.T, want ...string) []map[string]any {
	t.Helper()
	a.mu.Lock()
	defer a.mu.Unlock()
	var out []map[string]any
	sc := bufio.NewScanner(bytes.NewReader(a.buf.Bytes()))
line:
	for sc.Scan() {
		var m map[string]any
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			t.Fatalf("access log line %q: %v", sc.Text(), err)
		}
		for _, kv := range want {
			k, v, _ := strings.Cut(kv, "=")
			if got, ok := m[k]; !ok || jsonString(got) != v {
				continue line
			}
		}
		out = append(out, m)
	}
	return out
}

func jsonString(v any) string {
	b, _ := json.Marshal(v)
	return strings.Trim(string(b), `"`)
}

// waitLine waits up to 3s for a line with every key=value of want.
func (a *accessLog) waitLine(t *testing.T, want ...string) map[string]any {
	t.Helper()
	deadline := time.Now().Add(3 * time.Second)
	for {
		if ls := a.lines(t, want...); len(ls) > 0 {
			return ls[0]
		}
		if time.Now().After(deadline) {
			a.mu.Lock()
			defer a.mu.Unlock()
			t.Fatalf("no access-log line with %v in:\n%s", want, a.buf.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// outboundRig is an HTTP outbound listener ("up") of the frontend towards
// upstream, with its access log and metrics.
type outboundRig struct {
	p    *proxy.Proxy
	addr string
	m    *inbound
	acc  *accessLog
}

func startOutboundHTTP(t *testing.T, ca *testca.CA, upstream, expect string, kex pqc.Policy) *outboundRig {
	t.Helper()
	front := spiffeid.RequireFromPath(td, "/frontend")
	acc := &accessLog{}
	p, reg := startProxy(t, proxy.Config{
		SVIDs:       static{svid: ca.Issue(t, front)},
		Bundles:     x509bundle.NewSet(ca.Bundle()),
		Outbound:    []proxy.Outbound{{Name: "up", Listen: "127.0.0.1:0", Upstream: upstream, Expect: policy(t, expect), HTTP: &proxy.OutboundHTTP{JWTAudience: "spiffe://example.org/backend"}}},
		Tokens:      source{j: newJWTIssuer(t), id: front},
		KeyExchange: kex,
		AccessLog:   acc.logger(),
	})
	return &outboundRig{p: p, addr: p.Addr("up").String(), m: &inbound{reg: reg}, acc: acc}
}

// startBackendHTTP is an HTTP inbound listener of the backend in front of
// echoApp, allowing allow on every path, without JWT-SVIDs.
func startBackendHTTP(t *testing.T, ca *testca.CA, allow string) string {
	t.Helper()
	appLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: echoApp}
	go srv.Serve(appLn)
	t.Cleanup(func() { srv.Close() })
	all, _ := route.ParsePath("/*")
	p, _ := startProxy(t, proxy.Config{
		SVIDs:   static{svid: ca.Issue(t, spiffeid.RequireFromPath(td, "/backend"))},
		Bundles: x509bundle.NewSet(ca.Bundle()),
		Inbound: []proxy.Inbound{{Name: "app", Listen: "127.0.0.1:0", App: appLn.Addr().String(), Allow: policy(t, allow),
			HTTP: &proxy.InboundHTTP{Routes: route.Table{Rules: []route.Rule{{Peers: policy(t, allow), Paths: []route.Path{all}}}}}}},
	})
	return p.Addr("app").String()
}

// TestHTTPOutboundRecordsRequests is S15-16 on the client side: a request
// through an HTTP outbound listener gets an access-log line naming the
// verified upstream, and the pooled connection it took is counted in the
// connection and key-exchange metrics and in NegotiatedGroups.
func TestHTTPOutboundRecordsRequests(t *testing.T) {
	ca := testca.New(t, td)
	out := startOutboundHTTP(t, ca, startBackendHTTP(t, ca, "spiffe://example.org/frontend"), "spiffe://example.org/backend", pqc.Policy{})
	for range 3 {
		resp, err := http.Get("http://" + out.addr + "/api/x")
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || !strings.Contains(string(body), "peer=[spiffe://example.org/frontend]") {
			t.Fatalf("through the sidecars: %d %s", resp.StatusCode, body)
		}
	}
	out.acc.waitLine(t, "direction=outbound", "listener=up", "transport=http", "decision=allow",
		"peer_id=spiffe://example.org/backend", "method=GET", "path=/api/x", "status=200")
	// The line is written once the handler returns, after the app may
	// have its response.
	waitUntil(t, 3*time.Second, "not one allow line per request", func() bool {
		return len(out.acc.lines(t, "direction=outbound", "decision=allow")) == 3
	}, func() string {
		return fmt.Sprintf("%d lines", len(out.acc.lines(t, "direction=outbound", "decision=allow")))
	})
	// Two pooled connections carried the three requests: the HTTP/2
	// pool's the first (where the upstream said it takes a connection per
	// request in flight), an HTTP/1.1 one the next two.
	out.m.waitMetric(t, 2, "credflow_connections_total", "direction=outbound", "result=allowed")
	out.m.waitMetric(t, 2, "credflow_tls_connections_total", "direction=outbound", "group=X25519MLKEM768", "version=TLS 1.3")
	out.m.waitMetric(t, 2, "credflow_active_connections", "direction=outbound")
	if g := out.p.NegotiatedGroups(); g["X25519MLKEM768"] != 2 {
		t.Errorf("negotiated groups %v, want X25519MLKEM768: 2", g)
	}
}

// TestHTTPOutboundRefusalReasons is S15-16's reasons: when the pooled
// connection to the upstream cannot be made for a reason of policy, the
// app's request is answered 502 with that reason in X-Credflow-Reason (the
// gRPC status message for gRPC), not just upstream_unavailable, and the
// access log says so.
func TestHTTPOutboundRefusalReasons(t *testing.T) {
	ca := testca.New(t, td)
	backend := startBackendHTTP(t, ca, "spiffe://example.org/frontend")
	for _, tc := range []struct {
		name, upstream, expect string
		kex                    pqc.Policy
		reason                 string
	}{
		{"unexpected upstream identity", backend, "spiffe://example.org/other", pqc.Policy{}, "unauthorized"},
		{"upstream refuses us", startBackendHTTP(t, ca, "spiffe://example.org/other"), "spiffe://example.org/backend", pqc.Policy{}, "peer_refused"},
		{"classical upstream, hybrid required", classicalServer(t, ca, spiffeid.RequireFromPath(td, "/backend")), "spiffe://example.org/backend",
			pqc.Policy{Mode: pqc.HybridRequired}, "pq_required"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out := startOutboundHTTP(t, ca, tc.upstream, tc.expect, tc.kex)
			resp, err := http.Get("http://" + out.addr + "/api/x")
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusBadGateway || resp.Header.Get("X-Credflow-Reason") != tc.reason || string(body) != "Bad Gateway: "+tc.reason+"\n" {
				t.Errorf("got %d %q %q, want 502 %s", resp.StatusCode, resp.Header.Get("X-Credflow-Reason"), body, tc.reason)
			}
			// gRPC: the reason is in the status message.
			req, _ := http.NewRequest("POST", "http://"+out.addr+"/pkg.Svc/Call", strings.NewReader("\x00\x00\x00\x00\x00"))
			req.Header.Set("Content-Type", "application/grpc")
			req.Header.Set("Te", "trailers")
			resp, err = h2cClient().Do(req)
			if err != nil {
				t.Fatal(err)
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if got := resp.Trailer.Get("Grpc-Message"); got != "credflow: "+tc.reason || resp.Trailer.Get("Grpc-Status") != "14" {
				t.Errorf("gRPC status %s %q, want 14 %q", resp.Trailer.Get("Grpc-Status"), got, "credflow: "+tc.reason)
			}
			out.acc.waitLine(t, "direction=outbound", "listener=up", "transport=http", "decision=deny", "reason="+tc.reason,
				"method=GET", "path=/api/x", "status=502")
			if n := out.m.metric(t, "credflow_refusals_total", "direction=outbound", "reason="+tc.reason); n < 1 {
				t.Errorf("%s refusals = %v", tc.reason, n)
			}
			if n := out.m.metric(t, "credflow_refusals_total", "reason=upstream_unavailable"); n != 0 {
				t.Errorf("upstream_unavailable refusals = %v, want 0", n)
			}
		})
	}
}
