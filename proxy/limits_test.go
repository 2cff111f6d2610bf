package proxy_test

import (
	"bytes"
	"crypto/tls"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/credflow/credflow/internal/sidecartest"
	"github.com/credflow/credflow/internal/testca"
	"github.com/credflow/credflow/proxy"
)

// openRaw opens n plain TCP connections to addr; the proxy holds each in a
// slot while it waits for a ClientHello.
func openRaw(t *testing.T, addr string, n int) []net.Conn {
	t.Helper()
	conns := make([]net.Conn, 0, n)
	t.Cleanup(func() {
		for _, c := range conns {
			c.Close()
		}
	})
	for range n {
		c, err := net.DialTimeout("tcp", addr, 2*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
	}
	return conns
}

// closedSoon reports whether the proxy closes c (EOF or reset) within d.
func closedSoon(c net.Conn, d time.Duration) bool {
	c.SetReadDeadline(time.Now().Add(d))
	_, err := c.Read(make([]byte, 1))
	var ne net.Error
	return err != nil && !(errors.As(err, &ne) && ne.Timeout())
}

// TestConnectionLimit covers L2's first line: past MaxConnections a new
// connection is closed at accept with the reason "limit", while an
// established one keeps relaying, and new ones are taken again once slots
// free up.
func TestConnectionLimit(t *testing.T) {
	ca := testca.New(t, td)
	echo, err := sidecartest.Echo(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	p, reg := startProxy(t, proxy.Config{
		SVIDs:            static{svid: ca.Issue(t, spiffeid.RequireFromPath(td, "/backend"))},
		Bundles:          x509bundle.NewSet(ca.Bundle()),
		Inbound:          []proxy.Inbound{{Name: "app", Listen: "127.0.0.1:0", App: echo, Allow: policy(t, "spiffe://example.org/frontend")}},
		HandshakeTimeout: 30 * time.Second,
		MaxConnections:   4,
	})
	in := &inbound{p: p, addr: p.Addr("app").String(), reg: reg}
	client := clientConfig(ca.Issue(t, spiffeid.RequireFromPath(td, "/frontend")))

	live := dialEcho(t, in.addr, client)
	held := openRaw(t, in.addr, 3) // with live: all four slots
	for i, c := range openRaw(t, in.addr, 5) {
		if !closedSoon(c, 2*time.Second) {
			t.Fatalf("connection %d past the limit was not closed", i)
		}
	}
	in.waitMetric(t, 5, "credflow_refusals_total", "reason=limit")
	for _, c := range held {
		if closedSoon(c, 50*time.Millisecond) {
			t.Fatal("a connection within the limit was closed")
		}
	}
	live.roundTrip(t, "still relaying")

	for _, c := range held {
		c.Close()
	}
	deadline := time.Now().Add(3 * time.Second)
	for {
		_, err := echoOnce(in.addr, client, "after")
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no recovery once slots were free: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestOutOfDescriptors covers L2 past the file-descriptor limit: with
// every descriptor of the process taken, a new connection is closed at
// once (reason "fd_limit") rather than left waiting in the kernel's queue,
// an established connection keeps relaying, and once descriptors are free
// new connections are served again.
func TestOutOfDescriptors(t *testing.T) {
	ca := testca.New(t, td)
	in := startInbound(t, ca, policy(t, "spiffe://example.org/frontend"), time.Second)
	client := clientConfig(ca.Issue(t, spiffeid.RequireFromPath(td, "/frontend")))
	live := dialEcho(t, in.addr, client)

	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		t.Fatal(err)
	}
	if rl.Cur > 1<<17 {
		t.Skipf("descriptor limit %d is too high to exhaust in a test", rl.Cur)
	}
	var fill []*os.File
	release := func() {
		for _, f := range fill {
			f.Close()
		}
		fill = nil
	}
	t.Cleanup(release)
	for {
		f, err := os.Open(os.DevNull)
		if err != nil {
			if !errors.Is(err, syscall.EMFILE) {
				t.Fatal(err)
			}
			break
		}
		fill = append(fill, f)
	}
	// One descriptor for the client's socket; the proxy has none left
	// for its side of the connection.
	fill[len(fill)-1].Close()
	fill = fill[:len(fill)-1]
	c, err := net.DialTimeout("tcp", in.addr, 2*time.Second)
	if err != nil {
		release()
		t.Fatalf("dial with one descriptor free: %v", err)
	}
	shed := closedSoon(c, 2*time.Second)
	live.roundTrip(t, "relaying while out of descriptors")
	c.Close()
	release()
	if !shed {
		t.Fatal("the connection that found no descriptor was left open")
	}
	in.waitMetric(t, 1, "credflow_refusals_total", "reason=fd_limit")
	if _, err := echoOnce(in.addr, client, "after"); err != nil {
		t.Fatalf("no recovery once descriptors were free: %v (limit %v, fd_limit %v, handshake_failed %v, app %v)", err,
			in.metric(t, "credflow_refusals_total", "reason=limit"), in.metric(t, "credflow_refusals_total", "reason=fd_limit"),
			in.metric(t, "credflow_refusals_total", "reason=handshake_failed"), in.metric(t, "credflow_refusals_total", "reason=app_unavailable"))
	}
}

// echoConn is an established mTLS connection through an inbound listener
// to its echo app.
type echoConn struct{ c *tls.Conn }

func dialEcho(t *testing.T, addr string, cfg *tls.Config) *echoConn {
	t.Helper()
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 2 * time.Second}, "tcp", addr, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &echoConn{c: c}
}

func (e *echoConn) roundTrip(t *testing.T, msg string) {
	t.Helper()
	e.c.SetDeadline(time.Now().Add(3 * time.Second))
	if _, err := io.WriteString(e.c, msg); err != nil {
		t.Fatalf("established connection: %v", err)
	}
	buf := make([]byte, len(msg))
	if _, err := io.ReadFull(e.c, buf); err != nil || string(buf) != msg {
		t.Fatalf("established connection: read %q, %v", buf, err)
	}
}

// TestDescriptorBudgetCountsAppSockets is S15-9's descriptor budget: the
// sockets an HTTP listener may hold besides its relayed connections (each
// inbound's app connections, each outbound's upstream pool and the pool
// that replaces it) are taken from the file-descriptor limit before
// max_connections is fitted to it.
func TestDescriptorBudgetCountsAppSockets(t *testing.T) {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		t.Fatal(err)
	}
	const limit = 1024
	if rl.Max < limit {
		t.Skipf("hard descriptor limit %d is under %d", rl.Max, limit)
	}
	low := rl
	low.Cur = limit
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &low); err != nil {
		t.Fatal(err)
	}
	defer syscall.Setrlimit(syscall.RLIMIT_NOFILE, &rl)

	ca := testca.New(t, td)
	var logs bytes.Buffer
	_, err := proxy.New(proxy.Config{
		SVIDs:   static{svid: ca.Issue(t, spiffeid.RequireFromPath(td, "/backend"))},
		Bundles: x509bundle.NewSet(ca.Bundle()),
		Inbound: []proxy.Inbound{
			{Name: "a", Listen: "127.0.0.1:0", App: "127.0.0.1:1", Allow: policy(t, "spiffe://example.org"), HTTP: &proxy.InboundHTTP{}},
			{Name: "b", Listen: "127.0.0.1:0", App: "127.0.0.1:1", Allow: policy(t, "spiffe://example.org"), HTTP: &proxy.InboundHTTP{}},
			{Name: "tcp", Listen: "127.0.0.1:0", App: "127.0.0.1:1", Allow: policy(t, "spiffe://example.org")},
		},
		Outbound: []proxy.Outbound{{Name: "up", Listen: "127.0.0.1:0", Upstream: "127.0.0.1:1", Expect: policy(t, "spiffe://example.org"), HTTP: &proxy.OutboundHTTP{}}},
		Logger:   slog.New(slog.NewJSONHandler(&logs, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	var line struct {
		Msg            string
		MaxConnections int `json:"max_connections"`
	}
	json.Unmarshal(logs.Bytes(), &line)
	// 1024 descriptors, a reserve of 64, 2 × 64 app connections (the
	// default), 2 × 2 pooled HTTP/2 upstream connections (the default
	// pool, and its replacement) and 64 HTTP/1.1 ones: (1024 - 64 - 128 -
	// 4 - 64) / 2 connections of two descriptors each.
	if want := (limit - 64 - 2*64 - 2*2 - 64) / 2; line.MaxConnections != want {
		t.Errorf("max_connections lowered to %d, want %d; log: %s", line.MaxConnections, want, logs.String())
	}
}
