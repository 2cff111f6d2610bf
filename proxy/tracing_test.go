package proxy_test

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/credflow/credflow/internal/jaegertest"
	"github.com/credflow/credflow/internal/sidecartest"
	"github.com/credflow/credflow/internal/testca"
	"github.com/credflow/credflow/internal/testenv"
	"github.com/credflow/credflow/proxy"
	"github.com/credflow/credflow/proxy/route"
)

// tracePair is an outbound and an inbound HTTP sidecar, each with its own
// tracer provider, in front of an app that records the trace context it
// receives.
type tracePair struct {
	out, in *proxy.Proxy
	mu      sync.Mutex
	seen    []string // the traceparent headers the app received
}

func startTracePair(t testing.TB, outTP, inTP trace.TracerProvider) *tracePair {
	t.Helper()
	return startTracePairWith(t, outTP, inTP, false)
}

// startTracePairWith is startTracePair, with followOnly as both sidecars'
// Config.TraceFollowOnly.
func startTracePairWith(t testing.TB, outTP, inTP trace.TracerProvider, followOnly bool) *tracePair {
	t.Helper()
	ca := testca.New(t, td)
	bundles := x509bundle.NewSet(ca.Bundle())
	tp := &tracePair{}
	appLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	app := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		tp.mu.Lock()
		tp.seen = append(tp.seen, r.Header.Get("Traceparent"))
		tp.mu.Unlock()
		io.WriteString(w, "ok")
	})}
	go app.Serve(appLn)
	t.Cleanup(func() { app.Close() })
	frontend, backend := spiffeid.RequireFromPath(td, "/frontend"), spiffeid.RequireFromPath(td, "/backend")
	all, _ := route.ParsePath("/*")
	tp.in, _ = startProxy(t, proxy.Config{
		SVIDs:   static{svid: ca.Issue(t, backend)},
		Bundles: bundles,
		Tracer:  inTP, TraceFollowOnly: followOnly,
		Inbound: []proxy.Inbound{{Name: "app", Listen: "127.0.0.1:0", App: appLn.Addr().String(), Allow: policy(t, frontend.String()),
			HTTP: &proxy.InboundHTTP{Routes: route.Table{Rules: []route.Rule{{Name: "orders", Peers: policy(t, frontend.String()), Paths: []route.Path{all}}}}}}},
	})
	tp.out, _ = startProxy(t, proxy.Config{
		SVIDs:   static{svid: ca.Issue(t, frontend)},
		Bundles: bundles,
		Tracer:  outTP, TraceFollowOnly: followOnly,
		Outbound: []proxy.Outbound{{Name: "up", Listen: "127.0.0.1:0", Upstream: tp.in.Addr("app").String(),
			Expect: policy(t, backend.String()), HTTP: &proxy.OutboundHTTP{}}},
		Tokens: source{j: newJWTIssuer(t), id: frontend},
	})
	return tp
}

// get sends a request through the pair, with the trace context of ctx.
func (tp *tracePair) get(t testing.TB, ctx context.Context) {
	t.Helper()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+tp.out.Addr("up").String()+"/orders/42", nil)
	propagation.TraceContext{}.Inject(ctx, propagation.HeaderCarrier(req.Header))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("through the sidecars: %s (%s)", resp.Status, resp.Header.Get("X-Credflow-Reason"))
	}
}

// provider exports to Jaeger's OTLP receiver as service, every trace.
func provider(t *testing.T, j *jaegertest.Jaeger, service string) *sdktrace.TracerProvider {
	t.Helper()
	exp, err := otlptracegrpc.New(t.Context(), otlptracegrpc.WithEndpoint(j.OTLP), otlptracegrpc.WithInsecure())
	if err != nil {
		t.Fatal(err)
	}
	tp := sdktrace.NewTracerProvider(sdktrace.WithBatcher(exp),
		sdktrace.WithResource(resource.NewSchemaless(attribute.String("service.name", service))))
	t.Cleanup(func() { tp.Shutdown(context.Background()) })
	return tp
}

// TestTracingThroughJaeger sends the app's request through an outbound and
// an inbound sidecar, each exporting its spans to a real Jaeger, and reads
// the trace back from Jaeger's query API: one trace, the app's span its
// root, each sidecar's server span under the span before it and its
// client span under its server span, with the peer, decision, route and
// TLS group; the upstream app receives the trace context of the inbound
// sidecar's client span.
func TestTracingThroughJaeger(t *testing.T) {
	testenv.NeedsJaeger(t)
	j, err := jaegertest.Start(t.Context(), "")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(j.Close)
	outTP, inTP, appTP := provider(t, j, "frontend-sidecar"), provider(t, j, "backend-sidecar"), provider(t, j, "frontend-app")
	tp := startTracePair(t, outTP, inTP)

	ctx, span := appTP.Tracer("app").Start(t.Context(), "app: GET /orders/42")
	tp.get(t, ctx)
	span.End()
	for _, p := range []*sdktrace.TracerProvider{outTP, inTP, appTP} {
		if err := p.ForceFlush(t.Context()); err != nil {
			t.Fatal(err)
		}
	}
	traceID := span.SpanContext().TraceID().String()

	var spans []jaegertest.Span
	deadline := time.Now().Add(30 * time.Second)
	for {
		spans, err = j.Trace(t.Context(), traceID)
		if err == nil && len(spans) >= 5 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("trace %s: %d spans after 30 s (%v)\n%s", traceID, len(spans), err, j.Log())
		}
		time.Sleep(100 * time.Millisecond)
	}
	byName := map[string]jaegertest.Span{}
	for _, s := range spans {
		byName[s.OperationName] = s
		t.Logf("span %s %q parent %s", s.SpanID, s.OperationName, s.Parent())
	}
	chain := []string{
		"app: GET /orders/42",
		"credflow outbound up",
		"credflow outbound up to " + tp.in.Addr("app").String(),
		"credflow inbound app",
		"credflow inbound app to app",
	}
	for i, name := range chain {
		s, ok := byName[name]
		if !ok {
			t.Fatalf("no span %q in the trace", name)
		}
		want := ""
		if i > 0 {
			want = byName[chain[i-1]].SpanID
		}
		if s.Parent() != want {
			t.Errorf("span %q: parent %q, want %q (%s)", name, s.Parent(), want, chain[max(i-1, 0)])
		}
	}
	if len(spans) != len(chain) {
		t.Errorf("%d spans in the trace, want %d", len(spans), len(chain))
	}
	in := byName["credflow inbound app"]
	for key, want := range map[string]string{
		"credflow.peer_id": "spiffe://example.org/frontend", "credflow.decision": "allow", "credflow.route": "orders",
		"credflow.tls_group": "X25519MLKEM768", "span.kind": "server",
	} {
		if got := in.Tag(key); got != want {
			t.Errorf("inbound server span: %s = %q, want %q", key, got, want)
		}
	}
	outClient := byName[chain[2]]
	for key, want := range map[string]string{"credflow.peer_id": "spiffe://example.org/backend", "span.kind": "client", "http.response.status_code": "200"} {
		if got := outClient.Tag(key); got != want {
			t.Errorf("outbound client span: %s = %q, want %q", key, got, want)
		}
	}
	tp.mu.Lock()
	defer tp.mu.Unlock()
	if len(tp.seen) != 1 || len(tp.seen[0]) != 55 || tp.seen[0][36:52] != byName[chain[4]].SpanID {
		t.Errorf("the app received traceparent %q; want the inbound sidecar's client span %s", tp.seen, byName[chain[4]].SpanID)
	}
}

// TestTracingSampledOut: with a sample ratio of 0 and no sampled parent,
// the sidecars record no span; the trace context still reaches the app
// (not sampled), so its own decision holds.
func TestTracingSampledOut(t *testing.T) {
	rec := tracetest.NewSpanRecorder()
	off := sdktrace.NewTracerProvider(sdktrace.WithSampler(sdktrace.ParentBased(sdktrace.TraceIDRatioBased(0))), sdktrace.WithSpanProcessor(rec))
	tp := startTracePair(t, off, off)
	for range 20 {
		tp.get(t, t.Context())
	}
	if n := len(rec.Ended()) + len(rec.Started()); n != 0 {
		t.Errorf("sampling off: %d spans recorded", n)
	}
	tp.mu.Lock()
	defer tp.mu.Unlock()
	for _, tpHeader := range tp.seen {
		if len(tpHeader) != 55 || tpHeader[53:] != "00" {
			t.Errorf("the app received traceparent %q; want one, not sampled", tpHeader)
		}
	}
}

// TestTracingFollowOnly: with a sample ratio of 0 (TraceFollowOnly), a
// request without a trace context passes untouched (no span, no
// traceparent added), one with an unsampled context passes with its
// header as it came, and one with a sampled context is traced by both
// sidecars and reaches the app in the same trace.
func TestTracingFollowOnly(t *testing.T) {
	rec := tracetest.NewSpanRecorder()
	off := sdktrace.NewTracerProvider(sdktrace.WithSampler(sdktrace.ParentBased(sdktrace.TraceIDRatioBased(0))), sdktrace.WithSpanProcessor(rec))
	tp := startTracePairWith(t, off, off, true)
	tp.get(t, t.Context())
	tid, _ := trace.TraceIDFromHex("4bf92f3577b34da6a3ce929d0e0e4736")
	sid, _ := trace.SpanIDFromHex("00f067aa0ba902b7")
	unsampled := trace.ContextWithSpanContext(t.Context(), trace.NewSpanContext(trace.SpanContextConfig{TraceID: tid, SpanID: sid, Remote: true}))
	tp.get(t, unsampled)
	if n := len(rec.Ended()) + len(rec.Started()); n != 0 {
		t.Errorf("unsampled requests: %d spans recorded", n)
	}
	sampled := trace.ContextWithSpanContext(t.Context(), trace.NewSpanContext(trace.SpanContextConfig{TraceID: tid, SpanID: sid,
		TraceFlags: trace.FlagsSampled, Remote: true}))
	tp.get(t, sampled)
	waitUntil(t, 10*time.Second, "four spans", func() bool { return len(rec.Ended()) == 4 }, func() string { return fmt.Sprint(len(rec.Ended())) })
	for _, s := range rec.Ended() {
		if s.SpanContext().TraceID() != tid {
			t.Errorf("span %q in trace %s, want the caller's", s.Name(), s.SpanContext().TraceID())
		}
	}
	tp.mu.Lock()
	defer tp.mu.Unlock()
	if len(tp.seen) != 3 || tp.seen[0] != "" || tp.seen[1] != "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00" ||
		!strings.HasPrefix(tp.seen[2], "00-4bf92f3577b34da6a3ce929d0e0e4736-") || strings.Contains(tp.seen[2], sid.String()) || !strings.HasSuffix(tp.seen[2], "-01") {
		t.Errorf("the app received traceparents %q: want none, the caller's unsampled one as it came, then one of the caller's trace from the inbound sidecar's span", tp.seen)
	}
}

// TestTracingConnections: with TraceConnections, each relayed TCP
// connection is a span on each side (inbound server, outbound client), a
// root span from accept to close with the peer, the TLS group and the
// bytes each way; without it, none.
func TestTracingConnections(t *testing.T) {
	for _, on := range []bool{true, false} {
		rec := tracetest.NewSpanRecorder()
		tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
		ca := testca.New(t, td)
		echo, err := sidecartest.Echo(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		bundles := x509bundle.NewSet(ca.Bundle())
		in, _ := startProxy(t, proxy.Config{SVIDs: static{svid: ca.Issue(t, spiffeid.RequireFromPath(td, "/backend"))}, Bundles: bundles,
			Tracer: tp, TraceConnections: on,
			Inbound: []proxy.Inbound{{Name: "app", Listen: "127.0.0.1:0", App: echo, Allow: policy(t, "spiffe://example.org/frontend")}}})
		out, _ := startProxy(t, proxy.Config{SVIDs: static{svid: ca.Issue(t, spiffeid.RequireFromPath(td, "/frontend"))}, Bundles: bundles,
			Tracer: tp, TraceConnections: on,
			Outbound: []proxy.Outbound{{Name: "up", Listen: "127.0.0.1:0", Upstream: in.Addr("app").String(), Expect: policy(t, "spiffe://example.org/backend")}}})
		if got := roundTrip(t, out.Addr("up").String(), []byte("hello")); string(got) != "hello" {
			t.Fatalf("through the sidecars: %q", got)
		}
		var spans []sdktrace.ReadOnlySpan
		for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
			if spans = rec.Ended(); len(spans) >= 2 || !on {
				break
			}
		}
		if !on {
			time.Sleep(100 * time.Millisecond)
			if n := len(rec.Ended()) + len(rec.Started()); n != 0 {
				t.Errorf("TraceConnections off: %d spans", n)
			}
			continue
		}
		if len(spans) != 2 {
			t.Fatalf("%d connection spans, want 2", len(spans))
		}
		for _, s := range spans {
			attrs := map[string]string{}
			for _, kv := range s.Attributes() {
				attrs[string(kv.Key)] = kv.Value.Emit()
			}
			switch s.Name() {
			case "credflow inbound app connection":
				if s.SpanKind() != trace.SpanKindServer || attrs["credflow.peer_id"] != "spiffe://example.org/frontend" ||
					attrs["credflow.bytes_to_app"] != "5" || attrs["credflow.bytes_from_app"] != "5" || attrs["credflow.tls_group"] == "" {
					t.Errorf("inbound span: %v %v", s.SpanKind(), attrs)
				}
			case "credflow outbound up connection":
				if s.SpanKind() != trace.SpanKindClient || attrs["credflow.peer_id"] != "spiffe://example.org/backend" || attrs["credflow.transport"] != "tcp" {
					t.Errorf("outbound span: %v %v", s.SpanKind(), attrs)
				}
			default:
				t.Errorf("unexpected span %q", s.Name())
			}
			if s.Parent().IsValid() {
				t.Errorf("span %q has a parent; a connection span is a root", s.Name())
			}
		}
	}
}

// discard is a span exporter that keeps nothing.
type discard struct{}

func (discard) ExportSpans(context.Context, []sdktrace.ReadOnlySpan) error { return nil }
func (discard) Shutdown(context.Context) error                             { return nil }

// BenchmarkTracedRequest sends requests through an outbound and an inbound
// sidecar with tracing off, and with every request sampled (spans batched
// and dropped by the exporter): what the spans cost a request, in the
// same run (compare ns/op and allocs/op between the two).
func BenchmarkTracedRequest(b *testing.B) {
	for _, c := range []struct {
		name   string
		traced bool
	}{{"off", false}, {"sampled", true}} {
		b.Run(c.name, func(b *testing.B) {
			var outTP, inTP trace.TracerProvider
			if c.traced {
				for _, p := range []*trace.TracerProvider{&outTP, &inTP} {
					sdk := sdktrace.NewTracerProvider(sdktrace.WithBatcher(discard{}))
					b.Cleanup(func() { sdk.Shutdown(context.Background()) })
					*p = sdk
				}
			}
			tp := startTracePair(b, outTP, inTP)
			tp.get(b, b.Context()) // the connections up
			b.ReportAllocs()
			for b.Loop() {
				tp.get(b, b.Context())
			}
		})
	}
}
