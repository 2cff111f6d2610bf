package proxy

import (
	"bufio"
	"context"
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/credflow/credflow/internal/testca"
	"github.com/credflow/credflow/proxy/authz"
	"github.com/credflow/credflow/proxy/route"
)

type fixedSVID struct{ svid *x509svid.SVID }

func (f fixedSVID) GetX509SVID() (*x509svid.SVID, error) { return f.svid, nil }

// silentApp is an app on in-memory connections that reads each request and
// never answers, until closed.
type silentApp struct {
	mu     sync.Mutex
	dials  int
	conns  []net.Conn
	closed bool
	wg     sync.WaitGroup
}

func (a *silentApp) dial(context.Context, string, string) (net.Conn, error) {
	client, server := net.Pipe()
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.closed {
		return nil, net.ErrClosed
	}
	a.dials++
	a.conns = append(a.conns, server)
	a.wg.Go(func() {
		br := bufio.NewReader(server)
		if _, err := http.ReadRequest(br); err == nil {
			io.Copy(io.Discard, br) // until the sidecar gives up
		}
		server.Close()
	})
	return client, nil
}

func (a *silentApp) dialled() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.dials
}

func (a *silentApp) close() {
	a.mu.Lock()
	a.closed = true
	for _, c := range a.conns {
		c.Close()
	}
	a.mu.Unlock()
	a.wg.Wait()
}

// TestHTTPAppDefaults is S15-9 with the defaults of an HTTP inbound
// listener, on a fake clock: 65 authorized requests to an app that never
// answers. 64 connections are opened to the app (DefaultAppConnections);
// the 65th request waits for one. Nothing is answered before
// DefaultAppResponseTimeout; at it the 64 requests on a connection are
// answered 504 app_timeout and the one that got none 503 app_busy.
func TestHTTPAppDefaults(t *testing.T) {
	const (
		appCap   = 64
		timeout  = 60 * time.Second
		requests = appCap + 1
	)
	synctest.Test(t, func(t *testing.T) {
		td := spiffeid.RequireTrustDomainFromString("example.org")
		ca := testca.New(t, td)
		front, _ := authz.ParsePolicy([]string{"spiffe://example.org/frontend"})
		all, _ := route.ParsePath("/*")
		p, err := New(Config{
			SVIDs:   fixedSVID{ca.Issue(t, spiffeid.RequireFromPath(td, "/backend"))},
			Bundles: x509bundle.NewSet(ca.Bundle()),
			Inbound: []Inbound{{Name: "app", Listen: "127.0.0.1:0", App: "app.test:80", Allow: front,
				HTTP: &InboundHTTP{Routes: route.Table{Rules: []route.Rule{{Peers: front, Paths: []route.Path{all}}}}}}},
		})
		if err != nil {
			t.Fatal(err)
		}
		l := p.listeners[0]
		app := &silentApp{}
		l.httpIn.app.DialContext = app.dial
		peer := &tls.ConnectionState{PeerCertificates: ca.Issue(t, spiffeid.RequireFromPath(td, "/frontend")).Certificates}

		start := time.Now()
		recs := make([]*httptest.ResponseRecorder, requests)
		var done sync.WaitGroup
		for i := range recs {
			recs[i] = httptest.NewRecorder()
			r := httptest.NewRequest("GET", "http://backend/x", nil)
			r.TLS = peer
			done.Go(func() { p.serveInboundHTTP(l, l.httpIn, recs[i], r) })
		}
		finished := make(chan struct{})
		go func() { done.Wait(); close(finished) }()

		time.Sleep(timeout - time.Millisecond)
		synctest.Wait()
		if n := app.dialled(); n != appCap {
			t.Errorf("%d connections to the app for %d requests, want %d", n, requests, appCap)
		}
		select {
		case <-finished:
			t.Fatalf("answered after %s, before the default response timeout", time.Since(start))
		default:
		}
		time.Sleep(time.Millisecond)
		synctest.Wait()
		select {
		case <-finished:
		default:
			app.close() // so that the requests end and the bubble can
			t.Fatalf("not answered at the default response timeout (%s)", timeout)
		}
		got := map[string]int{}
		for _, rec := range recs {
			got[rec.Result().Status+" "+rec.Header().Get("X-Credflow-Reason")]++
		}
		if got["504 Gateway Timeout app_timeout"] != appCap || got["503 Service Unavailable app_busy"] != 1 {
			t.Errorf("answers %v, want %d × 504 app_timeout and 1 × 503 app_busy", got, appCap)
		}
		app.close()
		l.httpIn.app.CloseIdleConnections()
	})
}
