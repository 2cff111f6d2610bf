package proxy_test

import (
	"io"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/credflow/credflow/internal/testca"
	"github.com/credflow/credflow/proxy"
	"github.com/credflow/credflow/proxy/route"
)

// TestHTTPOutboundRenewsConnections: the frontend's SVID lives 4 s and is
// rotated at half-life, as SPIRE's agent does; the backend closes a
// connection once its peer's certificate has expired (CloseOnPeerExpiry,
// as an older sidecar did by default). Requests that take
// 30 ms are always in flight on the pooled connection, yet none fails: the
// outbound listener moves new requests to fresh connections before the
// certificate on the old one expires, and closes the old one once idle, so
// the backend never has to cut one (no peer_expired closure).
func TestHTTPOutboundRenewsConnections(t *testing.T) {
	ca := testca.New(t, td)
	issuer := newJWTIssuer(t)
	slow := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		time.Sleep(30 * time.Millisecond)
		io.WriteString(w, "ok")
	})}
	appLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go slow.Serve(appLn)
	t.Cleanup(func() { slow.Close() })

	api, _ := route.ParsePath("/api/*")
	routes := route.Table{Rules: []route.Rule{{Peers: policy(t, "spiffe://example.org/frontend"), Methods: []string{"GET"}, Paths: []route.Path{api}}}}
	bundles := x509bundle.NewSet(ca.Bundle())
	inP, inReg := startProxy(t, proxy.Config{
		SVIDs:              static{svid: ca.Issue(t, spiffeid.RequireFromPath(td, "/backend"))},
		Bundles:            bundles,
		Inbound:            []proxy.Inbound{{Name: "app", Listen: "127.0.0.1:0", App: appLn.Addr().String(), Allow: policy(t, "spiffe://example.org/frontend"), HTTP: &proxy.InboundHTTP{Routes: routes, RequireJWT: true}}},
		ValidateJWT:        issuer.validate,
		RevalidateInterval: 100 * time.Millisecond,
		CloseOnPeerExpiry:  true,
	})
	front := spiffeid.RequireFromPath(td, "/frontend")
	now := time.Now()
	svids := &swappable{}
	svids.set(ca.Issue(t, front, testca.WithValidity(now.Add(-time.Minute), now.Add(4*time.Second))), ca.Bundle())
	outP, _ := startProxy(t, proxy.Config{
		SVIDs:              svids,
		Bundles:            bundles,
		Outbound:           []proxy.Outbound{{Name: "up", Listen: "127.0.0.1:0", Upstream: inP.Addr("app").String(), Expect: policy(t, "spiffe://example.org/backend"), HTTP: &proxy.OutboundHTTP{}}},
		Tokens:             source{j: issuer, id: front},
		RevalidateInterval: 100 * time.Millisecond,
	})
	in := &inbound{reg: inReg}
	url := "http://" + outP.Addr("up").String() + "/api/x"

	var ok, failed atomic.Int64
	var wg sync.WaitGroup
	deadline := time.Now().Add(6 * time.Second) // past the first SVID's expiry
	for range 4 {
		wg.Go(func() {
			for time.Now().Before(deadline) {
				resp, err := http.Get(url)
				if err != nil {
					failed.Add(1)
					continue
				}
				body, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 200 || string(body) != "ok" {
					failed.Add(1)
					continue
				}
				ok.Add(1)
			}
		})
	}
	time.Sleep(2 * time.Second) // half-life: the agent would rotate now
	svids.set(ca.Issue(t, front), ca.Bundle())
	wg.Wait()

	handshakes := in.metric(t, "credflow_tls_connections_total", "direction=inbound")
	t.Logf("%d requests, %d failed; %v connections to the backend; backend closed %v for peer expiry",
		ok.Load(), failed.Load(), handshakes, in.metric(t, "credflow_connections_closed_total", "reason=peer_expired"))
	if failed.Load() != 0 || ok.Load() == 0 {
		t.Errorf("%d requests failed, %d succeeded", failed.Load(), ok.Load())
	}
	if n := in.metric(t, "credflow_connections_closed_total", "reason=peer_expired"); n != 0 {
		t.Errorf("the backend closed %v connections whose peer certificate expired: they were still in use", n)
	}
	if handshakes < 2 {
		t.Errorf("%v connections to the backend: the first one was never replaced", handshakes)
	}
}
