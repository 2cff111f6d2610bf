package anomaly

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/credflow/credflow/reason"
)

// wait is how long a test waits for something that should happen at
// once; reaching it is a failure, not a timing assumption.
const wait = 10 * time.Second

// runWebhook runs w until the test ends, and returns a function that
// stops it and returns Run's error.
func runWebhook(t *testing.T, w *Webhook) (stop func() error) {
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	stopped := false
	stop = func() error {
		if stopped {
			return nil
		}
		stopped = true
		cancel()
		select {
		case err := <-done:
			return err
		case <-time.After(wait):
			t.Fatal("Run did not return after its context was cancelled")
			return nil
		}
	}
	t.Cleanup(func() { stop() })
	return stop
}

// TestWebhookDelivers: an event reaches the endpoint as an Alertmanager
// v2 alert.
func TestWebhookDelivers(t *testing.T) {
	got := make(chan []map[string]any, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var alerts []map[string]any
		if r.Method != http.MethodPost || r.URL.Path != "/api/v2/alerts" || r.Header.Get("Content-Type") != "application/json" {
			t.Errorf("%s %s %s, want POST /api/v2/alerts application/json", r.Method, r.URL.Path, r.Header.Get("Content-Type"))
		}
		if err := json.NewDecoder(r.Body).Decode(&alerts); err != nil {
			t.Errorf("body: %v", err)
		}
		got <- alerts
	}))
	defer srv.Close()

	wh := NewWebhook(WebhookConfig{URL: srv.URL + "/api/v2/alerts", Labels: map[string]string{"pod": "orders-0", "detector": "overridden"}}, nil)
	d, err := New(Config{RefusalBurst: Burst{Count: 2, Window: 10 * time.Second, Response: Response{Action: ActionQuarantine, For: time.Hour}}},
		Options{Sinks: []Sink{wh}})
	if err != nil {
		t.Fatal(err)
	}
	for range 3 {
		d.Observe(Observation{Subject: scanner, Kind: Connection, Reason: reason.Untrusted, Route: "inbound", Time: t0})
	}
	runWebhook(t, wh)

	want := []map[string]any{{
		"labels": map[string]any{"alertname": "CredflowAnomaly", "detector": "refusal_burst",
			"subject": "192.0.2.7", "action": "quarantine", "pod": "orders-0"},
		"annotations": map[string]any{"summary": "refusal_burst: 192.0.2.7 (quarantine)",
			"count": "3", "limit": "2", "since": "2026-12-06T00:00:00Z", "window": "10s",
			"route": "inbound", "reason": "untrusted"},
		"startsAt": "2026-12-06T00:00:00Z",
		"endsAt":   "2026-12-06T01:00:00Z",
	}}
	select {
	case alerts := <-got:
		if diff := cmp.Diff(want, alerts); diff != "" {
			t.Errorf("alerts (-want +got):\n%s", diff)
		}
	case <-time.After(wait):
		t.Fatal("no alert arrived")
	}
}

// TestWebhookHangs: with the endpoint hanging, Observe never waits: the
// queue fills and the rest is dropped and counted; cancelling Run ends
// the request in flight.
func TestWebhookHangs(t *testing.T) {
	inFlight := make(chan struct{}, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body) // so that the server notices the client leave
		inFlight <- struct{}{}
		<-r.Context().Done()
	}))
	defer srv.Close()
	reg := prometheus.NewRegistry()
	m := NewMetrics(reg)
	wh := NewWebhook(WebhookConfig{URL: srv.URL, Queue: 4, Timeout: time.Hour, Retries: -1}, m)
	d, err := New(Config{RefusalBurst: Burst{Count: 1}}, Options{Sinks: []Sink{wh, m}})
	if err != nil {
		t.Fatal(err)
	}
	attack := func(i int) {
		s := Source(netip.AddrFrom4([4]byte{10, 0, byte(i >> 8), byte(i)}))
		for range 2 { // the second fires
			d.Observe(Observation{Subject: s, Reason: reason.HandshakeFailed, Kind: Connection, Time: t0})
		}
	}
	stop := runWebhook(t, wh)
	attack(0)
	select {
	case <-inFlight:
	case <-time.After(wait):
		t.Fatal("the first alert was not sent")
	}

	done := make(chan struct{})
	go func() {
		for i := 1; i <= 1000; i++ {
			attack(i)
		}
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(wait):
		t.Fatal("Observe blocked on a hanging webhook")
	}
	if n := testutil.ToFloat64(m.anomalies.WithLabelValues("refusal_burst", "alert")); n != 1001 {
		t.Errorf("%v events counted, want 1001", n)
	}
	if n := testutil.ToFloat64(m.dropped); n != 1000-4 {
		t.Errorf("%v events dropped, want 996 (1000 past a queue of 4)", n)
	}
	if err := stop(); err != context.Canceled {
		t.Errorf("Run returned %v, want context.Canceled", err)
	}
}

// TestWebhookRetries: a failing endpoint is tried 1+Retries times when the
// failure may pass (a timeout, a 5xx), once otherwise; then the events
// count as failed. Close lets Run send the queue, then return.
func TestWebhookRetries(t *testing.T) {
	for _, tc := range []struct {
		name         string
		handler      func(http.ResponseWriter, *http.Request)
		wantAttempts int64
	}{
		{"hangs", func(w http.ResponseWriter, r *http.Request) { io.Copy(io.Discard, r.Body); <-r.Context().Done() }, 3},
		{"503", func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusServiceUnavailable) }, 3},
		{"400", func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusBadRequest) }, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var attempts atomic.Int64
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				attempts.Add(1)
				tc.handler(w, r)
			}))
			defer srv.Close()
			m := NewMetrics(prometheus.NewRegistry())
			wh := NewWebhook(WebhookConfig{URL: srv.URL, Timeout: 500 * time.Millisecond, Retries: 2, Backoff: time.Millisecond}, m)
			for i := range 3 {
				wh.Emit(Event{Detector: RateSpike, Subject: alice, Action: ActionAlert, Time: t0.Add(time.Duration(i))})
			}
			wh.Close()
			wh.Emit(Event{Detector: RateSpike, Subject: bob, Action: ActionAlert, Time: t0}) // closed: dropped
			if err := wh.Run(t.Context()); err != nil {
				t.Fatalf("Run after Close: %v", err)
			}
			if n := attempts.Load(); n != tc.wantAttempts {
				t.Errorf("%d attempts for one batch, want %d", n, tc.wantAttempts)
			}
			if n := testutil.ToFloat64(m.failed); n != 3 {
				t.Errorf("%v events failed, want 3", n)
			}
			if n := testutil.ToFloat64(m.dropped); n != 1 {
				t.Errorf("%v events dropped, want the 1 after Close", n)
			}
		})
	}
}

// TestWebhookDown: an endpoint that refuses connections fails fast and
// counts the events.
func TestWebhookDown(t *testing.T) {
	srv := httptest.NewServer(http.NotFoundHandler())
	url := srv.URL
	srv.Close()
	m := NewMetrics(prometheus.NewRegistry())
	wh := NewWebhook(WebhookConfig{URL: url, Retries: 1, Backoff: time.Millisecond}, m)
	for i := range 5 {
		wh.Emit(Event{Detector: NewCaller, Subject: alice, Action: ActionAlert, Time: t0, Evidence: Evidence{Route: fmt.Sprint(i)}})
	}
	wh.Close()
	if err := wh.Run(t.Context()); err != nil {
		t.Fatal(err)
	}
	if n := testutil.ToFloat64(m.failed); n != 5 {
		t.Errorf("%v events failed, want 5", n)
	}
}
