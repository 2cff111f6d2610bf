package app

import (
	"bytes"
	"context"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/credflow/credflow/internal/config"
	"github.com/credflow/credflow/internal/jaegertest"
	"github.com/credflow/credflow/internal/testenv"
)

// TestTracingCollectorDown: with nobody at the collector's address, spans
// are counted as dropped and the failure is logged once, and making them
// never waits for the collector.
func TestTracingCollectorDown(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // nobody listens there now
	reg := prometheus.NewRegistry()
	var logs bytes.Buffer
	tr, err := newTracing(&config.Tracing{Endpoint: addr, Insecure: true, SampleRatio: 1, ServiceName: "test",
		Queue: 100, Timeout: time.Second}, reg, slog.New(slog.NewTextHandler(&logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	tracer := tr.provider.Tracer("test")
	began := time.Now()
	for range 50 {
		_, span := tracer.Start(context.Background(), "request")
		span.End()
	}
	// Were ending a span to wait for its export, the 50 would take 50 s
	// (each export's 1 s timeout); the bound leaves room for a loaded
	// machine.
	if took := time.Since(began); took > 10*time.Second {
		t.Errorf("50 spans took %v with the collector down", took)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	tr.provider.ForceFlush(ctx)
	mfs, _ := reg.Gather()
	var dropped float64
	for _, mf := range mfs {
		if mf.GetName() != "credflow_trace_spans_dropped_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			if m.GetLabel()[0].GetValue() == dropExportFailed {
				dropped = m.GetCounter().GetValue()
			}
		}
	}
	if dropped != 50 {
		t.Errorf(`credflow_trace_spans_dropped_total{reason="export_failed"} = %v, want the 50 spans`, dropped)
	}
	if !strings.Contains(logs.String(), "tracing: spans not exported") {
		t.Errorf("no warning logged:\n%s", logs.String())
	}
	tr.stop()
}

// TestTracingToJaeger: the sidecar's exporter delivers its spans to a real
// Jaeger (v1.75.0, OTLP over gRPC): names, kinds, parents, attributes,
// status and the service name read back from the query API.
func TestTracingToJaeger(t *testing.T) {
	testenv.NeedsJaeger(t)
	j, err := jaegertest.Start(t.Context(), "")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(j.Close)
	tr, err := newTracing(&config.Tracing{Endpoint: j.OTLP, Insecure: true, SampleRatio: 1, ServiceName: "orders-sidecar",
		Queue: 100, Timeout: 5 * time.Second}, prometheus.NewRegistry(), slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer tr.stop()
	tracer := tr.provider.Tracer("credflow")
	ctx, server := tracer.Start(context.Background(), "credflow inbound app", trace.WithSpanKind(trace.SpanKindServer))
	_, client := tracer.Start(ctx, "credflow inbound app to app", trace.WithSpanKind(trace.SpanKindClient))
	client.SetAttributes(attribute.Int("http.response.status_code", 503))
	client.SetStatus(codes.Error, "Service Unavailable")
	client.End()
	server.SetAttributes(attribute.String("credflow.peer_id", "spiffe://example.org/frontend"), attribute.String("credflow.decision", "allow"))
	server.End()
	if err := tr.provider.ForceFlush(t.Context()); err != nil {
		t.Fatal(err)
	}
	traceID := server.SpanContext().TraceID().String()
	var spans []jaegertest.Span
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		spans, err = j.Trace(t.Context(), traceID)
		if err == nil && len(spans) >= 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("trace %s: %d spans after 30 s (%v)\n%s", traceID, len(spans), err, j.Log())
		}
	}
	byName := map[string]jaegertest.Span{}
	for _, s := range spans {
		byName[s.OperationName] = s
	}
	s, c := byName["credflow inbound app"], byName["credflow inbound app to app"]
	if len(spans) != 2 || s.SpanID != server.SpanContext().SpanID().String() || c.Parent() != s.SpanID || s.Parent() != "" {
		t.Fatalf("spans %+v: want the server span and the client span under it", spans)
	}
	for span, tags := range map[*jaegertest.Span]map[string]string{
		&s: {"span.kind": "server", "credflow.peer_id": "spiffe://example.org/frontend", "credflow.decision": "allow"},
		&c: {"span.kind": "client", "http.response.status_code": "503", "otel.status_code": "ERROR", "otel.status_description": "Service Unavailable", "error": "true"},
	} {
		for k, want := range tags {
			if got := span.Tag(k); got != want {
				t.Errorf("span %q: %s = %q, want %q", span.OperationName, k, got, want)
			}
		}
		if span.Service != "orders-sidecar" {
			t.Errorf("span %q: service %q, want orders-sidecar", span.OperationName, span.Service)
		}
	}
}
