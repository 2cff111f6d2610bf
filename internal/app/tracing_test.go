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

	"github.com/credflow/credflow/internal/config"
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
	if took := time.Since(began); took > time.Second {
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
