package app

import (
	"context"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/credflow/credflow/audit"
	"github.com/credflow/credflow/audit/otlp"
	"github.com/credflow/credflow/credential"
	"github.com/credflow/credflow/internal/config"
	"github.com/credflow/credflow/proxy/anomaly"
	"github.com/credflow/credflow/proxy/revoke"
)

// trail is the sidecar's audit trail: the writer, and the watchers that
// turn what the sidecar sees (SVID and bundle rotations, revocations)
// into events. The data plane writes its decisions itself.
type trail struct {
	w   *audit.Writer
	exp *otlp.Exporter // nil: the file only
}

// newTrail opens the audit trail, continuing the chain of a file already
// there. Checkpoints are signed with the workload's X.509-SVID.
func newTrail(cfg *config.Audit, svids x509svid.Source, reg prometheus.Registerer, log *slog.Logger) (*trail, error) {
	if cfg == nil {
		return nil, nil
	}
	t := &trail{}
	wc := audit.Config{Path: cfg.Path, MaxBytes: cfg.MaxBytes, MaxFiles: cfg.MaxFiles,
		CheckpointEvery: cfg.CheckpointEvery, CheckpointInterval: cfg.CheckpointInterval, Queue: cfg.Queue,
		SVIDs: svids, Logger: log, Metrics: audit.NewMetrics(reg)}
	if e := cfg.Export; e != nil {
		exp, err := otlp.New(otlp.Config{Endpoint: e.Endpoint, Insecure: e.Insecure, ServiceName: e.ServiceName,
			Queue: e.Queue, Timeout: e.Timeout, Logger: log, Registerer: reg})
		if err != nil {
			return nil, err
		}
		t.exp, wc.Export = exp, exp.Export
	}
	w, err := audit.New(wc)
	if err != nil {
		return nil, err
	}
	t.w = w
	return t, nil
}

// run writes the trail until ctx is done and the writer has written its
// last records; the exporter, if any, then sends what it still holds.
func (t *trail) run(ctx context.Context) {
	if t.exp == nil {
		t.w.Run(ctx)
		return
	}
	stop, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); t.exp.Run(stop) }()
	t.w.Run(ctx)
	cancel()
	<-done
}

// Write writes e; nil writes nothing.
func (t *trail) Write(e audit.Event) {
	if t != nil {
		t.w.Write(e)
	}
}

// credentialFetched is a credential.Cache's Fetched: the fetch, refresh
// or failure of an injected credential (its name and expiry, never its
// value).
func (t *trail) credentialFetched(e credential.FetchEvent) {
	ev := audit.Event{Type: audit.TypeCredential, Time: time.Now(), Kind: audit.KindCredentialFetched, Credential: e.Name, Until: e.Expires}
	switch {
	case e.Err != nil:
		ev.Kind, ev.Reason = audit.KindCredentialFailed, "fetch_failed"
	case e.Refresh:
		ev.Kind = audit.KindCredentialRefreshed
	}
	t.Write(ev)
}

// anomalySink writes detections and the quarantines they make.
func (t *trail) anomalySink() anomaly.Sink {
	return anomaly.SinkFunc(func(e anomaly.Event) {
		t.Write(audit.Event{Type: audit.TypeCredential, Time: e.Time, Kind: audit.KindAnomaly, Detector: string(e.Detector),
			Subject: e.Subject.String(), Reason: string(e.Action), Until: e.Until})
		if !e.Until.IsZero() {
			t.Write(audit.Event{Type: audit.TypeCredential, Time: e.Time, Kind: audit.KindQuarantine, Detector: string(e.Detector),
				Subject: e.Subject.String(), Until: e.Until})
		}
	})
}

// watchIdentity writes an event for each new X.509-SVID (its serial and
// the fingerprint of its leaf) and each changed trust bundle (the
// fingerprint of its authorities), until ctx ends. changed returns a
// channel closed at the source's next change.
func (t *trail) watchIdentity(ctx context.Context, svids x509svid.Source, bundles func() []*x509bundle.Bundle, changed func() <-chan struct{}) {
	var serial string
	seen := map[spiffeid.TrustDomain]string{}
	for {
		next := changed()
		if s, err := svids.GetX509SVID(); err == nil && len(s.Certificates) > 0 {
			leaf := s.Certificates[0]
			if sn := leaf.SerialNumber.Text(16); sn != serial {
				serial = sn
				t.Write(audit.Event{Type: audit.TypeCredential, Time: time.Now(), Kind: audit.KindSVIDRotated,
					Subject: s.ID.String(), Serial: sn, Fingerprint: audit.Fingerprint(leaf.Raw), Until: leaf.NotAfter})
			}
		}
		for _, b := range bundles() {
			var raw []byte
			for _, c := range b.X509Authorities() {
				raw = append(raw, c.Raw...)
			}
			if fp := audit.Fingerprint(raw); seen[b.TrustDomain()] != fp {
				seen[b.TrustDomain()] = fp
				t.Write(audit.Event{Type: audit.TypeCredential, Time: time.Now(), Kind: audit.KindBundleUpdated,
					TrustDomain: b.TrustDomain().Name(), Fingerprint: fp})
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-next:
		}
	}
}

// watchRevocations writes an event for each entry the deny list gains,
// until ctx ends.
func (t *trail) watchRevocations(ctx context.Context, list *revoke.List) {
	seen := map[string]bool{}
	for {
		next := list.Changed()
		for _, e := range list.Entries() {
			if seen[e.Key()] {
				continue
			}
			seen[e.Key()] = true
			ev := audit.Event{Type: audit.TypeCredential, Time: time.Now(), Kind: audit.KindRevocation, Reason: e.Reason, Until: e.Expires}
			switch e.Kind {
			case revoke.SPIFFEID:
				ev.Subject = e.Value
			case revoke.Serial:
				ev.Serial = e.Value
			case revoke.JTI:
				ev.JTI = e.Value
			}
			t.Write(ev)
		}
		select {
		case <-ctx.Done():
			return
		case <-next:
		}
	}
}
