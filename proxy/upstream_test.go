package proxy_test

import (
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/credflow/credflow/internal/testca"
	"github.com/credflow/credflow/proxy"
)

// closedAddr is a loopback address nobody listens on.
func closedAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// silentServer accepts TCP connections, reads what comes and never
// answers: a peer that is up but stuck.
func silentServer(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return serveEach(t, ln, func(c net.Conn) {
		defer c.Close()
		c.SetReadDeadline(time.Now().Add(30 * time.Second))
		io.Copy(io.Discard, c)
	})
}

// serveEach runs handle on each connection ln accepts until the test ends,
// and waits for the handlers then.
func serveEach(t *testing.T, ln net.Listener, handle func(net.Conn)) string {
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() { handle(c) })
		}
	})
	return ln.Addr().String()
}

// fullBacklog is a loopback address whose accept queue is full: a connect
// to it gets no answer, as with a host that drops SYNs. It skips the test
// if the kernel completes the connect anyway.
func fullBacklog(t *testing.T) string {
	t.Helper()
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Close(fd) })
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Listen(fd, 0); err != nil {
		t.Fatal(err)
	}
	sa, err := syscall.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	addr := (&net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: sa.(*syscall.SockaddrInet4).Port}).String()
	for range 2 { // fill the queue: with a backlog of 0 it holds one
		if c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond); err == nil {
			t.Cleanup(func() { c.Close() })
		}
	}
	if c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond); err == nil {
		c.Close()
		t.Skip("the kernel completes connects past a full accept queue")
	}
	return addr
}

// resettingUpstream is an mTLS server with the backend's identity that
// reads once, writes "partial" and resets the connection.
func resettingUpstream(t *testing.T, ca *testca.CA) string {
	t.Helper()
	cert := testca.TLSCertificate(ca.Issue(t, spiffeid.RequireFromPath(td, "/backend")))
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{MinVersion: tls.VersionTLS13,
		Certificates: []tls.Certificate{cert}, ClientAuth: tls.RequireAnyClientCert})
	if err != nil {
		t.Fatal(err)
	}
	return serveEach(t, ln, func(c net.Conn) {
		c.SetDeadline(time.Now().Add(10 * time.Second))
		c.Read(make([]byte, 64))
		io.WriteString(c, "partial")
		c.(*tls.Conn).NetConn().(*net.TCPConn).SetLinger(0)
		c.(*tls.Conn).NetConn().Close() // RST
	})
}

// h2Upstream is an HTTP/2 mTLS server with the backend's identity.
func h2Upstream(t *testing.T, ca *testca.CA, h http.Handler) string {
	t.Helper()
	cert := testca.TLSCertificate(ca.Issue(t, spiffeid.RequireFromPath(td, "/backend")))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: h, TLSConfig: &tls.Config{MinVersion: tls.VersionTLS13,
		Certificates: []tls.Certificate{cert}, ClientAuth: tls.RequireAnyClientCert}}
	go srv.ServeTLS(ln, "", "")
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().String()
}

// TestUpstreamTCP is F16 for a TCP outbound listener: an upstream that is
// down, that does not accept, that accepts and never answers the
// handshake, or that resets mid-stream. The app's connection is closed
// within the dial or handshake timeout, the refusal is counted with its
// reason, and no goroutine is left behind.
func TestUpstreamTCP(t *testing.T) {
	const timeout = 500 * time.Millisecond
	ca := testca.New(t, td)
	tests := []struct {
		name     string
		upstream func(t *testing.T) string
		reason   string // counted refusal; "" for none
		reply    string // what the app reads before the end
		within   time.Duration
	}{
		{"down", closedAddr, "upstream_unavailable", "", 2 * time.Second},
		{"not accepting", fullBacklog, "upstream_unavailable", "", timeout + 3*time.Second},
		{"silent after accept", silentServer, "handshake_timeout", "", timeout + 3*time.Second},
		{"reset mid-stream", func(t *testing.T) string { return resettingUpstream(t, ca) }, "", "partial", 3 * time.Second},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			upstream := tt.upstream(t)
			p, reg := startProxy(t, proxy.Config{
				SVIDs:            static{svid: ca.Issue(t, spiffeid.RequireFromPath(td, "/frontend"))},
				Bundles:          x509bundle.NewSet(ca.Bundle()),
				Outbound:         []proxy.Outbound{{Name: "up", Listen: "127.0.0.1:0", Upstream: upstream, Expect: policy(t, "spiffe://example.org/backend")}},
				HandshakeTimeout: timeout,
				DialTimeout:      timeout,
			})
			m := &inbound{reg: reg}
			g0 := goroutineBaseline()
			c, err := net.Dial("tcp", p.Addr("up").String())
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			start := time.Now()
			c.SetDeadline(start.Add(10 * time.Second))
			io.WriteString(c, "hello")
			got, err := io.ReadAll(c)
			took := time.Since(start)
			t.Logf("the app read %q, then %v, after %s", got, orEOF(err), took.Round(time.Millisecond))
			if isTimeout(err) || took > tt.within {
				t.Errorf("the app's connection ended after %s, want within %s", took, tt.within)
			}
			if string(got) != tt.reply {
				t.Errorf("the app read %q, want %q", got, tt.reply)
			}
			if tt.reason != "" {
				m.waitMetric(t, 1, "credflow_refusals_total", "direction=outbound", "reason="+tt.reason)
			}
			c.Close()
			waitGoroutines(t, g0+3, 5*time.Second)
		})
	}
}

func orEOF(err error) error {
	if err == nil {
		return io.EOF // io.ReadAll reports a clean end as nil
	}
	return err
}

// TestUpstreamHTTP is F16 for an HTTP outbound listener: an upstream that
// is down, that accepts and never answers the handshake (several requests
// at once, each bounded), or that resets a stream before or after its
// response headers. The app gets 502 with the reason and nothing internal
// in the body, or a response it can tell is cut short; the refusals are
// counted; no goroutine is left behind.
func TestUpstreamHTTP(t *testing.T) {
	const timeout = 500 * time.Millisecond
	ca := testca.New(t, td)
	front := spiffeid.RequireFromPath(td, "/frontend")
	start := func(t *testing.T, upstream string) (string, *inbound) {
		p, reg := startProxy(t, proxy.Config{
			SVIDs:   static{svid: ca.Issue(t, front)},
			Bundles: x509bundle.NewSet(ca.Bundle()),
			Outbound: []proxy.Outbound{{Name: "up", Listen: "127.0.0.1:0", Upstream: upstream,
				Expect: policy(t, "spiffe://example.org/backend"), HTTP: &proxy.OutboundHTTP{}}},
			Tokens:           source{j: newJWTIssuer(t), id: front},
			HandshakeTimeout: timeout,
			DialTimeout:      timeout,
		})
		return "http://" + p.Addr("up").String(), &inbound{reg: reg}
	}
	client := &http.Client{Timeout: 10 * time.Second}
	defer client.CloseIdleConnections()
	// refused wants a 502 naming reason, with nothing internal in the body.
	refused := func(t *testing.T, resp *http.Response, err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadGateway || resp.Header.Get("X-Credflow-Reason") != "upstream_unavailable" ||
			string(body) != "Bad Gateway: upstream_unavailable\n" {
			t.Errorf("got %d %q %q, want 502 upstream_unavailable", resp.StatusCode, resp.Header.Get("X-Credflow-Reason"), body)
		}
	}

	t.Run("down", func(t *testing.T) {
		url, m := start(t, closedAddr(t))
		g0 := goroutineBaseline()
		for range 3 {
			resp, err := client.Get(url + "/x")
			refused(t, resp, err)
		}
		m.waitMetric(t, 3, "credflow_refusals_total", "direction=outbound", "reason=upstream_unavailable")
		client.CloseIdleConnections()
		waitGoroutines(t, g0+3, 5*time.Second)
	})
	t.Run("silent after accept", func(t *testing.T) {
		url, m := start(t, silentServer(t))
		g0 := goroutineBaseline()
		// Ten times more requests than the pool has connections: each is
		// answered within the dial and handshake timeouts, not after a
		// handshake timeout for every request queued ahead of it.
		const n = 20
		var wg sync.WaitGroup
		took := make([]time.Duration, n)
		for i := range n {
			wg.Go(func() {
				t0 := time.Now()
				resp, err := client.Get(url + "/x")
				took[i] = time.Since(t0)
				refused(t, resp, err)
			})
		}
		wg.Wait()
		t.Logf("%d concurrent requests answered 502 after %s to %s", n, percentile(took, 0).Round(time.Millisecond), percentile(took, 100).Round(time.Millisecond))
		if slowest, bound := percentile(took, 100), 2*timeout+2*time.Second; slowest > bound {
			t.Errorf("the slowest request took %s, want within %s", slowest, bound)
		}
		if n := m.metric(t, "credflow_refusals_total", "direction=outbound", "reason=handshake_timeout"); n < 1 {
			t.Errorf("handshake_timeout refusals = %v", n)
		}
		m.waitMetric(t, n, "credflow_refusals_total", "direction=outbound", "reason=upstream_unavailable")
		client.CloseIdleConnections()
		waitGoroutines(t, g0+3, 5*time.Second)
	})
	t.Run("stream reset before headers", func(t *testing.T) {
		url, m := start(t, h2Upstream(t, ca, http.HandlerFunc(func(http.ResponseWriter, *http.Request) {
			panic(http.ErrAbortHandler) // RST_STREAM
		})))
		resp, err := client.Get(url + "/x")
		refused(t, resp, err)
		m.waitMetric(t, 1, "credflow_refusals_total", "direction=outbound", "reason=upstream_unavailable")
	})
	t.Run("stream reset mid-body", func(t *testing.T) {
		url, _ := start(t, h2Upstream(t, ca, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			io.WriteString(w, "partial")
			w.(http.Flusher).Flush()
			panic(http.ErrAbortHandler)
		})))
		g0 := goroutineBaseline()
		resp, err := client.Get(url + "/x")
		if err != nil {
			t.Fatal(err)
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		t.Logf("the app got %d %q, then %v", resp.StatusCode, body, err)
		if !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Errorf("the app read %q then %v: a cut-off response must not look complete", body, err)
		}
		client.CloseIdleConnections()
		waitGoroutines(t, g0+3, 5*time.Second)
	})
}

// TestUpstreamInboundApp is F16 on the inbound side: an app that is down
// (TCP: the peer's connection is closed; HTTP: 502 app_unavailable), and
// an HTTP app that accepts and never answers. A peer that gives up before
// the response timeout (60 s by default, TestHTTPAppDefaults) leaves
// nothing behind; with a shorter ResponseHeaderTimeout the request is
// answered 504 app_timeout.
func TestUpstreamInboundApp(t *testing.T) {
	ca := testca.New(t, td)
	front := clientConfig(ca.Issue(t, spiffeid.RequireFromPath(td, "/frontend")))
	t.Run("TCP app down", func(t *testing.T) {
		p, reg := startProxy(t, proxy.Config{
			SVIDs:   static{svid: ca.Issue(t, spiffeid.RequireFromPath(td, "/backend"))},
			Bundles: x509bundle.NewSet(ca.Bundle()),
			Inbound: []proxy.Inbound{{Name: "app", Listen: "127.0.0.1:0", App: closedAddr(t), Allow: policy(t, "spiffe://example.org/frontend")}},
		})
		g0 := goroutineBaseline()
		if _, err := echoOnce(p.Addr("app").String(), front, "hello"); err == nil {
			t.Fatal("echoed with the app down")
		}
		(&inbound{reg: reg}).waitMetric(t, 1, "credflow_refusals_total", "direction=inbound", "reason=app_unavailable")
		waitGoroutines(t, g0+3, 5*time.Second)
	})
	get := func(r *abuseRig, timeout time.Duration) (*http.Response, string, time.Duration, error) {
		c := r.httpClient(false)
		defer c.CloseIdleConnections()
		c.Timeout = timeout
		t0 := time.Now()
		resp, err := c.Get("https://" + r.addr + "/x")
		if err != nil {
			return nil, "", time.Since(t0), err
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		return resp, string(body), time.Since(t0), nil
	}
	t.Run("HTTP app down", func(t *testing.T) {
		r := startAbuseRigTo(t, closedAddr(t), proxy.InboundHTTP{}, proxy.Config{})
		resp, body, _, err := get(r, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode != http.StatusBadGateway || body != "Bad Gateway: app_unavailable\n" {
			t.Errorf("got %d %q, want 502 app_unavailable", resp.StatusCode, body)
		}
		r.m.waitMetric(t, 1, "credflow_refusals_total", "reason=app_unavailable")
	})
	t.Run("HTTP app silent", func(t *testing.T) {
		r := startAbuseRigTo(t, silentServer(t), proxy.InboundHTTP{}, proxy.Config{})
		g0 := goroutineBaseline()
		_, _, took, err := get(r, time.Second)
		t.Logf("the peer gave up after %s: %v", took.Round(time.Millisecond), err)
		if err == nil {
			t.Fatal("a silent app answered")
		}
		r.m.waitMetric(t, 1, "credflow_refusals_total", "reason=client_canceled")
		if n := r.m.metric(t, "credflow_refusals_total", "reason=app_unavailable"); n != 0 {
			t.Errorf("the peer giving up was counted as app_unavailable (%v)", n)
		}
		waitGoroutines(t, g0+3, 5*time.Second)
	})
	t.Run("HTTP app silent with ResponseHeaderTimeout", func(t *testing.T) {
		const timeout = 500 * time.Millisecond
		r := startAbuseRigTo(t, silentServer(t), proxy.InboundHTTP{ResponseHeaderTimeout: timeout}, proxy.Config{})
		resp, body, took, err := get(r, 10*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("answered %d %q after %s", resp.StatusCode, body, took.Round(time.Millisecond))
		if resp.StatusCode != http.StatusGatewayTimeout || body != "Gateway Timeout: app_timeout\n" {
			t.Errorf("got %d %q, want 504 app_timeout", resp.StatusCode, body)
		}
		if took < timeout || took > timeout+5*time.Second {
			t.Errorf("answered after %s, want about %s", took, timeout)
		}
		r.m.waitMetric(t, 1, "credflow_refusals_total", "reason=app_timeout")
		if strings.Contains(body, "127.0.0.1") {
			t.Errorf("the body names an address: %q", body)
		}
	})
}
