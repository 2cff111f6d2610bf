package app

import (
	"context"
	"log/slog"
	"slices"
	"sync"
	"time"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"golang.org/x/time/rate"

	"github.com/credflow/credflow/internal/logkey"
)

// spanBatcher is the span processor that queues ended spans and exports
// them in batches. It replaces the SDK's batch span processor, whose
// goroutine takes every span from a channel: one goroutine wake-up per span,
// which in a sidecar that adds two spans to each request cost more than
// making the spans. Here ending a span appends it to a slice under a
// mutex; the exporting goroutine wakes every interval, or as soon as a
// full batch is waiting, and takes everything at once. A full queue drops
// the span and counts it; a slow or failing collector never holds a
// request up.
type spanBatcher struct {
	exp      sdktrace.SpanExporter
	max      int           // spans queued at most
	batch    int           // spans per export call at most
	interval time.Duration // longest a span waits to be exported
	timeout  time.Duration // of one export call
	dropped  func(reason string, n int)
	log      *slog.Logger
	warn     rate.Sometimes // paces the warning that spans were not exported

	mu     sync.Mutex
	queue  []sdktrace.ReadOnlySpan
	spare  []sdktrace.ReadOnlySpan // the previous queue, for the next
	closed bool

	kick     chan struct{} // a full batch waits
	flush    chan chan struct{}
	stop     chan struct{}
	done     chan struct{}
	stopOnce sync.Once
}

// Reasons a span was dropped, the label of credflow_trace_spans_dropped_total.
const (
	dropQueueFull    = "queue_full"
	dropExportFailed = "export_failed"
)

// newSpanBatcher starts a batcher exporting to exp. dropped is told of
// every span not exported and why.
func newSpanBatcher(exp sdktrace.SpanExporter, queue int, interval, timeout time.Duration, dropped func(string, int), log *slog.Logger) *spanBatcher {
	b := &spanBatcher{exp: exp, warn: rate.Sometimes{First: 1, Interval: 10 * time.Second}, max: queue, batch: min(queue, 512), interval: interval, timeout: timeout,
		dropped: dropped, log: log,
		kick: make(chan struct{}, 1), flush: make(chan chan struct{}), stop: make(chan struct{}), done: make(chan struct{})}
	go b.run()
	return b
}

// OnStart does nothing: spans are taken when they end.
func (b *spanBatcher) OnStart(context.Context, sdktrace.ReadWriteSpan) {}

// OnEnd queues a sampled span, or drops it when the queue is full.
func (b *spanBatcher) OnEnd(s sdktrace.ReadOnlySpan) {
	if !s.SpanContext().IsSampled() {
		return
	}
	b.mu.Lock()
	if b.closed || len(b.queue) >= b.max {
		b.mu.Unlock()
		b.dropped(dropQueueFull, 1)
		return
	}
	b.queue = append(b.queue, s)
	full := len(b.queue) == b.batch
	b.mu.Unlock()
	if full {
		select {
		case b.kick <- struct{}{}:
		default:
		}
	}
}

// ForceFlush exports what is queued and returns when it is done or ctx
// is.
func (b *spanBatcher) ForceFlush(ctx context.Context) error {
	done := make(chan struct{})
	select {
	case b.flush <- done:
	case <-b.done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Shutdown exports what is queued, for as long as ctx allows, and shuts
// the exporter down. Spans ended afterwards are dropped.
func (b *spanBatcher) Shutdown(ctx context.Context) error {
	b.stopOnce.Do(func() { close(b.stop) })
	select {
	case <-b.done:
	case <-ctx.Done():
		return ctx.Err()
	}
	return b.exp.Shutdown(ctx)
}

// run exports the queue at each interval, when a batch is full, on a
// flush, and once more at the stop.
func (b *spanBatcher) run() {
	defer close(b.done)
	tick := time.NewTicker(b.interval)
	defer tick.Stop()
	for {
		select {
		case <-tick.C:
			b.export(false)
		case <-b.kick:
			b.export(false)
		case done := <-b.flush:
			b.export(false)
			close(done)
		case <-b.stop:
			b.export(true)
			return
		}
	}
}

// export sends everything queued, a batch per call. last closes the
// queue.
func (b *spanBatcher) export(last bool) {
	b.mu.Lock()
	spans := b.queue
	b.queue, b.spare = b.spare[:0], nil
	b.closed = last
	b.mu.Unlock()
	for chunk := range slices.Chunk(spans, b.batch) {
		ctx, cancel := context.WithTimeout(context.Background(), b.timeout)
		err := b.exp.ExportSpans(ctx, chunk)
		cancel()
		if err != nil {
			b.dropped(dropExportFailed, len(chunk))
			b.warn.Do(func() {
				b.log.Warn("tracing: spans not exported", slog.Int("spans", len(chunk)), slog.String(logkey.Error, err.Error()))
			})
		}
	}
	clear(spans) // let the spans go
	b.mu.Lock()
	if b.spare == nil {
		b.spare = spans[:0]
	}
	b.mu.Unlock()
}
