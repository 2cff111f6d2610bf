package h1

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// testHandler answers by path, so that one handler covers the ways a
// handler can shape a response.
func testHandler(w http.ResponseWriter, r *http.Request) {
	switch r.URL.Path {
	case "/small":
		io.WriteString(w, "hello")
	case "/html":
		io.WriteString(w, "<html><body>hi</body></html>")
	case "/big":
		w.Write(bytes.Repeat([]byte("a"), 1500))
		w.Write(bytes.Repeat([]byte("b"), 3000))
	case "/cl":
		w.Header().Set("Content-Length", "5")
		io.WriteString(w, "hello")
	case "/bad-cl":
		w.Header().Set("Content-Length", "x")
		io.WriteString(w, "hello")
	case "/short-cl":
		w.Header().Set("Content-Length", "10")
		io.WriteString(w, "hello")
	case "/long-cl":
		w.Header().Set("Content-Length", "2")
		_, err := io.WriteString(w, "hello")
		w.Header().Set("X-Ignored", fmt.Sprint(err))
	case "/flush":
		io.WriteString(w, "a")
		w.(http.Flusher).Flush()
		io.WriteString(w, "b")
	case "/flush-empty":
		w.(http.Flusher).Flush()
	case "/204":
		w.WriteHeader(http.StatusNoContent)
		_, err := io.WriteString(w, "no")
		fmt.Fprint(io.Discard, err)
	case "/304":
		w.Header().Set("Content-Type", "text/plain")
		w.Header().Set("Content-Length", "3")
		w.WriteHeader(http.StatusNotModified)
	case "/trailer":
		w.Header().Set("Trailer", "X-T, Content-Length")
		io.WriteString(w, "x")
		w.Header().Set("X-T", "t1")
	case "/prefix-trailer":
		io.WriteString(w, "x")
		w.Header().Set(http.TrailerPrefix+"X-P", "p1")
	case "/103":
		w.Header().Set("Link", "</a.css>; rel=preload")
		w.WriteHeader(http.StatusEarlyHints)
		w.Header().Set("X-Final", "yes")
		io.WriteString(w, "final")
	case "/close":
		w.Header().Set("Connection", "close")
		io.WriteString(w, "bye")
	case "/identity":
		w.Header().Set("Transfer-Encoding", "identity")
		io.WriteString(w, "raw")
	case "/te-and-cl":
		w.Header().Set("Transfer-Encoding", "chunked")
		w.Header().Set("Content-Length", "3")
		io.WriteString(w, "abc")
	case "/date":
		w.Header().Set("Date", "Mon, 01 Jan 2024 00:00:00 GMT")
		w.Header()["Content-Type"] = nil
		io.WriteString(w, "dated")
	case "/late-header":
		w.WriteHeader(http.StatusAccepted)
		w.Header().Set("X-Late", "ignored")
		io.WriteString(w, "late")
	case "/twice":
		w.WriteHeader(http.StatusAccepted)
		w.WriteHeader(http.StatusTeapot)
	case "/odd-status":
		w.WriteHeader(299)
	case "/echo":
		b, err := io.ReadAll(r.Body)
		fmt.Fprintf(w, "%d %q %v %v", r.ContentLength, b, err, r.Trailer)
	case "/ignore-body":
		io.WriteString(w, "ignored")
	case "/close-body":
		r.Body.Close()
		io.WriteString(w, "closed")
	case "/request":
		fmt.Fprintf(w, "%s %s %s host=%q remote-set=%v te=%v cl=%d close=%v\n", r.Method, r.RequestURI, r.Proto, r.Host,
			r.RemoteAddr != "", r.TransferEncoding, r.ContentLength, r.Close)
		keys := slices.Sorted(func(yield func(string) bool) {
			for k := range r.Header {
				if !yield(k) {
					return
				}
			}
		})
		for _, k := range keys {
			fmt.Fprintf(w, "%s=%q\n", k, r.Header[k])
		}
	case "/abort-late":
		w.Write(bytes.Repeat([]byte("p"), 3000))
		panic(http.ErrAbortHandler)
	case "/flush-then-read":
		w.(http.Flusher).Flush()
		b, err := io.ReadAll(r.Body)
		fmt.Fprintf(w, "read %d after the response began: %v", len(b), err)
	case "/empty-cl":
		w.Header()["Content-Length"] = []string{""}
		io.WriteString(w, "hello")
	case "/panic":
		panic("boom")
	case "/abort":
		io.WriteString(w, "partial")
		panic(http.ErrAbortHandler)
	default:
		http.NotFound(w, r)
	}
}

// twinServers serves h with net/http's server and with Server (handing
// the requests it leaves to another net/http server, as the sidecar
// does), on loopback.
type twinServers struct {
	ref, own string
	srv      *Server
}

func startTwins(t *testing.T, h http.Handler) *twinServers {
	t.Helper()
	quiet := log.New(io.Discard, "", 0)
	newStd := func() *http.Server {
		return &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second, IdleTimeout: 10 * time.Second,
			MaxHeaderBytes: 64 << 10, ErrorLog: quiet}
	}
	refLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ref := newStd()
	go ref.Serve(refLn)
	t.Cleanup(func() { ref.Close() })

	ownLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	other := newStd()
	rest := newChanListener(ownLn.Addr())
	go other.Serve(rest)
	srv := &Server{Handler: h, ReadHeaderTimeout: 5 * time.Second, IdleTimeout: 10 * time.Second, ErrorLog: quiet}
	var wg sync.WaitGroup
	go func() {
		for {
			c, err := ownLn.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				if r := srv.ServeConn(context.Background(), c, nil); r != nil {
					rest.ch <- r
				}
			})
		}
	}()
	t.Cleanup(func() {
		ownLn.Close()
		srv.Close()
		wg.Wait()
		other.Close()
	})
	return &twinServers{ref: refLn.Addr().String(), own: ownLn.Addr().String(), srv: srv}
}

type chanListener struct {
	addr net.Addr
	ch   chan net.Conn
	done chan struct{}
	once sync.Once
}

func newChanListener(addr net.Addr) *chanListener {
	return &chanListener{addr: addr, ch: make(chan net.Conn), done: make(chan struct{})}
}

func (l *chanListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.ch:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *chanListener) Close() error   { l.once.Do(func() { close(l.done) }); return nil }
func (l *chanListener) Addr() net.Addr { return l.addr }

// exchange sends raw to addr, half-closes and returns all the server
// wrote until it closed.
func exchange(t *testing.T, addr, raw string) string {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, raw); err != nil {
		t.Fatal(err)
	}
	c.(*net.TCPConn).CloseWrite()
	got, err := io.ReadAll(c)
	if err != nil && !errors.Is(err, net.ErrClosed) && !isReset(err) {
		t.Fatalf("reading the answer to %q: %v", raw, err)
	}
	return dateLine.ReplaceAllString(string(got), "Date: (now)\r\n")
}

func isReset(err error) bool { return strings.Contains(err.Error(), "connection reset") }

var dateLine = regexp.MustCompile(`Date: [A-Z][a-z]{2}, \d\d [A-Z][a-z]{2} \d{4} \d\d:\d\d:\d\d GMT\r\n`)

// TestServerAsNetHTTP sends the same bytes to net/http's server and to
// Server, with the same handler, and expects the same bytes back: the
// responses' framing and headers, connection handling, and the requests
// Server leaves to net/http (answered by it, errors included).
func TestServerAsNetHTTP(t *testing.T) {
	tw := startTwins(t, http.HandlerFunc(testHandler))
	get := func(path string) string { return "GET " + path + " HTTP/1.1\r\nHost: example\r\n\r\n" }
	bigHeader := "GET /request HTTP/1.1\r\nHost: example\r\nX-Big: " + strings.Repeat("b", 5000) + "\r\n\r\n"
	cases := map[string]string{
		"small":              get("/small") + get("/html"),
		"big":                get("/big"),
		"content-length":     get("/cl") + get("/bad-cl"),
		"short":              get("/short-cl") + get("/small"),
		"long":               get("/long-cl") + get("/small"),
		"flush":              get("/flush") + get("/flush-empty"),
		"no body":            get("/204") + get("/304"),
		"trailers":           get("/trailer") + get("/prefix-trailer"),
		"early hints":        get("/103"),
		"handler closes":     get("/close") + get("/small"),
		"identity":           get("/identity") + get("/small"),
		"te and cl":          get("/te-and-cl"),
		"date":               get("/date"),
		"late header":        get("/late-header") + get("/twice") + get("/odd-status"),
		"not found":          get("/nothing"),
		"head":               "HEAD /small HTTP/1.1\r\nHost: example\r\n\r\n" + "HEAD /big HTTP/1.1\r\nHost: example\r\n\r\n" + get("/small"),
		"request":            "GET /request?q=1 HTTP/1.1\r\nHost: example:80\r\nX-A: 1\r\nX-A: 2\r\nConnection: keep-alive\r\n\r\n",
		"client closes":      "GET /small HTTP/1.1\r\nHost: example\r\nConnection: close\r\n\r\n" + get("/small"),
		"post":               "POST /echo HTTP/1.1\r\nHost: example\r\nContent-Length: 5\r\n\r\nhello" + get("/small"),
		"post crlf":          "POST /echo HTTP/1.1\r\nHost: example\r\nContent-Length: 5\r\n\r\nhello\r\n" + get("/small"),
		"chunked post":       "POST /echo HTTP/1.1\r\nHost: example\r\nTransfer-Encoding: chunked\r\nTrailer: X-Tr\r\n\r\n5\r\nhello\r\n0\r\nX-Tr: v\r\n\r\n" + get("/small"),
		"unread body":        "POST /ignore-body HTTP/1.1\r\nHost: example\r\nContent-Length: 5\r\n\r\nhello" + get("/small"),
		"unread chunked":     "POST /ignore-body HTTP/1.1\r\nHost: example\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n" + get("/small"),
		"unread large body":  "POST /ignore-body HTTP/1.1\r\nHost: example\r\nContent-Length: 300000\r\n\r\n" + strings.Repeat("x", 300000) + get("/small"),
		"closed body":        "POST /close-body HTTP/1.1\r\nHost: example\r\nContent-Length: 5\r\n\r\nhello" + get("/small"),
		"bare lf":            "GET /request HTTP/1.1\nHost: example\n\n" + get("/small"),
		"http/1.0":           "GET /request HTTP/1.0\r\nHost: example\r\n\r\n" + get("/small"),
		"http/1.0 keepalive": "GET /small HTTP/1.0\r\nConnection: keep-alive\r\n\r\n" + get("/small"),
		"expect":             "POST /echo HTTP/1.1\r\nHost: example\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nhi" + get("/small"),
		"upgrade":            "GET /request HTTP/1.1\r\nHost: example\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n" + get("/small"),
		"no host":            "GET /small HTTP/1.1\r\n\r\n",
		"two hosts":          "GET /small HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
		"bad host":           "GET /small HTTP/1.1\r\nHost: a b\r\n\r\n",
		"bad header name":    "GET /small HTTP/1.1\r\nHost: a\r\nX(y): 1\r\n\r\n",
		"bad header value":   "GET /small HTTP/1.1\r\nHost: a\r\nX-Y: a\x01b\r\n\r\n",
		"bad request line":   "GET /small\r\nHost: a\r\n\r\n",
		"empty first line":   "\r\nGET /small HTTP/1.1\r\nHost: a\r\n\r\n",
		"absolute uri":       "GET http://other/request HTTP/1.1\r\nHost: example\r\n\r\n",
		"connect":            "CONNECT example:443 HTTP/1.1\r\nHost: example:443\r\n\r\n",
		"pri":                "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
		"big header":         bigHeader + get("/small"),
		"cl and te":          "POST /echo HTTP/1.1\r\nHost: example\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n" + get("/small"),
		"two lengths":        "POST /echo HTTP/1.1\r\nHost: example\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
		"bad chunk":          "POST /echo HTTP/1.1\r\nHost: example\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhi\r\n0\r\n\r\n",
		"obs fold":           "GET /request HTTP/1.1\r\nHost: example\r\nX-F: a\r\n b\r\n\r\n",
		"late plain request": get("/small") + "GET /request HTTP/1.0\r\nHost: example\r\n\r\n" + get("/small"),
		"head cut short":     "GET /small HTTP/1.1\r\nHost: exa",
		"panic":              get("/panic") + get("/small"),
		"abort":              get("/abort") + get("/small"),
		"abort late":         get("/abort-late") + get("/small"),
		"read after flush":   "POST /flush-then-read HTTP/1.1\r\nHost: example\r\nContent-Length: 5\r\n\r\nhello" + get("/small"),
		"read chunked after flush": "POST /flush-then-read HTTP/1.1\r\nHost: example\r\nTransfer-Encoding: chunked\r\n\r\n" +
			strings.Repeat("2710\r\n"+strings.Repeat("c", 10000)+"\r\n", 30) + "0\r\n\r\n" + get("/small"),
		"empty content-length": get("/empty-cl"),
		"options *":            "OPTIONS * HTTP/1.1\r\nHost: example\r\n\r\n" + get("/small"),
		// Exactly as much left unread as the server reads to keep the
		// connection.
		"256 KiB left, closed": "POST /close-body HTTP/1.1\r\nHost: example\r\nContent-Length: 262144\r\n\r\n" + strings.Repeat("x", 262144) + get("/small"),
		"256 KiB left, chunked": "POST /close-body HTTP/1.1\r\nHost: example\r\nTransfer-Encoding: chunked\r\n\r\n40000\r\n" +
			strings.Repeat("x", 262144) + "\r\n0\r\n\r\n" + get("/small"),
		"256 KiB left, chunked, unread": "POST /ignore-body HTTP/1.1\r\nHost: example\r\nTransfer-Encoding: chunked\r\n\r\n40000\r\n" +
			strings.Repeat("x", 262144) + "\r\n0\r\n\r\n" + get("/small"),
	}
	for name, raw := range cases {
		t.Run(name, func(t *testing.T) {
			want := exchange(t, tw.ref, raw)
			got := exchange(t, tw.own, raw)
			if got != want {
				t.Errorf("sent %q\n got %q\nwant %q", raw, got, want)
			}
		})
	}
}

// serveOne serves each connection of a new loopback listener with srv
// and returns its address; connections srv leaves to net/http are closed.
func serveOne(t *testing.T, srv *Server) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				if r := srv.ServeConn(context.Background(), c, nil); r != nil {
					r.Close()
				}
			})
		}
	}()
	t.Cleanup(func() { ln.Close(); srv.Close(); wg.Wait() })
	return ln.Addr().String()
}

func dial(t *testing.T, addr string) (net.Conn, *bufio.Reader) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(10 * time.Second))
	return c, bufio.NewReader(c)
}

func readResponse(t *testing.T, br *bufio.Reader) (*http.Response, string) {
	t.Helper()
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, string(b)
}

// eventually reports whether cond became true within 10 s, looking every
// millisecond.
func eventually(cond func() bool) bool {
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
		if cond() {
			return true
		}
	}
	return cond()
}

// watchOf returns what f returns for the first of srv's connections for
// which it says ok, under the server's and the watch's locks.
func watchOf[T any](srv *Server, f func(wt *watch) (T, bool)) (T, bool) {
	srv.mu.Lock()
	defer srv.mu.Unlock()
	for sc := range srv.conns {
		sc.watch.mu.Lock()
		v, ok := f(&sc.watch)
		sc.watch.mu.Unlock()
		if ok {
			return v, true
		}
	}
	var zero T
	return zero, false
}

// dueWatch reports whether a request of srv has run WatchAfter (its
// check has run).
func dueWatch(srv *Server) bool {
	_, ok := watchOf(srv, func(wt *watch) (struct{}, bool) { return struct{}{}, wt.due })
	return ok
}

// TestServerWatchesClientGone: a request still running after WatchAfter
// whose client goes away has its context cancelled, and the connection
// is closed.
func TestServerWatchesClientGone(t *testing.T) {
	started, ended := make(chan struct{}), make(chan error, 1)
	srv := &Server{WatchAfter: time.Millisecond, Handler: http.HandlerFunc(waitHandler(started, ended))}
	c, _ := dial(t, serveOne(t, srv))
	io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
	<-started
	c.Close()
	if err := <-ended; !errors.Is(err, context.Canceled) {
		t.Fatal(err)
	}
}

// TestServerWatchKeepsPipelined: the byte the watch reads of a request
// sent while the previous one runs is that request's.
func TestServerWatchKeepsPipelined(t *testing.T) {
	release := make(chan struct{})
	var mu sync.Mutex
	var canceled []bool
	srv := &Server{WatchAfter: time.Nanosecond, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			<-release
		}
		mu.Lock()
		canceled = append(canceled, r.Context().Err() != nil)
		mu.Unlock()
		io.WriteString(w, r.Method+" "+r.URL.Path) // a lost first byte would change the method
	})}
	addr := serveOne(t, srv)
	c, br := dial(t, addr)
	io.WriteString(c, "GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
	// Wait until the watch reads the connection.
	var done chan struct{}
	if !eventually(func() (ok bool) {
		done, ok = watchOf(srv, func(wt *watch) (chan struct{}, bool) { return wt.done, wt.reading })
		return ok
	}) {
		t.Fatal("the watch did not start")
	}
	io.WriteString(c, "GET /next HTTP/1.1\r\nHost: x\r\n\r\n")
	<-done // the watch read the next request's first byte
	close(release)
	for _, want := range []string{"GET /slow", "GET /next"} {
		if resp, body := readResponse(t, br); resp.StatusCode != 200 || body != want {
			t.Fatalf("got %d %q, want 200 %q", resp.StatusCode, body, want)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if !slices.Equal(canceled, []bool{false, false}) {
		t.Errorf("requests' contexts cancelled: %v", canceled)
	}
}

// TestServerShutdown: Shutdown closes an idle connection at once and a
// busy one after its response, which says so.
func TestServerShutdown(t *testing.T) {
	started, release := make(chan struct{}), make(chan struct{})
	srv := &Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			close(started)
			<-release
		}
		io.WriteString(w, "ok")
	})}
	addr := serveOne(t, srv)
	idle, idleBR := dial(t, addr)
	io.WriteString(idle, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
	readResponse(t, idleBR)
	busy, busyBR := dial(t, addr)
	io.WriteString(busy, "GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
	<-started
	srv.Shutdown()
	if n, err := idleBR.Read(make([]byte, 1)); err != io.EOF {
		t.Errorf("idle connection: read %d, %v; want EOF", n, err)
	}
	close(release)
	resp, body := readResponse(t, busyBR)
	if body != "ok" || !resp.Close {
		t.Errorf("busy connection: got %q, close %v; want \"ok\" and Connection: close", body, resp.Close)
	}
	if n, err := busyBR.Read(make([]byte, 1)); err != io.EOF {
		t.Errorf("busy connection after its response: read %d, %v; want EOF", n, err)
	}
	if c, err := net.Dial("tcp", addr); err == nil {
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		if n, err := c.Read(make([]byte, 1)); err != io.EOF {
			t.Errorf("new connection after Shutdown: read %d, %v; want EOF", n, err)
		}
	}
}

// TestServerTimeouts: a connection that sends no request, or only part
// of a head, is closed after ReadHeaderTimeout; one idle after a response
// after IdleTimeout.
func TestServerTimeouts(t *testing.T) {
	srv := &Server{ReadHeaderTimeout: 50 * time.Millisecond, IdleTimeout: 50 * time.Millisecond,
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") })}
	addr := serveOne(t, srv)
	for name, send := range map[string]string{"silent": "", "part of a head": "GET / HTTP/1.1\r\nHo", "idle": "GET / HTTP/1.1\r\nHost: x\r\n\r\n"} {
		t.Run(name, func(t *testing.T) {
			c, br := dial(t, addr)
			io.WriteString(c, send)
			if name == "idle" {
				readResponse(t, br)
			}
			if n, err := br.Read(make([]byte, 1)); err != io.EOF {
				t.Errorf("read %d, %v; want EOF", n, err)
			}
		})
	}
}

// TestServerWatchesAfterBody: a request whose body is read after
// WatchAfter is watched from then on.
func TestServerWatchesAfterBody(t *testing.T) {
	read, ended := make(chan struct{}), make(chan error, 1)
	var srv *Server
	wait := waitHandler(read, ended)
	srv = &Server{WatchAfter: time.Millisecond, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// Read the body only once the request was due for watching.
		if !eventually(func() bool { return dueWatch(srv) }) {
			ended <- errors.New("the request was never due for watching")
			return
		}
		io.ReadAll(r.Body)
		wait(w, r)
	})}
	c, _ := dial(t, serveOne(t, srv))
	io.WriteString(c, "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello")
	select {
	case <-read:
	case err := <-ended:
		t.Fatal(err)
	}
	c.Close()
	if err := <-ended; !errors.Is(err, context.Canceled) {
		t.Fatal(err)
	}
}

// TestServerWriteErrorCancels: a request whose response cannot be
// written has its context cancelled, watched or not.
func TestServerWriteErrorCancels(t *testing.T) {
	started, ended := make(chan struct{}), make(chan error, 1)
	srv := &Server{WatchAfter: time.Hour, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		close(started)
		chunk := make([]byte, 64<<10)
		for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); {
			if _, err := w.Write(chunk); err != nil {
				break
			}
			if w.(interface{ FlushError() error }).FlushError() != nil {
				break
			}
		}
		ended <- r.Context().Err()
	})}
	c, _ := dial(t, serveOne(t, srv))
	io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
	<-started
	c.Close()
	if err := <-ended; !errors.Is(err, context.Canceled) {
		t.Fatalf("after a failed write, the request's context: %v", err)
	}
}

// waitHandler answers /wait once its client has gone away (the request's
// context ended), reporting that on ended, or after 10 s if it has not.
func waitHandler(started chan<- struct{}, ended chan<- error) func(http.ResponseWriter, *http.Request) {
	return func(w http.ResponseWriter, r *http.Request) {
		close(started)
		select {
		case <-r.Context().Done():
			ended <- r.Context().Err()
		case <-time.After(10 * time.Second):
			ended <- errors.New("the request's context was not cancelled 10 s after its client left")
		}
	}
}

// TestServerWatchBesideStalledUpload: an upload that stalls while its
// handler reads it does not stop the watch of other requests.
func TestServerWatchBesideStalledUpload(t *testing.T) {
	uploading, started, ended := make(chan struct{}), make(chan struct{}), make(chan error, 1)
	wait := waitHandler(started, ended)
	srv := &Server{WatchAfter: time.Millisecond, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/upload" {
			close(uploading)
			io.ReadAll(r.Body) // waits for the 5 bytes that never come
			return
		}
		wait(w, r)
	})}
	addr := serveOne(t, srv)
	a, _ := dial(t, addr)
	io.WriteString(a, "POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nhello")
	<-uploading
	// Wait until the upload's request is due for watching: its check has
	// run, and would have blocked behind the read with one lock.
	if !eventually(func() bool { return dueWatch(srv) }) {
		t.Fatal("the upload was never due for watching")
	}
	b, _ := dial(t, addr)
	io.WriteString(b, "GET /wait HTTP/1.1\r\nHost: x\r\n\r\n")
	<-started
	b.Close()
	if err := <-ended; !errors.Is(err, context.Canceled) {
		t.Fatal(err)
	}
}

// TestServerWatchDuringShutdown: requests still running after Shutdown
// are watched as before.
func TestServerWatchDuringShutdown(t *testing.T) {
	started, ended := make(chan struct{}), make(chan error, 1)
	srv := &Server{WatchAfter: time.Millisecond, Handler: http.HandlerFunc(waitHandler(started, ended))}
	c, _ := dial(t, serveOne(t, srv))
	io.WriteString(c, "GET /wait HTTP/1.1\r\nHost: x\r\n\r\n")
	<-started
	srv.Shutdown()
	c.Close()
	if err := <-ended; !errors.Is(err, context.Canceled) {
		t.Fatal(err)
	}
}

// TestServerShutdownSparesNew: a connection yet to send its first
// request when Shutdown comes is served once, then closed.
func TestServerShutdownSparesNew(t *testing.T) {
	srv := &Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") })}
	addr := serveOne(t, srv)
	c, br := dial(t, addr)
	if !eventually(func() bool {
		srv.mu.Lock()
		defer srv.mu.Unlock()
		return len(srv.conns) == 1
	}) {
		t.Fatal("the connection never reached the server")
	}
	srv.Shutdown()
	io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
	resp, body := readResponse(t, br)
	if body != "ok" || !resp.Close {
		t.Errorf("got %q, close %v; want \"ok\" and Connection: close", body, resp.Close)
	}
}
