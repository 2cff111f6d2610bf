package spanexport

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/sdk/instrumentation"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/testing/protocmp"
)

// collector is an OTLP trace service on loopback that keeps what it
// receives and answers with reply.
type collector struct {
	coltracepb.UnimplementedTraceServiceServer
	addr  string
	reply *coltracepb.ExportTraceServiceResponse

	mu  sync.Mutex
	got []*coltracepb.ExportTraceServiceRequest
}

func startCollector(t testing.TB) *collector {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	c := &collector{addr: ln.Addr().String(), reply: &coltracepb.ExportTraceServiceResponse{}}
	s := grpc.NewServer()
	coltracepb.RegisterTraceServiceServer(s, c)
	go s.Serve(ln)
	t.Cleanup(s.Stop)
	return c
}

func (c *collector) Export(ctx context.Context, req *coltracepb.ExportTraceServiceRequest) (*coltracepb.ExportTraceServiceResponse, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.got = append(c.got, req)
	return c.reply, nil
}

// last returns the last request received.
func (c *collector) last(t *testing.T) *coltracepb.ExportTraceServiceRequest {
	t.Helper()
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.got) == 0 {
		t.Fatal("the collector received nothing")
	}
	return c.got[len(c.got)-1]
}

// sampleSpans are finished spans using every field the OTLP span has:
// two resources and two scopes (interleaved), attributes of every type,
// events, links, a remote parent, a trace state, an error status and
// dropped counts.
func sampleSpans(t *testing.T) []sdktrace.ReadOnlySpan {
	t.Helper()
	resA := resource.NewSchemaless(attribute.String("service.name", "a"))
	resB, err := resource.New(context.Background(), resource.WithAttributes(attribute.String("service.name", "b"), attribute.Int("replica", 2)),
		resource.WithSchemaURL("https://opentelemetry.io/schemas/1.26.0"))
	if err != nil {
		t.Fatal(err)
	}
	scope1 := instrumentation.Scope{Name: "credflow", Version: "1.2.3"}
	scope2 := instrumentation.Scope{Name: "other", SchemaURL: "https://example.org/schema", Attributes: attribute.NewSet(attribute.Bool("x", true))}
	ts, _ := trace.ParseTraceState("vendor=value,other=1")
	tid := trace.TraceID{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16}
	parent := trace.NewSpanContext(trace.SpanContextConfig{TraceID: tid, SpanID: trace.SpanID{9, 9, 9, 9, 9, 9, 9, 9},
		TraceFlags: trace.FlagsSampled, Remote: true})
	start := time.Date(2026, 12, 6, 18, 0, 0, 123456789, time.UTC)
	var spans []sdktrace.ReadOnlySpan
	for i := range 6 {
		stub := tracetest.SpanStub{
			Name: fmt.Sprintf("span %d", i),
			SpanContext: trace.NewSpanContext(trace.SpanContextConfig{TraceID: tid, SpanID: trace.SpanID{byte(i + 1), 1, 1, 1, 1, 1, 1, 1},
				TraceFlags: trace.FlagsSampled, TraceState: ts}),
			SpanKind:             trace.SpanKind(i % 6),
			StartTime:            start.Add(time.Duration(i) * time.Millisecond),
			EndTime:              start.Add(time.Duration(i)*time.Millisecond + 1500*time.Microsecond),
			Resource:             []*resource.Resource{resA, resB}[i%2],
			InstrumentationScope: []instrumentation.Scope{scope1, scope1, scope2}[i%3],
			Attributes: []attribute.KeyValue{
				attribute.String("credflow.peer_id", "spiffe://example.org/frontend"),
				attribute.Int("http.response.status_code", 200+i),
				attribute.Int64("negative", -7),
				attribute.Float64("ratio", 0.25),
				attribute.Bool("ok", i%2 == 0),
				attribute.StringSlice("strings", []string{"a", "", "c"}),
				attribute.Int64Slice("ints", []int64{1, -2}),
				attribute.Float64Slice("floats", []float64{1.5}),
				attribute.BoolSlice("bools", []bool{true, false}),
				attribute.String("empty", ""),
			},
			DroppedAttributes: i,
		}
		if i%2 == 1 {
			stub.Parent = parent
			stub.Status = sdktrace.Status{Code: codes.Error, Description: "permission_denied"}
			stub.Events = []sdktrace.Event{{Name: "retry", Time: start.Add(time.Millisecond), Attributes: []attribute.KeyValue{attribute.Int("attempt", 2)},
				DroppedAttributeCount: 1}}
			stub.DroppedEvents = 3
			stub.Links = []sdktrace.Link{{SpanContext: parent, Attributes: []attribute.KeyValue{attribute.String("why", "follows")}, DroppedAttributeCount: 2}}
			stub.DroppedLinks = 1
		} else {
			stub.Status = sdktrace.Status{Code: codes.Code(i / 2 % 2 * 2)} // unset or ok
		}
		spans = append(spans, stub.Snapshot())
	}
	return spans
}

// TestEncodeMatchesProto: a collector receives from this exporter exactly
// what it receives from the OpenTelemetry SDK's OTLP/gRPC exporter for the
// same spans, every field of the span model in use.
func TestEncodeMatchesProto(t *testing.T) {
	c := startCollector(t)
	spans := sampleSpans(t)
	ctx := t.Context()

	sdk, err := otlptracegrpc.New(ctx, otlptracegrpc.WithEndpoint(c.addr), otlptracegrpc.WithInsecure())
	if err != nil {
		t.Fatal(err)
	}
	defer sdk.Shutdown(context.Background())
	if err := sdk.ExportSpans(ctx, spans); err != nil {
		t.Fatal(err)
	}
	want := c.last(t)

	e, err := New(c.addr, true)
	if err != nil {
		t.Fatal(err)
	}
	defer e.Shutdown(context.Background())
	for range 2 { // the second time from the reused buffer
		if err := e.ExportSpans(ctx, spans); err != nil {
			t.Fatal(err)
		}
		got := c.last(t)
		// The SDK's exporter groups the resources through a map.
		byResource := func(a, b *tracepb.ResourceSpans) int {
			return strings.Compare(a.GetResource().String(), b.GetResource().String())
		}
		slices.SortFunc(want.ResourceSpans, byResource)
		slices.SortFunc(got.ResourceSpans, byResource)
		if diff := cmp.Diff(want, got, protocmp.Transform()); diff != "" {
			t.Fatalf("what the collector received (-the SDK's exporter, +this one):\n%s", diff)
		}
	}
	if n := len(want.ResourceSpans); n != 2 {
		t.Fatalf("%d resources, want 2: the sample spans lost their variety", n)
	}
}

// TestRejected: the collector's partial success is an error naming how
// many spans it refused.
func TestRejected(t *testing.T) {
	c := startCollector(t)
	c.reply = &coltracepb.ExportTraceServiceResponse{PartialSuccess: &coltracepb.ExportTracePartialSuccess{RejectedSpans: 2, ErrorMessage: "too old"}}
	e, err := New(c.addr, true)
	if err != nil {
		t.Fatal(err)
	}
	defer e.Shutdown(context.Background())
	err = e.ExportSpans(t.Context(), sampleSpans(t))
	var rej *RejectedError
	if !errors.As(err, &rej) || rej.Rejected != 2 || rej.Message != "too old" {
		t.Fatalf("ExportSpans: %v, want the collector's 2 rejected spans", err)
	}
}

// BenchmarkExport sends batches of 512 sidecar-like spans (two kinds,
// eight attributes) to a collector on loopback, with this exporter and
// with the SDK's: compare allocs/op and B/op (the collector's decoding, in
// the same process, is the same for both).
func BenchmarkExport(b *testing.B) {
	c := startCollector(b)
	c.reply = &coltracepb.ExportTraceServiceResponse{}
	res := resource.NewSchemaless(attribute.String("service.name", "bench"))
	var spans []sdktrace.ReadOnlySpan
	for i := range 512 {
		spans = append(spans, tracetest.SpanStub{
			Name: "credflow inbound app",
			SpanContext: trace.NewSpanContext(trace.SpanContextConfig{TraceID: trace.TraceID{byte(i), 1}, SpanID: trace.SpanID{byte(i), 2},
				TraceFlags: trace.FlagsSampled}),
			SpanKind:  trace.SpanKind(2 + i%2),
			StartTime: time.Now(), EndTime: time.Now(),
			Resource:             res,
			InstrumentationScope: instrumentation.Scope{Name: "credflow"},
			Attributes: []attribute.KeyValue{attribute.String("credflow.listener", "app"), attribute.String("http.request.method", "GET"),
				attribute.String("credflow.decision", "allow"), attribute.String("credflow.peer_id", "spiffe://example.org/frontend"),
				attribute.String("credflow.route", "orders"), attribute.Int("http.response.status_code", 200),
				attribute.String("credflow.tls_group", "X25519MLKEM768"), attribute.String("url.path", "/orders/42")},
		}.Snapshot())
	}
	sdk, err := otlptracegrpc.New(b.Context(), otlptracegrpc.WithEndpoint(c.addr), otlptracegrpc.WithInsecure())
	if err != nil {
		b.Fatal(err)
	}
	defer sdk.Shutdown(context.Background())
	e, err := New(c.addr, true)
	if err != nil {
		b.Fatal(err)
	}
	defer e.Shutdown(context.Background())
	for _, x := range []struct {
		name string
		exp  sdktrace.SpanExporter
	}{{"sdk", sdk}, {"spanexport", e}} {
		b.Run(x.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if err := x.exp.ExportSpans(b.Context(), spans); err != nil {
					b.Fatal(err)
				}
				c.mu.Lock()
				c.got = c.got[:0]
				c.mu.Unlock()
			}
		})
	}
}
