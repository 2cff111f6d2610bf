package proxy_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/textproto"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/credflow/credflow/agent"
	"github.com/credflow/credflow/internal/testca"
	"github.com/credflow/credflow/proxy"
	"github.com/credflow/credflow/proxy/route"
)

// jwtIssuer mints JWT-SVIDs of the example.org trust domain for tests; the
// data plane's SPIRE behaviour is tested end to end elsewhere.
type jwtIssuer struct {
	key     *ecdsa.PrivateKey
	bundles *jwtbundle.Set
}

func newJWTIssuer(t testing.TB) *jwtIssuer {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	b := jwtbundle.New(td)
	b.AddJWTAuthority("k1", key.Public())
	return &jwtIssuer{key: key, bundles: jwtbundle.NewSet(b)}
}

func (j *jwtIssuer) mint(sub spiffeid.ID, aud string) (string, error) {
	return j.mintAt(sub, aud, 0)
}

// mintAt mints a token as a clock off by skew would.
func (j *jwtIssuer) mintAt(sub spiffeid.ID, aud string, skew time.Duration) (string, error) {
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: j.key}, (&jose.SignerOptions{}).WithType("JWT").WithHeader("kid", "k1"))
	if err != nil {
		return "", err
	}
	now := time.Now().Add(skew)
	return jwt.Signed(signer).Claims(jwt.Claims{Subject: sub.String(), Audience: jwt.Audience{aud},
		IssuedAt: jwt.NewNumericDate(now), Expiry: jwt.NewNumericDate(now.Add(time.Minute))}).Serialize()
}

// source is a proxy.TokenSource for one workload.
type source struct {
	j  *jwtIssuer
	id spiffeid.ID
}

func (s source) FetchJWTSVID(_ context.Context, aud string) (*jwtsvid.SVID, error) {
	tok, err := s.j.mint(s.id, aud)
	if err != nil {
		return nil, err
	}
	return jwtsvid.ParseInsecure(tok, []string{aud})
}

func (j *jwtIssuer) validate(tok, aud string) (*jwtsvid.SVID, error) {
	return agent.ValidateJWTSVID(tok, j.bundles, aud)
}

type httpPair struct {
	outAddr, inAddr string
	in, out         *inbound
	inCfg           proxy.Inbound // the inbound listener as configured
	issuer          *jwtIssuer
	ca              *testca.CA
}

func startHTTPPair(t *testing.T, app http.Handler) *httpPair {
	t.Helper()
	return startHTTPPairWith(t, app, nil, nil)
}

// startHTTPPairWith is startHTTPPair with extra filters on the inbound and
// the outbound listener.
func startHTTPPairWith(t *testing.T, app http.Handler, inFilters, outFilters []proxy.Filter) *httpPair {
	t.Helper()
	return startHTTPPairSet(t, app, func(in *proxy.Inbound, out *proxy.Outbound) {
		in.HTTP.Filters, out.HTTP.Filters = inFilters, outFilters
	})
}

// startHTTPPairSet is startHTTPPair with set given the inbound and the
// outbound listener to change before they start.
func startHTTPPairSet(t *testing.T, app http.Handler, set func(in *proxy.Inbound, out *proxy.Outbound)) *httpPair {
	t.Helper()
	ca := testca.New(t, td)
	issuer := newJWTIssuer(t)
	appLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: app}
	go srv.Serve(appLn)
	t.Cleanup(func() { srv.Close() })

	api, _ := route.ParsePath("/api/*")
	routes := route.Table{Rules: []route.Rule{{Peers: policy(t, "spiffe://example.org/frontend"), Methods: []string{"GET", "POST"}, Paths: []route.Path{api}}}}
	bundles := x509bundle.NewSet(ca.Bundle())
	inCfg := proxy.Inbound{Name: "app", Listen: "127.0.0.1:0", App: appLn.Addr().String(), Allow: policy(t, "spiffe://example.org"), HTTP: &proxy.InboundHTTP{Routes: routes, RequireJWT: true}}
	outCfg := proxy.Outbound{Name: "up", Listen: "127.0.0.1:0", Expect: policy(t, "spiffe://example.org/backend"), HTTP: &proxy.OutboundHTTP{}}
	set(&inCfg, &outCfg)
	inP, inReg := startProxy(t, proxy.Config{
		SVIDs:       static{svid: ca.Issue(t, spiffeid.RequireFromPath(td, "/backend"))},
		Bundles:     bundles,
		Inbound:     []proxy.Inbound{inCfg},
		ValidateJWT: issuer.validate,
	})
	front := spiffeid.RequireFromPath(td, "/frontend")
	outCfg.Upstream = inP.Addr("app").String()
	outP, outReg := startProxy(t, proxy.Config{
		SVIDs:    static{svid: ca.Issue(t, front)},
		Bundles:  bundles,
		Outbound: []proxy.Outbound{outCfg},
		Tokens:   source{j: issuer, id: front},
	})
	return &httpPair{outAddr: outP.Addr("up").String(), inAddr: inP.Addr("app").String(),
		in: &inbound{p: inP, reg: inReg}, out: &inbound{p: outP, reg: outReg}, inCfg: inCfg, issuer: issuer, ca: ca}
}

// rawRequest sends a request exactly as written and returns the status
// code and body.
func rawRequest(t *testing.T, addr, req string) (int, string) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	io.WriteString(c, req)
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("reading the response to %q: %v", req, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// echoApp reports what reached it: the path, the peer header, whether a
// token, an XFCC or a spoofed header arrived.
var echoApp = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
	fmt.Fprintf(w, "path=%s peer=%s auth=%q xfcc=%q txn=%q", r.URL.Path, r.Header.Values(proxy.PeerHeader), r.Header.Get("Authorization"),
		r.Header.Get("X-Forwarded-Client-Cert"), r.Header.Get("Txn-Token"))
})

func TestHTTPRoutesAndHygiene(t *testing.T) {
	hp := startHTTPPair(t, echoApp)
	get := func(path string, extra string) (int, string) {
		return rawRequest(t, hp.outAddr, "GET "+path+" HTTP/1.1\r\nHost: backend\r\n"+extra+"Connection: close\r\n\r\n")
	}
	// B9: identity and token headers from outside never reach the app;
	// a Txn-Token on a listener that does not verify them is stripped.
	code, body := get("/api/items", "X-Credflow-Peer-Id: spiffe://example.org/admin\r\nX-Forwarded-Client-Cert: By=spiffe://evil\r\nTxn-Token: e30.e30.\r\n")
	if code != 200 || !strings.Contains(body, "path=/api/items") || !strings.Contains(body, "peer=[spiffe://example.org/frontend]") ||
		!strings.Contains(body, `auth=""`) || !strings.Contains(body, `xfcc=""`) || !strings.Contains(body, `txn=""`) {
		t.Fatalf("allowed request: %d %s", code, body)
	}
	// B1: every spelling of a path outside the rules is refused.
	for _, p := range []string{"/admin", "//admin", "/./admin", "/api/../admin", "/%61dmin", "/admin%2f", "/admin;p=1", "/ADMIN", "/api/%2e%2e/admin"} {
		if code, body := get(p, ""); code != 403 && code != 400 {
			t.Errorf("GET %s: %d %s", p, code, body)
		}
	}
	// The canonical path is what the app gets.
	if code, body := get("/api/./a//b/../c", ""); code != 200 || !strings.Contains(body, "path=/api/a/c ") {
		t.Errorf("normalized path: %d %s", code, body)
	}
	// B2: the Host header takes no part in the decision, whatever its case
	// or a trailing dot.
	for _, host := range []string{"BACKEND", "backend.", "Backend.Default.Svc."} {
		if code, _ := rawRequest(t, hp.outAddr, "GET /api/x HTTP/1.1\r\nHost: "+host+"\r\nConnection: close\r\n\r\n"); code != 200 {
			t.Errorf("Host %q on an allowed path: %d", host, code)
		}
		if code, _ := rawRequest(t, hp.outAddr, "GET /admin HTTP/1.1\r\nHost: "+host+"\r\nConnection: close\r\n\r\n"); code != 403 {
			t.Errorf("Host %q on a denied path: %d", host, code)
		}
	}
	if code, _ := rawRequest(t, hp.outAddr, "DELETE /api/x HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n"); code != 403 {
		t.Errorf("a method outside the rule: %d", code)
	}
	hp.in.waitMetric(t, 2, "credflow_refusals_total", "reason=bad_path") // %2f and ;
	if n := hp.in.metric(t, "credflow_refusals_total", "reason=route_denied"); n < 10 {
		t.Errorf("route_denied refusals = %v", n)
	}
}

// TestHTTPSmuggling is B11: the sidecar parses each HTTP/1 request once
// and re-frames it (HTTP/2 between sidecars, fresh framing to the app), so
// no request reaches the app unseen. Ambiguous framing is refused; a
// request hidden behind Content-Length+Transfer-Encoding is parsed as the
// separate request it is under RFC 9112 and authorized on its own.
func TestHTTPSmuggling(t *testing.T) {
	var mu sync.Mutex
	var seen []string
	app := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		mu.Lock()
		seen = append(seen, r.Method+" "+r.URL.Path+" "+string(b))
		mu.Unlock()
	})
	hp := startHTTPPair(t, app)
	send := func(req string) []int {
		c, err := net.Dial("tcp", hp.outAddr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		io.WriteString(c, req)
		br := bufio.NewReader(c)
		var codes []int
		for {
			resp, err := http.ReadResponse(br, nil)
			if err != nil {
				return codes
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			codes = append(codes, resp.StatusCode)
		}
	}
	smuggled := "GET /admin HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n"
	codes := send("POST /api/x HTTP/1.1\r\nHost: b\r\nContent-Length: " + fmt.Sprint(5+len(smuggled)) +
		"\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + smuggled)
	if len(codes) != 2 || codes[0] != 200 || codes[1] != 403 {
		t.Errorf("CL+TE with a hidden request: responses %v, want [200 403]", codes)
	}
	if codes := send("POST /api/x HTTP/1.1\r\nHost: b\r\nTransfer-Encoding: chunked, identity\r\nConnection: close\r\n\r\n0\r\n\r\n"); len(codes) != 1 || codes[0] < 400 {
		t.Errorf("chunked, identity: %v", codes)
	}
	if codes := send("POST /api/x HTTP/1.1\r\nHost: b\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n4\nabcd\n0\r\n\r\n"); len(codes) != 1 || codes[0] < 400 {
		t.Errorf("bare-LF chunk size: %v", codes)
	}
	mu.Lock()
	defer mu.Unlock()
	for _, s := range seen {
		if strings.Contains(s, "/admin") || strings.Contains(s, "abcd") {
			t.Errorf("the app received %q", s)
		}
	}
	// The legitimate empty POST arrives; a request refused for its body
	// may have been started towards the app before the body failed to
	// parse, but only ever with that body cut off, never with its bytes.
	if len(seen) < 1 || len(seen) > 2 {
		t.Errorf("the app saw %q", seen)
	}
	for _, s := range seen {
		if s != "POST /api/x " {
			t.Errorf("the app saw %q, want only empty POSTs to /api/x", s)
		}
	}
}

// TestHTTPTokenBoundToPeer is B17: the app's own Authorization (a token
// minted for another workload, replayed) is refused because its subject is
// not the mTLS peer; the sidecar's token then travels in its own header.
func TestHTTPTokenBoundToPeer(t *testing.T) {
	hp := startHTTPPair(t, echoApp)
	replayed, err := hp.issuer.mint(spiffeid.RequireFromPath(td, "/other"), "spiffe://example.org/backend")
	if err != nil {
		t.Fatal(err)
	}
	code, body := rawRequest(t, hp.outAddr, "GET /api/x HTTP/1.1\r\nHost: b\r\nAuthorization: Bearer "+replayed+"\r\nConnection: close\r\n\r\n")
	if code != 401 || !strings.Contains(body, "token_peer_mismatch") {
		t.Fatalf("a token of another workload: %d %s", code, body)
	}
	code, body = rawRequest(t, hp.outAddr, "GET /api/x HTTP/1.1\r\nHost: b\r\nAuthorization: Bearer not.a.token\r\nConnection: close\r\n\r\n")
	if code != 401 || !strings.Contains(body, "bad_token") {
		t.Fatalf("garbage token: %d %s", code, body)
	}
	// B3: a valid token of the peer next to the replayed one is not a
	// choice: two Authorization values are refused, however ordered.
	own, err := hp.issuer.mint(spiffeid.RequireFromPath(td, "/frontend"), "spiffe://example.org/backend")
	if err != nil {
		t.Fatal(err)
	}
	for _, pair := range [][2]string{{own, replayed}, {replayed, own}} {
		code, body = rawRequest(t, hp.outAddr, "GET /api/x HTTP/1.1\r\nHost: b\r\nAuthorization: Bearer "+pair[0]+"\r\nAuthorization: Bearer "+pair[1]+"\r\nConnection: close\r\n\r\n")
		if code != 401 || !strings.Contains(body, "bad_token") {
			t.Fatalf("two Authorization headers: %d %s", code, body)
		}
	}
	code, body = rawRequest(t, hp.outAddr, "GET /api/x HTTP/1.1\r\nHost: b\r\nAuthorization: Bearer "+own+", Bearer "+replayed+"\r\nConnection: close\r\n\r\n")
	if code != 401 || !strings.Contains(body, "bad_token") {
		t.Fatalf("comma-joined Authorization: %d %s", code, body)
	}
	hp.in.waitMetric(t, 1, "credflow_refusals_total", "reason=token_peer_mismatch")
	hp.in.waitMetric(t, 4, "credflow_refusals_total", "reason=bad_token")
	if body := strings.ToLower(body); strings.Contains(body, strings.ToLower(replayed[:20])) {
		t.Fatal("the refusal body echoes the token")
	}
}

// TestHTTPTokenClockSkew covers F11 at the HTTP inbound: tokens minted by
// a clock 30 s off pass; 3 minutes off they are refused with a reason that
// names the time check.
func TestHTTPTokenClockSkew(t *testing.T) {
	hp := startHTTPPair(t, echoApp)
	front := spiffeid.RequireFromPath(td, "/frontend")
	for _, c := range []struct {
		skew   time.Duration
		code   int
		reason string
	}{
		{30 * time.Second, 200, ""},
		{-30 * time.Second, 200, ""},
		{3 * time.Minute, 401, "token_not_yet_valid"},
		{-3 * time.Minute, 401, "token_expired"},
	} {
		tok, err := hp.issuer.mintAt(front, "spiffe://example.org/backend", c.skew)
		if err != nil {
			t.Fatal(err)
		}
		code, body := rawRequest(t, hp.outAddr, "GET /api/x HTTP/1.1\r\nHost: b\r\nAuthorization: Bearer "+tok+"\r\nConnection: close\r\n\r\n")
		if code != c.code || !strings.Contains(body, c.reason) {
			t.Errorf("minted %v off: %d %s, want %d %s", c.skew, code, body, c.code, c.reason)
		}
	}
	hp.in.waitMetric(t, 1, "credflow_refusals_total", "reason=token_expired")
	hp.in.waitMetric(t, 1, "credflow_refusals_total", "reason=token_not_yet_valid")
}

// TestHTTPPooling: N sequential requests cost at most the pool size in
// handshakes.
func TestHTTPPooling(t *testing.T) {
	hp := startHTTPPair(t, echoApp)
	client := &http.Client{}
	for i := range 50 {
		resp, err := client.Get("http://" + hp.outAddr + "/api/" + fmt.Sprint(i))
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Fatalf("request %d: %d", i, resp.StatusCode)
		}
	}
	// The first request crosses over the HTTP/2 pool, and learns there that
	// the upstream takes a connection per request in flight; the others
	// share one HTTP/1.1 connection.
	if n := hp.out.metric(t, "credflow_handshake_duration_seconds"); n != 2 {
		t.Fatalf("%v handshakes for 50 requests one after another, want 2", n)
	}
	hp.in.waitMetric(t, 2, "credflow_tls_connections_total", "direction=inbound", "version=TLS 1.3")
	hp.out.waitMetric(t, 50, "credflow_jwt_tokens_total", "op=attached")
	hp.in.waitMetric(t, 50, "credflow_jwt_tokens_total", "op=validated")
}

// TestHTTPConnectionsOffer: an inbound HTTP listener's first answer on a
// connection tells the caller's sidecar that it takes a connection per
// request in flight, even when that answer is a refusal; an interim
// response does not carry it (nor take it from the final one), an app
// cannot say otherwise, and the caller's app sees it on neither.
func TestHTTPConnectionsOffer(t *testing.T) {
	app := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Link", "</style.css>; rel=preload")
		w.WriteHeader(http.StatusEarlyHints)
		w.Header().Set(proxy.ConnectionsHeader, "limited") // not the app's to say
		io.WriteString(w, "ok")
	})
	hp := startHTTPPair(t, app)
	resp, err := http.Get("http://" + hp.outAddr + "/elsewhere") // no route: refused
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusForbidden || len(resp.Header.Values(proxy.ConnectionsHeader)) > 0 {
		t.Fatalf("the refusal: %d, %v", resp.StatusCode, resp.Header)
	}
	for i := range 5 {
		var interim []textproto.MIMEHeader
		ctx := httptrace.WithClientTrace(context.Background(), &httptrace.ClientTrace{
			Got1xxResponse: func(code int, h textproto.MIMEHeader) error {
				interim = append(interim, maps.Clone(h))
				return nil
			},
		})
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+hp.outAddr+"/api/x", nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || string(body) != "ok" || len(resp.Header.Values(proxy.ConnectionsHeader)) > 0 {
			t.Fatalf("request %d: %d %q, %v", i, resp.StatusCode, body, resp.Header)
		}
		if len(interim) != 1 || interim[0].Get("Link") == "" || len(interim[0].Values(proxy.ConnectionsHeader)) > 0 {
			t.Fatalf("request %d: interim responses %v, want one 103 with Link and nothing else of ours", i, interim)
		}
	}
	// The HTTP/2 pool's connection (the refusal said per-request on it)
	// and one HTTP/1.1 connection for the five; the app's "limited" would
	// have closed that one after its first answer.
	if n := hp.out.metric(t, "credflow_handshake_duration_seconds"); n != 2 {
		t.Errorf("%v handshakes, want 2", n)
	}
	hp.in.waitMetric(t, 2, "credflow_active_connections", "direction=inbound")
}

// TestHTTP2AuthorityHost is B2's HTTP/2 half: a request whose Host header
// differs from its :authority is refused (400) before anything else is
// looked at; one whose Host differs only in case passes that check.
func TestHTTP2AuthorityHost(t *testing.T) {
	hp := startHTTPPair(t, echoApp)
	cert := testca.TLSCertificate(hp.ca.Issue(t, spiffeid.RequireFromPath(td, "/frontend")))
	status := func(host string) string {
		c, err := tls.Dial("tcp", hp.inAddr, &tls.Config{MinVersion: tls.VersionTLS13, InsecureSkipVerify: true, NextProtos: []string{"h2"},
			GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &cert, nil }})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		io.WriteString(c, http2.ClientPreface)
		fr := http2.NewFramer(c, c)
		fr.WriteSettings()
		var block bytes.Buffer
		enc := hpack.NewEncoder(&block)
		for _, f := range [][2]string{{":method", "GET"}, {":scheme", "https"}, {":authority", "backend"}, {":path", "/api/x"}, {"host", host}} {
			enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
		}
		fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: block.Bytes(), EndStream: true, EndHeaders: true})
		for {
			f, err := fr.ReadFrame()
			if err != nil {
				t.Fatalf("reading the response: %v", err)
			}
			switch f := f.(type) {
			case *http2.SettingsFrame:
				if !f.IsAck() {
					fr.WriteSettingsAck()
				}
			case *http2.HeadersFrame:
				fields, err := hpack.NewDecoder(4096, nil).DecodeFull(f.HeaderBlockFragment())
				if err != nil {
					t.Fatal(err)
				}
				for _, hf := range fields {
					if hf.Name == ":status" {
						return hf.Value
					}
				}
			case *http2.RSTStreamFrame:
				return "reset"
			}
		}
	}
	if got := status("evil.example"); got != "400" {
		t.Errorf(":authority backend, Host evil.example: status %s, want 400", got)
	}
	if got := status("BACKEND"); got != "401" { // past the Host check; no token
		t.Errorf(":authority backend, Host BACKEND: status %s, want 401 (missing token)", got)
	}
	hp.in.waitMetric(t, 1, "credflow_refusals_total", "reason=host_mismatch")
}

// TestHTTPResponseStreams: what the app flushes mid-response reaches the
// client through both sidecars before the app writes the rest: for a
// response of known length (which the sidecars flush within
// responseFlush) and for one of unknown length (flushed at each write).
// The app writes its second half only once the client has read the first,
// so a sidecar holding the first half back fails the test.
func TestHTTPResponseStreams(t *testing.T) {
	for _, known := range []bool{true, false} {
		t.Run(fmt.Sprintf("content-length %v", known), func(t *testing.T) {
			firstRead := make(chan struct{})
			hp := startHTTPPair(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if known {
					w.Header().Set("Content-Length", "10")
				}
				io.WriteString(w, "first")
				w.(http.Flusher).Flush()
				select {
				case <-firstRead:
				case <-r.Context().Done():
					return
				case <-time.After(30 * time.Second):
					return // the client never saw the first half: cut short
				}
				io.WriteString(w, "later")
			}))
			resp, err := http.Get("http://" + hp.outAddr + "/api/stream")
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			if got := resp.ContentLength; known && got != 10 || !known && got != -1 {
				t.Errorf("content length %d", got)
			}
			first := make([]byte, 5)
			if _, err := io.ReadFull(resp.Body, first); err != nil || string(first) != "first" {
				t.Fatalf("first half: %q, %v", first, err)
			}
			close(firstRead)
			rest, err := io.ReadAll(resp.Body)
			if err != nil || string(rest) != "later" {
				t.Fatalf("second half: %q, %v (the client read the first only after the app gave up waiting for it)", rest, err)
			}
		})
	}
}

// TestHTTPShortRequestBody: a request whose body ends before its
// Content-Length (the client half-closes after half of it) never reaches
// the app whole, whether the inbound sidecar reads it whole first (up to
// 16 KiB: the app is not called) or streams it, and the client gets no
// success: an error status or the connection closed without an answer
// (net/http takes a half-close for a client gone, and the sidecar then
// answers nothing rather than an empty 200).
func TestHTTPShortRequestBody(t *testing.T) {
	var called, whole sync.Map // paths the app was called for; of those, read a complete body
	hp := startHTTPPair(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		called.Store(r.URL.Path, true)
		b, err := io.ReadAll(r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		if int64(len(b)) == r.ContentLength {
			whole.Store(r.URL.Path, len(b))
		}
	}))
	for _, declared := range []int{100, 32 << 10} {
		t.Run(fmt.Sprint(declared), func(t *testing.T) {
			path := fmt.Sprintf("/api/upload/%d", declared)
			c, err := net.Dial("tcp", hp.outAddr)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(20 * time.Second))
			fmt.Fprintf(c, "POST %s HTTP/1.1\r\nHost: backend\r\nContent-Length: %d\r\n\r\n%s", path, declared, strings.Repeat("x", declared/2))
			c.(*net.TCPConn).CloseWrite()
			resp, err := http.ReadResponse(bufio.NewReader(c), nil)
			if err == nil {
				resp.Body.Close()
				if resp.StatusCode < 400 {
					t.Errorf("a truncated body was answered %s", resp.Status)
				}
			} // else the outbound sidecar closed the connection: also an error the client sees
			if n, ok := whole.Load(path); ok {
				t.Errorf("the app read a complete body of %v bytes from a request cut at %d of %d", n, declared/2, declared)
			}
			if _, ok := called.Load(path); ok && declared <= 16<<10 {
				t.Errorf("the app was called for a body of %d declared bytes, which the inbound sidecar reads whole first", declared)
			}
		})
	}
}

// TestHTTPRequestBodies: request bodies reach the app whole through both
// sidecars, whether the inbound sidecar reads them into memory first (known
// length up to 16 KiB) or streams them (longer, or of unknown length). A
// client's Expect: 100-continue is answered by the outbound sidecar's
// server when the body is first read, as before: the app does not see it.
func TestHTTPRequestBodies(t *testing.T) {
	hp := startHTTPPair(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		sum := sha256.Sum256(body)
		fmt.Fprintf(w, "%d %x %q %d", len(body), sum, r.Header.Get("Expect"), r.ContentLength)
	}))
	for _, c := range []struct {
		size     int
		chunked  bool
		expect   bool
		wantSize int64 // the length the app is told
	}{
		{size: 1, wantSize: 1},
		{size: 1024, wantSize: 1024},
		{size: 16 << 10, wantSize: 16 << 10},
		{size: 16<<10 + 1, wantSize: 16<<10 + 1},
		{size: 1 << 20, wantSize: 1 << 20},
		{size: 1024, chunked: true, wantSize: -1},
		{size: 1024, expect: true, wantSize: 1024},
	} {
		t.Run(fmt.Sprintf("%d chunked=%v expect=%v", c.size, c.chunked, c.expect), func(t *testing.T) {
			body := bytes.Repeat([]byte("credflow"), c.size/8+1)[:c.size]
			var r io.Reader = bytes.NewReader(body)
			if c.chunked {
				r = io.MultiReader(r) // no known length: sent chunked
			}
			req, _ := http.NewRequest(http.MethodPost, "http://"+hp.outAddr+"/api/upload", r)
			if c.expect {
				req.Header.Set("Expect", "100-continue")
			}
			resp, err := (&http.Client{Transport: &http.Transport{ExpectContinueTimeout: 10 * time.Second}}).Do(req)
			if err != nil {
				t.Fatal(err)
			}
			got, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			sum := sha256.Sum256(body)
			want := fmt.Sprintf("%d %x %q %d", c.size, sum, "", c.wantSize)
			if resp.StatusCode != http.StatusOK || string(got) != want {
				t.Fatalf("%s: the app saw %q, want %q", resp.Status, got, want)
			}
		})
	}
}
