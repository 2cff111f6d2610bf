package proxy

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/credflow/credflow/proxy/h1"
)

// scriptedServer answers every request on a connection of its own with
// resp, verbatim, and closes the connection; it keeps the requests it got,
// verbatim too.
type scriptedServer struct {
	ln   net.Listener
	resp string
	// hold, if set, is waited for after the first part of resp
	// (resp[:split]) is written.
	hold  chan struct{}
	split int

	mu  sync.Mutex
	got []string
}

func startScripted(t *testing.T, resp string) *scriptedServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &scriptedServer{ln: ln, resp: resp}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go s.serve(c)
		}
	}()
	return s
}

func (s *scriptedServer) serve(c net.Conn) {
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	br := bufio.NewReader(c)
	var req strings.Builder
	length := 0
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			return
		}
		req.WriteString(line)
		if name, value, ok := strings.Cut(line, ":"); ok && strings.EqualFold(name, "Content-Length") {
			length, _ = strconv.Atoi(strings.TrimSpace(value))
		}
		if line == "\r\n" {
			break
		}
	}
	body := make([]byte, length)
	if _, err := io.ReadFull(br, body); err != nil {
		return
	}
	req.Write(body)
	s.mu.Lock()
	s.got = append(s.got, req.String())
	s.mu.Unlock()
	if s.hold != nil {
		c.Write([]byte(s.resp[:s.split]))
		<-s.hold
		c.Write([]byte(s.resp[s.split:]))
		return
	}
	c.Write([]byte(s.resp))
}

func (s *scriptedServer) requests() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.got...)
}

// relayUnderTest is one of the two relays compared: the forwarder, or
// httputil.ReverseProxy with the same hooks.
type relayUnderTest int

const (
	viaForwarder relayUnderTest = iota
	viaReverseProxy
)

func (r relayUnderTest) String() string {
	if r == viaForwarder {
		return "forwarder"
	}
	return "ReverseProxy"
}

// startRelay serves, on a loopback net/http server, a relay of kind to
// backend, through h1.Client or, with netHTTP, net/http's Transport. It
// returns the server's address.
func startRelay(t *testing.T, kind relayUnderTest, backend string, netHTTP bool) string {
	t.Helper()
	var tr http.RoundTripper
	if netHTTP {
		tr = &http.Transport{}
	} else {
		client := &h1.Client{Dial: func(ctx context.Context) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "tcp", backend)
		}}
		t.Cleanup(client.Close)
		tr = client
	}
	rewrite := func(out, in *http.Request) {
		out.URL.Scheme, out.URL.Host = "http", backend
		out.Host = in.Host
		out.Header.Set("X-Rewritten", "1")
	}
	modify := func(res *http.Response) error {
		if res.Header.Get("X-Refuse") != "" {
			return errors.New("refused")
		}
		res.Header["x-modified"] = []string{"1"} // not canonical: added as Header.Add would
		return nil
	}
	failed := func(w http.ResponseWriter, r *http.Request, err error) {
		w.Header().Set("X-Failed", r.Header.Get("X-Rewritten"))
		w.WriteHeader(http.StatusBadGateway)
	}
	var relay http.Handler
	if kind == viaForwarder {
		relay = newForwarder(&forwarder{transport: tr, rewrite: rewrite, modifyResponse: modify, errorHandler: failed})
	} else {
		relay = &httputil.ReverseProxy{
			Rewrite:        func(pr *httputil.ProxyRequest) { rewrite(pr.Out, pr.In) },
			Transport:      tr,
			ModifyResponse: modify,
			ErrorHandler:   failed,
			FlushInterval:  responseFlush,
			BufferPool:     copyBuffers,
		}
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("X-Preset") != "" {
			w.Header().Set("X-Modified", "0") // set before the relay adds its own
		}
		relay.ServeHTTP(w, r)
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().String()
}

var dateField = regexp.MustCompile(`(?m)^Date: .*\r\n`)

// roundTripRaw sends req to addr and returns all it reads back until the
// server closes the connection, its Date fields removed.
func roundTripRaw(t *testing.T, addr, req string) string {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, req); err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(c)
	if err != nil && !errors.Is(err, net.ErrClosed) && !strings.Contains(err.Error(), "reset") {
		t.Fatalf("reading the response: %v", err)
	}
	return dateField.ReplaceAllString(string(got), "")
}

// TestForwarderAsReverseProxy sends the same requests through the
// forwarder and through httputil.ReverseProxy with the same hooks, to a
// server that answers with the same bytes, and compares what the client
// and the server get: byte for byte, both ways.
func TestForwarderAsReverseProxy(t *testing.T) {
	const (
		get     = "GET /p HTTP/1.1\r\nHost: app\r\nUser-Agent: t\r\nConnection: close\r\n\r\n"
		ok1k    = "HTTP/1.1 200 OK\r\nContent-Length: 1024\r\nContent-Type: text/plain\r\n\r\n"
		chunked = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n"
	)
	cases := []struct {
		name, req, resp string
		netHTTPOnly     bool // a request h1.Client does not send
	}{
		{name: "plain", req: get, resp: ok1k + strings.Repeat("a", 1024)},
		{name: "hop-by-hop request fields", req: "GET /p HTTP/1.1\r\nHost: app\r\nConnection: X-Foo, close\r\nX-Foo: 1\r\n" +
			"Keep-Alive: 5\r\nProxy-Connection: keep-alive\r\nProxy-Authorization: Basic eDp5\r\nTe: deflate, trailers\r\n" +
			"Forwarded: for=10.0.0.1\r\nX-Forwarded-For: 10.0.0.1\r\nX-Forwarded-Host: h\r\nX-Forwarded-Proto: http\r\nX-Keep: 2\r\n\r\n",
			resp: "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok"},
		{name: "te without trailers", req: "GET /p HTTP/1.1\r\nHost: app\r\nTe: deflate\r\nConnection: close\r\n\r\n",
			resp: "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok"},
		{name: "no user agent", req: "GET /p HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n",
			resp: "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok"},
		{name: "empty user agent", req: "GET /p HTTP/1.1\r\nHost: app\r\nUser-Agent:\r\nConnection: close\r\n\r\n",
			resp: "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok"},
		{name: "query cleaned", req: "GET /p?a=1;b=2&c=%zz&d=4 HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n",
			resp: "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok"},
		{name: "too many query parameters", req: "GET /p?" + strings.Repeat("a=1&", 10000) + "b=2 HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n",
			resp: "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok"},
		{name: "query kept", req: "GET /p/%41?z=1&a=%20&a=2 HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n",
			resp: "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok"},
		{name: "userinfo-free absolute path with repeated fields", req: "GET /p HTTP/1.1\r\nHost: app\r\nX-A: 1\r\nX-A: 2\r\nCookie: a=1\r\nCookie: b=2\r\nConnection: close\r\n\r\n",
			resp: "HTTP/1.1 200 OK\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok"},
		{name: "post", req: "POST /p HTTP/1.1\r\nHost: app\r\nContent-Length: 10\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n0123456789",
			resp: "HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n"},
		{name: "post without body", req: "POST /p HTTP/1.1\r\nHost: app\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
			resp: "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"},
		{name: "hop-by-hop response fields", req: get, resp: "HTTP/1.1 200 OK\r\nConnection: X-Bar\r\nX-Bar: 1\r\nKeep-Alive: timeout=5\r\n" +
			"Proxy-Authenticate: Basic\r\nUpgrade: foo\r\nX-Keep: 1\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok"},
		{name: "header set before the relay", req: "GET /p HTTP/1.1\r\nHost: app\r\nX-Preset: 1\r\nConnection: close\r\n\r\n",
			resp: "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok"},
		{name: "chunked", req: get, resp: chunked + "5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"},
		{name: "announced trailer", req: get, resp: "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTrailer: X-T\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nX-T: v\r\n\r\n"},
		{name: "unannounced trailer", req: get, resp: chunked + "5\r\nhello\r\n0\r\nX-U: v\r\n\r\n"},
		{name: "close-delimited", req: get, resp: "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\nuntil the end"},
		{name: "event stream", req: get, resp: "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Length: 12\r\n\r\ndata: one\n\n\n"},
		{name: "early hints", req: get, resp: "HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n" + ok1k + strings.Repeat("b", 1024)},
		{name: "head", req: "HEAD /p HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n", resp: "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n"},
		{name: "no content", req: get, resp: "HTTP/1.1 204 No Content\r\nX-A: 1\r\n\r\n"},
		{name: "not modified", req: get, resp: "HTTP/1.1 304 Not Modified\r\nEtag: \"x\"\r\n\r\n"},
		{name: "large", req: get, resp: "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 100000\r\n\r\n" + strings.Repeat("c", 100000)},
		{name: "modify response fails", req: get, resp: "HTTP/1.1 200 OK\r\nX-Refuse: 1\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok"},
		{name: "unasked switch", req: get, resp: "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"},
		{name: "malformed response", req: get, resp: "HTTP/1.1 2OO OK\r\n\r\n"},
		{name: "no response", req: get, resp: ""},
		{name: "upgrade", req: "GET /ws HTTP/1.1\r\nHost: app\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
			resp: "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\nframes", netHTTPOnly: true},
	}
	for _, tc := range cases {
		for _, netHTTP := range []bool{false, true} {
			if tc.netHTTPOnly && !netHTTP {
				continue
			}
			name := tc.name + "/h1"
			if netHTTP {
				name = tc.name + "/net-http"
			}
			t.Run(name, func(t *testing.T) {
				var got, sent [2]string
				for _, kind := range []relayUnderTest{viaForwarder, viaReverseProxy} {
					backend := startScripted(t, tc.resp)
					addr := startRelay(t, kind, backend.ln.Addr().String(), netHTTP)
					got[kind] = roundTripRaw(t, addr, tc.req)
					sent[kind] = strings.Join(backend.requests(), "\n--\n")
				}
				if got[viaForwarder] != got[viaReverseProxy] {
					t.Errorf("the client got\n%q\nfrom the forwarder, and from ReverseProxy\n%q", got[viaForwarder], got[viaReverseProxy])
				}
				if sent[viaForwarder] != sent[viaReverseProxy] {
					t.Errorf("the server got\n%q\nfrom the forwarder, and from ReverseProxy\n%q", sent[viaForwarder], sent[viaReverseProxy])
				}
			})
		}
	}
}

// TestForwarderRelaysWhatArrived: a response whose server sends its head,
// or its head and part of its body, and then waits reaches the client that
// far, at once: the forwarder flushes when its next read would wait.
func TestForwarderRelaysWhatArrived(t *testing.T) {
	const (
		sized   = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 10\r\n\r\n"
		chunked = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n"
	)
	for _, netHTTP := range []bool{false, true} {
		for _, tc := range []struct{ before, after, first string }{
			{sized, "first-last", ""},
			{sized + "first", "-last", "first"},
			{chunked, "5\r\nfirst\r\n5\r\n-last\r\n0\r\n\r\n", ""},
			{chunked + "5\r\nfirst\r\n", "5\r\n-last\r\n0\r\n\r\n", "first"},
			{chunked + "5\r\n", "first\r\n5\r\n-last\r\n0\r\n\r\n", ""},
			{chunked + "5", "\r\nfirst\r\n5\r\n-last\r\n0\r\n\r\n", ""},
		} {
			backend := startScripted(t, tc.before+tc.after)
			backend.hold = make(chan struct{})
			backend.split = len(tc.before)
			addr := startRelay(t, viaForwarder, backend.ln.Addr().String(), netHTTP)
			c, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			c.SetDeadline(time.Now().Add(10 * time.Second))
			io.WriteString(c, "GET / HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n")
			br := bufio.NewReader(c)
			res, err := http.ReadResponse(br, nil)
			if err != nil {
				t.Fatalf("netHTTP %v, %q: the head did not arrive while the server waited: %v", netHTTP, tc.before, err)
			}
			part := make([]byte, len(tc.first))
			if _, err := io.ReadFull(res.Body, part); err != nil || string(part) != tc.first {
				t.Fatalf("netHTTP %v, %q: what came before the wait did not arrive during it: %q, %v", netHTTP, tc.before, part, err)
			}
			close(backend.hold)
			rest, err := io.ReadAll(res.Body)
			if want := strings.TrimPrefix("first-last", tc.first); err != nil || string(rest) != want {
				t.Fatalf("netHTTP %v, %q: the rest: %q, %v; want %q", netHTTP, tc.before, rest, err, want)
			}
			c.Close()
		}
	}
}

// countingListener counts the writes on the connections it accepts.
type countingListener struct {
	net.Listener
	writes *int64
	mu     *sync.Mutex
}

func (l countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return countingConn{Conn: c, l: l}, nil
}

type countingConn struct {
	net.Conn
	l countingListener
}

func (c countingConn) Write(p []byte) (int, error) {
	c.l.mu.Lock()
	*c.l.writes++
	c.l.mu.Unlock()
	return c.Conn.Write(p)
}

// TestForwarderOneWritePerShortResponse: a short response of known length
// that arrives whole leaves in one write, head and body together. (A
// chunked one leaves in two, as through ReverseProxy: its head and chunks,
// then its end.)
func TestForwarderOneWritePerShortResponse(t *testing.T) {
	for _, resp := range []string{
		"HTTP/1.1 200 OK\r\nContent-Length: 1024\r\n\r\n" + strings.Repeat("a", 1024),
		"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
		"HTTP/1.1 204 No Content\r\n\r\n",
	} {
		backend := startScripted(t, resp)
		client := &h1.Client{Dial: func(ctx context.Context) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "tcp", backend.ln.Addr().String())
		}}
		defer client.Close()
		fw := newForwarder(&forwarder{transport: client, rewrite: func(out, in *http.Request) {
			out.URL.Scheme, out.URL.Host = "http", backend.ln.Addr().String()
		}, errorHandler: func(w http.ResponseWriter, r *http.Request, err error) { t.Errorf("relay failed: %v", err) }})
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		var (
			mu     sync.Mutex
			writes int64
		)
		srv := &http.Server{Handler: fw}
		go srv.Serve(countingListener{Listener: ln, writes: &writes, mu: &mu})
		got := roundTripRaw(t, ln.Addr().String(), "GET / HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n")
		srv.Close()
		if want := resp[strings.Index(resp, "\r\n\r\n")+4:]; !strings.HasPrefix(got, "HTTP/1.1 2") || !strings.HasSuffix(got, "\r\n\r\n"+want) {
			t.Fatalf("response %q", got)
		}
		mu.Lock()
		n := writes
		mu.Unlock()
		if n != 1 {
			t.Errorf("%q relayed in %d writes, want 1", resp[:40], n)
		}
	}
}

// TestForwarderKeepsFieldsAcross1xx: fields set on the response before the
// forwarder runs (Connection: close on a connection being retired, say)
// reach the final response although an interim one came first, and the
// interim one carries its own fields only. ReverseProxy loses them.
func TestForwarderKeepsFieldsAcross1xx(t *testing.T) {
	const resp = "HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n" +
		"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok"
	for _, netHTTP := range []bool{false, true} {
		backend := startScripted(t, resp)
		addr := startRelay(t, viaForwarder, backend.ln.Addr().String(), netHTTP)
		got := roundTripRaw(t, addr, "GET /p HTTP/1.1\r\nHost: app\r\nX-Preset: 1\r\nConnection: close\r\n\r\n")
		interim, final, ok := strings.Cut(got, "\r\n\r\n")
		if !ok || !strings.HasPrefix(interim, "HTTP/1.1 103 ") || !strings.HasPrefix(final, "HTTP/1.1 200 ") {
			t.Fatalf("netHTTP %v: got %q, want a 103 and then a 200", netHTTP, got)
		}
		if strings.Contains(interim, "X-Modified") || !strings.Contains(interim, "Link: </a.css>") {
			t.Errorf("netHTTP %v: the 103 is %q, want its own fields only", netHTTP, interim)
		}
		if !strings.Contains(final, "X-Modified: 0\r\nX-Modified: 1\r\n") || strings.Contains(final, "Link:") {
			t.Errorf("netHTTP %v: the final response is %q, want the field set before it and the hook's, and not the 103's", netHTTP, final)
		}
	}
}
