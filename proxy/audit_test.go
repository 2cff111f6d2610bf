package proxy_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/credflow/credflow/audit"
	"github.com/credflow/credflow/internal/testca"
	"github.com/credflow/credflow/internal/testenv"
	"github.com/credflow/credflow/proxy"
	"github.com/credflow/credflow/proxy/route"
)

// recorder is an Auditor that keeps what it is given.
type recorder struct {
	mu     sync.Mutex
	events []audit.Event
}

func (r *recorder) Write(e audit.Event) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.events = append(r.events, e)
}

// all returns a copy of the events so far.
func (r *recorder) all() []audit.Event {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]audit.Event(nil), r.events...)
}

func (r *recorder) kinds() map[audit.Kind][]audit.Event {
	r.mu.Lock()
	defer r.mu.Unlock()
	m := map[audit.Kind][]audit.Event{}
	for _, e := range r.events {
		m[e.Kind] = append(m[e.Kind], e)
	}
	return m
}

// TestAuditTokenEvents: the edge's exchange of an external token and the
// transaction token it mints are audited by the edge sidecar, its
// verification by the backend's, all three naming the same jti, the
// external token by its fingerprint only; and each request is one
// decision on each side.
func TestAuditTokenEvents(t *testing.T) {
	ca := testca.New(t, td)
	idp := newTestIDP(t)
	bundles := x509bundle.NewSet(ca.Bundle())
	edgeID := spiffeid.RequireFromPath(td, "/edge")
	appLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	app := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, "ok") })}
	go app.Serve(appLn)
	t.Cleanup(func() { app.Close() })
	all, _ := route.ParsePath("/*")
	inRec, outRec := &recorder{}, &recorder{}
	in, _ := startProxy(t, proxy.Config{
		SVIDs:   static{svid: ca.Issue(t, spiffeid.RequireFromPath(td, "/backend"))},
		Bundles: bundles,
		Audit:   inRec,
		Inbound: []proxy.Inbound{{Name: "app", Listen: "127.0.0.1:0", App: appLn.Addr().String(), Allow: policy(t, "spiffe://example.org"),
			HTTP: &proxy.InboundHTTP{Routes: route.Table{Rules: []route.Rule{{Name: "orders", Peers: policy(t, "spiffe://example.org"), Paths: []route.Path{all}}}},
				TxnMinters: policy(t, edgeID.String()), RequireTxn: true}}},
	})
	svids := static{svid: ca.Issue(t, edgeID)}
	out, _ := startProxy(t, proxy.Config{
		SVIDs:   svids,
		Bundles: bundles,
		Audit:   outRec,
		Outbound: []proxy.Outbound{{Name: "up", Listen: "127.0.0.1:0", Upstream: in.Addr("app").String(),
			Expect: policy(t, "spiffe://example.org/backend"), HTTP: &proxy.OutboundHTTP{Exchange: true}}},
		Exchanger: idp.exchanger(t, svids),
		Tokens:    source{j: newJWTIssuer(t), id: edgeID},
	})
	external := idp.token(t, "alice", "orders", time.Now().Add(5*time.Minute))
	req, _ := http.NewRequestWithContext(context.Background(), http.MethodGet, "http://"+out.Addr("up").String()+"/orders/1", nil)
	req.Header.Set("Authorization", "Bearer "+external)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("through the edge: %s (%s)", resp.Status, resp.Header.Get("X-Credflow-Reason"))
	}

	outK, inK := outRec.kinds(), inRec.kinds()
	if len(outK[audit.KindEdgeExchange]) != 1 || len(outK[audit.KindTxnMinted]) != 1 || len(inK[audit.KindTxnVerified]) != 1 {
		t.Fatalf("edge: %v; backend: %v", outK, inK)
	}
	exch, minted, verified := outK[audit.KindEdgeExchange][0], outK[audit.KindTxnMinted][0], inK[audit.KindTxnVerified][0]
	if minted.JTI == "" || exch.JTI != minted.JTI || verified.JTI != minted.JTI {
		t.Errorf("jtis: exchange %q, minted %q, verified %q; want one", exch.JTI, minted.JTI, verified.JTI)
	}
	if exch.Fingerprint != audit.Fingerprint([]byte(external)) || exch.Subject != "alice" || verified.PeerID != edgeID.String() {
		t.Errorf("exchange %+v, verified %+v", exch, verified)
	}
	for _, e := range append(outRec.all(), inRec.all()...) { // the edge may still be writing its decision
		if strings.Contains(fmt.Sprintf("%+v", e), external) || strings.Contains(fmt.Sprintf("%+v", e), "eyJ") {
			t.Errorf("an audit event holds a token: %+v", e)
		}
	}
	// One decision per side for the request, with its route on the backend.
	dec := func(r *recorder, listener string) (n int, route string) {
		r.mu.Lock()
		defer r.mu.Unlock()
		for _, e := range r.events {
			if e.Type == audit.TypeDecision && e.Listener == listener && e.Method == http.MethodGet {
				n, route = n+1, e.Route
			}
		}
		return n, route
	}
	if n, rt := dec(inRec, "app"); n != 1 || rt != "orders" {
		t.Errorf("backend decisions for the request: %d, route %q", n, rt)
	}
	// The edge's line is written as its handler returns, after the answer.
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		n, _ := dec(outRec, "up")
		if n == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("edge decisions for the request: %d", n)
		}
	}
}

// TestAuditDiskFull: with the audit file's disk full (a real 256 KiB
// tmpfs, filled), every request is still answered; the events that could
// not be written are counted, in the writer's stats and the metric alike;
// once there is room again the trail records a gap of exactly those and
// verifies.
func TestAuditDiskFull(t *testing.T) {
	testenv.NeedsRoot(t, "mounting a small tmpfs for the audit file")
	dir := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", dir).CombinedOutput(); err != nil {
		t.Fatalf("mount tmpfs: %v: %s", err, out)
	}
	t.Cleanup(func() { exec.Command("umount", "-l", dir).Run() })

	ca := testca.New(t, td)
	reg := prometheus.NewRegistry()
	path := filepath.Join(dir, "audit.jsonl")
	w, err := audit.New(audit.Config{Path: path, CheckpointInterval: time.Hour, Metrics: audit.NewMetrics(reg),
		SVIDs: static{svid: ca.Issue(t, spiffeid.RequireFromPath(td, "/backend"))}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	defer func() { cancel(); <-done }()

	rig := startAbuseRig(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, "ok") }),
		proxy.Config{Audit: w})
	c := rig.httpClient(false)
	url := "https://" + rig.addr + "/orders"
	request := func() {
		t.Helper()
		resp, err := c.Get(url)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("GET: %s (%s)", resp.Status, resp.Header.Get("X-Credflow-Reason"))
		}
	}
	request()
	stats := func() string { return fmt.Sprintf("%+v", w.Stats()) }
	waitUntil(t, 30*time.Second, "the first decision written", func() bool { return w.Stats().Events >= 1 }, stats)

	filler, err := os.Create(filepath.Join(dir, "filler"))
	if err != nil {
		t.Fatal(err)
	}
	for chunk := make([]byte, 4096); ; {
		if _, err := filler.Write(chunk); err != nil {
			if !errors.Is(err, syscall.ENOSPC) {
				t.Fatalf("filling the disk: %v", err)
			}
			break
		}
	}
	for range 200 {
		request() // each answered, the disk full or not
	}
	// The trail's last page may still take a few records.
	waitUntil(t, 30*time.Second, "the 201 decisions written or lost", func() bool { s := w.Stats(); return s.Events+s.Failed >= 201 }, stats)
	if w.Stats().Failed < 150 {
		t.Fatalf("the full disk cost only %d events (%s)", w.Stats().Failed, stats())
	}
	filler.Close()
	if err := os.Remove(filler.Name()); err != nil {
		t.Fatal(err)
	}
	written := w.Stats().Records
	request()
	waitUntil(t, 30*time.Second, "a record written after the room is back", func() bool { return w.Stats().Records > written }, stats)
	cancel()
	<-done
	done <- nil

	s := w.Stats()
	trailMetrics := &inbound{reg: reg}
	if got := trailMetrics.metric(t, "credflow_audit_dropped_total", "reason=write_error"); got != float64(s.Failed) || s.WriteErrors == 0 {
		t.Errorf(`credflow_audit_dropped_total{reason="write_error"} = %v, stats %+v: want the events lost, counted once`, got, s)
	}
	rep, err := audit.Verify([]string{path}, audit.VerifyOptions{Bundles: x509bundle.NewSet(ca.Bundle())})
	if err != nil {
		t.Fatalf("the trail after a full disk does not verify: %v", err)
	}
	if rep.Gaps == 0 || rep.Failed != s.Failed {
		t.Errorf("report %+v: want gaps accounting for the %d events lost", rep, s.Failed)
	}
	t.Logf("disk full: %d events lost and counted, %d written; %s", s.Failed, s.Events, rep.Summary())
}
