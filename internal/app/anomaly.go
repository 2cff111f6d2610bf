package app

import (
	"context"
	"errors"
	"log/slog"
	"net/netip"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/credflow/credflow/audit"
	"github.com/credflow/credflow/internal/admin"
	"github.com/credflow/credflow/internal/config"
	"github.com/credflow/credflow/internal/logkey"
	"github.com/credflow/credflow/proxy"
	"github.com/credflow/credflow/proxy/anomaly"
	"github.com/credflow/credflow/proxy/revoke"
)

// detection is the sidecar's anomaly detection: the detector the proxy
// feeds, and the webhook sender to run beside it.
type detection struct {
	detector *anomaly.Detector
	webhook  *anomaly.Webhook
	// proxy is set once the proxy exists: the detector's callbacks close
	// a quarantined peer's connections and revoke tokens through it. They
	// run only once the proxy serves.
	proxy *proxy.Proxy
	// trail, if set, records the quarantines lifted by hand.
	trail *trail
}

// revokeWriteTimeout bounds the write of a revocation to the shared list.
const revokeWriteTimeout = 5 * time.Second

// newDetection builds anomaly detection from cfg. A revoke action revokes
// the offending token on this sidecar at once and, when the deny list is
// shared through Redis, on every sidecar.
func newDetection(cfg *config.Anomaly, reg prometheus.Registerer, log *slog.Logger, shared revoke.Store, more ...anomaly.Sink) (*detection, error) {
	if cfg == nil {
		return nil, nil
	}
	d := &detection{}
	m := anomaly.NewMetrics(reg)
	sinks := append([]anomaly.Sink{anomaly.LogSink{Logger: log}, m}, more...)
	if w := cfg.Webhook; w != nil {
		d.webhook = anomaly.NewWebhook(anomaly.WebhookConfig{URL: w.URL, Labels: w.Labels, Timeout: w.Timeout, Queue: w.Queue}, m)
		sinks = append(sinks, d.webhook)
	}
	q := anomaly.NewQuarantine(anomaly.QuarantineConfig{MaxEntries: cfg.MaxQuarantined, OnAdd: func(anomaly.Entry) {
		if d.proxy != nil {
			d.proxy.Revalidate()
		}
	}})
	response := func(r config.Response) anomaly.Response {
		return anomaly.Response{Action: anomaly.Action(r.Action), For: r.For, Cooldown: r.Cooldown}
	}
	burst := func(b config.Burst) anomaly.Burst {
		return anomaly.Burst{Count: b.Count, Window: b.Window, Response: response(b.Response)}
	}
	s := cfg.RateSpike
	det, err := anomaly.New(anomaly.Config{
		RefusalBurst:  burst(cfg.RefusalBurst),
		TokenFailures: burst(cfg.TokenFailures),
		RateSpike: anomaly.Spike{Factor: s.Factor, MinRate: s.MinRate, HalfLife: s.HalfLife, Interval: s.Interval,
			WarmUp: s.WarmUp, Response: response(s.Response)},
		NewCaller:   anomaly.Novelty{Routes: cfg.NewCaller.Routes, LearnFor: cfg.NewCaller.LearnFor, Response: response(cfg.NewCaller.Response)},
		MaxSubjects: cfg.MaxSubjects,
		MaxCallers:  cfg.MaxCallers,
	}, anomaly.Options{Quarantine: q, Sinks: sinks, OnRevoke: func(e anomaly.Event, jti string) {
		if jti == "" || d.proxy == nil {
			return
		}
		why := "anomaly: " + string(e.Detector) + " by " + e.Subject.String()
		d.proxy.RevokeJTI(jti, e.Until, why)
		if shared != nil {
			go func() {
				ctx, cancel := context.WithTimeout(context.Background(), revokeWriteTimeout)
				defer cancel()
				if err := shared.Add(ctx, revoke.Entry{Kind: revoke.JTI, Value: jti, Expires: e.Until, Reason: why}); err != nil {
					log.Warn("anomaly: the token is revoked on this sidecar only: the shared list cannot be written",
						slog.String(logkey.Error, err.Error()))
				}
			}()
		}
	}})
	if err != nil {
		return nil, err
	}
	d.detector = det
	return d, nil
}

// run sends the webhook's queue until ctx ends.
func (d *detection) run(ctx context.Context) {
	if d.webhook != nil {
		d.webhook.Run(ctx)
	}
}

// quarantined lists the quarantine for the admin endpoint.
func (d *detection) quarantined() []admin.Quarantined {
	list := []admin.Quarantined{}
	for _, e := range d.detector.Quarantine().List(time.Now()) {
		list = append(list, admin.Quarantined{Subject: e.Subject.String(), Until: e.Until, Detector: string(e.Detector)})
	}
	return list
}

// lift lifts the quarantine of subject, a SPIFFE ID or an IP address.
func (d *detection) lift(subject string) (bool, error) {
	var s anomaly.Subject
	if id, err := spiffeid.FromString(subject); err == nil {
		s = anomaly.Peer(id)
	} else if addr, err := netip.ParseAddr(subject); err == nil {
		s = anomaly.Source(addr)
	} else {
		return false, errors.New("\"" + subject + "\" is not a SPIFFE ID or an IP address")
	}
	lifted := d.detector.Quarantine().Lift(s)
	if lifted {
		d.trail.Write(audit.Event{Type: audit.TypeCredential, Time: time.Now(), Kind: audit.KindQuarantine,
			Subject: s.String(), Reason: "lifted"})
	}
	return lifted, nil
}

// detectQuarantined and detectLift are the admin endpoint's view of d:
// nil without anomaly detection (the endpoints then answer 404).
func detectQuarantined(d *detection) func() []admin.Quarantined {
	if d == nil {
		return nil
	}
	return d.quarantined
}

func detectLift(d *detection) func(string) (bool, error) {
	if d == nil {
		return nil
	}
	return d.lift
}
