package app

import (
	"context"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"

	"github.com/credflow/credflow/internal/config"
	"github.com/credflow/credflow/internal/spanexport"
)

// tracing is the sidecar's tracer provider and what stops it.
type tracing struct {
	provider *sdktrace.TracerProvider
}

// newTracing builds the OTLP/gRPC exporter (spanexport: the SDK's spans
// encoded straight to the wire, no retries: the batcher's timeout bounds
// each send) and a tracer provider sampling
// cfg.SampleRatio of the traces started here (a sampled parent is always
// followed), exporting in batches from a bounded queue. The exporter
// connects lazily: a collector that is down costs spans, counted, never a
// request.
func newTracing(cfg *config.Tracing, reg prometheus.Registerer, log *slog.Logger) (*tracing, error) {
	if cfg == nil {
		return nil, nil
	}
	exp, err := spanexport.New(cfg.Endpoint, cfg.Insecure)
	if err != nil {
		return nil, err
	}
	dropped := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "credflow_trace_spans_dropped_total",
		Help: "Spans not exported, by reason: queue_full (the export queue was full), export_failed (the collector refused them or could not be reached in time).",
	}, []string{"reason"})
	for _, r := range []string{dropQueueFull, dropExportFailed} {
		dropped.WithLabelValues(r)
	}
	reg.MustRegister(dropped)
	res := resource.NewSchemaless(attribute.String("service.name", cfg.ServiceName))
	provider := sdktrace.NewTracerProvider(
		sdktrace.WithResource(res),
		sdktrace.WithSampler(sdktrace.ParentBased(sdktrace.TraceIDRatioBased(cfg.SampleRatio))),
		sdktrace.WithSpanProcessor(newSpanBatcher(exp, cfg.Queue, time.Second, cfg.Timeout,
			func(reason string, n int) { dropped.WithLabelValues(reason).Add(float64(n)) }, log)),
	)
	return &tracing{provider: provider}, nil
}

// stop exports what is queued, for at most a few seconds, and stops.
func (t *tracing) stop() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	t.provider.Shutdown(ctx)
}
