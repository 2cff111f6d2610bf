package anomaly

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net/http"
	"sync"
	"time"

	"github.com/credflow/credflow/internal/logkey"
)

// Defaults of WebhookConfig's fields.
const (
	DefaultWebhookTimeout = 5 * time.Second
	DefaultWebhookQueue   = 256
	DefaultWebhookRetries = 2
	DefaultWebhookBackoff = time.Second
	// AlertName is the alertname label of the alerts.
	AlertName = "CredflowAnomaly"
	// maxBatch is the most alerts sent in one request.
	maxBatch = 64
)

// WebhookConfig configures a Webhook. Only URL is required.
type WebhookConfig struct {
	// URL is where the alerts are POSTed, for Alertmanager its v2 API:
	// http://alertmanager:9093/api/v2/alerts.
	URL string
	// Labels are added to every alert's labels (say, the pod or the
	// service); they do not replace the event's own.
	Labels map[string]string
	// Timeout bounds each request; default DefaultWebhookTimeout.
	Timeout time.Duration
	// Queue is how many events wait to be sent; past it, events are
	// dropped and counted; default DefaultWebhookQueue.
	Queue int
	// Retries is how many times a failed request (an error, a 5xx or a
	// 429) is tried again; default DefaultWebhookRetries, negative for
	// none.
	Retries int
	// Backoff is the wait before the first retry, doubled before each
	// next one; default DefaultWebhookBackoff.
	Backoff time.Duration
	// Client sends the requests; default a client of its own over
	// http.DefaultTransport.
	Client *http.Client
}

// Webhook is a Sink that sends events to an HTTP endpoint as alerts in
// Alertmanager's v2 API shape: a JSON array of
//
//	{"labels": {"alertname": "CredflowAnomaly", "detector": …, "subject": …, "action": …},
//	 "annotations": {"summary": …, the evidence's fields},
//	 "startsAt": …, "endsAt": …}
//
// where endsAt is the quarantine's end, absent for an alert (Alertmanager
// then resolves it after its resolve_timeout). Emit only queues the event,
// never waiting: when the queue is full the event is dropped and counted
// in credflow_anomaly_webhook_dropped_total. One goroutine, Run, sends the
// queue, up to 64 alerts per request.
type Webhook struct {
	cfg     WebhookConfig
	metrics *Metrics
	queue   chan Event

	closeOnce sync.Once
	closed    chan struct{}
}

var _ Sink = (*Webhook)(nil)

// NewWebhook returns a Webhook for cfg that counts in m (nil: nowhere). It
// sends nothing until Run.
func NewWebhook(cfg WebhookConfig, m *Metrics) *Webhook {
	if cfg.Timeout <= 0 {
		cfg.Timeout = DefaultWebhookTimeout
	}
	if cfg.Queue <= 0 {
		cfg.Queue = DefaultWebhookQueue
	}
	if cfg.Retries == 0 {
		cfg.Retries = DefaultWebhookRetries
	}
	if cfg.Backoff <= 0 {
		cfg.Backoff = DefaultWebhookBackoff
	}
	if cfg.Client == nil {
		cfg.Client = &http.Client{}
	}
	return &Webhook{cfg: cfg, metrics: m, queue: make(chan Event, cfg.Queue), closed: make(chan struct{})}
}

// Emit queues e, or drops it when the queue is full or the webhook is
// closed.
func (w *Webhook) Emit(e Event) {
	select {
	case <-w.closed:
		w.metrics.webhookDropped()
		return
	default:
	}
	select {
	case w.queue <- e:
	default:
		w.metrics.webhookDropped()
	}
}

// Close stops the webhook taking events and makes Run return once it has
// sent those queued; an event emitted while Close runs may be left
// unsent. It may be called more than once.
func (w *Webhook) Close() {
	w.closeOnce.Do(func() { close(w.closed) })
}

// Run sends the queued events until ctx is done, which abandons the
// request in flight and the queue, or until Close, after which it sends
// what is queued first. It returns ctx's error, or nil after Close. Call it
// once.
func (w *Webhook) Run(ctx context.Context) error {
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case e := <-w.queue:
			w.deliver(ctx, w.batch(e))
		case <-w.closed:
			for {
				select {
				case e := <-w.queue:
					w.deliver(ctx, w.batch(e))
				default:
					return nil
				}
			}
		}
	}
}

// batch is first and the events queued after it, up to maxBatch.
func (w *Webhook) batch(first Event) []Event {
	b := []Event{first}
	for len(b) < maxBatch {
		select {
		case e := <-w.queue:
			b = append(b, e)
		default:
			return b
		}
	}
	return b
}

// alert is an alert of Alertmanager's v2 API (postableAlert).
type alert struct {
	Labels      map[string]string `json:"labels"`
	Annotations map[string]string `json:"annotations,omitempty"`
	StartsAt    time.Time         `json:"startsAt"`
	EndsAt      time.Time         `json:"endsAt,omitzero"`
}

func (w *Webhook) alert(e Event) alert {
	labels := maps.Clone(w.cfg.Labels)
	if labels == nil {
		labels = make(map[string]string, 4)
	}
	labels["alertname"] = AlertName
	labels[logkey.Detector] = string(e.Detector)
	labels[logkey.Subject] = e.Subject.String()
	labels[logkey.Action] = string(e.Action)
	ann := e.Evidence.annotations()
	ann["summary"] = fmt.Sprintf("%s: %s (%s)", e.Detector, e.Subject, e.Action)
	return alert{Labels: labels, Annotations: ann, StartsAt: e.Time.UTC(), EndsAt: e.Until.UTC()}
}

// deliver sends events, retrying a failure that may pass, and counts them
// as failed when it cannot.
func (w *Webhook) deliver(ctx context.Context, events []Event) {
	alerts := make([]alert, len(events))
	for i, e := range events {
		alerts[i] = w.alert(e)
	}
	body, err := json.Marshal(alerts)
	if err != nil { // cannot happen: maps of strings and times
		w.metrics.webhookFailed(len(events))
		return
	}
	wait := w.cfg.Backoff
	for attempt := 0; ; attempt++ {
		retry, err := w.post(ctx, body)
		if err == nil {
			return
		}
		if !retry || attempt >= w.cfg.Retries || !sleep(ctx, wait) {
			w.metrics.webhookFailed(len(events))
			return
		}
		wait *= 2
	}
}

// post makes one request; retry says whether a failure may pass.
func (w *Webhook) post(ctx context.Context, body []byte) (retry bool, err error) {
	ctx, cancel := context.WithTimeout(ctx, w.cfg.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, w.cfg.URL, bytes.NewReader(body))
	if err != nil {
		return false, fmt.Errorf("anomaly: webhook: %w", err)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := w.cfg.Client.Do(req)
	if err != nil {
		return true, fmt.Errorf("anomaly: webhook: %w", err)
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	switch {
	case resp.StatusCode/100 == 2:
		return false, nil
	case resp.StatusCode >= 500 || resp.StatusCode == http.StatusTooManyRequests:
		return true, fmt.Errorf("anomaly: webhook: %s", resp.Status)
	}
	return false, fmt.Errorf("anomaly: webhook: %s", resp.Status)
}

// sleep waits for d and reports whether ctx was still live.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
