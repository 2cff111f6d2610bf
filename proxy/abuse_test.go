package proxy_test

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"runtime"
	"runtime/pprof"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/credflow/credflow/internal/sidecartest"
	"github.com/credflow/credflow/internal/testca"
	"github.com/credflow/credflow/proxy"
	"github.com/credflow/credflow/proxy/route"
)

// longForm reports whether CREDFLOW_SOAK=1 asks for the long forms of the
// abuse tests: thousands of connections instead of hundreds.
func longForm() bool { return os.Getenv("CREDFLOW_SOAK") == "1" }

// abuseRig is an HTTP inbound listener ("app") in front of app, allowing
// /frontend every method and path, without JWT-SVIDs, so that what the
// tests send reaches the app unless a limit stops it.
type abuseRig struct {
	addr   string
	m      *inbound // metrics
	ca     *testca.CA
	client *tls.Config // the frontend's identity, no ALPN
}

func startAbuseRig(t *testing.T, app http.Handler, cfg proxy.Config) *abuseRig {
	t.Helper()
	appLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	// The app drops idle connections soon, so that those the sidecar
	// dialled for cancelled requests and pooled do not blur goroutine
	// counts.
	srv := &http.Server{Handler: app, ReadHeaderTimeout: 300 * time.Millisecond, IdleTimeout: 300 * time.Millisecond}
	go srv.Serve(appLn)
	t.Cleanup(func() { srv.Close() })
	return startAbuseRigTo(t, appLn.Addr().String(), proxy.InboundHTTP{}, cfg)
}

// startAbuseRigTo is startAbuseRig for an app at appAddr, with the
// listener's HTTP settings in in (Routes is set here).
func startAbuseRigTo(t *testing.T, appAddr string, in proxy.InboundHTTP, cfg proxy.Config) *abuseRig {
	t.Helper()
	ca := testca.New(t, td)
	all, _ := route.ParsePath("/*")
	in.Routes = route.Table{Rules: []route.Rule{{Peers: policy(t, "spiffe://example.org/frontend"), Paths: []route.Path{all}}}}
	cfg.SVIDs = static{svid: ca.Issue(t, spiffeid.RequireFromPath(td, "/backend"))}
	cfg.Bundles = x509bundle.NewSet(ca.Bundle())
	cfg.Inbound = []proxy.Inbound{{Name: "app", Listen: "127.0.0.1:0", App: appAddr,
		Allow: policy(t, "spiffe://example.org/frontend"), HTTP: &in}}
	p, reg := startProxy(t, cfg)
	return &abuseRig{addr: p.Addr("app").String(), m: &inbound{reg: reg}, ca: ca,
		client: clientConfig(ca.Issue(t, spiffeid.RequireFromPath(td, "/frontend")))}
}

// dialTLS completes mTLS with the rig, offering alpn; it fails the test if
// alpn is not what was negotiated.
func (r *abuseRig) dialTLS(t testing.TB, alpn string) *tls.Conn {
	t.Helper()
	cfg := r.client.Clone()
	cfg.NextProtos = []string{alpn}
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", r.addr, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if got := c.ConnectionState().NegotiatedProtocol; got != alpn {
		c.Close()
		t.Fatalf("ALPN %q, want %q", got, alpn)
	}
	return c
}

// httpClient is a client of the rig over HTTP/1.1 or HTTP/2.
func (r *abuseRig) httpClient(h2 bool) *http.Client {
	cfg := r.client.Clone()
	tr := &http.Transport{TLSClientConfig: cfg, MaxIdleConnsPerHost: 4}
	if h2 {
		tr.ForceAttemptHTTP2 = true
	} else {
		tr.Protocols = new(http.Protocols)
		tr.Protocols.SetHTTP1(true)
	}
	return &http.Client{Transport: tr, Timeout: 10 * time.Second}
}

// waitGoroutines waits up to d for the goroutine count to come back to at
// most limit, and returns the last count.
func waitGoroutines(t testing.TB, limit int, d time.Duration) int {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		n := runtime.NumGoroutine()
		if n <= limit {
			return n
		}
		if time.Now().After(deadline) {
			var b strings.Builder
			pprof.Lookup("goroutine").WriteTo(&b, 1)
			t.Errorf("goroutines: %d after %s, want at most %d; by stack:\n%.20000s", n, d, limit, b.String())
			return n
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// goroutineBaseline lets the goroutines started so far settle and returns
// their number.
func goroutineBaseline() int {
	time.Sleep(100 * time.Millisecond)
	runtime.GC()
	return runtime.NumGoroutine()
}

// peakGoroutines samples the goroutine count until stop is closed and
// returns the highest seen.
func peakGoroutines(stop <-chan struct{}) <-chan int {
	out := make(chan int, 1)
	go func() {
		peak := 0
		tick := time.NewTicker(5 * time.Millisecond)
		defer tick.Stop()
		for {
			peak = max(peak, runtime.NumGoroutine())
			select {
			case <-stop:
				out <- peak
				return
			case <-tick.C:
			}
		}
	}()
	return out
}

// heapInUse is the live heap after a collection.
func heapInUse() uint64 {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapInuse
}

// percentile returns the p-th percentile (0-100) of ds.
func percentile(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	i := int(float64(len(s)-1) * p / 100)
	return s[i]
}

// h2Client speaks raw HTTP/2 frames, for sending what a well-behaved client
// never would. Writes are serialized; a reader goroutine acknowledges
// SETTINGS and records what the server sends.
type h2Client struct {
	c   net.Conn
	bw  *bufio.Writer
	fr  *http2.Framer
	enc *hpack.Encoder
	blk bytes.Buffer

	mu      sync.Mutex // writes
	written atomic.Int64

	done     chan struct{} // closed when the server ends the connection
	settled  chan struct{} // closed once the server's SETTINGS is acknowledged
	endMu    sync.Mutex
	goAway   *http2.ErrCode // set if a GOAWAY was received
	readErr  error
	statuses map[uint32]string // stream -> ":status" or "reset:<code>"
}

// countingWriter counts the bytes written to the connection.
type countingWriter struct {
	w io.Writer
	n *atomic.Int64
}

func (c countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n.Add(int64(n))
	return n, err
}

// newH2Client starts HTTP/2 on c (TLS with h2 negotiated, or h2c with prior
// knowledge): the preface and an empty SETTINGS. It returns once the
// server's SETTINGS is acknowledged, so that no acknowledgement lands in
// the middle of a header block the test sends frame by frame.
func newH2Client(t testing.TB, c net.Conn) *h2Client {
	t.Helper()
	h := &h2Client{c: c, done: make(chan struct{}), settled: make(chan struct{}), statuses: map[uint32]string{}}
	h.bw = bufio.NewWriterSize(countingWriter{c, &h.written}, 64<<10)
	h.fr = http2.NewFramer(h.bw, c)
	h.fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	h.enc = hpack.NewEncoder(&h.blk)
	c.SetWriteDeadline(time.Now().Add(30 * time.Second))
	h.write(func() error {
		if _, err := io.WriteString(h.bw, http2.ClientPreface); err != nil {
			return err
		}
		return h.fr.WriteSettings()
	})
	go h.read()
	t.Cleanup(func() { c.Close() })
	select {
	case <-h.settled:
	case <-h.done:
	case <-time.After(10 * time.Second):
		t.Fatal("no SETTINGS from the server")
	}
	return h
}

// write runs f under the write lock and flushes.
func (h *h2Client) write(f func() error) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if err := f(); err != nil {
		return err
	}
	return h.bw.Flush()
}

func (h *h2Client) read() {
	defer close(h.done)
	for {
		f, err := h.fr.ReadFrame()
		if err != nil {
			h.endMu.Lock()
			h.readErr = err
			h.endMu.Unlock()
			return
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if !f.IsAck() {
				h.write(h.fr.WriteSettingsAck)
				select {
				case <-h.settled:
				default:
					close(h.settled)
				}
			}
		case *http2.GoAwayFrame:
			h.endMu.Lock()
			code := f.ErrCode
			h.goAway = &code
			h.endMu.Unlock()
		case *http2.MetaHeadersFrame:
			h.endMu.Lock()
			h.statuses[f.StreamID] = f.PseudoValue("status")
			h.endMu.Unlock()
		case *http2.RSTStreamFrame:
			h.endMu.Lock()
			if _, ok := h.statuses[f.StreamID]; !ok {
				h.statuses[f.StreamID] = "reset:" + f.ErrCode.String()
			}
			h.endMu.Unlock()
		}
	}
}

// closed reports whether the server ended the connection.
func (h *h2Client) closed() bool {
	select {
	case <-h.done:
		return true
	default:
		return false
	}
}

// ended reports whether the server sent GOAWAY or closed the connection.
func (h *h2Client) ended() bool {
	h.endMu.Lock()
	ga := h.goAway != nil
	h.endMu.Unlock()
	return ga || h.closed()
}

// ending describes how the connection ended: the GOAWAY code and the read
// error.
func (h *h2Client) ending() string {
	h.endMu.Lock()
	defer h.endMu.Unlock()
	ga := "none"
	if h.goAway != nil {
		ga = h.goAway.String()
	}
	return fmt.Sprintf("GOAWAY %s, read: %v", ga, h.readErr)
}

// status waits up to d for the response to stream id: its ":status", or
// "reset:<code>" for a RST_STREAM, or "closed: …" if the connection ended.
func (h *h2Client) status(id uint32, d time.Duration) string {
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		h.endMu.Lock()
		s, ok := h.statuses[id]
		h.endMu.Unlock()
		if ok {
			return s
		}
		if h.closed() {
			return "closed: " + h.ending()
		}
		time.Sleep(5 * time.Millisecond)
	}
	return "no answer"
}

// block HPACK-encodes a GET of path followed by extra fields.
func (h *h2Client) block(path string, extra ...hpack.HeaderField) []byte {
	h.blk.Reset()
	for _, f := range [][2]string{{":method", "GET"}, {":scheme", "https"}, {":authority", "backend"}, {":path", path}} {
		h.enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
	}
	for _, f := range extra {
		h.enc.WriteField(f)
	}
	return bytes.Clone(h.blk.Bytes())
}

// headers sends a header block on stream id, split into a HEADERS frame
// and CONTINUATION frames of at most 16 KiB.
func (h *h2Client) headers(id uint32, blk []byte, endStream bool) error {
	const max = 16 << 10
	return h.write(func() error {
		first := blk[:min(len(blk), max)]
		rest := blk[len(first):]
		if err := h.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: first, EndStream: endStream, EndHeaders: len(rest) == 0}); err != nil {
			return err
		}
		for len(rest) > 0 {
			n := min(len(rest), max)
			if err := h.fr.WriteContinuation(id, n == len(rest), rest[:n]); err != nil {
				return err
			}
			rest = rest[n:]
		}
		return nil
	})
}

// appCounter is an app that counts the requests reaching it and answers
// those to /slow only when the client goes away or after 10s.
type appCounter struct {
	n    atomic.Int64
	slow atomic.Int64
}

func (a *appCounter) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	a.n.Add(1)
	if r.URL.Path == "/slow" {
		a.slow.Add(1)
		select {
		case <-r.Context().Done():
		case <-time.After(10 * time.Second):
		}
		return
	}
	io.WriteString(w, "ok")
}

// startAbuseOutbound runs an HTTP outbound listener ("up") in front of the
// rig: the app side speaks HTTP/1.1 or h2c, the upstream side pooled
// HTTP/2 over mTLS.
func startAbuseOutbound(t *testing.T, r *abuseRig, cfg proxy.Config) (string, *inbound) {
	t.Helper()
	front := spiffeid.RequireFromPath(td, "/frontend")
	cfg.SVIDs = static{svid: r.ca.Issue(t, front)}
	cfg.Bundles = x509bundle.NewSet(r.ca.Bundle())
	cfg.Outbound = []proxy.Outbound{{Name: "up", Listen: "127.0.0.1:0", Upstream: r.addr,
		Expect: policy(t, "spiffe://example.org/backend"), HTTP: &proxy.OutboundHTTP{}}}
	cfg.Tokens = source{j: newJWTIssuer(t), id: front}
	p, reg := startProxy(t, cfg)
	return p.Addr("up").String(), &inbound{reg: reg}
}

// h2cClient is a client of an outbound listener speaking h2c with prior
// knowledge.
func h2cClient() *http.Client {
	tr := &http.Transport{Protocols: new(http.Protocols)}
	tr.Protocols.SetUnencryptedHTTP2(true)
	return &http.Client{Transport: tr, Timeout: 10 * time.Second}
}

// rapidReset sends up to n streams on h, each HEADERS (a GET of path)
// followed at once by RST_STREAM, until the server ends the connection.
// It returns the number of streams sent.
func rapidReset(h *h2Client, path string, n int) int {
	blk := h.block(path)
	sent := 0
	for i := range n {
		id := uint32(2*i + 1)
		err := h.write(func() error {
			if err := h.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: blk, EndStream: true, EndHeaders: true}); err != nil {
				return err
			}
			return h.fr.WriteRSTStream(id, http2.ErrCodeCancel)
		})
		if err != nil || h.closed() {
			break
		}
		sent++
	}
	return sent
}

// TestAbuseH2RapidReset is L5's rapid reset (CVE-2023-44487): one
// connection opens streams to a slow app and resets each at once. The
// sidecar closes that connection ("rapid_reset"); goroutines stay within
// net/http's per-connection handler cap; the cancelled requests are
// counted as client_canceled, not app_unavailable; another client on its
// own connection keeps being served throughout. This holds on the mTLS
// inbound, and on the outbound listener's h2c side, where the app's
// connection is closed before the upstream sidecar closes the pooled
// connection that the other client shares.
func TestAbuseH2RapidReset(t *testing.T) {
	const streams = 100000
	app := &appCounter{}
	r := startAbuseRig(t, app, proxy.Config{HandshakeTimeout: 2 * time.Second})
	outAddr, outM := startAbuseOutbound(t, r, proxy.Config{HandshakeTimeout: 2 * time.Second})
	tests := []struct {
		name  string
		dial  func(t *testing.T) net.Conn
		other func() error
		m     *inbound // the proxy that closes the connection
	}{
		{"inbound mTLS h2", func(t *testing.T) net.Conn { return r.dialTLS(t, "h2") },
			getOK(r.httpClient(true), "https://"+r.addr+"/ok"), r.m},
		{"outbound h2c", func(t *testing.T) net.Conn {
			c, err := net.Dial("tcp", outAddr)
			if err != nil {
				t.Fatal(err)
			}
			return c
		}, getOK(h2cClient(), "http://"+outAddr+"/ok"), outM},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := tt.other(); err != nil {
				t.Fatal(err)
			}
			closedBefore := tt.m.metric(t, "credflow_connections_closed_total", "reason=rapid_reset")
			inClosedBefore := r.m.metric(t, "credflow_connections_closed_total", "reason=rapid_reset")
			slowBefore := app.slow.Load()
			g0 := goroutineBaseline()
			heap0 := heapInUse()
			stop := make(chan struct{})
			peak := peakGoroutines(stop)
			// Another client, on its own connection, all along.
			var otherOK, otherFailed atomic.Int64
			var ow sync.WaitGroup
			ow.Go(func() {
				for {
					select {
					case <-stop:
						return
					default:
					}
					if err := tt.other(); err != nil {
						otherFailed.Add(1)
						t.Logf("the other client: %v", err)
					} else {
						otherOK.Add(1)
					}
					time.Sleep(5 * time.Millisecond)
				}
			})

			h := newH2Client(t, tt.dial(t))
			start := time.Now()
			sent := rapidReset(h, "/slow", streams)
			select {
			case <-h.done:
			case <-time.After(5 * time.Second):
			}
			took := time.Since(start)
			heap1 := heapInUse()
			close(stop)
			ow.Wait()
			gPeak := <-peak
			h.c.Close()
			t.Logf("%d of %d HEADERS+RST_STREAM sent in %s; connection closed: %v (%s); the app saw %d; goroutines %d, peak %d; heap in use %+.1f MB; the other client: %d ok, %d failed",
				sent, streams, took.Round(time.Millisecond), h.closed(), h.ending(), app.slow.Load()-slowBefore,
				g0, gPeak, (float64(heap1)-float64(heap0))/(1<<20), otherOK.Load(), otherFailed.Load())
			t.Logf("inbound: closed rapid_reset %v, client_canceled %v, app_unavailable %v; outbound: client_canceled %v, upstream_unavailable %v",
				r.m.metric(t, "credflow_connections_closed_total", "reason=rapid_reset"),
				r.m.metric(t, "credflow_refusals_total", "reason=client_canceled"), r.m.metric(t, "credflow_refusals_total", "reason=app_unavailable"),
				outM.metric(t, "credflow_refusals_total", "reason=client_canceled"), outM.metric(t, "credflow_refusals_total", "reason=upstream_unavailable"))
			if otherFailed.Load() > 0 || otherOK.Load() == 0 {
				t.Errorf("the other client: %d ok, %d failed during the attack", otherOK.Load(), otherFailed.Load())
			}
			// net/http alone would let the flood run at its cap of 250
			// handlers per connection, each with the goroutines of an app
			// connection, for as long as the client likes; the connection
			// is closed long before.
			if gPeak > g0+500 {
				t.Errorf("goroutines peaked at %d, baseline %d", gPeak, g0)
			}
			if n := app.slow.Load() - slowBefore; n > 500 {
				t.Errorf("the app got %d of the requests", n)
			}
			if heap1 > heap0+64<<20 {
				t.Errorf("heap in use grew from %d to %d MB", heap0>>20, heap1>>20)
			}
			if n := r.m.metric(t, "credflow_refusals_total", "reason=app_unavailable"); n != 0 {
				t.Errorf("%v cancelled requests counted as app_unavailable", n)
			}
			if !h.closed() || sent == streams {
				t.Errorf("the attacking connection was not closed (%d streams sent)", sent)
			}
			tt.m.waitMetric(t, closedBefore+1, "credflow_connections_closed_total", "reason=rapid_reset")
			if tt.m != r.m {
				if n := r.m.metric(t, "credflow_connections_closed_total", "reason=rapid_reset"); n != inClosedBefore {
					t.Errorf("the upstream closed %v pooled connections", n-inClosedBefore)
				}
			}
			if err := tt.other(); err != nil {
				t.Fatalf("the other client after the attack: %v", err)
			}
			waitGoroutines(t, g0+10, 10*time.Second)
		})
	}
}

// getOK returns a function that GETs url with c and wants a 200.
func getOK(c *http.Client, url string) func() error {
	return func() error {
		resp, err := c.Get(url)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		io.Copy(io.Discard, resp.Body)
		if resp.StatusCode != 200 {
			return fmt.Errorf("status %d", resp.StatusCode)
		}
		return nil
	}
}

// TestAbuseHeaderLimits is L4: a header over 64 KiB, 10,000 tiny headers
// and an HPACK bomb, over HTTP/1.1 and HTTP/2 through the mTLS inbound,
// are refused (431, 400, a stream reset or the connection closed) before
// the app sees them, with bounded allocation.
func TestAbuseHeaderLimits(t *testing.T) {
	app := &appCounter{}
	r := startAbuseRig(t, app, proxy.Config{HandshakeTimeout: 2 * time.Second})
	big := strings.Repeat("a", 70<<10)
	var tiny strings.Builder
	for range 10000 {
		tiny.WriteString("a: b\r\n")
	}
	h1 := func(t *testing.T, req string) string {
		c := r.dialTLS(t, "http/1.1")
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		go io.WriteString(c, req) // the server may answer before reading it all
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			return "closed: " + err.Error()
		}
		resp.Body.Close()
		return resp.Status
	}
	t.Run("HTTP/1.1 huge header", func(t *testing.T) {
		got := h1(t, "GET /bad HTTP/1.1\r\nHost: b\r\nX-Big: "+big+"\r\n\r\n")
		t.Logf("a 70 KiB header: %s", got)
		if !strings.HasPrefix(got, "431 ") {
			t.Errorf("a 70 KiB header: %s, want 431", got)
		}
	})
	t.Run("HTTP/1.1 10000 headers", func(t *testing.T) {
		// 60 KB, under the byte limit: net/http refuses past 500 values.
		got := h1(t, "GET /bad HTTP/1.1\r\nHost: b\r\n"+tiny.String()+"\r\n")
		t.Logf("10,000 headers: %s", got)
		if !strings.HasPrefix(got, "431 ") && !strings.HasPrefix(got, "400 ") {
			t.Errorf("10,000 headers: %s, want 431 or 400", got)
		}
	})
	h2 := func(t *testing.T, fields ...hpack.HeaderField) (string, int) {
		h := newH2Client(t, r.dialTLS(t, "h2"))
		blk := h.block("/bad", fields...)
		if err := h.headers(1, blk, true); err != nil && !h.closed() {
			t.Fatal(err)
		}
		return h.status(1, 10*time.Second), len(blk)
	}
	refused := func(s string) bool {
		return s == "431" || strings.HasPrefix(s, "reset:") || strings.HasPrefix(s, "closed:")
	}
	t.Run("HTTP/2 huge header", func(t *testing.T) {
		got, _ := h2(t, hpack.HeaderField{Name: "x-big", Value: big})
		t.Logf("a 70 KiB header: %s", got)
		if !refused(got) {
			t.Errorf("a 70 KiB header: %s, want 431 or reset", got)
		}
	})
	t.Run("HTTP/2 10000 headers", func(t *testing.T) {
		var fields []hpack.HeaderField
		for i := range 10000 {
			fields = append(fields, hpack.HeaderField{Name: fmt.Sprintf("x%d", i), Value: "v"})
		}
		got, _ := h2(t, fields...)
		t.Logf("10,000 headers: %s", got)
		if !refused(got) {
			t.Errorf("10,000 headers: %s, want 431 or reset", got)
		}
	})
	t.Run("HTTP/2 HPACK bomb", func(t *testing.T) {
		// One 4000-byte value enters the dynamic table; each repeat is a
		// one-byte index: 12,000 repeats, in one 16 KB frame, are 48 MB
		// decoded.
		bomb := hpack.HeaderField{Name: "x-bomb", Value: strings.Repeat("b", 4000)}
		fields := make([]hpack.HeaderField, 12000)
		for i := range fields {
			fields[i] = bomb
		}
		var ms0, ms1 runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&ms0)
		got, wire := h2(t, fields...)
		runtime.ReadMemStats(&ms1)
		alloc := ms1.TotalAlloc - ms0.TotalAlloc
		t.Logf("HPACK bomb: %d bytes on the wire, %d MB decoded if unbounded: %s; %.1f MB allocated meanwhile",
			wire, len(fields)*(4000+6)>>20, got, float64(alloc)/(1<<20))
		if wire > 16<<10 {
			t.Fatalf("the bomb is %d bytes on the wire: the encoder did not index it", wire)
		}
		if !refused(got) {
			t.Errorf("HPACK bomb: %s, want 431 or reset", got)
		}
		if alloc > 16<<20 {
			t.Errorf("%d MB allocated while the bomb was handled", alloc>>20)
		}
	})
	if n := app.n.Load(); n != 0 {
		t.Errorf("the app saw %d of the oversized requests", n)
	}
	// The listener still serves.
	resp, err := r.httpClient(true).Get("https://" + r.addr + "/ok")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("a normal request after: %d", resp.StatusCode)
	}
}

// trickler holds connections open by writing one byte to each every
// interval until the server closes it, and records when that happened.
type trickler struct {
	mu     sync.Mutex
	opened map[net.Conn]time.Time
	peak   int             // most open at once
	life   []time.Duration // from open to the server's close
	stop   chan struct{}
	wg     sync.WaitGroup
}

func newTrickler() *trickler {
	return &trickler{opened: map[net.Conn]time.Time{}, stop: make(chan struct{})}
}

// add starts watching c, opened at start: a reader waits for the server
// to close it.
func (tr *trickler) add(c net.Conn, start time.Time) {
	tr.mu.Lock()
	tr.opened[c] = start
	tr.peak = max(tr.peak, len(tr.opened))
	tr.mu.Unlock()
	tr.wg.Go(func() {
		c.SetReadDeadline(time.Now().Add(time.Minute))
		io.Copy(io.Discard, c) // until EOF, a reset or the deadline
		tr.mu.Lock()
		tr.life = append(tr.life, time.Since(start))
		delete(tr.opened, c)
		tr.mu.Unlock()
		c.Close()
	})
}

// run writes one byte of next(c) to every open connection each interval
// until closeAll.
func (tr *trickler) run(interval time.Duration, next func(c net.Conn) []byte) {
	tr.wg.Go(func() {
		tick := time.NewTicker(interval)
		defer tick.Stop()
		for {
			select {
			case <-tr.stop:
				return
			case <-tick.C:
			}
			tr.mu.Lock()
			conns := make([]net.Conn, 0, len(tr.opened))
			for c := range tr.opened {
				conns = append(conns, c)
			}
			tr.mu.Unlock()
			for _, c := range conns {
				c.SetWriteDeadline(time.Now().Add(interval))
				c.Write(next(c))
			}
		}
	})
}

// open is the number of connections the server has not closed yet.
func (tr *trickler) open() int {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	return len(tr.opened)
}

// waitClosed waits up to d for the server to close every connection and
// returns the lifetimes seen.
func (tr *trickler) waitClosed(d time.Duration) []time.Duration {
	deadline := time.Now().Add(d)
	for tr.open() > 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	tr.mu.Lock()
	defer tr.mu.Unlock()
	return append([]time.Duration(nil), tr.life...)
}

// closeAll closes what is still open and joins the goroutines.
func (tr *trickler) closeAll() {
	close(tr.stop)
	tr.mu.Lock()
	for c := range tr.opened {
		c.Close()
	}
	tr.mu.Unlock()
	tr.wg.Wait()
}

// partialClientHello is the start of a TLS record announcing a 512-byte
// ClientHello that never comes in full.
var partialClientHello = []byte{0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03}

// TestAbuseSlowlorisHandshake is L3 on the mTLS handshake: hundreds of
// connections (thousands with -long) send part of a ClientHello and then a
// byte every 100ms. The handshake timeout reaps every one, the refusals
// are counted as handshake_timeout, goroutines come back to the baseline,
// and a legitimate client meanwhile keeps succeeding.
func TestAbuseSlowlorisHandshake(t *testing.T) {
	n, timeout := 300, time.Second
	if longForm() {
		n, timeout = 4000, 5*time.Second // all open at once
	}
	ca := testca.New(t, td)
	echo, err := sidecartest.Echo(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	p, reg := startProxy(t, proxy.Config{
		SVIDs:            static{svid: ca.Issue(t, spiffeid.RequireFromPath(td, "/backend"))},
		Bundles:          x509bundle.NewSet(ca.Bundle()),
		Inbound:          []proxy.Inbound{{Name: "app", Listen: "127.0.0.1:0", App: echo, Allow: policy(t, "spiffe://example.org/frontend")}},
		HandshakeTimeout: timeout,
		// Attack and legitimate client share 127.0.0.1, and the attack
		// sends its first bytes: this is about the handshake timeout, not
		// the handshake budget (TestIdleConnectionsFlood).
		MaxHandshakes:       n + 64,
		HandshakesPerSource: n + 64,
	})
	addr := p.Addr("app").String()
	m := &inbound{reg: reg}
	good := clientConfig(ca.Issue(t, spiffeid.RequireFromPath(td, "/frontend")))
	good.ClientSessionCache = nil // a full handshake every time
	// legit makes full handshakes and echoes until more() is false.
	legit := func(more func(i int) bool) (lat []time.Duration, fails int) {
		for i := 0; more(i); i++ {
			t0 := time.Now()
			if _, err := echoOnce(addr, good, "ping"); err != nil {
				fails++
				t.Logf("legitimate client: %v", err)
				continue
			}
			lat = append(lat, time.Since(t0))
		}
		return lat, fails
	}
	before, fails := legit(func(i int) bool { return i < 50 })
	if fails > 0 {
		t.Fatalf("%d legitimate requests failed before the attack", fails)
	}
	g0 := goroutineBaseline()

	tr := newTrickler()
	tr.run(100*time.Millisecond, func(net.Conn) []byte { return []byte{0} })
	var dialErrs atomic.Int64
	var dialled atomic.Bool
	go func() {
		defer dialled.Store(true)
		var dw sync.WaitGroup
		sem := make(chan struct{}, 32)
		for range n {
			sem <- struct{}{}
			dw.Go(func() {
				defer func() { <-sem }()
				c, err := net.DialTimeout("tcp", addr, 5*time.Second)
				if err != nil {
					dialErrs.Add(1)
					return
				}
				start := time.Now()
				c.Write(partialClientHello)
				tr.add(c, start)
			})
		}
		dw.Wait()
	}()
	// The legitimate client works while the attack connections are open.
	stopAt := time.Now().Add(timeout + 10*time.Second)
	during, fails := legit(func(int) bool { return (!dialled.Load() || tr.open() > 0) && time.Now().Before(stopAt) })
	lives := tr.waitClosed(timeout + 10*time.Second)
	left := tr.open()
	tr.closeAll()
	if dialErrs.Load() > 0 {
		t.Fatalf("%d attack connections could not be dialled", dialErrs.Load())
	}
	t.Logf("%d slowloris connections (at most %d open at once): reaped %d, lifetime min %s p50 %s max %s",
		n, tr.peak, len(lives), percentile(lives, 0).Round(time.Millisecond), percentile(lives, 50).Round(time.Millisecond), percentile(lives, 100).Round(time.Millisecond))
	t.Logf("legitimate handshake+echo: before p50 %s p99 %s (%d); during p50 %s p99 %s (%d, %d failed)",
		percentile(before, 50).Round(time.Millisecond), percentile(before, 99).Round(time.Millisecond), len(before),
		percentile(during, 50).Round(time.Millisecond), percentile(during, 99).Round(time.Millisecond), len(during), fails)
	if left > 0 {
		t.Fatalf("%d of %d connections still open %s after the handshake timeout", left, n, 10*time.Second)
	}
	slack := 3 * time.Second
	if longForm() {
		slack = 10 * time.Second
	}
	// The lower bound is loose: a dialler may be descheduled between its
	// connect and its clock reading.
	if maxLife := percentile(lives, 100); maxLife > timeout+slack || percentile(lives, 0) < timeout/2 {
		t.Errorf("lifetimes from %s to %s, want within [%s, %s]", percentile(lives, 0), maxLife, timeout, timeout+slack)
	}
	if fails > 0 || len(during) < 5 {
		t.Errorf("legitimate requests during the attack: %d ok, %d failed", len(during), fails)
	}
	m.waitMetric(t, float64(n), "credflow_refusals_total", "direction=inbound", "reason=handshake_timeout")
	waitGoroutines(t, g0+5, 5*time.Second)
}

// TestAbuseSlowlorisHeaders is L3 past the handshake: peers that complete
// mTLS on an HTTP inbound and then trickle their request headers, over
// HTTP/1.1 and HTTP/2 (the connection preface alone, or a header block
// continued a byte at a time), are closed once the header timeout (the
// handshake timeout) has passed, and the app sees nothing.
func TestAbuseSlowlorisHeaders(t *testing.T) {
	n, timeout := 40, time.Second
	if longForm() {
		n, timeout = 1000, 5*time.Second
	}
	app := &appCounter{}
	r := startAbuseRig(t, app, proxy.Config{HandshakeTimeout: timeout})
	// An HTTP/2 header block that never ends: HEADERS without END_HEADERS
	// starting a 60,000-byte literal, then one byte per CONTINUATION frame.
	var h2Settings, h2Start, h2Byte bytes.Buffer
	io.WriteString(&h2Settings, http2.ClientPreface)
	http2.NewFramer(&h2Settings, nil).WriteSettings()
	{
		var blk bytes.Buffer
		enc := hpack.NewEncoder(&blk)
		for _, f := range [][2]string{{":method", "GET"}, {":scheme", "https"}, {":authority", "backend"}, {":path", "/bad"}} {
			enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
		}
		blk.Write([]byte{0x00, 0x01, 'x', 0x7f, 0xe1, 0xd3, 0x03}) // literal "x", value length 127+59873, under the limit
		io.WriteString(&h2Start, http2.ClientPreface)
		fr := http2.NewFramer(&h2Start, nil)
		fr.WriteSettings()
		fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: blk.Bytes(), EndStream: true})
		http2.NewFramer(&h2Byte, nil).WriteContinuation(1, false, []byte{'a'})
	}
	tests := []struct {
		name  string
		alpn  string
		start []byte
		next  []byte
	}{
		{"HTTP/1.1 headers a byte at a time", "http/1.1", []byte("GET /bad HTTP/1.1\r\nHost: b\r\nX-Slow: "), []byte("a")},
		{"HTTP/2 preface and SETTINGS then nothing", "h2", h2Settings.Bytes(), nil},
		{"HTTP/2 header block a byte at a time", "h2", h2Start.Bytes(), h2Byte.Bytes()},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := r.m.metric(t, "credflow_refusals_total", "reason=header_timeout")
			g0 := goroutineBaseline()
			tr := newTrickler()
			tr.run(100*time.Millisecond, func(net.Conn) []byte { return tt.next })
			for range n {
				c := r.dialTLS(t, tt.alpn)
				start := time.Now()
				c.Write(tt.start)
				tr.add(c, start)
			}
			lives := tr.waitClosed(timeout + 10*time.Second)
			left := tr.open()
			tr.closeAll()
			t.Logf("%d connections (at most %d open at once): reaped %d, lifetime min %s p50 %s max %s", n, tr.peak, len(lives),
				percentile(lives, 0).Round(time.Millisecond), percentile(lives, 50).Round(time.Millisecond), percentile(lives, 100).Round(time.Millisecond))
			if left > 0 {
				t.Fatalf("%d of %d connections still open %s after the header timeout", left, n, 10*time.Second)
			}
			if maxLife := percentile(lives, 100); maxLife > timeout+3*time.Second || percentile(lives, 0) < timeout/2 {
				t.Errorf("lifetimes from %s to %s, want within [%s, %s]", percentile(lives, 0), maxLife, timeout, timeout+3*time.Second)
			}
			r.m.waitMetric(t, before+float64(n), "credflow_refusals_total", "reason=header_timeout")
			waitGoroutines(t, g0+5, 5*time.Second)
		})
	}
	if got := app.n.Load(); got != 0 {
		t.Errorf("the app saw %d requests", got)
	}
}

// TestAbuseH2ContinuationFlood is L5's CONTINUATION flood (CVE-2023-45288):
// HEADERS without END_HEADERS, then CONTINUATION frames without end. With
// header fields in them, the connection is closed once the header list
// passes its limit, after a bounded number of bytes; empty ones carry no
// fields to count, and the connection is closed at the header timeout.
// Memory stays bounded and the app sees nothing.
func TestAbuseH2ContinuationFlood(t *testing.T) {
	const timeout = time.Second
	app := &appCounter{}
	r := startAbuseRig(t, app, proxy.Config{HandshakeTimeout: timeout})
	field := []byte{0x00, 0x01, 'x', 0x7f, 0x81, 0x07} // a literal "x", not indexed, 1000-byte value
	field = append(field, bytes.Repeat([]byte{'v'}, 1000)...)
	tests := []struct {
		name     string
		frag     []byte
		maxBytes int64         // closed before this much is sent
		maxTime  time.Duration // or this much time
	}{
		// The server stops reading past 64 KiB of fields; what is sent
		// beyond that sits in socket buffers until the GOAWAY arrives.
		{"header fields", bytes.Repeat(field, 8), 8 << 20, 10 * time.Second},
		{"empty frames", nil, 1 << 40, timeout + 3*time.Second},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g0 := goroutineBaseline()
			heap0 := heapInUse()
			var ms0, ms1 runtime.MemStats
			runtime.ReadMemStats(&ms0)
			h := newH2Client(t, r.dialTLS(t, "h2"))
			if err := h.write(func() error {
				return h.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: h.block("/bad"), EndStream: true})
			}); err != nil {
				t.Fatal(err)
			}
			start := time.Now()
			sent0 := h.written.Load()
			for !h.ended() && h.written.Load()-sent0 < tt.maxBytes && time.Since(start) < tt.maxTime {
				h.mu.Lock()
				h.fr.WriteContinuation(1, false, tt.frag)
				if h.bw.Available() < 4<<10 {
					h.bw.Flush()
				}
				h.mu.Unlock()
			}
			took, sent, ended := time.Since(start), h.written.Load()-sent0, h.ended()
			select {
			case <-h.done:
			case <-time.After(5 * time.Second):
			}
			runtime.ReadMemStats(&ms1)
			heap1 := heapInUse()
			t.Logf("ended after %s and %d KB sent (%s); %.1f MB allocated meanwhile, heap in use %+.1f MB",
				took.Round(time.Millisecond), sent>>10, h.ending(),
				float64(ms1.TotalAlloc-ms0.TotalAlloc)/(1<<20), (float64(heap1)-float64(heap0))/(1<<20))
			if !ended || !h.closed() {
				t.Fatalf("the connection was not ended within %d KB and %s", tt.maxBytes>>10, tt.maxTime)
			}
			if heap1 > heap0+32<<20 {
				t.Errorf("heap in use grew from %d to %d MB", heap0>>20, heap1>>20)
			}
			h.c.Close()
			waitGoroutines(t, g0+5, 5*time.Second)
		})
	}
	if n := app.n.Load(); n != 0 {
		t.Errorf("the app saw %d requests", n)
	}
}
