package h1

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httptrace"
	"net/textproto"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// dialer dials addr, counting its connections.
func dialer(addr string, dials *atomic.Int64) func(context.Context) (net.Conn, error) {
	return func(ctx context.Context) (net.Conn, error) {
		dials.Add(1)
		return (&net.Dialer{}).DialContext(ctx, "tcp", addr)
	}
}

func get(t *testing.T, c *Client, url string) string {
	t.Helper()
	s, err := fetch(c, url)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func fetch(c *Client, url string) (string, error) {
	req, _ := http.NewRequest(http.MethodGet, url, nil)
	resp, err := c.RoundTrip(req)
	if err != nil {
		return "", err
	}
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	return string(b), err
}

// TestReuse: sequential requests, GET, POST with a body of known and of
// unknown length, HEAD and 204, go over one connection.
func TestReuse(t *testing.T) {
	var conns atomic.Int64
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/echo":
			io.Copy(w, r.Body)
		case "/empty":
			w.WriteHeader(http.StatusNoContent)
		default:
			fmt.Fprint(w, "hello")
		}
	}))
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			conns.Add(1)
		}
	}
	srv.Start()
	defer srv.Close()
	var dials atomic.Int64
	c := &Client{Dial: dialer(srv.Listener.Addr().String(), &dials)}
	defer c.Close()
	for i := range 20 {
		if got := get(t, c, srv.URL+"/"); got != "hello" {
			t.Fatalf("GET %d: %q", i, got)
		}
		for _, length := range []int64{5, -1} {
			req, _ := http.NewRequest(http.MethodPost, srv.URL+"/echo", io.NopCloser(strings.NewReader("12345")))
			req.ContentLength = length
			resp, err := c.RoundTrip(req)
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if string(b) != "12345" {
				t.Fatalf("POST (length %d) echoed %q", length, b)
			}
		}
		for _, m := range []string{http.MethodHead, http.MethodGet} {
			path := "/"
			if m == http.MethodGet {
				path = "/empty"
			}
			req, _ := http.NewRequest(m, srv.URL+path, nil)
			resp, err := c.RoundTrip(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
		}
	}
	if n := conns.Load(); n != 1 {
		t.Fatalf("server saw %d connections, want 1", n)
	}
}

// rawServer answers each connection's requests with handle until it
// returns false, then closes the connection and reports it on closed.
func rawServer(t *testing.T, handle func(br *bufio.Reader, c net.Conn) bool) (addr string, closed <-chan struct{}) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	ch := make(chan struct{}, 16)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				br := bufio.NewReader(c)
				for handle(br, c) {
				}
				c.Close()
				ch <- struct{}{}
			}()
		}
	}()
	return ln.Addr().String(), ch
}

// canned returns a rawServer handler that answers every request with
// response, written as it is.
func canned(response string) func(br *bufio.Reader, c net.Conn) bool {
	return func(br *bufio.Reader, c net.Conn) bool {
		if _, err := http.ReadRequest(br); err != nil {
			return false
		}
		_, err := io.WriteString(c, response)
		return err == nil
	}
}

// answer reads one request and writes a keep-alive response.
func answer(br *bufio.Reader, c net.Conn) bool {
	req, err := http.ReadRequest(br)
	if err != nil {
		return false
	}
	io.Copy(io.Discard, req.Body)
	_, err = io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
	return err == nil
}

// TestServerClosedIdle: the server closes a connection after one response
// (its keep-alive timeout); a POST whose body cannot be sent twice then
// goes on a new connection, because the closed one is not reused.
func TestServerClosedIdle(t *testing.T) {
	addr, closed := rawServer(t, func(br *bufio.Reader, c net.Conn) bool {
		answer(br, c)
		return false
	})
	var dials atomic.Int64
	c := &Client{Dial: dialer(addr, &dials)}
	defer c.Close()
	for i := range 3 {
		req, _ := http.NewRequest(http.MethodPost, "http://"+addr+"/", io.NopCloser(strings.NewReader("body")))
		req.ContentLength = 4
		resp, err := c.RoundTrip(req)
		if err != nil {
			t.Fatalf("POST %d on a connection the server closed: %v", i, err)
		}
		io.ReadAll(resp.Body)
		resp.Body.Close()
		<-closed
	}
	if n := dials.Load(); n != 3 {
		t.Fatalf("%d dials, want 3", n)
	}
}

// TestRetryIdempotent: a GET on a reused connection that fails before any
// response byte is sent again on a fresh connection; a POST that may have
// been acted on is not.
func TestRetryIdempotent(t *testing.T) {
	var served atomic.Int64
	addr, _ := rawServer(t, func(br *bufio.Reader, c net.Conn) bool {
		if served.Add(1)%2 == 0 {
			// The second request on a connection: read it, then close
			// without answering.
			http.ReadRequest(br)
			return false
		}
		return answer(br, c)
	})
	var dials atomic.Int64
	c := &Client{Dial: dialer(addr, &dials)}
	defer c.Close()
	if got := get(t, c, "http://"+addr+"/"); got != "ok" {
		t.Fatal(got)
	}
	if got := get(t, c, "http://"+addr+"/"); got != "ok" { // fails once, retried
		t.Fatal(got)
	}
	if n := dials.Load(); n != 2 {
		t.Fatalf("%d dials, want 2", n)
	}
	for _, m := range []string{http.MethodPost, http.MethodPut} {
		req, _ := http.NewRequest(m, "http://"+addr+"/", strings.NewReader("x"))
		if _, err := c.RoundTrip(req); err == nil {
			t.Fatalf("a %s whose connection died after it was sent succeeded; it must not be sent twice", m)
		}
		get(t, c, "http://"+addr+"/") // a connection to reuse again
	}
}

// slowServer answers body; a request for /slow gets its head at once and
// its body once release is closed or sent to.
func slowServer(body string) (*httptest.Server, chan struct{}) {
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			w.(http.Flusher).Flush()
			<-release
		}
		io.WriteString(w, body)
	}))
	return srv, release
}

// TestMaxConns: with one connection allowed, a second request waits for
// the first's body to end, and gives up when its context does.
func TestMaxConns(t *testing.T) {
	srv, release := slowServer("done")
	defer srv.Close()
	defer close(release)
	var dials atomic.Int64
	c := &Client{Dial: dialer(srv.Listener.Addr().String(), &dials), MaxConns: 1}
	defer c.Close()
	req, _ := http.NewRequest(http.MethodGet, srv.URL+"/slow", nil)
	slow, err := c.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	req, _ = http.NewRequestWithContext(ctx, http.MethodGet, srv.URL+"/", nil)
	errc := make(chan error, 1)
	go func() {
		_, err := c.RoundTrip(req)
		errc <- err
	}()
	cancel()
	if err := <-errc; !errors.Is(err, context.Canceled) {
		t.Fatalf("waiting request: %v, want context.Canceled", err)
	}
	got := make(chan string, 1)
	go func() {
		s, err := fetch(c, srv.URL+"/")
		if err != nil {
			s = err.Error()
		}
		got <- s
	}()
	release <- struct{}{}
	io.ReadAll(slow.Body)
	slow.Body.Close()
	if s := <-got; s != "done" {
		t.Fatal(s)
	}
	if n := dials.Load(); n != 1 {
		t.Fatalf("%d dials, want 1 (the waiting request takes the connection over)", n)
	}
}

// TestHeaderTooLarge: a response head over MaxHeaderBytes fails the
// request.
func TestHeaderTooLarge(t *testing.T) {
	addr, _ := rawServer(t, func(br *bufio.Reader, c net.Conn) bool {
		http.ReadRequest(br)
		fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nX-Big: %s\r\nContent-Length: 0\r\n\r\n", strings.Repeat("a", 4096))
		return false
	})
	var dials atomic.Int64
	c := &Client{Dial: dialer(addr, &dials), MaxHeaderBytes: 1024}
	defer c.Close()
	req, _ := http.NewRequest(http.MethodGet, "http://"+addr+"/", nil)
	if _, err := c.RoundTrip(req); !errors.Is(err, errHeaderTooLarge) {
		t.Fatalf("got %v, want %v", err, errHeaderTooLarge)
	}
}

// TestCancelWhileWaiting: a request whose context ends while the server
// has not answered fails at once with the context's cause, and its
// connection is not reused.
func TestCancelWhileWaiting(t *testing.T) {
	block, arrived := make(chan struct{}), make(chan struct{})
	var reqs atomic.Int64
	addr, _ := rawServer(t, func(br *bufio.Reader, c net.Conn) bool {
		if reqs.Add(1) == 1 {
			http.ReadRequest(br)
			close(arrived)
			<-block
			return false
		}
		return answer(br, c)
	})
	defer close(block)
	var dials atomic.Int64
	c := &Client{Dial: dialer(addr, &dials)}
	defer c.Close()
	cause := errors.New("app timeout")
	ctx, cancel := context.WithCancelCause(context.Background())
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/", nil)
	errc := make(chan error, 1)
	go func() {
		_, err := c.RoundTrip(req)
		errc <- err
	}()
	<-arrived
	cancel(cause)
	if err := <-errc; !errors.Is(err, cause) {
		t.Fatalf("got %v, want the context's cause", err)
	}
	if got := get(t, c, "http://"+addr+"/"); got != "ok" {
		t.Fatal(got)
	}
	if n := dials.Load(); n != 2 {
		t.Fatalf("%d dials, want 2", n)
	}
}

// TestCloseWakesWaiters: Close fails a request waiting for a connection
// at once, with ErrClosed, and the connection in use still ends its
// response.
func TestCloseWakesWaiters(t *testing.T) {
	srv, release := slowServer("done")
	defer srv.Close()
	var dials atomic.Int64
	c := &Client{Dial: dialer(srv.Listener.Addr().String(), &dials), MaxConns: 1}
	req, _ := http.NewRequest(http.MethodGet, srv.URL+"/slow", nil)
	slow, err := c.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	waiting := make(chan struct{})
	c.Full = func() { close(waiting) } // called as the request starts to wait
	errc := make(chan error, 1)
	go func() {
		req, _ := http.NewRequest(http.MethodGet, srv.URL+"/", nil)
		_, err := c.RoundTrip(req)
		errc <- err
	}()
	<-waiting
	c.Close()
	select {
	case err := <-errc:
		if !errors.Is(err, ErrClosed) {
			t.Fatalf("the waiting request: %v, want ErrClosed", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the waiting request still waits 10 s after Close")
	}
	close(release)
	if b, err := io.ReadAll(slow.Body); err != nil || string(b) != "done" {
		t.Fatalf("the response in flight: %q, %v", b, err)
	}
	slow.Body.Close()
	if n := dials.Load(); n != 1 {
		t.Fatalf("%d dials, want 1", n)
	}
}

// TestInterim: a 103 before the final response is reported and skipped.
func TestInterim(t *testing.T) {
	addr, _ := rawServer(t, canned("HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"))
	var dials atomic.Int64
	c := &Client{Dial: dialer(addr, &dials)}
	defer c.Close()
	var hints []string
	ctx := httptrace.WithClientTrace(context.Background(), &httptrace.ClientTrace{
		Got1xxResponse: func(code int, h textproto.MIMEHeader) error {
			hints = append(hints, fmt.Sprint(code, " ", h.Get("Link")))
			return nil
		},
	})
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/", nil)
	resp, err := c.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(b) != "ok" || len(hints) != 1 || hints[0] != "103 </a.css>" {
		t.Fatalf("status %d body %q hints %q", resp.StatusCode, b, hints)
	}
}

// TestBodyClosedEarly: a body closed before its end closes its connection
// (what is left of it would be read as the next response).
func TestBodyClosedEarly(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, strings.Repeat("x", 64<<10))
	}))
	defer srv.Close()
	var dials atomic.Int64
	c := &Client{Dial: dialer(srv.Listener.Addr().String(), &dials)}
	defer c.Close()
	for range 2 {
		req, _ := http.NewRequest(http.MethodGet, srv.URL, nil)
		resp, err := c.RoundTrip(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Read(make([]byte, 10))
		resp.Body.Close()
	}
	if n := dials.Load(); n != 2 {
		t.Fatalf("%d dials, want 2", n)
	}
}

// TestNoResponseSmuggled: bytes after a response that its length does not
// cover are not taken as the next request's response.
func TestNoResponseSmuggled(t *testing.T) {
	addr, _ := rawServer(t, canned("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nforged"))
	var dials atomic.Int64
	c := &Client{Dial: dialer(addr, &dials)}
	defer c.Close()
	if got := get(t, c, "http://"+addr+"/"); got != "ok" {
		t.Fatal(got)
	}
	if got := get(t, c, "http://"+addr+"/"); got != "ok" {
		t.Fatalf("second response %q: the unasked one was taken for it", got)
	}
}

// TestHold: a slot held for a connection of the caller's counts against
// MaxConns: a request waits until it is released, and an idle connection
// is closed to make room for a holder.
func TestHold(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") }))
	defer srv.Close()
	var dials atomic.Int64
	c := &Client{Dial: dialer(srv.Listener.Addr().String(), &dials), MaxConns: 1}
	defer c.Close()
	get(t, c, srv.URL) // one idle connection now
	release, err := c.Hold(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, srv.URL, nil)
	if _, err := c.RoundTrip(req); !errors.Is(err, context.Canceled) {
		t.Fatalf("request while the only slot is held: %v, want to wait", err)
	}
	release()
	release() // once only
	if got := get(t, c, srv.URL); got != "ok" {
		t.Fatal(got)
	}
	if n := dials.Load(); n != 2 {
		t.Fatalf("%d dials, want 2 (the idle connection was closed for the holder)", n)
	}
}

// TestEligible: what the client sends and what it leaves to another.
func TestEligible(t *testing.T) {
	body := func(n int64) *http.Request {
		r, _ := http.NewRequest(http.MethodPost, "http://x/", strings.NewReader(strings.Repeat("a", int(n))))
		return r
	}
	get, _ := http.NewRequest(http.MethodGet, "http://x/", nil)
	ws, _ := http.NewRequest(http.MethodGet, "http://x/", nil)
	ws.Header.Set("Upgrade", "websocket")
	expect := body(10)
	expect.Header.Set("Expect", "100-continue")
	chunked := body(10)
	chunked.ContentLength = -1
	for _, c := range []struct {
		name string
		r    *http.Request
		want bool
	}{
		{"GET", get, true},
		{"small body", body(MaxBody), true},
		{"large body", body(MaxBody + 1), false},
		{"body of unknown length", chunked, false},
		{"upgrade", ws, false},
		{"100-continue", expect, false},
	} {
		if got := Eligible(c.r); got != c.want {
			t.Errorf("%s: Eligible %v, want %v", c.name, got, c.want)
		}
	}
}

// TestNoWaitAndReuse: a NoWait client at MaxConns fails at once with
// ErrFull; a connection Reuse refuses is closed when its response ends,
// and Evict closes an idle one.
func TestNoWaitAndReuse(t *testing.T) {
	srv, release := slowServer("ok")
	defer srv.Close()
	var dials atomic.Int64
	var refuse atomic.Bool
	c := &Client{Dial: dialer(srv.Listener.Addr().String(), &dials), MaxConns: 1, NoWait: true,
		Reuse: func(net.Conn) bool { return !refuse.Load() }}
	defer c.Close()
	req, _ := http.NewRequest(http.MethodGet, srv.URL+"/slow", nil)
	slow, err := c.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := fetch(c, srv.URL); !errors.Is(err, ErrFull) {
		t.Fatalf("got %v, want ErrFull", err)
	}
	post, _ := http.NewRequest(http.MethodPost, srv.URL, struct{ io.Reader }{strings.NewReader("hello")})
	post.ContentLength = 5
	if _, err := c.RoundTrip(post); !errors.Is(err, ErrFull) {
		t.Fatalf("got %v, want ErrFull", err)
	}
	if b, _ := io.ReadAll(post.Body); string(b) != "hello" {
		t.Fatalf("the body after ErrFull: %q, want it untouched for the other way", b)
	}
	refuse.Store(true)
	close(release)
	io.ReadAll(slow.Body)
	slow.Body.Close()
	refuse.Store(false)
	get(t, c, srv.URL) // a new connection: the refused one was closed
	if n := dials.Load(); n != 2 {
		t.Fatalf("%d dials, want 2", n)
	}
	var last net.Conn
	ctx := httptrace.WithClientTrace(context.Background(), &httptrace.ClientTrace{GotConn: func(i httptrace.GotConnInfo) { last = i.Conn }})
	req, _ = http.NewRequestWithContext(ctx, http.MethodGet, srv.URL, nil)
	resp, err := c.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	io.ReadAll(resp.Body)
	resp.Body.Close()
	c.Evict(last)
	get(t, c, srv.URL)
	if n := dials.Load(); n != 3 {
		t.Fatalf("%d dials, want 3 (the evicted connection was not reused)", n)
	}
}

// writeCounter counts the writes on a connection.
type writeCounter struct {
	net.Conn
	writes *atomic.Int64
}

func (c writeCounter) Write(p []byte) (int, error) {
	c.writes.Add(1)
	return c.Conn.Write(p)
}

// TestOneWritePerRequest: a request with a small body of a type net/http
// does not know to be in memory (an app's body, read by a server) leaves
// in one write, head and body, and can be sent again.
func TestOneWritePerRequest(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.Copy(w, r.Body) }))
	defer srv.Close()
	var writes atomic.Int64
	c := &Client{Dial: func(ctx context.Context) (net.Conn, error) {
		nc, err := (&net.Dialer{}).DialContext(ctx, "tcp", srv.Listener.Addr().String())
		return writeCounter{nc, &writes}, err
	}}
	defer c.Close()
	const n = 10
	for range n {
		req, _ := http.NewRequest(http.MethodPost, srv.URL, struct{ io.Reader }{strings.NewReader("hello")})
		req.ContentLength = 5
		resp, err := c.RoundTrip(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if string(b) != "hello" {
			t.Fatalf("echoed %q", b)
		}
	}
	if got := writes.Load(); got != n {
		t.Fatalf("%d writes for %d requests, want one each", got, n)
	}
	req, _ := http.NewRequest(http.MethodPost, srv.URL, struct{ io.Reader }{strings.NewReader("hello")})
	req.ContentLength = 5
	if req, _ = InMemory(req); req.GetBody == nil {
		t.Fatal("InMemory left the request without GetBody")
	}
}

// TestResponseTLS: a response over TLS carries the connection's state, as
// net/http's Transport sets it.
func TestResponseTLS(t *testing.T) {
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") }))
	defer srv.Close()
	conf := srv.Client().Transport.(*http.Transport).TLSClientConfig
	c := &Client{Dial: func(ctx context.Context) (net.Conn, error) {
		tc, err := (&tls.Dialer{Config: conf}).DialContext(ctx, "tcp", srv.Listener.Addr().String())
		return tc, err
	}}
	defer c.Close()
	for range 2 {
		req, _ := http.NewRequest(http.MethodGet, srv.URL, nil)
		resp, err := c.RoundTrip(req)
		if err != nil {
			t.Fatal(err)
		}
		io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.TLS == nil || len(resp.TLS.PeerCertificates) == 0 {
			t.Fatalf("response TLS state %v, want the connection's", resp.TLS)
		}
	}
}

// TestTLSServerClosedIdle: a TLS server that closes an idle connection
// sends close_notify first, so bytes wait on the socket; the connection is
// still not reused, and a POST that cannot be sent twice goes on a new one.
func TestTLSServerClosedIdle(t *testing.T) {
	closed := make(chan struct{}, 4)
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		io.WriteString(w, "ok")
	}))
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateClosed {
			closed <- struct{}{}
		}
	}
	srv.StartTLS()
	defer srv.Close()
	conf := srv.Client().Transport.(*http.Transport).TLSClientConfig
	var dials atomic.Int64
	c := &Client{Dial: func(ctx context.Context) (net.Conn, error) {
		dials.Add(1)
		return (&tls.Dialer{Config: conf}).DialContext(ctx, "tcp", srv.Listener.Addr().String())
	}}
	defer c.Close()
	for i := range 3 {
		req, _ := http.NewRequest(http.MethodPost, srv.URL, struct{ io.Reader }{strings.NewReader("body")})
		req.ContentLength = 4
		resp, err := c.RoundTrip(req)
		if err != nil {
			t.Fatalf("POST %d after the server closed the idle connection: %v", i, err)
		}
		io.ReadAll(resp.Body)
		resp.Body.Close()
		srv.CloseClientConnections()
		<-closed
	}
	if n := dials.Load(); n != 3 {
		t.Fatalf("%d dials, want 3", n)
	}
}

// TestNoResponse: a new connection the server closes without answering
// fails its request with ErrNoResponse; one that answers does not.
func TestNoResponse(t *testing.T) {
	addr, _ := rawServer(t, func(br *bufio.Reader, c net.Conn) bool {
		http.ReadRequest(br)
		return false // closed unanswered
	})
	var dials atomic.Int64
	c := &Client{Dial: dialer(addr, &dials)}
	defer c.Close()
	if _, err := fetch(c, "http://"+addr+"/"); !errors.Is(err, ErrNoResponse) {
		t.Fatalf("got %v, want ErrNoResponse", err)
	}
	addr, _ = rawServer(t, answer)
	ok := &Client{Dial: dialer(addr, &dials)}
	defer ok.Close()
	if _, err := fetch(ok, "http://"+addr+"/"); err != nil {
		t.Fatal(err)
	}
}

// TestSweep: idle connections past IdleTimeout, or closed by the server,
// are closed and their slots freed without a request to look at them.
func TestSweep(t *testing.T) {
	addr, closed := rawServer(t, func(br *bufio.Reader, c net.Conn) bool {
		answer(br, c)
		return false
	})
	var dials atomic.Int64
	c := &Client{Dial: dialer(addr, &dials)}
	defer c.Close()
	get(t, c, "http://"+addr+"/")
	<-closed
	c.Sweep()
	c.mu.Lock()
	open, idle := c.open, len(c.idle)
	c.mu.Unlock()
	if open != 0 || idle != 0 {
		t.Fatalf("after Sweep: %d open, %d idle; want the closed connection gone", open, idle)
	}
}

// TestFullHook: a request that finds every slot taken calls Full before it
// waits, and takes the slot Full gives back.
func TestFullHook(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") }))
	defer srv.Close()
	var dials atomic.Int64
	c := &Client{Dial: dialer(srv.Listener.Addr().String(), &dials), MaxConns: 1}
	defer c.Close()
	release, err := c.Hold(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var full atomic.Int64
	c.Full = func() {
		full.Add(1)
		release() // as the Transport closing its idle connection would
	}
	if got := get(t, c, srv.URL); got != "ok" || full.Load() != 1 {
		t.Fatalf("got %q, Full called %d times", got, full.Load())
	}
}

// TestTLSNoResponseSmuggled: over TLS, bytes after a response that came in
// the same record as its body's end stay inside crypto/tls, on no socket;
// they are not taken as the next request's response either.
func TestTLSNoResponseSmuggled(t *testing.T) {
	certs := httptest.NewUnstartedServer(nil)
	certs.StartTLS() // for its certificate and a client configuration
	defer certs.Close()
	conf := certs.TLS.Clone()
	conf.NextProtos = nil
	conf.DynamicRecordSizingDisabled = true // full records from the start
	ln, err := tls.Listen("tcp", "127.0.0.1:0", conf)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	body := strings.Repeat("a", 10000)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				br := bufio.NewReader(c)
				for {
					if _, err := http.ReadRequest(br); err != nil {
						return
					}
					// One write, so one record: the body's end and the
					// unasked response together.
					io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 10000\r\n\r\n"+body+
						"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nforged")
				}
			}()
		}
	}()
	client := certs.Client().Transport.(*http.Transport).TLSClientConfig
	var dials atomic.Int64
	c := &Client{Dial: func(ctx context.Context) (net.Conn, error) {
		dials.Add(1)
		return (&tls.Dialer{Config: client}).DialContext(ctx, "tcp", ln.Addr().String())
	}}
	defer c.Close()
	for i := range 2 {
		req, _ := http.NewRequest(http.MethodGet, "https://"+ln.Addr().String()+"/", nil)
		resp, err := c.RoundTrip(req)
		if err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
		// Read in large pieces, as a proxy copying the body does: once
		// bufio's buffer is empty, a read as large as it goes to
		// crypto/tls directly, for no more than the body's rest.
		var got strings.Builder
		if _, err := io.CopyBuffer(&got, resp.Body, make([]byte, 32<<10)); err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if got.String() != body {
			t.Fatalf("response %d: %.20q… (%d bytes), want the 10000-byte body", i, got.String(), got.Len())
		}
	}
	if n := dials.Load(); n != 2 {
		t.Fatalf("%d dials, want 2: the connection with bytes left over is not reused", n)
	}
}

// cutConn fails a write once cut more bytes have gone through (cut < 0:
// never), as a connection the server resets mid-request does.
type cutConn struct {
	net.Conn
	cut   atomic.Int64
	onCut func() // if set, called as the write fails
}

func (c *cutConn) Write(p []byte) (int, error) {
	switch left := c.cut.Load(); {
	case left < 0:
		return c.Conn.Write(p)
	case int64(len(p)) <= left:
		c.cut.Add(-int64(len(p)))
		return c.Conn.Write(p)
	}
	left := c.cut.Load()
	n, _ := c.Conn.Write(p[:left])
	c.cut.Store(0)
	if c.onCut != nil {
		c.onCut()
	}
	return n, errors.New("connection reset by peer (test)")
}

func (c *cutConn) NetConn() net.Conn { return c.Conn }

// TestRetryPartlyWritten: a POST whose write failed on a reused connection
// is sent again on a fresh one only if none of it reached the connection.
func TestRetryPartlyWritten(t *testing.T) {
	addr, _ := rawServer(t, answer)
	for _, tc := range []struct {
		cut   int64
		again bool
	}{{0, true}, {100, false}} {
		var dials atomic.Int64
		var last atomic.Pointer[cutConn]
		c := &Client{Dial: func(ctx context.Context) (net.Conn, error) {
			nc, err := dialer(addr, &dials)(ctx)
			if err != nil {
				return nil, err
			}
			cc := &cutConn{Conn: nc}
			cc.cut.Store(-1)
			last.Store(cc)
			return cc, nil
		}}
		get(t, c, "http://"+addr+"/") // one idle connection
		last.Load().cut.Store(tc.cut)
		req, _ := http.NewRequest(http.MethodPost, "http://"+addr+"/", strings.NewReader(strings.Repeat("b", 10000)))
		resp, err := c.RoundTrip(req)
		if err == nil {
			io.ReadAll(resp.Body)
			resp.Body.Close()
		}
		if sentAgain := err == nil && dials.Load() == 2; sentAgain != tc.again {
			t.Errorf("write cut after %d bytes: sent again %v (%v, %d dials), want %v", tc.cut, sentAgain, err, dials.Load(), tc.again)
		}
		c.Close()
	}
}

// TestRetryFindsFull: a request whose reused connection failed, and that
// may be sent again, reports ErrFull when no connection is to be had for
// the second attempt (NoWait), so that its caller sends it another way.
func TestRetryFindsFull(t *testing.T) {
	addr, _ := rawServer(t, answer)
	var dials atomic.Int64
	var last atomic.Pointer[cutConn]
	held := make(chan func(), 1)
	waiting := make(chan struct{})
	c := &Client{MaxConns: 1, NoWait: true, Full: func() { close(waiting) }}
	c.Dial = func(ctx context.Context) (net.Conn, error) {
		nc, err := dialer(addr, &dials)(ctx)
		if err != nil {
			return nil, err
		}
		cc := &cutConn{Conn: nc}
		cc.cut.Store(-1)
		cc.onCut = func() {
			// Someone else queues for the only slot before this
			// connection gives it back.
			go func() {
				release, err := c.Hold(context.Background())
				if err == nil {
					held <- release
				}
			}()
			<-waiting
		}
		last.Store(cc)
		return cc, nil
	}
	defer c.Close()
	get(t, c, "http://"+addr+"/") // one idle connection
	last.Load().cut.Store(0)
	_, err := fetch(c, "http://"+addr+"/")
	if !errors.Is(err, ErrFull) || errors.Is(err, ErrNoResponse) {
		t.Fatalf("got %v, want ErrFull joined to the first attempt's error", err)
	}
	(<-held)()
	if n := dials.Load(); n != 1 {
		t.Fatalf("%d dials, want 1", n)
	}
}
