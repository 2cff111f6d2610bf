package proxy_test

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/http2"

	"github.com/credflow/credflow/proxy"
)

// connGauge is a listener that tracks how many of the connections it
// accepted are open, and the most at once.
type connGauge struct {
	net.Listener
	mu         sync.Mutex
	open, peak int
}

func (g *connGauge) Accept() (net.Conn, error) {
	c, err := g.Listener.Accept()
	if err != nil {
		return nil, err
	}
	g.mu.Lock()
	g.open++
	g.peak = max(g.peak, g.open)
	g.mu.Unlock()
	return &gaugedConn{Conn: c, g: g}, nil
}

func (g *connGauge) max() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.peak
}

type gaugedConn struct {
	net.Conn
	g    *connGauge
	once sync.Once
}

func (c *gaugedConn) Close() error {
	c.once.Do(func() {
		c.g.mu.Lock()
		c.g.open--
		c.g.mu.Unlock()
	})
	return c.Conn.Close()
}

// heldApp holds every request until release is closed (or the request is
// cancelled), then answers "ok"; it counts the requests it holds.
type heldApp struct {
	release  chan struct{}
	mu       sync.Mutex
	inflight int
}

func (a *heldApp) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	a.mu.Lock()
	a.inflight++
	a.mu.Unlock()
	defer func() {
		a.mu.Lock()
		a.inflight--
		a.mu.Unlock()
	}()
	select {
	case <-a.release:
	case <-r.Context().Done():
		return
	}
	io.WriteString(w, "ok")
}

func (a *heldApp) held() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.inflight
}

// startHeldApp serves a heldApp on loopback behind a connGauge.
func startHeldApp(t *testing.T) (*heldApp, *connGauge) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	app := &heldApp{release: make(chan struct{})}
	g := &connGauge{Listener: ln}
	srv := &http.Server{Handler: app}
	go srv.Serve(g)
	t.Cleanup(func() { srv.Close() })
	return app, g
}

// waitUntil polls cond every 10ms until it holds, failing the test after
// d with what and the state.
func waitUntil(t *testing.T, d time.Duration, what string, cond func() bool, state func() string) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("after %s: %s (%s)", d, what, state())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestHTTPAppFanOut is S15-9: one allowed peer connection with 200
// concurrent requests to an app that holds them. With the documented
// defaults the sidecar announces 100 concurrent streams per connection,
// opens at most 64 connections to the app (the others wait for one), and
// every request is answered once the app lets go.
func TestHTTPAppFanOut(t *testing.T) {
	const (
		requests  = 200
		appCap    = 64  // proxy.DefaultAppConnections
		streamCap = 100 // proxy.DefaultMaxConcurrentStreams
	)
	app, gauge := startHeldApp(t)
	r := startAbuseRigTo(t, gauge.Addr().String(), proxy.InboundHTTP{}, proxy.Config{})
	cc, err := (&http2.Transport{}).NewClientConn(r.dialTLS(t, "h2"))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	results := make(chan string, requests)
	for i := range requests {
		go func() {
			req, _ := http.NewRequestWithContext(ctx, "GET", fmt.Sprintf("https://backend/held/%d", i), nil)
			resp, err := cc.RoundTrip(req)
			if err != nil {
				results <- "error: " + err.Error()
				return
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			results <- fmt.Sprintf("%d %s%s", resp.StatusCode, resp.Header.Get("X-Credflow-Reason"), body)
		}()
	}
	// The client has as many streams open as the server allows, and the
	// app holds as many requests as it will be given.
	waitUntil(t, 20*time.Second, "the requests did not all start", func() bool {
		st := cc.State()
		return st.MaxConcurrentStreams > 0 && st.StreamsActive >= min(requests, int(st.MaxConcurrentStreams)) && app.held() >= appCap
	}, func() string {
		st := cc.State()
		return fmt.Sprintf("client: %d streams active, %d pending; app holds %d", st.StreamsActive, st.StreamsPending, app.held())
	})
	st := cc.State()
	t.Logf("client: %d streams active, %d pending, server allows %d; app holds %d on %d connections",
		st.StreamsActive, st.StreamsPending, st.MaxConcurrentStreams, app.held(), gauge.max())
	if st.MaxConcurrentStreams != streamCap || st.StreamsActive > streamCap {
		t.Errorf("SETTINGS_MAX_CONCURRENT_STREAMS %d with %d streams active, want %d", st.MaxConcurrentStreams, st.StreamsActive, streamCap)
	}
	close(app.release)
	for range requests {
		if got := <-results; got != "200 ok" {
			t.Errorf("a request got %q, want 200 ok", got)
		}
	}
	if n := gauge.max(); n > appCap {
		t.Errorf("the app saw %d connections at once from one peer connection, want at most %d", n, appCap)
	}
}

// TestHTTPStreamCap is S15-9's stream limit: a client that ignores the
// announced SETTINGS_MAX_CONCURRENT_STREAMS and opens one stream more
// gets that stream reset, and the connection and the others are served.
func TestHTTPStreamCap(t *testing.T) {
	const streamCap = 100 // proxy.DefaultMaxConcurrentStreams
	app, gauge := startHeldApp(t)
	r := startAbuseRigTo(t, gauge.Addr().String(), proxy.InboundHTTP{}, proxy.Config{})
	h := newH2Client(t, r.dialTLS(t, "h2"))
	for i := range streamCap + 1 {
		if err := h.headers(uint32(2*i+1), h.block(fmt.Sprintf("/held/%d", i)), true); err != nil {
			t.Fatal(err)
		}
	}
	over := uint32(2*streamCap + 1)
	if got := h.status(over, 10*time.Second); got != "reset:PROTOCOL_ERROR" && got != "reset:REFUSED_STREAM" {
		t.Fatalf("stream %d, one past %d open: %s, want it reset", streamCap+1, streamCap, got)
	}
	close(app.release)
	for i := range streamCap {
		if got := h.status(uint32(2*i+1), 10*time.Second); got != "200" {
			t.Fatalf("stream %d, within the cap: %s, want 200", 2*i+1, got)
		}
	}
}
