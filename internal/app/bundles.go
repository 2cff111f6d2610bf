package app

import (
	"context"
	"log/slog"
	"slices"
	"sync"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/credflow/credflow/internal/config"
	"github.com/credflow/credflow/internal/logkey"
)

// bundleWarner warns when a policy names a trust domain whose bundle the
// sidecar does not hold: no workload of it can be authenticated, so an
// allow or expect entry naming it admits nobody (a typo, or a federation
// not set up). It warns once per trust domain, from the first bundle
// update on; again when a bundle once held goes away; and again after a
// reload.
type bundleWarner struct {
	log  *slog.Logger
	held func() []spiffeid.TrustDomain

	mu     sync.Mutex
	named  []config.PolicyTrustDomain
	warned map[string]bool
}

func newBundleWarner(log *slog.Logger, held func() []spiffeid.TrustDomain, named []config.PolicyTrustDomain) *bundleWarner {
	return &bundleWarner{log: log, held: held, named: named, warned: map[string]bool{}}
}

// setPolicies replaces the trust domains the policies name, after a
// reload, and warns about each one still without a bundle.
func (w *bundleWarner) setPolicies(named []config.PolicyTrustDomain) {
	w.mu.Lock()
	w.named, w.warned = named, map[string]bool{}
	w.mu.Unlock()
	w.check()
}

// check warns about each named trust domain without a bundle not warned
// about yet. Before the first bundles arrive it does nothing.
func (w *bundleWarner) check() {
	held := w.held()
	if len(held) == 0 {
		return // the Workload API has not answered yet
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, n := range w.named {
		if holds(held, n.TrustDomain) {
			delete(w.warned, n.TrustDomain)
			continue
		}
		if !w.warned[n.TrustDomain] {
			w.warned[n.TrustDomain] = true
			w.log.Warn("credflow: a policy names a trust domain with no trust bundle: none of its workloads can be authenticated",
				slog.String(logkey.TrustDomain, n.TrustDomain), slog.Any(logkey.Fields, n.Fields))
		}
	}
}

// missing returns the named trust domains without a bundle, sorted.
func (w *bundleWarner) missing() []string {
	held := w.held()
	w.mu.Lock()
	defer w.mu.Unlock()
	var out []string
	for _, n := range missingBundles(w.named, held) {
		out = append(out, n.TrustDomain)
	}
	return out
}

// run checks at every change of the SVID or bundles until ctx ends.
func (w *bundleWarner) run(ctx context.Context, changed func() <-chan struct{}) {
	for {
		ch := changed()
		w.check()
		select {
		case <-ch:
		case <-ctx.Done():
			return
		}
	}
}

func holds(held []spiffeid.TrustDomain, name string) bool {
	return slices.ContainsFunc(held, func(td spiffeid.TrustDomain) bool { return td.Name() == name })
}

// missingBundles returns the named trust domains not in held, each with
// the fields naming it.
func missingBundles(named []config.PolicyTrustDomain, held []spiffeid.TrustDomain) []config.PolicyTrustDomain {
	var out []config.PolicyTrustDomain
	for _, n := range named {
		if !holds(held, n.TrustDomain) {
			out = append(out, n)
		}
	}
	return out
}
