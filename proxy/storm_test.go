package proxy_test

import (
	"crypto/tls"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/credflow/credflow/internal/testca"
	"github.com/credflow/credflow/pqc"
)

// TestHandshakeStorm covers L1: a storm of new full handshakes, 32 at a
// time, from clients offering hybrid or only classical groups. Under the
// default policy every one succeeds and the negotiated-group metric counts
// each group exactly; under hybrid-required every hybrid client succeeds
// and every classical one is refused with pq_required. CREDFLOW_SOAK=1
// sends 4000 per policy instead of 200.
func TestHandshakeStorm(t *testing.T) {
	n := 200
	if longForm() {
		n = 4000
	}
	offers := []struct {
		curves []tls.CurveID
		group  string // negotiated under the default policy
		hybrid bool
	}{
		{[]tls.CurveID{tls.X25519MLKEM768}, "X25519MLKEM768", true},
		{[]tls.CurveID{tls.SecP256r1MLKEM768}, "SecP256r1MLKEM768", true},
		{[]tls.CurveID{tls.X25519}, "X25519", false},
		{[]tls.CurveID{tls.CurveP256}, "CurveP256", false},
	}
	ca := testca.New(t, td)
	svid := ca.Issue(t, spiffeid.RequireFromPath(td, "/frontend"))
	for _, mode := range []pqc.Mode{pqc.HybridPreferred, pqc.HybridRequired} {
		t.Run(string(mode), func(t *testing.T) {
			in := startInboundWith(t, ca, policy(t, "spiffe://example.org/frontend"), time.Second, pqc.Policy{Mode: mode}, x509bundle.NewSet(ca.Bundle()))
			var ok, refused [4]atomic.Int64
			var wg sync.WaitGroup
			sem := make(chan struct{}, 32)
			start := time.Now()
			for i := range n {
				sem <- struct{}{}
				wg.Go(func() {
					defer func() { <-sem }()
					cfg := clientConfig(svid) // fresh: no session to resume
					cfg.CurvePreferences = offers[i%4].curves
					if _, err := echoOnce(in.addr, cfg, "x"); err != nil {
						refused[i%4].Add(1)
					} else {
						ok[i%4].Add(1)
					}
				})
			}
			wg.Wait()
			elapsed := time.Since(start)
			var classicalRefused int64
			for i, o := range offers {
				want := int64(n / 4)
				switch {
				case mode == pqc.HybridRequired && !o.hybrid:
					if ok[i].Load() != 0 || refused[i].Load() != want {
						t.Errorf("%s under %s: %d accepted, %d refused; want all %d refused", o.group, mode, ok[i].Load(), refused[i].Load(), want)
					}
					classicalRefused += want
				default:
					if ok[i].Load() != want {
						t.Errorf("%s under %s: %d of %d succeeded", o.group, mode, ok[i].Load(), want)
					}
					in.waitMetric(t, float64(want), "credflow_tls_connections_total", "direction=inbound", "group="+o.group)
				}
			}
			in.waitMetric(t, float64(classicalRefused), "credflow_refusals_total", "reason=pq_required")
			t.Logf("%d full handshakes in %v (%.0f/s)", n, elapsed.Round(time.Millisecond), float64(n)/elapsed.Seconds())
		})
	}
}
