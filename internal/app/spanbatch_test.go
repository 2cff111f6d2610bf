package app

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
)

// stubExporter records the batches exported to it; while the test holds
// gate (a channel, so that synctest sees the exporter blocked) it hangs,
// and with fail set it refuses them.
type stubExporter struct {
	gate    chan struct{}
	mu      sync.Mutex
	batches []int
	fail    error
}

func (e *stubExporter) ExportSpans(ctx context.Context, spans []sdktrace.ReadOnlySpan) error {
	e.gate <- struct{}{}
	<-e.gate
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.fail != nil {
		return e.fail
	}
	e.batches = append(e.batches, len(spans))
	return nil
}

func (e *stubExporter) Shutdown(context.Context) error { return nil }

func (e *stubExporter) exported() []int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]int(nil), e.batches...)
}

// TestSpanBatcher: spans are exported together at the interval and at
// once when a batch is full; with the exporter stuck the queue fills and
// further spans are dropped and counted, never waited for; an export
// that fails counts its spans; unsampled spans are never queued.
func TestSpanBatcher(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		exp := &stubExporter{gate: make(chan struct{}, 1)}
		drops := map[string]int{}
		var mu sync.Mutex
		b := newSpanBatcher(exp, 1000, time.Second, time.Second, func(reason string, n int) {
			mu.Lock()
			drops[reason] += n
			mu.Unlock()
		}, slog.New(slog.DiscardHandler))
		provider := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(b))
		tracer := provider.Tracer("test")
		spans := func(n int) {
			for range n {
				_, s := tracer.Start(context.Background(), "request")
				s.End()
			}
		}

		spans(10)
		synctest.Wait()
		if got := exp.exported(); len(got) != 0 {
			t.Errorf("exported %v before the interval, want nothing yet", got)
		}
		time.Sleep(time.Second)
		synctest.Wait()
		if got := exp.exported(); len(got) != 1 || got[0] != 10 {
			t.Errorf("after the interval exported %v, want one batch of 10", got)
		}

		spans(512) // a full batch goes at once
		synctest.Wait()
		if got := exp.exported(); len(got) != 2 || got[1] != 512 {
			t.Errorf("a full batch: exported %v, want [10 512]", got)
		}

		exp.gate <- struct{}{} // the collector hangs
		spans(512)
		synctest.Wait() // the exporter is stuck on these
		spans(1500)     // would hang here if ending a span waited
		mu.Lock()
		if drops[dropQueueFull] != 500 {
			t.Errorf("dropped %v, want 500 for a full queue", drops)
		}
		mu.Unlock()
		<-exp.gate
		time.Sleep(time.Second)
		synctest.Wait()
		if got := exp.exported(); len(got) != 5 || got[2] != 512 || got[3]+got[4] != 1000 {
			t.Errorf("after the hang: exported %v, want [10 512 512] and the 1000 queued", got)
		}

		exp.mu.Lock()
		exp.fail = errors.New("collector says no")
		exp.mu.Unlock()
		spans(7)
		time.Sleep(time.Second)
		synctest.Wait()
		mu.Lock()
		if drops[dropExportFailed] != 7 {
			t.Errorf("dropped %v, want 7 failed exports", drops)
		}
		mu.Unlock()

		exp.mu.Lock()
		exp.fail = nil
		exp.mu.Unlock()
		unsampled := sdktrace.NewTracerProvider(sdktrace.WithSampler(sdktrace.NeverSample()), sdktrace.WithSpanProcessor(b))
		_, s := unsampled.Tracer("test").Start(context.Background(), "request")
		s.End()
		spans(3)
		if err := provider.ForceFlush(context.Background()); err != nil {
			t.Fatal(err)
		}
		if got := exp.exported(); got[len(got)-1] != 3 {
			t.Errorf("flushed %v, want a last batch of the 3 sampled spans", got)
		}
		if err := provider.Shutdown(context.Background()); err != nil {
			t.Fatal(err)
		}
		spans(1) // after shutdown: not queued
		mu.Lock()
		if drops[dropQueueFull] != 500 {
			t.Errorf("after shutdown dropped %v: a span ended after shutdown is not queued", drops)
		}
		mu.Unlock()
	})
}
