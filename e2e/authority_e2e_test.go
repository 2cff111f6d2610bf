package e2e_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/credflow/credflow/internal/sidecartest"
	"github.com/credflow/credflow/internal/spiretest"
)

// uidProbe runs a probe workload: a client of an inbound listener whose
// long-lived SVID is fetched before a rotation and presented after it.
// Each test registers it with the SPIFFE ID it needs.
const uidProbe = 1004

// TestE2EAuthorityX509Rotation is F5: with traffic flowing through two
// sidecars, SPIRE's X.509 authority is prepared, activated, tainted and
// revoked. No request fails; both sidecars move to SVIDs of the new
// authority; an SVID of the old authority with an allowed ID is accepted
// until the revocation and refused after it (untrusted), while one of the
// new authority is accepted.
func TestE2EAuthorityX509Rotation(t *testing.T) {
	m := startMeshOn(t, spiretest.Options{X509SVIDTTL: 20 * time.Second}, 20*time.Second, false, "")
	s := m.spire
	ctx := t.Context()

	if _, err := s.Register(ctx, spiretest.Entry{ID: s.ID("/frontend"), UID: uidProbe, X509SVIDTTL: 5 * time.Minute}); err != nil {
		t.Fatal(err)
	}
	oldSVID := fetchX509As(t, s, uidProbe)
	before, err := s.Authorities(ctx, spiretest.X509Authority)
	if err != nil {
		t.Fatal(err)
	}
	oldCA := before.Active
	if got := spiretest.AuthorityID(oldSVID.Certificates[0]); got != oldCA {
		t.Fatalf("the probe SVID was signed by %s, the active authority is %s", got, oldCA)
	}
	if _, err := probeInbound(m.inboundAddr, oldSVID); err != nil {
		t.Fatalf("the probe SVID before the rotation: %v", err)
	}

	loop := startFixedRate(t, 50*time.Millisecond, echoRequests(m.frontAddr))
	sidecars := []*sidecartest.Sidecar{m.frontend, m.backend}
	rot0 := sidecarCounters(t, sidecars, "credflow_svid_rotations_total")

	// Prepare: the new CA joins the bundle; both sidecars must hold it
	// before anything it signs is presented.
	b0 := sidecarCounters(t, sidecars, "credflow_bundle_updates_total", "kind=x509")
	newCA, err := s.PrepareAuthority(ctx, spiretest.X509Authority)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	waitSidecarCounters(t, sidecars, b0, 30*time.Second, "credflow_bundle_updates_total", "kind=x509")
	t.Logf("prepared %s; in both sidecars' bundles after %s", newCA, time.Since(start).Round(time.Millisecond))

	// Activate, then taint the old CA: the agent replaces what it signed.
	if err := s.ActivateAuthority(ctx, spiretest.X509Authority, newCA); err != nil {
		t.Fatal(err)
	}
	if err := s.TaintAuthority(ctx, spiretest.X509Authority, oldCA); err != nil {
		t.Fatal(err)
	}
	start = time.Now()
	serials := map[string]string{}
	pollFor(t, 60*time.Second, "sidecars, agent and server on the new authority", func() (bool, string) {
		for _, w := range []struct {
			sc  *sidecartest.Sidecar
			uid int
		}{{m.frontend, uidFrontend}, {m.backend, uidBackend}} {
			svid, err := fetchX509Within(ctx, s, w.uid, 10*time.Second)
			if err != nil {
				return false, err.Error()
			}
			leaf := svid.Certificates[0]
			if got := spiretest.AuthorityID(leaf); got != newCA {
				return false, fmt.Sprintf("uid %d's SVID is from %s", w.uid, got)
			}
			serial := leaf.SerialNumber.Text(16)
			if held := heldSerial(t, w.sc); held != serial {
				return false, fmt.Sprintf("%s holds serial %s, the agent serves %s", w.sc.Name, held, serial)
			}
			serials[w.sc.Name] = serial
		}
		if got, err := s.AgentSVIDAuthority(); err != nil || got != newCA {
			return false, fmt.Sprintf("agent SVID from %s (%v)", got, err)
		}
		if got, err := s.ServerSVIDAuthority(ctx); err != nil || got != newCA {
			return false, fmt.Sprintf("server SVID from %s (%v)", got, err)
		}
		return true, ""
	})
	t.Logf("activated %s, tainted %s; sidecars (serials %v), agent and server on the new authority after %s",
		newCA, oldCA, serials, time.Since(start).Round(time.Millisecond))

	// Tainted but not revoked: the old SVID is still trusted, and the
	// backend now serves an SVID of the new authority.
	served, err := probeInbound(m.inboundAddr, oldSVID)
	if err != nil {
		t.Fatalf("the old-authority SVID after the taint, before the revocation: %v", err)
	}
	if got := spiretest.AuthorityID(served); got != newCA {
		t.Fatalf("the backend serves an SVID from %s, want %s", got, newCA)
	}

	// Revoke: the old CA leaves both sidecars' bundles.
	b1 := sidecarCounters(t, sidecars, "credflow_bundle_updates_total", "kind=x509")
	if err := s.RevokeAuthority(ctx, spiretest.X509Authority, oldCA); err != nil {
		t.Fatal(err)
	}
	start = time.Now()
	waitSidecarCounters(t, sidecars, b1, 30*time.Second, "credflow_bundle_updates_total", "kind=x509")
	t.Logf("revoked %s; gone from both sidecars' bundles after %s", oldCA, time.Since(start).Round(time.Millisecond))
	loop.waitMore(t, 40, 30*time.Second)
	ok, failed := loop.stop()

	rot1 := sidecarCounters(t, sidecars, "credflow_svid_rotations_total")
	t.Logf("%d requests across prepare/activate/taint/revoke, %d failed; rotations frontend %v, backend %v",
		ok, failed, rot1[0]-rot0[0], rot1[1]-rot0[1])
	if failed != 0 || ok < 100 {
		t.Fatalf("%d requests failed, %d succeeded", failed, ok)
	}
	for i, sc := range sidecars {
		if rot1[i] <= rot0[i] {
			t.Errorf("%s did not rotate its SVID", sc.Name)
		}
	}

	// After the revocation the old-authority SVID is refused as untrusted.
	untrusted0, _ := m.backend.Metric(ctx, "credflow_refusals_total", "direction=inbound", "reason=untrusted")
	if _, err := probeInbound(m.inboundAddr, oldSVID); err == nil {
		t.Fatal("the revoked authority's SVID was accepted")
	}
	pollFor(t, 5*time.Second, "the refusal counted", func() (bool, string) {
		n, err := m.backend.Metric(ctx, "credflow_refusals_total", "direction=inbound", "reason=untrusted")
		return err == nil && n == untrusted0+1, fmt.Sprintf("untrusted refusals %v -> %v (%v)", untrusted0, n, err)
	})
	denies := m.backend.LogLines(`"decision":"deny"`)
	if len(denies) == 0 || !strings.Contains(denies[len(denies)-1], `"reason":"untrusted"`) ||
		!strings.Contains(denies[len(denies)-1], `"claimed_id":"spiffe://example.org/frontend"`) ||
		strings.Contains(denies[len(denies)-1], `"peer_id"`) {
		// An untrusted chain proves nothing: its ID is only claimed.
		t.Fatalf("backend deny lines:\n%s", strings.Join(denies, "\n"))
	}
	// A fresh SVID of the same workload, from the new authority, is accepted.
	fresh := fetchX509As(t, s, uidProbe)
	if got := spiretest.AuthorityID(fresh.Certificates[0]); got != newCA {
		t.Fatalf("the probe's new SVID is from %s, want %s", got, newCA)
	}
	if _, err := probeInbound(m.inboundAddr, fresh); err != nil {
		t.Fatalf("a new-authority SVID after the revocation: %v", err)
	}
}

// TestE2EAuthorityJWTRotation is F6: two sidecars in HTTP mode, the
// outbound one attaching JWT-SVIDs and the inbound one requiring them.
// With traffic flowing, SPIRE's JWT authority is prepared, activated,
// tainted and revoked. No request fails; after the taint the tokens
// attached switch to the new key ID, well before the old tokens' refresh
// point; a token signed by the old key is accepted until the revocation
// and refused after it (401, bad_token).
func TestE2EAuthorityJWTRotation(t *testing.T) {
	// Tokens live 2 minutes: the switch must come from the taint, not from
	// a refresh at half their lifetime.
	s, bin, _ := startWorkloadsOn(t, spiretest.Options{JWTSVIDTTL: 2 * time.Minute}, 0,
		map[int]string{uidFrontend: "/frontend", uidBackend: "/backend"})
	ctx := t.Context()

	// The app reports the key ID and subject of the token it received, and
	// when half its lifetime has passed (the sidecar's refresh point).
	appLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	app := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		tok, _ := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		c := tokenClaims(tok)
		fmt.Fprintf(w, "kid=%s sub=%s refresh=%d", tokenKID(tok), c.Sub, c.IAT+(c.Exp-c.IAT)/2)
	})}
	go app.Serve(appLn)
	t.Cleanup(func() { app.Close() })

	addrs := make([]string, 2)
	for i := range addrs {
		if addrs[i], err = sidecartest.FreeAddr(); err != nil {
			t.Fatal(err)
		}
	}
	inHTTP, outHTTP := addrs[0], addrs[1]
	common := fmt.Sprintf("workload_api: %s\nadmin: \"{{admin}}\"\nlog: {level: debug}\n", s.AgentAddr())
	backend := startSidecar(t, s, bin, uidBackend, "backend", common+fmt.Sprintf(`inbound:
  - name: web
    listen: %q
    app: %q
    protocol: http
    allow: [spiffe://example.org/frontend]
    jwt: {require: true, pass: true}
    routes:
      - peers: [spiffe://example.org/frontend]
        methods: [GET]
        paths: [/api/*]
`, inHTTP, appLn.Addr()))
	frontend := startSidecar(t, s, bin, uidFrontend, "frontend", common+fmt.Sprintf(`outbound:
  - name: web
    listen: %q
    upstream: %q
    protocol: http
    expect: [spiffe://example.org/backend]
`, outHTTP, inHTTP))
	sidecars := []*sidecartest.Sidecar{frontend, backend}

	client := &http.Client{Timeout: 5 * time.Second}
	get := func(auth string) (int, string, string, error) {
		req, _ := http.NewRequestWithContext(ctx, "GET", "http://"+outHTTP+"/api/ping", nil)
		if auth != "" {
			req.Header.Set("Authorization", "Bearer "+auth)
		}
		resp, err := client.Do(req)
		if err != nil {
			return 0, "", "", err
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b), resp.Header.Get("X-Credflow-Reason"), err
	}

	before, err := s.Authorities(ctx, spiretest.JWTAuthority)
	if err != nil {
		t.Fatal(err)
	}
	oldKID := before.Active
	// A token of the frontend for the backend, signed by the current key,
	// kept to be replayed by the frontend's app later.
	fctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	oldToken, err := s.FetchJWTSVID(fctx, uidFrontend, "spiffe://example.org/backend")
	cancel()
	if err != nil {
		t.Fatal(err)
	}
	if kid := tokenKID(oldToken); kid != oldKID {
		t.Fatalf("the captured token has kid %q, the active JWT authority is %q", kid, oldKID)
	}
	if code, body, _, err := get(oldToken); err != nil || code != 200 || !strings.Contains(body, "kid="+oldKID+" sub=spiffe://example.org/frontend") {
		t.Fatalf("the captured token before the rotation: %d %q %v", code, body, err)
	}

	// The loop counts every non-2xx and transport error, and the key IDs
	// of the tokens the frontend attached.
	var kidMu sync.Mutex
	kids := map[string]int{}
	var sawNew atomic.Int64     // unix nanos of the first token with the new kid
	var oldRefresh atomic.Int64 // the latest refresh point of an old-kid token, unix seconds
	var newKID atomic.Value
	newKID.Store("")
	loop := startFixedRate(t, 50*time.Millisecond, func(int) error {
		code, body, reason, err := get("")
		if err != nil {
			return err
		}
		if code != 200 {
			return fmt.Errorf("status %d (%s)", code, reason)
		}
		var kid, sub string
		var refresh int64
		if _, err := fmt.Sscanf(body, "kid=%s sub=%s refresh=%d", &kid, &sub, &refresh); err != nil || sub != "spiffe://example.org/frontend" {
			return fmt.Errorf("the app saw %q (%v)", body, err)
		}
		if kid == oldKID && refresh > oldRefresh.Load() {
			oldRefresh.Store(refresh)
		}
		kidMu.Lock()
		kids[kid]++
		kidMu.Unlock()
		if n := newKID.Load().(string); n != "" && kid == n {
			sawNew.CompareAndSwap(0, time.Now().UnixNano())
		} else if sawNew.Load() != 0 && kid == oldKID {
			return fmt.Errorf("the old kid %s attached after the new one", kid)
		}
		return nil
	})

	// Prepare: the new key joins both sidecars' JWT bundles.
	b0 := sidecarCounters(t, sidecars, "credflow_bundle_updates_total", "kind=jwt")
	newK, err := s.PrepareAuthority(ctx, spiretest.JWTAuthority)
	if err != nil {
		t.Fatal(err)
	}
	newKID.Store(newK)
	start := time.Now()
	waitSidecarCounters(t, sidecars, b0, 30*time.Second, "credflow_bundle_updates_total", "kind=jwt")
	t.Logf("prepared kid %s; in both sidecars' JWT bundles after %s", newK, time.Since(start).Round(time.Millisecond))

	// Activate, then taint the old key: the agent drops the tokens it
	// signed, and the frontend picks up a token with the new key.
	if err := s.ActivateAuthority(ctx, spiretest.JWTAuthority, newK); err != nil {
		t.Fatal(err)
	}
	if err := s.TaintAuthority(ctx, spiretest.JWTAuthority, oldKID); err != nil {
		t.Fatal(err)
	}
	tainted := time.Now()
	pollFor(t, 40*time.Second, "tokens with the new kid attached", func() (bool, string) {
		return sawNew.Load() != 0, fmt.Sprintf("kids seen %v", copyCounts(&kidMu, kids))
	})
	switched := time.Unix(0, sawNew.Load())
	refreshAt := time.Unix(oldRefresh.Load(), 0)
	t.Logf("activated kid %s, tainted kid %s; new kid attached %s after the taint, %s before the old token's refresh point",
		newK, oldKID, switched.Sub(tainted).Round(time.Millisecond), refreshAt.Sub(switched).Round(time.Millisecond))
	if !switched.Before(refreshAt) {
		t.Fatalf("the new kid came at the old token's refresh point (%s), not after the taint", refreshAt.Format(time.RFC3339))
	}

	// Tainted but not revoked: the old token still validates.
	if code, body, _, err := get(oldToken); err != nil || code != 200 || !strings.Contains(body, "kid="+oldKID) {
		t.Fatalf("the old-key token after the taint, before the revocation: %d %q %v", code, body, err)
	}

	// Revoke: the old key leaves both sidecars' JWT bundles.
	b1 := sidecarCounters(t, sidecars, "credflow_bundle_updates_total", "kind=jwt")
	if err := s.RevokeAuthority(ctx, spiretest.JWTAuthority, oldKID); err != nil {
		t.Fatal(err)
	}
	start = time.Now()
	waitSidecarCounters(t, sidecars, b1, 30*time.Second, "credflow_bundle_updates_total", "kind=jwt")
	t.Logf("revoked kid %s; gone from both sidecars' JWT bundles after %s", oldKID, time.Since(start).Round(time.Millisecond))
	loop.waitMore(t, 40, 30*time.Second)
	ok, failed := loop.stop()

	seen := copyCounts(&kidMu, kids)
	t.Logf("%d requests across prepare/activate/taint/revoke, %d failed; tokens by kid %v", ok, failed, seen)
	if failed != 0 || ok < 100 {
		t.Fatalf("%d requests failed, %d succeeded", failed, ok)
	}
	if seen[oldKID] == 0 || seen[newK] == 0 || len(seen) != 2 {
		t.Fatalf("tokens by kid %v, want both %s and %s and nothing else", seen, oldKID, newK)
	}

	// After the revocation the old-key token is refused.
	badToken0, _ := backend.Metric(ctx, "credflow_refusals_total", "direction=inbound", "reason=bad_token")
	code, body, reason, err := get(oldToken)
	if err != nil || code != 401 || reason != "bad_token" {
		t.Fatalf("the revoked key's token: %d %q reason %q %v", code, body, reason, err)
	}
	if n, _ := backend.Metric(ctx, "credflow_refusals_total", "direction=inbound", "reason=bad_token"); n != badToken0+1 {
		t.Fatalf("bad_token refusals %v -> %v, want one more", badToken0, n)
	}
	// The frontend's own token still goes through.
	if code, body, _, err := get(""); err != nil || code != 200 || !strings.Contains(body, "kid="+newK) {
		t.Fatalf("after the refusal: %d %q %v", code, body, err)
	}
}

// fixedRate sends one request per tick from one goroutine until stopped and
// counts the results; every error is a failure.
type fixedRate struct {
	ok, failed atomic.Int64
	quit, done chan struct{}
	once       sync.Once
}

func startFixedRate(t *testing.T, every time.Duration, send func(i int) error) *fixedRate {
	t.Helper()
	l := &fixedRate{quit: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(l.done)
		tick := time.NewTicker(every)
		defer tick.Stop()
		for i := 0; ; i++ {
			select {
			case <-l.quit:
				return
			case <-tick.C:
			}
			if err := send(i); err != nil {
				if l.failed.Add(1) <= 5 {
					t.Errorf("request %d failed at %s: %v", i, time.Now().Format("15:04:05.000"), err)
				}
			} else {
				l.ok.Add(1)
			}
		}
	}()
	t.Cleanup(func() { l.stop() })
	return l
}

// stop ends the loop, waits for its request in flight, and returns the
// counts.
func (l *fixedRate) stop() (ok, failed int64) {
	l.once.Do(func() { close(l.quit) })
	<-l.done
	return l.ok.Load(), l.failed.Load()
}

// echoRequests is a fixedRate sender: request i sends "request i" through
// the outbound listener addr to the echo app and expects it back.
func echoRequests(addr string) func(i int) error {
	return func(i int) error {
		msg := []byte(fmt.Sprintf("request %d", i))
		got, err := roundTrip(addr, msg)
		if err == nil && !bytes.Equal(got, msg) {
			err = fmt.Errorf("%d bytes echoed for %d sent", len(got), len(msg))
		}
		return err
	}
}

// waitMore waits until n more requests have succeeded.
func (l *fixedRate) waitMore(t *testing.T, n int64, timeout time.Duration) {
	t.Helper()
	target := l.ok.Load() + n
	pollFor(t, timeout, fmt.Sprintf("%d more requests", n), func() (bool, string) {
		return l.ok.Load() >= target, fmt.Sprintf("%d ok, %d failed", l.ok.Load(), l.failed.Load())
	})
}

// pollFor polls cond every 250ms until it holds, failing the test with
// cond's last explanation after timeout.
func pollFor(t *testing.T, timeout time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		ok, why := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("not %s after %s: %s", what, timeout, why)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// sidecarCounter reads a counter from a sidecar.
func sidecarCounter(t *testing.T, sc *sidecartest.Sidecar, name string, labels ...string) float64 {
	t.Helper()
	v, err := sc.Metric(t.Context(), name, labels...)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// sidecarCounters reads a counter from each sidecar.
func sidecarCounters(t *testing.T, scs []*sidecartest.Sidecar, name string, labels ...string) []float64 {
	t.Helper()
	out := make([]float64, len(scs))
	for i, sc := range scs {
		out[i] = sidecarCounter(t, sc, name, labels...)
	}
	return out
}

// waitSidecarCounters waits until every sidecar's counter has moved past base.
func waitSidecarCounters(t *testing.T, scs []*sidecartest.Sidecar, base []float64, timeout time.Duration, name string, labels ...string) {
	t.Helper()
	pollFor(t, timeout, name+" moved in every sidecar", func() (bool, string) {
		cur := sidecarCounters(t, scs, name, labels...)
		for i := range cur {
			if cur[i] <= base[i] {
				return false, fmt.Sprintf("%s %v -> %v", scs[i].Name, base[i], cur[i])
			}
		}
		return true, ""
	})
}

// fetchX509As fetches uid's X.509-SVID from the Workload API, waiting up
// to 30 s for the agent to serve one.
func fetchX509As(t *testing.T, s *spiretest.SPIRE, uid int) *x509svid.SVID {
	t.Helper()
	svid, err := fetchX509Within(t.Context(), s, uid, 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	return svid
}

// fetchX509Within fetches uid's X.509-SVID from the Workload API, waiting
// at most timeout for the agent to serve one.
func fetchX509Within(ctx context.Context, s *spiretest.SPIRE, uid int, timeout time.Duration) (*x509svid.SVID, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	return s.FetchX509SVID(ctx, uid)
}

// heldSerial is the serial of the SVID a sidecar holds, from its
// /debug/identity page.
func heldSerial(t *testing.T, sc *sidecartest.Sidecar) string {
	t.Helper()
	_, body, err := sc.Get(t.Context(), "/debug/identity")
	if err != nil {
		return ""
	}
	var doc struct {
		Serial string `json:"serial"`
	}
	json.Unmarshal([]byte(body), &doc)
	return doc.Serial
}

// probeInbound connects to an inbound mTLS listener presenting svid, sends
// a message through to the echo app and expects it back. It returns the
// certificate the listener presented.
func probeInbound(addr string, svid *x509svid.SVID) (*x509.Certificate, error) {
	cert := tls.Certificate{PrivateKey: svid.PrivateKey, Leaf: svid.Certificates[0]}
	for _, c := range svid.Certificates {
		cert.Certificate = append(cert.Certificate, c.Raw)
	}
	var served *x509.Certificate
	conf := &tls.Config{
		MinVersion:         tls.VersionTLS13,
		Certificates:       []tls.Certificate{cert},
		InsecureSkipVerify: true, // the probe only reads what the listener presents
		VerifyConnection: func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) > 0 {
				served = cs.PeerCertificates[0]
			}
			return nil
		},
	}
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr, conf)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	msg := []byte("probe")
	if _, err := c.Write(msg); err != nil {
		return served, err
	}
	if err := c.CloseWrite(); err != nil {
		return served, err
	}
	got, err := io.ReadAll(c)
	if err != nil {
		return served, err
	}
	if !bytes.Equal(got, msg) {
		return served, fmt.Errorf("%q echoed for %q", got, msg)
	}
	return served, nil
}

// tokenKID and tokenClaims read a token's kid and claims without
// verifying it (the sidecar did).
func tokenKID(tok string) string {
	var h struct {
		KID string `json:"kid"`
	}
	tokenPart(tok, 0, &h)
	return h.KID
}

type claims struct {
	Sub string `json:"sub"`
	IAT int64  `json:"iat"`
	Exp int64  `json:"exp"`
}

func tokenClaims(tok string) claims {
	var c claims
	tokenPart(tok, 1, &c)
	return c
}

func tokenPart(tok string, i int, v any) {
	parts := strings.Split(tok, ".")
	if len(parts) != 3 {
		return
	}
	b, err := base64.RawURLEncoding.DecodeString(parts[i])
	if err == nil {
		json.Unmarshal(b, v)
	}
}

func copyCounts(mu *sync.Mutex, m map[string]int) map[string]int {
	mu.Lock()
	defer mu.Unlock()
	out := make(map[string]int, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}
