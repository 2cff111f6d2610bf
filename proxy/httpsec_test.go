package proxy_test

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/credflow/credflow/internal/testca"
	"github.com/credflow/credflow/proxy"
	"github.com/credflow/credflow/proxy/route"
)

// secRig is an HTTP inbound listener ("app") of backend in front of app,
// allowing the frontend in; the frontend talks to it directly over mTLS,
// as a workload with its own SVID (or any non-credflow client) may.
type secRig struct {
	p      *proxy.Proxy
	addr   string
	m      *inbound // metrics
	ca     *testca.CA
	issuer *jwtIssuer
	client *tls.Config // the frontend's identity, no ALPN
}

// startSecRig starts the rig; in.Routes defaults to the frontend on /api/*
// and GET /ws/* with websocket upgrades.
func startSecRig(t *testing.T, app http.Handler, in proxy.InboundHTTP, cfg proxy.Config) *secRig {
	t.Helper()
	appLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: app}
	go srv.Serve(appLn)
	t.Cleanup(func() { srv.Close() })
	ca := testca.New(t, td)
	issuer := newJWTIssuer(t)
	if len(in.Routes.Rules) == 0 {
		api, _ := route.ParsePath("/api/*")
		ws, _ := route.ParsePath("/ws/*")
		front := policy(t, "spiffe://example.org/frontend")
		in.Routes = route.Table{Rules: []route.Rule{
			{Peers: front, Paths: []route.Path{api}},
			{Peers: front, Methods: []string{"GET"}, Paths: []route.Path{ws}, Upgrade: []string{"websocket"}},
		}}
	}
	cfg.SVIDs = static{svid: ca.Issue(t, spiffeid.RequireFromPath(td, "/backend"))}
	cfg.Bundles = x509bundle.NewSet(ca.Bundle())
	cfg.ValidateJWT = issuer.validate
	cfg.Inbound = []proxy.Inbound{{Name: "app", Listen: "127.0.0.1:0", App: appLn.Addr().String(),
		Allow: policy(t, "spiffe://example.org/frontend"), HTTP: &in}}
	p, reg := startProxy(t, cfg)
	return &secRig{p: p, addr: p.Addr("app").String(), m: &inbound{reg: reg}, ca: ca, issuer: issuer,
		client: clientConfig(ca.Issue(t, spiffeid.RequireFromPath(td, "/frontend")))}
}

// dial opens an HTTP/1.1 mTLS connection to the rig as the frontend.
func (r *secRig) dial(t *testing.T) (*tls.Conn, *bufio.Reader) {
	t.Helper()
	cfg := r.client.Clone()
	cfg.NextProtos = []string{"http/1.1"}
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", r.addr, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c, bufio.NewReader(c)
}

// do sends req (without its final CRLF) on a new HTTP/1.1 connection and
// returns the status, the refusal reason and the body.
func (r *secRig) do(t *testing.T, req string) (int, string, string) {
	t.Helper()
	c, br := r.dial(t)
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, req+"Connection: close\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("reading the response to %q: %v", req, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header.Get("X-Credflow-Reason"), string(b)
}

// headerApp reports the request target it got and every header, one
// "Name: value" line each, names as they arrived.
var headerApp = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
	fmt.Fprintf(w, "uri=%s\npath=%s\n", r.RequestURI, r.URL.Path)
	for k, vs := range r.Header {
		for _, v := range vs {
			fmt.Fprintf(w, "%s: %s\n", k, v)
		}
	}
})

// headersOf parses headerApp's answer.
func headersOf(body string) (uri string, h map[string][]string) {
	h = map[string][]string{}
	for line := range strings.SplitSeq(body, "\n") {
		if u, ok := strings.CutPrefix(line, "uri="); ok {
			uri = u
			continue
		}
		if k, v, ok := strings.Cut(line, ": "); ok {
			h[k] = append(h[k], v)
		}
	}
	return uri, h
}

// TestHTTPEncodedPathParameter is S15-1: an encoded ';' (and bytes that
// are not UTF-8, and characters that fold to a delimiter) is refused like
// a raw one, and what the app receives decodes to exactly the path that
// was authorized, with nothing it could read as a parameter.
func TestHTTPEncodedPathParameter(t *testing.T) {
	var mu sync.Mutex
	var reached []string
	app := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		reached = append(reached, r.RequestURI)
		mu.Unlock()
		headerApp(w, r)
	})
	r := startSecRig(t, app, proxy.InboundHTTP{}, proxy.Config{})
	refused := []string{
		"/api/..%3B/admin", "/api/..%3b/admin", "/api/x%3Bjsessionid=1/../../admin",
		"/api/%ff", "/api/%c0%af..%c0%afadmin", "/api/%C0%AE%C0%AE/admin",
		"/api/%ef%bc%8f..%ef%bc%8fadmin", "/api/%ef%bc%8e%ef%bc%8e/admin",
	}
	for _, p := range refused {
		if code, reason, body := r.do(t, "GET "+p+" HTTP/1.1\r\nHost: b\r\n"); code != 400 || reason != "bad_path" {
			t.Errorf("GET %s: %d %s %q, want 400 bad_path", p, code, reason, body)
		}
	}
	mu.Lock()
	if len(reached) > 0 {
		t.Errorf("the app received %q", reached)
	}
	mu.Unlock()
	r.m.waitMetric(t, float64(len(refused)), "credflow_refusals_total", "reason=bad_path")

	// Byte for byte: the request target the app gets is one spelling of
	// the canonical path, which it decodes back to exactly that path.
	for _, c := range []struct{ in, canon, uri string }{
		{"/api/a%20b", "/api/a b", "/api/a%20b"},
		{"/api/%7Eu/./x//y", "/api/~u/x/y", "/api/~u/x/y"},
		{"/api/x%3Fy", "/api/x?y", "/api/x%3Fy"},
		{"/api/x%23y", "/api/x#y", "/api/x%23y"},
		{"/api/%25", "/api/%", "/api/%25"},
		{"/api/%252e%252e/admin", "/api/%2e%2e/admin", "/api/%252e%252e/admin"},
		{"/api/caf%c3%a9", "/api/café", "/api/caf%C3%A9"},
		{"/api/x?a=1&b=%3B", "/api/x", "/api/x?a=1&b=%3B"},
	} {
		code, reason, body := r.do(t, "GET "+c.in+" HTTP/1.1\r\nHost: b\r\n")
		uri, _ := headersOf(body)
		if code != 200 || uri != c.uri {
			t.Errorf("GET %s: %d %s, the app got %q, want %q", c.in, code, reason, uri, c.uri)
			continue
		}
		escaped, _, _ := strings.Cut(uri, "?")
		if got, err := url.PathUnescape(escaped); err != nil || got != c.canon || strings.Contains(escaped, ";") {
			t.Errorf("GET %s: the app's %q decodes to %q, %v; want the authorized %q", c.in, escaped, got, err, c.canon)
		}
	}
}

// TestHTTPConnectionHeaderCannotDropIdentity is S15-2: a Connection header
// naming a header the sidecar sets, verifies or strips is refused, so a
// peer cannot have the identity header removed after the sidecar set it;
// other hop-by-hop names still work, and the identity header arrives.
func TestHTTPConnectionHeaderCannotDropIdentity(t *testing.T) {
	r := startSecRig(t, headerApp, proxy.InboundHTTP{}, proxy.Config{})
	for _, conn := range []string{
		"keep-alive, X-Credflow-Peer-Id", "X-Credflow-Peer-Id", "x_credflow_peer_id", "close,x-credflow-peer-id",
		"Authorization", "Txn-Token", "txn_token", "X-Forwarded-Client-Cert", "X-Credflow-Jwt-Svid",
	} {
		code, reason, body := r.do(t, "GET /api/x HTTP/1.1\r\nHost: b\r\nConnection: "+conn+"\r\n")
		if code != 400 || reason != "bad_connection_header" {
			t.Errorf("Connection: %s: %d %s %q, want 400 bad_connection_header", conn, code, reason, body)
		}
	}
	r.m.waitMetric(t, 9, "credflow_refusals_total", "reason=bad_connection_header")
	code, _, body := r.do(t, "GET /api/x HTTP/1.1\r\nHost: b\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\n")
	_, h := headersOf(body)
	if code != 200 || !slices.Equal(h[proxy.PeerHeader], []string{"spiffe://example.org/frontend"}) || h["X-Hop"] != nil {
		t.Errorf("Connection naming another header: %d %q", code, body)
	}
}

// TestHTTPHeaderLookalikes is S15-2 and S15-11: header names that CGI,
// WSGI, Rack and PHP read as a managed header (any case, '_' for '-') do
// not reach the app, over HTTP/1.1 or HTTP/2: the peer header is the
// sidecar's alone, and a transaction token, an XFCC or a second token the
// sidecar has not verified never arrives under another spelling.
func TestHTTPHeaderLookalikes(t *testing.T) {
	r := startSecRig(t, headerApp, proxy.InboundHTTP{
		RequireJWT:  true,
		TokenHeader: "X-Credflow-Jwt-Svid",
		PassJWT:     true,
		TxnMinters:  policy(t, "spiffe://example.org/edge"), // verifies Txn-Token
	}, proxy.Config{})
	front := spiffeid.RequireFromPath(td, "/frontend")
	tok, err := r.issuer.mint(front, "spiffe://example.org/backend")
	if err != nil {
		t.Fatal(err)
	}
	forged, err := r.issuer.mint(spiffeid.RequireFromPath(td, "/admin"), "spiffe://example.org/backend")
	if err != nil {
		t.Fatal(err)
	}
	managed := map[string]bool{"x-credflow-peer-id": true, "txn-token": true, "x-forwarded-client-cert": true, "x-credflow-jwt-svid": true, "authorization": true}
	for _, h2 := range []bool{false, true} {
		tr := &http.Transport{TLSClientConfig: r.client.Clone(), ForceAttemptHTTP2: h2}
		if !h2 {
			tr.Protocols = new(http.Protocols)
			tr.Protocols.SetHTTP1(true)
		}
		client := &http.Client{Transport: tr, Timeout: 10 * time.Second}
		req, _ := http.NewRequest("GET", "https://"+r.addr+"/api/x", nil)
		req.Header["X-Credflow-Jwt-Svid"] = []string{tok}
		req.Header["X_Credflow_Jwt_Svid"] = []string{forged}
		req.Header["X_Credflow_Peer_Id"] = []string{"spiffe://example.org/admin"}
		req.Header["X-Credflow_Peer-id"] = []string{"spiffe://example.org/admin"}
		req.Header["Txn_Token"] = []string{"e30.e30.forged"}
		req.Header["X_Forwarded_Client_Cert"] = []string{"By=spiffe://example.org/admin"}
		req.Header["X-Credflow-Role"] = []string{"admin"}
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		tr.CloseIdleConnections()
		if resp.StatusCode != 200 || (resp.ProtoMajor == 2) != h2 {
			t.Fatalf("HTTP/2 %v: %s %d %s", h2, resp.Proto, resp.StatusCode, b)
		}
		_, h := headersOf(string(b))
		for k, vs := range h {
			f := strings.ReplaceAll(strings.ToLower(k), "_", "-")
			switch {
			case k == proxy.PeerHeader:
				if !slices.Equal(vs, []string{front.String()}) {
					t.Errorf("HTTP/2 %v: the app got %s: %q", h2, k, vs)
				}
			case k == "X-Credflow-Jwt-Svid":
				if !slices.Equal(vs, []string{tok}) {
					t.Errorf("HTTP/2 %v: the app got a token other than the verified one in %s", h2, k)
				}
			case managed[f] || strings.HasPrefix(f, "x-credflow-"):
				t.Errorf("HTTP/2 %v: the app got %s: %q", h2, k, vs)
			}
		}
		if h[proxy.PeerHeader] == nil || h["X-Credflow-Jwt-Svid"] == nil {
			t.Errorf("HTTP/2 %v: the app got %q", h2, b)
		}
	}
}

// TestHTTPTokenStrippedUnlessPassed: the caller's token header reaches the
// app only with PassJWT, whether or not the listener requires a token.
func TestHTTPTokenStrippedUnlessPassed(t *testing.T) {
	for _, c := range []struct {
		header string
		pass   bool
	}{{"", false}, {"X-Credflow-Jwt-Svid", false}, {"", true}} {
		r := startSecRig(t, headerApp, proxy.InboundHTTP{TokenHeader: c.header, PassJWT: c.pass}, proxy.Config{})
		tok, err := r.issuer.mint(spiffeid.RequireFromPath(td, "/frontend"), "spiffe://example.org/backend")
		if err != nil {
			t.Fatal(err)
		}
		name, val := cmpOrString(c.header, "Authorization"), tok
		if name == "Authorization" {
			val = "Bearer " + tok
		}
		code, _, body := r.do(t, "GET /api/x HTTP/1.1\r\nHost: b\r\n"+name+": "+val+"\r\n")
		_, h := headersOf(body)
		if code != 200 || (h[name] != nil) != c.pass {
			t.Errorf("token header %s, pass %v: %d, the app got %s: %q", name, c.pass, code, name, h[name])
		}
	}
}

func cmpOrString(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// upgradeApp switches protocols for any request that asks, and for
// /api/unasked without being asked; the tunnel then echoes.
type upgradeApp struct {
	mu   sync.Mutex
	seen []string // "<path> <upgrade>" of each request that reached it
}

func (a *upgradeApp) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	up := r.Header.Get("Upgrade")
	a.mu.Lock()
	a.seen = append(a.seen, r.URL.Path+" "+up)
	a.mu.Unlock()
	if up == "" && r.URL.Path != "/api/unasked" {
		return
	}
	c, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		return
	}
	defer c.Close()
	if up != "" {
		fmt.Fprintf(brw, "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: %s\r\n\r\n", up)
	} else {
		io.WriteString(brw, "HTTP/1.1 101 Switching Protocols\r\n\r\n")
	}
	brw.Flush()
	io.Copy(c, brw)
}

func (a *upgradeApp) upgrades() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	var out []string
	for _, s := range a.seen {
		if !strings.HasSuffix(s, " ") {
			out = append(out, s)
		}
	}
	return out
}

// openTunnel asks the rig for a websocket upgrade on /ws/chat and checks
// that bytes flow both ways through the tunnel.
func (r *secRig) openTunnel(t *testing.T) (*tls.Conn, *bufio.Reader) {
	t.Helper()
	c, br := r.dial(t)
	return c, r.upgrade(t, c, br)
}

// dialWhenFree dials the rig until a connection gets a slot (the rig may
// still be releasing the previous one's).
func (r *secRig) dialWhenFree(t *testing.T) (*tls.Conn, *bufio.Reader) {
	t.Helper()
	cfg := r.client.Clone()
	cfg.NextProtos = []string{"http/1.1"}
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", r.addr, cfg)
		if err == nil {
			t.Cleanup(func() { c.Close() })
			return c, bufio.NewReader(c)
		}
		if time.Now().After(deadline) {
			t.Fatalf("no connection gets a slot: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (r *secRig) upgrade(t *testing.T, c *tls.Conn, br *bufio.Reader) *bufio.Reader {
	t.Helper()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	io.WriteString(c, "GET /ws/chat HTTP/1.1\r\nHost: b\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != 101 {
		t.Fatalf("upgrade: %v %v", resp, err)
	}
	echoLine(t, c, br, "ping")
	return br
}

func echoLine(t *testing.T, c net.Conn, br *bufio.Reader, msg string) {
	t.Helper()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, msg+"\n"); err != nil {
		t.Fatal(err)
	}
	if got, err := br.ReadString('\n'); err != nil || got != msg+"\n" {
		t.Fatalf("through the tunnel: %q, %v", got, err)
	}
}

// TestHTTPUpgradeNeedsRoute is S15-3: a protocol switch is forwarded only
// where a route allows that protocol; h2c never (it would carry requests
// past the routes); a 101 the request did not ask for is not relayed.
func TestHTTPUpgradeNeedsRoute(t *testing.T) {
	app := &upgradeApp{}
	r := startSecRig(t, app, proxy.InboundHTTP{}, proxy.Config{})
	r.openTunnel(t)
	for _, c := range []struct{ name, req string }{
		{"websocket on a route without upgrade", "GET /api/x HTTP/1.1\r\nHost: b\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"},
		{"h2c", "GET /ws/chat HTTP/1.1\r\nHost: b\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n"},
		{"a list with h2c", "GET /ws/chat HTTP/1.1\r\nHost: b\r\nConnection: Upgrade\r\nUpgrade: websocket, h2c\r\n"},
		{"two Upgrade lines", "GET /ws/chat HTTP/1.1\r\nHost: b\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nUpgrade: h2c\r\n"},
		{"another protocol", "GET /ws/chat HTTP/1.1\r\nHost: b\r\nConnection: Upgrade\r\nUpgrade: tls/1.3\r\n"},
	} {
		if code, reason, body := r.do(t, c.req); code != 403 || reason != "upgrade_denied" {
			t.Errorf("%s: %d %s %q, want 403 upgrade_denied", c.name, code, reason, body)
		}
	}
	if got := app.upgrades(); !slices.Equal(got, []string{"/ws/chat websocket"}) {
		t.Errorf("upgrades that reached the app: %q, want only the allowed one", got)
	}
	r.m.waitMetric(t, 5, "credflow_refusals_total", "reason=upgrade_denied")
	if code, reason, _ := r.do(t, "GET /api/unasked HTTP/1.1\r\nHost: b\r\n"); code != 502 || reason != "app_bad_upgrade" {
		t.Errorf("a 101 nobody asked for: %d %s, want 502 app_bad_upgrade", code, reason)
	}
}

// TestHTTPUpgradeHoldsSlot is S15-3: an open tunnel holds its
// max_connections slot until it ends.
func TestHTTPUpgradeHoldsSlot(t *testing.T) {
	r := startSecRig(t, &upgradeApp{}, proxy.InboundHTTP{}, proxy.Config{MaxConnections: 1})
	tunnel, br := r.openTunnel(t)
	cfg := r.client.Clone()
	cfg.NextProtos = []string{"http/1.1"}
	if c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", r.addr, cfg); err == nil {
		c.Close()
		t.Fatal("a second connection got in while the tunnel held the only slot")
	}
	r.m.waitMetric(t, 1, "credflow_refusals_total", "reason=limit")
	echoLine(t, tunnel, br, "still open")
	tunnel.Close()
	c, br := r.dialWhenFree(t) // the slot comes back once the tunnel ends
	r.upgrade(t, c, br)
}

// TestHTTPUpgradeRevalidated is S15-3: revalidation closes a tunnel whose
// peer the policy no longer allows, or, with CloseOnPeerExpiry, whose
// certificate has expired: a tunnel is a tracked connection like any other.
func TestHTTPUpgradeRevalidated(t *testing.T) {
	r := startSecRig(t, &upgradeApp{}, proxy.InboundHTTP{}, proxy.Config{RevalidateInterval: 200 * time.Millisecond, CloseOnPeerExpiry: true})
	closed := func(c *tls.Conn, br *bufio.Reader, what string) {
		t.Helper()
		c.SetReadDeadline(time.Now().Add(15 * time.Second))
		if _, err := br.ReadString('\n'); err == nil || isTimeout(err) {
			t.Errorf("the tunnel of %s: read %v, want it closed", what, err)
		}
	}

	tunnel, br := r.openTunnel(t)
	if err := r.p.SetPolicy("app", policy(t, "spiffe://example.org/other")); err != nil {
		t.Fatal(err)
	}
	closed(tunnel, br, "a revoked peer")
	if err := r.p.SetPolicy("app", policy(t, "spiffe://example.org/frontend")); err != nil {
		t.Fatal(err)
	}

	// A certificate that expires a few seconds from now.
	now := time.Now()
	short := clientConfig(r.ca.Issue(t, spiffeid.RequireFromPath(td, "/frontend"), testca.WithValidity(now.Add(-time.Minute), now.Add(5*time.Second))))
	short.NextProtos = []string{"http/1.1"}
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", r.addr, short)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	closed(c, r.upgrade(t, c, bufio.NewReader(c)), "an expired peer")
	r.m.waitMetric(t, 1, "credflow_connections_closed_total", "reason=policy_revoked")
	r.m.waitMetric(t, 1, "credflow_connections_closed_total", "reason=peer_expired")
}

// TestHTTPUpgradeDrain is S15-3: Drain waits for an open tunnel, which
// keeps working meanwhile, and returns once it has ended.
func TestHTTPUpgradeDrain(t *testing.T) {
	r := startSecRig(t, &upgradeApp{}, proxy.InboundHTTP{}, proxy.Config{})
	tunnel, br := r.openTunnel(t)
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	if err := r.p.Drain(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Drain with a tunnel open: %v, want it to wait until its deadline", err)
	}
	echoLine(t, tunnel, br, "draining")
	tunnel.Close()
	ctx, cancel = context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	if err := r.p.Drain(ctx); err != nil {
		t.Fatalf("Drain after the tunnel closed: %v", err)
	}
}
