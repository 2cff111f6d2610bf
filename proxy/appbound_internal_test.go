package proxy

import (
	"bufio"
	"context"
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
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

// pipeApp is an app on in-memory connections that reads each request and
// never completes a response: to a path under /stream it sends the
// response headers and no end of body, to any other it sends nothing.
type pipeApp struct {
	mu     sync.Mutex
	dials  int
	conns  []net.Conn
	closed bool
	wg     sync.WaitGroup
}

func (a *pipeApp) dial(context.Context, string, string) (net.Conn, error) {
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
		if r, err := http.ReadRequest(br); err == nil {
			if strings.HasPrefix(r.URL.Path, "/stream") {
				io.WriteString(server, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
			}
			io.Copy(io.Discard, br) // until the sidecar gives up
		}
		server.Close()
	})
	return client, nil
}

func (a *pipeApp) dialled() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.dials
}

func (a *pipeApp) close() {
	a.mu.Lock()
	a.closed = true
	for _, c := range a.conns {
		c.Close()
	}
	a.mu.Unlock()
	a.wg.Wait()
}

// pipeRig is an HTTP inbound listener with the default settings in front
// of a pipeApp, driven without sockets: requests go straight to its
// handler as if from /frontend.
type pipeRig struct {
	p    *Proxy
	l    *listener
	app  *pipeApp
	peer *tls.ConnectionState
	wg   sync.WaitGroup
}

func newPipeRig(t *testing.T) *pipeRig {
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
	r := &pipeRig{p: p, l: p.listeners[0], app: &pipeApp{},
		peer: &tls.ConnectionState{PeerCertificates: ca.Issue(t, spiffeid.RequireFromPath(td, "/frontend")).Certificates}}
	r.l.httpIn().app.Dial = func(ctx context.Context) (net.Conn, error) { return r.app.dial(ctx, "tcp", "app.test:80") }
	return r
}

// serve sends a GET of path; done is closed once it is answered.
func (r *pipeRig) serve(path string) (rec *httptest.ResponseRecorder, done <-chan struct{}) {
	rec = httptest.NewRecorder()
	req := httptest.NewRequest("GET", "http://backend"+path, nil)
	req.TLS = r.peer
	ch := make(chan struct{})
	r.wg.Go(func() {
		defer close(ch)
		r.p.serveInboundHTTP(r.l, r.l.httpIn(), rec, req)
	})
	return rec, ch
}

// stop ends every request and the app.
func (r *pipeRig) stop() {
	r.app.close()
	r.wg.Wait()
	r.l.httpIn().app.CloseIdle()
}

// answeredAt checks, on the fake clock, that done is closed at d from now
// and not before.
func answeredAt(t *testing.T, done <-chan struct{}, d time.Duration) bool {
	t.Helper()
	time.Sleep(d - time.Millisecond)
	synctest.Wait()
	select {
	case <-done:
		t.Errorf("answered before %s", d)
		return false
	default:
	}
	time.Sleep(time.Millisecond)
	synctest.Wait()
	select {
	case <-done:
		return true
	default:
		t.Errorf("not answered at %s", d)
		return false
	}
}

// TestHTTPAppDefaults is S15-9 with the defaults of an HTTP inbound
// listener, on a fake clock. 64 streamed responses hold every app
// connection (DefaultAppConnections); one more request gets no
// connection, and at DefaultAppResponseTimeout, not before, it is
// answered 503 app_busy. A request the app never answers is answered 504
// app_timeout at the same timeout.
func TestHTTPAppDefaults(t *testing.T) {
	const (
		appCap  = 64
		timeout = 60 * time.Second
	)
	t.Run("app_busy", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			r := newPipeRig(t)
			defer r.stop()
			for range appCap {
				r.serve("/stream")
			}
			synctest.Wait()
			if n := r.app.dialled(); n != appCap {
				t.Errorf("%d connections to the app for %d streams, want %d", n, appCap, appCap)
			}
			rec, done := r.serve("/x")
			if answeredAt(t, done, timeout) {
				if rec.Code != http.StatusServiceUnavailable || rec.Header().Get("X-Credflow-Reason") != "app_busy" {
					t.Errorf("got %d %q, want 503 app_busy", rec.Code, rec.Header().Get("X-Credflow-Reason"))
				}
			}
			if n := r.app.dialled(); n != appCap {
				t.Errorf("%d connections to the app, want %d", n, appCap)
			}
		})
	})
	t.Run("app_timeout", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			r := newPipeRig(t)
			defer r.stop()
			rec, done := r.serve("/x")
			if answeredAt(t, done, timeout) {
				if rec.Code != http.StatusGatewayTimeout || rec.Header().Get("X-Credflow-Reason") != "app_timeout" {
					t.Errorf("got %d %q, want 504 app_timeout", rec.Code, rec.Header().Get("X-Credflow-Reason"))
				}
			}
		})
	})
}
