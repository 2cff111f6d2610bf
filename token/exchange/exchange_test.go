package exchange_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"

	"github.com/credflow/credflow/audit"
	"github.com/credflow/credflow/internal/peercred"
	"github.com/credflow/credflow/reason"
	"github.com/credflow/credflow/token/edge"
	"github.com/credflow/credflow/token/exchange"
	"github.com/credflow/credflow/token/txn"
)

// tokens returns a JWT-SVID of spiffe://example.org/a signed with a key of
// its own (only its Marshal and Expiry are used here).
type tokens struct{ fail bool }

var signer = sync.OnceValue(func() jose.Signer {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		panic(err)
	}
	s, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: key}, (&jose.SignerOptions{}).WithType("JWT"))
	if err != nil {
		panic(err)
	}
	return s
})

func (t tokens) FetchJWTSVID(_ context.Context, aud string) (*jwtsvid.SVID, error) {
	if t.fail {
		return nil, errors.New("agent down")
	}
	tok, err := jwt.Signed(signer()).Claims(jwt.Claims{Subject: "spiffe://example.org/a", Audience: jwt.Audience{aud},
		Expiry: jwt.NewNumericDate(time.Now().Add(time.Minute))}).Serialize()
	if err != nil {
		return nil, err
	}
	return jwtsvid.ParseInsecure(tok, []string{aud})
}

// syncBuffer is a log destination for the server's goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

// lines returns the log lines as JSON objects.
func (s *syncBuffer) lines(t *testing.T) []map[string]any {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []map[string]any
	for _, l := range strings.Split(strings.TrimSpace(s.b.String()), "\n") {
		if l == "" {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			t.Fatalf("log line %q: %v", l, err)
		}
		out = append(out, m)
	}
	return out
}

// endpoint is a token endpoint served on a real socket, so that the
// caller is who the kernel says.
type endpoint struct {
	ep     *exchange.Endpoint
	url    string
	client *http.Client
	log    *syncBuffer

	mu      sync.Mutex
	reasons []string
}

func (e *endpoint) refusals() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return slices.Clone(e.reasons)
}

// serve serves an endpoint for cfg on loopback TCP, or on a unix socket
// at sock if it is not empty. The server sets ConnContext unless bare.
func serve(t *testing.T, cfg exchange.Config, sock string, bare bool) *endpoint {
	t.Helper()
	e := &endpoint{log: &syncBuffer{}, client: &http.Client{}}
	cfg.Log = slog.New(slog.NewJSONHandler(e.log, nil))
	cfg.Refused = func(r reason.Reason) {
		e.mu.Lock()
		defer e.mu.Unlock()
		e.reasons = append(e.reasons, string(r))
	}
	if cfg.Tokens == nil {
		cfg.Tokens = tokens{}
	}
	e.ep = exchange.New(cfg)
	srv := httptest.NewUnstartedServer(e.ep)
	if !bare {
		srv.Config.ConnContext = e.ep.ConnContext
	}
	if sock != "" {
		ln, err := peercred.ListenUnix(sock, 0o600, -1)
		if err != nil {
			t.Fatal(err)
		}
		srv.Listener.Close()
		srv.Listener = ln
		e.client.Transport = &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", sock)
		}}
		e.url = "http://localhost/token"
	}
	srv.Start()
	t.Cleanup(srv.Close)
	if e.url == "" {
		e.url = srv.URL + "/token"
	}
	return e
}

// post sends body; mod may change the request.
func (e *endpoint) post(t *testing.T, body string, mod func(*http.Request)) (int, map[string]any, http.Header) {
	t.Helper()
	r, err := http.NewRequest("POST", e.url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	r.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	if mod != nil {
		mod(r)
	}
	resp, err := e.client.Do(r)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out map[string]any
	json.NewDecoder(resp.Body).Decode(&out)
	if resp.Header.Get("Cache-Control") != "no-store" {
		t.Error("response without Cache-Control: no-store")
	}
	return resp.StatusCode, out, resp.Header
}

func form(kv ...string) string {
	v := url.Values{"grant_type": {exchange.GrantType}}
	for i := 0; i < len(kv); i += 2 {
		v.Add(kv[i], kv[i+1])
	}
	return v.Encode()
}

const audB = "spiffe://example.org/b"

func TestTokenEndpoint(t *testing.T) {
	e := serve(t, exchange.Config{Audiences: []string{audB, "a", "x"}}, "", false)
	ok := form("audience", audB)
	code, out, _ := e.post(t, ok, nil)
	if code != 200 || out["issued_token_type"] != exchange.TokenType || out["token_type"] != "N_A" || out["expires_in"].(float64) < 50 {
		t.Fatalf("valid request: %d %v", code, out)
	}
	tests := []struct {
		name, body string
		mod        func(*http.Request)
		code       int
		err        string
	}{
		{"wrong grant", "grant_type=client_credentials&audience=x", nil, 400, "unsupported_grant_type"},
		{"no grant", "audience=x", nil, 400, "invalid_request"},
		{"two grants", "grant_type=" + url.QueryEscape(exchange.GrantType) + "&grant_type=x&audience=x", nil, 400, "invalid_request"},
		{"no audience", form(), nil, 400, "invalid_request"},
		{"empty audience", form("audience", ""), nil, 400, "invalid_request"},
		{"two audiences", form("audience", "a", "audience", "x"), nil, 400, "invalid_request"},
		{"subject token, no edge configured", form("audience", "a", "subject_token", "x"), nil, 400, "invalid_request"},
		{"other token type", form("audience", "a", "requested_token_type", "urn:x"), nil, 400, "invalid_request"},
		{"malformed form", "%zz", nil, 400, "invalid_request"},
		{"json body", `{"grant_type":"x"}`, func(r *http.Request) { r.Header.Set("Content-Type", "application/json") }, 400, "invalid_request"},
		{"GET", "", func(r *http.Request) { r.Method = "GET" }, 405, "invalid_request"},
		{"huge", "grant_type=" + strings.Repeat("a", 1<<20), nil, 400, "invalid_request"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, out, h := e.post(t, tt.body, tt.mod)
			if code != tt.code || out["error"] != tt.err || h.Get("X-Credflow-Reason") == "" {
				t.Fatalf("%d %v %v, want %d %s and a reason", code, out, h, tt.code, tt.err)
			}
			if _, leaked := out["access_token"]; leaked {
				t.Fatal("an error carried a token")
			}
		})
	}
	down := serve(t, exchange.Config{Tokens: tokens{fail: true}, Audiences: []string{audB}}, "", false)
	if code, out, h := down.post(t, ok, nil); code != 503 || out["error"] != "temporarily_unavailable" || h.Get("X-Credflow-Reason") != "no_token" {
		t.Fatalf("agent down: %d %v", code, out)
	}
}

// TestCallers: the caller is the uid the kernel names, over loopback TCP
// and over a unix socket, and only the configured callers get a token.
func TestCallers(t *testing.T) {
	self, selfGID := uint32(os.Geteuid()), uint32(os.Getegid())
	sock := func(name string) string { return filepath.Join(t.TempDir(), name) }
	tests := []struct {
		name    string
		callers peercred.Callers
		sock    string
		why     reason.Reason // "" for a token
	}{
		{"no callers configured: every local uid", peercred.Callers{}, "", ""},
		{"tcp, uid listed", peercred.Callers{UIDs: []uint32{self}}, "", ""},
		{"tcp, uid not listed", peercred.Callers{UIDs: []uint32{self + 1}}, "", reason.CallerNotAllowed},
		{"tcp, gid listed: a TCP caller has no gid", peercred.Callers{GIDs: []uint32{selfGID}}, "", reason.CallerNotAllowed},
		{"unix, uid listed", peercred.Callers{UIDs: []uint32{self}}, sock("u.sock"), ""},
		{"unix, uid not listed", peercred.Callers{UIDs: []uint32{self + 1}}, sock("n.sock"), reason.CallerNotAllowed},
		{"unix, gid listed", peercred.Callers{UIDs: []uint32{self + 1}, GIDs: []uint32{selfGID}}, sock("g.sock"), ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := serve(t, exchange.Config{Callers: tt.callers, Audiences: []string{audB}}, tt.sock, false)
			code, out, h := e.post(t, form("audience", audB), nil)
			if tt.why == "" {
				if code != 200 || out["access_token"] == nil {
					t.Fatalf("%d %v, want a token", code, out)
				}
			} else if code != 403 || out["error"] != "access_denied" || h.Get("X-Credflow-Reason") != string(tt.why) || out["access_token"] != nil {
				t.Fatalf("%d %v %v, want 403 access_denied %s", code, out, h, tt.why)
			}
			lines := e.log.lines(t)
			if len(lines) != 1 || lines[0]["uid"] != float64(self) || lines[0]["audience"] != audB {
				t.Fatalf("log: %v, want one line naming uid %d and the audience", lines, self)
			}
			if tt.sock != "" && (lines[0]["gid"] != float64(selfGID) || lines[0]["pid"] != float64(os.Getpid())) {
				t.Fatalf("log: %v, want the gid and pid of a unix-socket caller", lines)
			}
			if tt.why != "" && (lines[0]["reason"] != string(tt.why) || lines[0]["decision"] != "refused" || !slices.Equal(e.refusals(), []string{string(tt.why)})) {
				t.Fatalf("log %v, refusals %v: want the reason %s", lines, e.refusals(), tt.why)
			}
		})
	}
	t.Run("served without ConnContext", func(t *testing.T) {
		e := serve(t, exchange.Config{Audiences: []string{audB}}, "", true)
		if code, out, h := e.post(t, form("audience", audB), nil); code != 403 || h.Get("X-Credflow-Reason") != string(reason.CallerUnknown) {
			t.Fatalf("%d %v, want 403 caller_unknown", code, out)
		}
	})
	t.Run("not loopback", func(t *testing.T) {
		ep := exchange.New(exchange.Config{Tokens: tokens{}, Audiences: []string{audB}})
		ctx := ep.ConnContext(context.Background(), remoteConn{&net.TCPAddr{IP: net.IPv4(10, 0, 0, 8), Port: 5555}})
		r := httptest.NewRequestWithContext(ctx, "POST", "/token", strings.NewReader(form("audience", audB)))
		r.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		w := httptest.NewRecorder()
		ep.ServeHTTP(w, r)
		if w.Code != 403 || w.Header().Get("X-Credflow-Reason") != string(reason.CallerUnknown) || strings.Contains(w.Body.String(), "access_token") {
			t.Fatalf("%d %s, want 403 caller_unknown", w.Code, w.Body)
		}
	})
	t.Run("policy replaced", func(t *testing.T) {
		e := serve(t, exchange.Config{Audiences: []string{audB}}, "", false)
		e.ep.SetPolicy(peercred.Callers{UIDs: []uint32{self + 1}}, []string{audB})
		if code, out, h := e.post(t, form("audience", audB), nil); code != 403 || h.Get("X-Credflow-Reason") != string(reason.CallerNotAllowed) {
			t.Fatalf("%d %v, want 403 caller_not_allowed after SetPolicy", code, out)
		}
		e.ep.SetPolicy(peercred.Callers{UIDs: []uint32{self}}, nil)
		if code, out, h := e.post(t, form("audience", audB), nil); code != 400 || h.Get("X-Credflow-Reason") != string(reason.AudienceNotAllowed) {
			t.Fatalf("%d %v, want 400 audience_not_allowed after SetPolicy", code, out)
		}
	})
}

// remoteConn is a connection from addr.
type remoteConn struct{ addr net.Addr }

func (remoteConn) Read([]byte) (int, error)         { return 0, errors.New("no data") }
func (remoteConn) Write(b []byte) (int, error)      { return len(b), nil }
func (remoteConn) Close() error                     { return nil }
func (remoteConn) LocalAddr() net.Addr              { return &net.TCPAddr{IP: net.IPv4(10, 0, 0, 1), Port: 15080} }
func (c remoteConn) RemoteAddr() net.Addr           { return c.addr }
func (remoteConn) SetDeadline(time.Time) error      { return nil }
func (remoteConn) SetReadDeadline(time.Time) error  { return nil }
func (remoteConn) SetWriteDeadline(time.Time) error { return nil }

func TestAudiences(t *testing.T) {
	tests := []struct {
		name      string
		audiences []string
		aud       string
		ok        bool
	}{
		{"listed", []string{"spiffe://example.org/c", audB}, audB, true},
		{"not listed", []string{"spiffe://example.org/c"}, audB, false},
		{"a prefix of a listed one", []string{audB + "/x"}, audB, false},
		{"listed one is a prefix", []string{audB}, audB + "/x", false},
		{"case differs", []string{audB}, strings.ToUpper(audB), false},
		{"none configured", nil, audB, false},
		{"any", []string{exchange.AnyAudience}, "https://sts.example.com", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := serve(t, exchange.Config{Audiences: tt.audiences}, "", false)
			code, out, h := e.post(t, form("audience", tt.aud), nil)
			if tt.ok {
				if code != 200 || out["access_token"] == nil {
					t.Fatalf("%d %v, want a token", code, out)
				}
				return
			}
			if code != 400 || out["error"] != "invalid_target" || h.Get("X-Credflow-Reason") != string(reason.AudienceNotAllowed) || out["access_token"] != nil {
				t.Fatalf("%d %v %v, want 400 invalid_target audience_not_allowed", code, out, h)
			}
			if l := e.log.lines(t); len(l) != 1 || l[0]["audience"] != tt.aud || l[0]["reason"] != string(reason.AudienceNotAllowed) {
				t.Fatalf("log %v, want the audience and the reason", l)
			}
		})
	}
}

// TestHost: a request whose Host does not name loopback is refused, so a
// page whose DNS name was rebound to 127.0.0.1 cannot read a token.
func TestHost(t *testing.T) {
	e := serve(t, exchange.Config{Audiences: []string{audB}}, "", false)
	_, port, _ := net.SplitHostPort(strings.TrimPrefix(strings.TrimSuffix(e.url, "/token"), "http://"))
	for _, tt := range []struct {
		host string
		ok   bool
	}{
		{"127.0.0.1:" + port, true},
		{"localhost:" + port, true},
		{"localhost", true},
		{"LocalHost:" + port, true},
		{"[::1]:" + port, true},
		{"127.0.0.2", true},
		{"evil.example:" + port, false},
		{"localhost.evil.example", false},
		{"127.0.0.1.nip.io:" + port, false},
		{"10.0.0.8:" + port, false},
		{"[::ffff:127.0.0.1]:" + port, false},
	} {
		t.Run(tt.host, func(t *testing.T) {
			code, out, h := e.post(t, form("audience", audB), func(r *http.Request) { r.Host = tt.host })
			if tt.ok != (code == 200) {
				t.Fatalf("Host %q: %d %v", tt.host, code, out)
			}
			if !tt.ok && (code != 400 || h.Get("X-Credflow-Reason") != string(reason.BadHost) || out["access_token"] != nil) {
				t.Fatalf("Host %q: %d %v %v, want 400 bad_host", tt.host, code, out, h)
			}
		})
	}
	t.Run("unix socket", func(t *testing.T) {
		u := serve(t, exchange.Config{Audiences: []string{audB}}, filepath.Join(t.TempDir(), "t.sock"), false)
		if code, out, _ := u.post(t, form("audience", audB), nil); code != 200 {
			t.Fatalf("Host localhost on a unix socket: %d %v", code, out)
		}
		if code, _, h := u.post(t, form("audience", audB), func(r *http.Request) { r.Host = "evil.example" }); code != 400 || h.Get("X-Credflow-Reason") != string(reason.BadHost) {
			t.Fatalf("Host evil.example on a unix socket: %d", code)
		}
	})
}

func TestLoopbackHost(t *testing.T) {
	for host, want := range map[string]bool{
		"localhost": true, "localhost:1": true, "localhost.:80": true, "LOCALHOST": true,
		"127.0.0.1": true, "127.0.0.1:15080": true, "127.255.0.9:65535": true,
		"[::1]": true, "[::1]:15080": true, "[0:0:0:0:0:0:0:1]:1": true,
		"": false, ":80": false, "localhost:": false, "localhost:http": false, "localhost:65536": false,
		"localhost:1:2": false, "127.0.0.1:80:80": false, "::1": false, "::1:80": false, "[::1]80": false,
		"[::1]:": false, "[127.0.0.1]": false, "[::ffff:127.0.0.1]": false, "[::1": false, "[::2]": false,
		"localhost.localdomain": false, "evil.example": false, "0.0.0.0": false, "10.0.0.1:80": false,
		"127.1": false, "2130706433": false, "0x7f.0.0.1": false, "localhost%00": false, "127.0.0.1 ": false,
	} {
		if got := exchange.LoopbackHost(host); got != want {
			t.Errorf("LoopbackHost(%q) = %v, want %v", host, got, want)
		}
	}
}

// FuzzLoopbackHost: a Host header is taken as loopback only if it is
// localhost or a loopback literal, with at most a numeric port.
func FuzzLoopbackHost(f *testing.F) {
	for _, s := range []string{"localhost", "localhost:15080", "127.0.0.1:1", "[::1]:2", "evil.example", "[::ffff:127.0.0.1]", "127.0.0.1:80:80", "[::1", "localhost.:0"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, host string) {
		if !exchange.LoopbackHost(host) {
			return
		}
		h := host
		if hp, port, err := net.SplitHostPort(host); err == nil {
			h = hp
			if len(port) == 0 || strings.Trim(port, "0123456789") != "" {
				t.Fatalf("%q accepted with port %q", host, port)
			}
		} else if strings.HasPrefix(host, "[") {
			h = strings.TrimSuffix(strings.TrimPrefix(host, "["), "]")
		}
		if l := strings.ToLower(h); l == "localhost" || l == "localhost." {
			return
		}
		if ip := net.ParseIP(h); ip == nil || !ip.IsLoopback() {
			t.Fatalf("%q accepted, %q is not a loopback literal", host, h)
		}
	})
}

// subjects accepts the subject token "good" and refuses the others as
// expired.
type subjects struct{}

func (subjects) Exchange(_ context.Context, external string) (string, *txn.Claims, error) {
	if external != "good" {
		return "", nil, &edge.Error{Reason: reason.ExternalExpired, Err: errors.New("expired")}
	}
	return "txn-token", &txn.Claims{Expiry: jwt.NewNumericDate(time.Now().Add(time.Minute))}, nil
}

func TestSubjectTokenExchange(t *testing.T) {
	e := serve(t, exchange.Config{Subjects: subjects{}}, "", false)
	code, out, _ := e.post(t, form("subject_token", "good", "subject_token_type", exchange.TokenType), nil)
	if code != 200 || out["access_token"] != "txn-token" || out["issued_token_type"] != exchange.TxnTokenType || out["expires_in"].(float64) < 50 {
		t.Fatalf("valid exchange: %d %v", code, out)
	}
	for _, tt := range []struct{ name, body, desc string }{
		{"refused subject token", form("subject_token", "stale", "subject_token_type", exchange.TokenType), "external_expired"},
		{"no subject_token_type", form("subject_token", "good"), "subject_token_type"},
		{"two subject tokens", form("subject_token", "good", "subject_token", "good", "subject_token_type", exchange.TokenType), "exactly one"},
		{"actor token", form("subject_token", "good", "subject_token_type", exchange.TokenType, "actor_token", "x"), "actor_token"},
		{"asks for a JWT-SVID", form("subject_token", "good", "subject_token_type", exchange.TokenType, "requested_token_type", exchange.TokenType), "txn_token"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			code, out, _ := e.post(t, tt.body, nil)
			desc, _ := out["error_description"].(string)
			if code != 400 || out["error"] != "invalid_request" || !strings.Contains(desc, tt.desc) {
				t.Fatalf("%d %v, want invalid_request naming %q", code, out, tt.desc)
			}
			if strings.Contains(desc, "stale") || out["access_token"] != nil {
				t.Fatal("the error carried a token")
			}
		})
	}
	// The caller check applies to subject tokens too.
	e.ep.SetPolicy(peercred.Callers{UIDs: []uint32{uint32(os.Geteuid()) + 1}}, nil)
	if code, out, h := e.post(t, form("subject_token", "good", "subject_token_type", exchange.TokenType), nil); code != 403 || h.Get("X-Credflow-Reason") != string(reason.CallerNotAllowed) {
		t.Fatalf("a subject token from a caller not allowed: %d %v", code, out)
	}
}

// TestLogNeverHoldsTokens: one line per request, issued or refused, with
// the caller and the audience and never the token.
func TestLogNeverHoldsTokens(t *testing.T) {
	e := serve(t, exchange.Config{Audiences: []string{audB}, Subjects: subjects{}}, "", false)
	_, svid, _ := e.post(t, form("audience", audB), nil)
	_, txnTok, _ := e.post(t, form("subject_token", "good", "subject_token_type", exchange.TokenType), nil)
	e.post(t, form("subject_token", "stale-secret", "subject_token_type", exchange.TokenType), nil)
	e.post(t, form("audience", "spiffe://example.org/other"), nil)
	lines := e.log.lines(t)
	want := []struct{ decision, why, tokenType string }{
		{"issued", "", exchange.TokenType},
		{"issued", "", exchange.TxnTokenType},
		{"refused", string(reason.ExternalExpired), ""},
		{"refused", string(reason.AudienceNotAllowed), ""},
	}
	if len(lines) != len(want) {
		t.Fatalf("%d log lines, want %d: %v", len(lines), len(want), lines)
	}
	for i, w := range want {
		l := lines[i]
		if l["msg"] != "token" || l["decision"] != w.decision || l["uid"] != float64(os.Geteuid()) ||
			(w.why != "" && l["reason"] != w.why) || (w.tokenType != "" && l["token_type"] != w.tokenType) {
			t.Errorf("line %d: %v, want %+v", i, l, w)
		}
	}
	all := fmt.Sprint(lines)
	for _, secret := range []string{svid["access_token"].(string), txnTok["access_token"].(string), "stale-secret", "eyJ"} {
		if secret == "" || strings.Contains(all, secret) {
			t.Fatalf("the log holds %q", secret)
		}
	}
}

// TestAuditEvents: each issuance is a token_issued event with its
// audience, each refusal a deny decision with its reason; no token.
func TestAuditEvents(t *testing.T) {
	var mu sync.Mutex
	var events []audit.Event
	e := serve(t, exchange.Config{Audiences: []string{audB}, Subjects: subjects{}, Audit: func(ev audit.Event) {
		mu.Lock()
		defer mu.Unlock()
		events = append(events, ev)
	}}, "", false)
	_, svid, _ := e.post(t, form("audience", audB), nil)
	e.post(t, form("audience", "spiffe://example.org/other"), nil)
	mu.Lock()
	defer mu.Unlock()
	if len(events) != 2 {
		t.Fatalf("%d events: %+v", len(events), events)
	}
	if ev := events[0]; ev.Kind != audit.KindTokenIssued || ev.Audience != audB || ev.Subject != fmt.Sprintf("uid:%d", os.Geteuid()) {
		t.Errorf("issuance: %+v", ev)
	}
	if ev := events[1]; ev.Type != audit.TypeDecision || ev.Decision != audit.Deny || ev.Reason != string(reason.AudienceNotAllowed) {
		t.Errorf("refusal: %+v", ev)
	}
	if strings.Contains(fmt.Sprint(events), svid["access_token"].(string)) {
		t.Error("an event holds the token")
	}
}
