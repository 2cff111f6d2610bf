package e2e_test

import (
	"context"
	"crypto/x509"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	bundlev1 "github.com/spiffe/spire-api-sdk/proto/spire/api/server/bundle/v1"
	"github.com/spiffe/spire-api-sdk/proto/spire/api/types"

	"github.com/credflow/credflow/internal/sidecartest"
	"github.com/credflow/credflow/internal/spiretest"
)

// The federation tests run two SPIRE deployments: td-a.test, where the
// frontend sidecar runs, and td-b.test, with the backend sidecar and a
// probe workload. Each server fetches the other's bundle from its bundle
// endpoint (https_spiffe) through a spiretest.Front; the tests refresh
// td-b's bundle on td-a's server through the trust domain API
// (RefreshBundle), which fetches from the endpoint at once, since SPIRE
// refreshes on its own at most once a minute.
const (
	fedTDA = "td-a.test"
	fedTDB = "td-b.test"
)

// fedMesh is the running federation: frontend (td-a) → backend (td-b),
// and a frontend inbound listener that td-b probes may call.
type fedMesh struct {
	fed               *spiretest.Federated
	frontend, backend *sidecartest.Sidecar
	frontAddr         string // the frontend's outbound listener
	probeAddr         string // the frontend's inbound listener for td-b probes
	traffic           *fixedRate
}

type fedConfig struct {
	a, b       spiretest.Options
	backendTTL time.Duration // 0: td-b's default
	// probeTTL, when set, registers the probe (uidProbe) at start with
	// this X.509-SVID lifetime; otherwise the test registers it.
	probeTTL time.Duration
}

func startFedMesh(t *testing.T, cfg fedConfig) *fedMesh {
	t.Helper()
	bin := sidecarBinary(t)
	cfg.a.TrustDomain, cfg.b.TrustDomain = fedTDA, fedTDB
	cfg.a.Logf, cfg.b.Logf = t.Logf, t.Logf
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	fed, err := spiretest.StartFederated(ctx, cfg.a, cfg.b)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("--- %s ---\n%s", fedTDA, fed.A.Logs(5000))
			t.Logf("--- %s ---\n%s", fedTDB, fed.B.Logs(5000))
		}
		fed.Close()
	})
	m := &fedMesh{fed: fed}
	binA, err := fed.A.InstallBinary(bin)
	if err != nil {
		t.Fatal(err)
	}
	binB, err := fed.B.InstallBinary(bin)
	if err != nil {
		t.Fatal(err)
	}
	register := func(s *spiretest.SPIRE, e spiretest.Entry) {
		t.Helper()
		if _, err := s.Register(t.Context(), e); err != nil {
			t.Fatal(err)
		}
	}
	register(fed.A, spiretest.Entry{ID: fed.A.ID("/frontend"), UID: uidFrontend, FederatesWith: []string{fedTDB}})
	register(fed.B, spiretest.Entry{ID: fed.B.ID("/backend"), UID: uidBackend, X509SVIDTTL: cfg.backendTTL, FederatesWith: []string{fedTDA}})
	if cfg.probeTTL > 0 {
		register(fed.B, spiretest.Entry{ID: fed.B.ID("/probe"), UID: uidProbe, X509SVIDTTL: cfg.probeTTL})
	}
	echo, err := sidecartest.Echo(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	inbound, err := sidecartest.FreeAddr()
	if err != nil {
		t.Fatal(err)
	}
	if m.frontAddr, err = sidecartest.FreeAddr(); err != nil {
		t.Fatal(err)
	}
	if m.probeAddr, err = sidecartest.FreeAddr(); err != nil {
		t.Fatal(err)
	}
	common := "admin: \"{{admin}}\"\nlog: {level: debug}\n"
	m.backend = startSidecar(t, fed.B, binB, uidBackend, "backend", fmt.Sprintf(`workload_api: %s
%s
inbound:
  - name: app
    listen: %q
    app: %q
    allow: [spiffe://%s/frontend]
`, fed.B.AgentAddr(), common, inbound, echo, fedTDA))
	m.frontend = startSidecar(t, fed.A, binA, uidFrontend, "frontend", fmt.Sprintf(`workload_api: %s
%s
outbound:
  - name: backend
    listen: %q
    upstream: %q
    expect: [spiffe://%s/backend]
inbound:
  - name: probes
    listen: %q
    app: %q
    allow: [spiffe://%s/probe]
`, fed.A.AgentAddr(), common, m.frontAddr, inbound, fedTDB, m.probeAddr, echo, fedTDB))
	if got, err := roundTrip(m.frontAddr, []byte("warm-up")); err != nil || string(got) != "warm-up" {
		t.Fatalf("frontend (%s) to backend (%s) before any change: %q, %v", fedTDA, fedTDB, got, err)
	}
	return m
}

// bundleUpdates counts the td-b X.509 bundle updates the frontend has
// received from its Workload API.
func (m *fedMesh) bundleUpdates(t *testing.T) float64 {
	t.Helper()
	return sidecarCounter(t, m.frontend, "credflow_bundle_updates_total", "kind=x509", "trust_domain="+fedTDB)
}

// refuseUntrusted presents svid to the frontend's inbound listener for
// td-b probes, expects a refusal, and waits until the frontend has counted
// it as untrusted. what names svid in the failure.
func (m *fedMesh) refuseUntrusted(t *testing.T, svid *x509svid.SVID, what string) {
	t.Helper()
	untrusted := func() float64 {
		return sidecarCounter(t, m.frontend, "credflow_refusals_total", "direction=inbound", "reason=untrusted")
	}
	u := untrusted()
	if err := m.probe(t, svid); err == nil {
		t.Fatalf("the frontend accepted %s", what)
	}
	pollFor(t, 5*time.Second, "the refusal of "+what+" counted as untrusted", func() (bool, string) {
		n := untrusted()
		return n == u+1, fmt.Sprintf("untrusted refusals %v -> %v", u, n)
	})
}

// refreshB makes td-a's server fetch td-b's bundle from td-b's endpoint
// and, if want is set, checks that td-a now holds exactly want. It
// returns the refresh error.
func (m *fedMesh) refreshB(t *testing.T, want []*x509.Certificate) error {
	t.Helper()
	accepted := m.fed.ToB.Accepted()
	err := m.fed.A.RefreshFederatedBundle(t.Context(), fedTDB)
	if err != nil {
		return err
	}
	if m.fed.ToB.Accepted() == accepted {
		t.Fatal("td-a's refresh did not go through td-b's bundle endpoint")
	}
	if want != nil {
		if got := fedRoots(t, m.fed.A, fedTDB); !sameCerts(got, want) {
			t.Fatalf("after a refresh %s holds %d roots of %s, not the %d expected", fedTDA, len(got), fedTDB, len(want))
		}
	}
	return nil
}

// waitBundleUpdate waits until the frontend has received more td-b bundle
// updates than before, and returns how long that took.
func (m *fedMesh) waitBundleUpdate(t *testing.T, before float64) time.Duration {
	t.Helper()
	start := time.Now()
	waitSidecarCounters(t, []*sidecartest.Sidecar{m.frontend}, []float64{before}, 30*time.Second,
		"credflow_bundle_updates_total", "kind=x509", "trust_domain="+fedTDB)
	return time.Since(start)
}

// probe presents svid to the frontend's inbound listener for td-b probes
// (probeInbound) and checks that the frontend presented its own SVID,
// signed by td-a.
func (m *fedMesh) probe(t *testing.T, svid *x509svid.SVID) error {
	t.Helper()
	served, err := probeInbound(m.probeAddr, svid)
	if err != nil {
		return err
	}
	id, err := x509svid.IDFromCert(served)
	if err != nil || id != m.fed.A.ID("/frontend") ||
		!signedBy(&x509svid.SVID{Certificates: []*x509.Certificate{served}}, fedTDA, fedRoots(t, m.fed.A, fedTDA)) {
		return fmt.Errorf("the frontend presented %v (%v), not its own %s SVID", id, err, fedTDA)
	}
	return nil
}

// waitBackendOn waits until the backend sidecar holds the SVID that td-b's
// agent serves it and that SVID is signed by roots.
func (m *fedMesh) waitBackendOn(t *testing.T, roots []*x509.Certificate) {
	t.Helper()
	pollFor(t, 45*time.Second, "the backend holding an SVID of the new authority", func() (bool, string) {
		svid, err := fetchX509Within(t.Context(), m.fed.B, uidBackend, 10*time.Second)
		if err != nil {
			return false, err.Error()
		}
		if !signedBy(svid, fedTDB, roots) {
			return false, "td-b's agent serves the backend an SVID of another root"
		}
		serial := svid.Certificates[0].SerialNumber.Text(16)
		if held := heldSerial(t, m.backend); held != serial {
			return false, fmt.Sprintf("the backend holds serial %s, the agent serves %s", held, serial)
		}
		return true, ""
	})
}

// startTraffic sends a request from the frontend to the backend every
// 50 ms.
func (m *fedMesh) startTraffic(t *testing.T) *fixedRate {
	t.Helper()
	m.traffic = startFixedRate(t, 50*time.Millisecond, echoRequests(m.frontAddr))
	return m.traffic
}

// TestE2EFederationBundleRotation is F9 across two federated SPIRE
// deployments: with a request every 50 ms from the frontend (td-a) to the
// backend (td-b), td-b prepares a new X.509 authority (its bundle now holds
// the old and the new root), td-a's server fetches that bundle from td-b's
// bundle endpoint and the frontend receives it from its agent; td-b
// activates the new authority and the backend moves to an SVID it signed,
// which the frontend verifies on a full handshake; td-b taints and revokes
// the old authority and td-a fetches the bundle again. No request fails
// and no sidecar restarts. Afterwards a td-b SVID captured before the
// rotation, still unexpired, is refused by the frontend as untrusted, and
// a current one is accepted.
func TestE2EFederationBundleRotation(t *testing.T) {
	m := startFedMesh(t, fedConfig{backendTTL: 20 * time.Second, probeTTL: 5 * time.Minute})
	B := m.fed.B

	oldRoots := fedRoots(t, B, fedTDB)
	if len(oldRoots) != 1 {
		t.Fatalf("%s starts with %d roots, want 1", fedTDB, len(oldRoots))
	}
	// The probe's SVID lives 5 minutes, so it is still unexpired when it
	// is presented after the old root is gone.
	oldProbe := fetchX509As(t, B, uidProbe)
	if !signedBy(oldProbe, fedTDB, oldRoots) {
		t.Fatal("the probe's first SVID is not signed by td-b's only root")
	}
	if err := m.probe(t, oldProbe); err != nil {
		t.Fatalf("the frontend refuses a td-b probe before any rotation: %v", err)
	}

	tr := m.startTraffic(t)
	start := time.Now()

	// Prepare: td-b's bundle holds both roots; td-a fetches it.
	prepared, err := B.PrepareAuthority(t.Context(), spiretest.X509Authority)
	if err != nil {
		t.Fatal(err)
	}
	both := fedRoots(t, B, fedTDB)
	newRoots := without(both, oldRoots)
	if len(both) != 2 || len(newRoots) != 1 {
		t.Fatalf("after prepare %s has %d roots, %d of them new; want 2 and 1", fedTDB, len(both), len(newRoots))
	}
	n := m.bundleUpdates(t)
	if err := m.refreshB(t, both); err != nil {
		t.Fatal(err)
	}
	t.Logf("overlap bundle reached the frontend %s after td-a's refresh", m.waitBundleUpdate(t, n).Round(time.Millisecond))

	// Activate: the backend's next SVID is signed by the new root.
	if err := B.ActivateAuthority(t.Context(), spiretest.X509Authority, prepared); err != nil {
		t.Fatal(err)
	}
	activated := time.Now()
	m.waitBackendOn(t, newRoots)
	t.Logf("backend presents a new-authority SVID %s after activation", time.Since(activated).Round(time.Millisecond))
	// A resumed session carries the certificate of its full handshake:
	// wait for a full one, which verifies the backend's new-root
	// certificate against the overlap bundle.
	full := func() int {
		return len(fedLines(m.frontend, `"direction":"outbound"`, `"decision":"allow"`, `"resumed":false`))
	}
	f0 := full()
	pollFor(t, 45*time.Second, "a full handshake from the frontend to the new-authority backend", func() (bool, string) {
		n := full()
		return n > f0, fmt.Sprintf("%d full handshakes, %d before the activation", n, f0)
	})

	// Taint and revoke the old authority; td-a fetches the bundle again.
	curProbe := m.retireOldRoot(t, newRoots)
	ok, failed := tr.stop()
	t.Logf("rotation from prepare to removal took %s; %d requests, %d failed", time.Since(start).Round(time.Millisecond), ok, failed)
	if failed != 0 || ok < 100 {
		t.Fatalf("%d requests failed, %d succeeded; want 0 failed and at least 100", failed, ok)
	}
	for _, sc := range []*sidecartest.Sidecar{m.frontend, m.backend} {
		select {
		case <-sc.Done():
			t.Fatalf("%s exited during the rotation", sc.Name)
		default:
		}
	}

	// Only the old-root peer fails now.
	m.refuseUntrusted(t, oldProbe, "a td-b SVID of the removed root")
	if time.Now().After(oldProbe.Certificates[0].NotAfter) {
		t.Fatal("the old probe SVID expired before it was presented: the refusal proves nothing")
	}
	if err := m.probe(t, curProbe); err != nil {
		t.Fatalf("the frontend refuses a td-b SVID of the new root: %v", err)
	}
	if lines := fedLines(m.frontend, `"decision":"deny"`, `"reason":"untrusted"`); len(lines) != 1 || !strings.Contains(lines[0], `"claimed_id":"spiffe://td-b.test/probe"`) ||
		strings.Contains(lines[0], `"peer_id"`) {
		t.Fatalf("the frontend's access log should show one untrusted refusal, of the probe:\n%s", strings.Join(lines, "\n"))
	}
}

// TestE2EFederationEndpointOutage is F10: td-b's bundle endpoint becomes
// unreachable from td-a (its front is cut), and while it is td-b rotates
// its X.509 authority (prepare, then activate). td-a's refreshes fail and
// it keeps the cached bundle: traffic from the frontend to the backend,
// whose SVID is of the old root, continues with no failure, while a td-b
// workload whose SVID is of the new root is refused (nothing could have
// delivered that root). Once the endpoint is back and td-a refreshes, the
// new root is accepted: the new-root workload gets through; td-b then
// moves the backend to the new root and retires the old one, td-a
// refreshes again, and the frontend verifies the backend's new-root
// certificate on a full handshake, all with no failed request.
//
// td-b's SVIDs live 5 minutes so that nothing in td-b moves to the new root
// before the test says so; its bundle endpoint's certificate in particular
// stays on the old root, which is what td-a authenticates it with. (Had it
// moved during the outage, td-a could not authenticate the endpoint any
// more and the federation would need bootstrapping again.) It also means
// the frontend's TLS sessions hold an old-root backend certificate, still
// unexpired, when the old root goes: they must not be resumed then.
func TestE2EFederationEndpointOutage(t *testing.T) {
	m := startFedMesh(t, fedConfig{b: spiretest.Options{X509SVIDTTL: 5 * time.Minute, CATTL: 30 * time.Minute}})
	A, B := m.fed.A, m.fed.B
	oldRoots := fedRoots(t, B, fedTDB)
	tr := m.startTraffic(t)

	// The endpoint goes away; refreshes fail and the cached bundle stays.
	m.fed.ToB.Cut()
	cut := time.Now()
	n := m.bundleUpdates(t)
	err := m.refreshB(t, nil)
	if err == nil {
		t.Fatal("td-a refreshed td-b's bundle through a cut front")
	}
	t.Logf("refresh during the outage: %v", err)
	if got := fedRoots(t, A, fedTDB); !sameCerts(got, oldRoots) {
		t.Fatalf("a failed refresh left %s with %d roots of %s", fedTDA, len(got), fedTDB)
	}

	// td-b rotates meanwhile.
	prepared, err := B.PrepareAuthority(t.Context(), spiretest.X509Authority)
	if err != nil {
		t.Fatal(err)
	}
	newRoots := without(fedRoots(t, B, fedTDB), oldRoots)
	if len(newRoots) != 1 {
		t.Fatalf("after prepare %s has %d new roots, want 1", fedTDB, len(newRoots))
	}
	if err := m.refreshB(t, nil); err == nil {
		t.Fatal("td-a refreshed td-b's bundle through a cut front")
	}
	if err := B.ActivateAuthority(t.Context(), spiretest.X509Authority, prepared); err != nil {
		t.Fatal(err)
	}
	// A workload registered now gets its first SVID from the new authority.
	if _, err := B.Register(t.Context(), spiretest.Entry{ID: B.ID("/probe"), UID: uidProbe}); err != nil {
		t.Fatal(err)
	}
	newProbe := fetchX509As(t, B, uidProbe)
	if !signedBy(newProbe, fedTDB, newRoots) {
		t.Fatal("the probe's SVID is not signed by td-b's new root")
	}
	m.refuseUntrusted(t, newProbe, "a new-root td-b SVID it has no root for")

	// Hold the outage for 10 s in all; the cached bundle carries the
	// traffic (the backend's SVID is of the old root) and stays in place.
	// The steps above can take longer than that on a busy machine: the
	// outage then also lasts until requests sent after them have gone
	// through (the traffic sends one every 50 ms).
	during := tr.ok.Load()
	time.Sleep(time.Until(cut.Add(10 * time.Second)))
	for deadline := time.Now().Add(30 * time.Second); tr.ok.Load() < during+5 && tr.failed.Load() == 0; time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%d requests succeeded in 30 s of the outage after the rotation, want 5", tr.ok.Load()-during)
		}
	}
	if failed := tr.failed.Load(); failed != 0 {
		t.Fatalf("%d requests failed during the outage", failed)
	}
	if got := m.bundleUpdates(t); got != n {
		t.Fatalf("the frontend's td-b bundle changed during the outage (%v -> %v updates)", n, got)
	}
	_, body, err := m.frontend.Get(t.Context(), "/debug/identity")
	if err != nil || !strings.Contains(body, `"`+fedTDB+`"`) {
		t.Fatalf("the frontend no longer holds td-b's bundle: %v\n%s", err, body)
	}
	outage := time.Since(cut)

	// The endpoint returns; one refresh brings the new root.
	if err := m.fed.ToB.Restore(); err != nil {
		t.Fatal(err)
	}
	if err := m.refreshB(t, fedRoots(t, B, fedTDB)); err != nil {
		t.Fatalf("refresh after the endpoint returned: %v", err)
	}
	t.Logf("after a %s outage the new root reached the frontend %s after td-a's refresh", outage.Round(time.Millisecond), m.waitBundleUpdate(t, n).Round(time.Millisecond))
	if err := m.probe(t, newProbe); err != nil {
		t.Fatalf("the frontend refuses the new-root td-b SVID after the refresh: %v", err)
	}

	// td-b finishes the rotation; the frontend moves with it.
	m.retireOldRoot(t, newRoots)
	ok, failed := tr.stop()
	t.Logf("%d requests, %d failed", ok, failed)
	if failed != 0 || ok < 100 {
		t.Fatalf("%d requests failed, %d succeeded; want 0 failed and at least 100", failed, ok)
	}
}

// retireOldRoot ends td-b's rotation while traffic flows: it taints the
// old X.509 authority, waits until the backend, the probe and td-b's agent
// hold SVIDs of the new root (a revoked root would cut the agent off its
// server, and the agent serves workloads what it holds), revokes the old
// authority, has td-a fetch td-b's bundle, waits for the frontend to
// receive it, and then for a full handshake from the frontend (so it has
// verified the backend's new-root certificate) and 20 more requests. It
// returns the probe's new-root SVID.
func (m *fedMesh) retireOldRoot(t *testing.T, newRoots []*x509.Certificate) *x509svid.SVID {
	t.Helper()
	B := m.fed.B
	ctx := t.Context()
	st, err := B.Authorities(ctx, spiretest.X509Authority)
	if err != nil {
		t.Fatal(err)
	}
	old := st.Old
	if old == "" {
		t.Fatal("no old X.509 authority after activation")
	}
	if err := B.TaintAuthority(ctx, spiretest.X509Authority, old); err != nil {
		t.Fatal(err)
	}
	tainted := time.Now()
	m.waitBackendOn(t, newRoots)
	var probe *x509svid.SVID
	pollFor(t, 30*time.Second, "the probe's SVID signed by the new root", func() (bool, string) {
		svid, err := fetchX509Within(ctx, B, uidProbe, 10*time.Second)
		if err != nil {
			return false, err.Error()
		}
		probe = svid
		return signedBy(probe, fedTDB, newRoots), "the probe's SVID is of another root"
	})
	pollFor(t, 30*time.Second, "td-b's agent SVID signed by the new root", func() (bool, string) {
		chain, err := B.AgentSVID()
		if err != nil {
			return false, err.Error() // also while the agent rewrites it
		}
		return signedBy(&x509svid.SVID{Certificates: chain}, fedTDB, newRoots), "the agent's SVID is of another root"
	})
	t.Logf("td-b's backend, probe and agent re-signed %s after the taint", time.Since(tainted).Round(time.Millisecond))
	if err := B.RevokeAuthority(ctx, spiretest.X509Authority, old); err != nil {
		t.Fatal(err)
	}
	if got := fedRoots(t, B, fedTDB); !sameCerts(got, newRoots) {
		t.Fatalf("after revoke %s has %d roots, want only the new one", fedTDB, len(got))
	}
	full := func() int {
		return len(fedLines(m.frontend, `"direction":"outbound"`, `"decision":"allow"`, `"resumed":false`))
	}
	n, f := m.bundleUpdates(t), full()
	if err := m.refreshB(t, newRoots); err != nil {
		t.Fatal(err)
	}
	t.Logf("new-root-only bundle reached the frontend %s after td-a's refresh", m.waitBundleUpdate(t, n).Round(time.Millisecond))
	pollFor(t, 30*time.Second, "a full handshake from the frontend on the new-root-only bundle", func() (bool, string) {
		n := full()
		return n > f, fmt.Sprintf("%d full handshakes, %d before the refresh", n, f)
	})
	m.traffic.waitMore(t, 20, 10*time.Second)
	return probe
}

// fedRoots returns the X.509 roots s holds for td: its own bundle or a
// federated one.
func fedRoots(t *testing.T, s *spiretest.SPIRE, td string) []*x509.Certificate {
	t.Helper()
	c := bundlev1.NewBundleClient(s.Conn())
	var b *types.Bundle
	var err error
	if td == s.TrustDomain().Name() {
		b, err = c.GetBundle(t.Context(), &bundlev1.GetBundleRequest{})
	} else {
		b, err = c.GetFederatedBundle(t.Context(), &bundlev1.GetFederatedBundleRequest{TrustDomain: td})
	}
	if err != nil {
		t.Fatalf("bundle of %s on %s: %v", td, s.TrustDomain(), err)
	}
	var out []*x509.Certificate
	for _, a := range b.X509Authorities {
		cert, err := x509.ParseCertificate(a.Asn1)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, cert)
	}
	return out
}

func sameCerts(a, b []*x509.Certificate) bool {
	return len(a) == len(b) && len(without(a, b)) == 0
}

// without returns the certificates of a that are not in b.
func without(a, b []*x509.Certificate) []*x509.Certificate {
	var out []*x509.Certificate
	for _, c := range a {
		found := false
		for _, d := range b {
			found = found || c.Equal(d)
		}
		if !found {
			out = append(out, c)
		}
	}
	return out
}

// signedBy reports whether svid verifies as an X.509-SVID of td against
// roots.
func signedBy(svid *x509svid.SVID, td string, roots []*x509.Certificate) bool {
	if svid == nil {
		return false
	}
	b := x509bundle.FromX509Authorities(spiffeid.RequireTrustDomainFromString(td), roots)
	_, _, err := x509svid.Verify(svid.Certificates, b)
	return err == nil
}

// fedLines returns the sidecar's log lines that contain every one of subs.
func fedLines(sc *sidecartest.Sidecar, subs ...string) []string {
	var out []string
	for _, l := range sc.LogLines(subs[0]) {
		all := true
		for _, s := range subs[1:] {
			all = all && strings.Contains(l, s)
		}
		if all {
			out = append(out, l)
		}
	}
	return out
}
