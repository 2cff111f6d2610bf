package exchange_test

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"

	"github.com/go-jose/go-jose/v4/jwt"

	"github.com/credflow/credflow/proxy/edge"
	"github.com/credflow/credflow/proxy/exchange"
	"github.com/credflow/credflow/proxy/txn"
)

// tokens returns an SVID whose only use here is its Marshal and Expiry.
type tokens struct{ fail bool }

func (t tokens) FetchJWTSVID(_ context.Context, aud string) (*jwtsvid.SVID, error) {
	if t.fail {
		return nil, errors.New("agent down")
	}
	return &jwtsvid.SVID{ID: spiffeid.RequireFromString("spiffe://example.org/a"), Audience: []string{aud}, Expiry: time.Now().Add(time.Minute)}, nil
}

func post(t *testing.T, h http.Handler, body string, mod func(*http.Request)) (int, map[string]any) {
	t.Helper()
	r := httptest.NewRequest("POST", "/token", strings.NewReader(body))
	r.RemoteAddr = "127.0.0.1:5555"
	r.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	if mod != nil {
		mod(r)
	}
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	var out map[string]any
	json.Unmarshal(w.Body.Bytes(), &out)
	if w.Header().Get("Cache-Control") != "no-store" {
		t.Error("response without Cache-Control: no-store")
	}
	return w.Code, out
}

func TestTokenEndpoint(t *testing.T) {
	h := exchange.Handler(tokens{}, nil)
	ok := url.Values{"grant_type": {exchange.GrantType}, "audience": {"spiffe://example.org/b"}}.Encode()
	code, out := post(t, h, ok, nil)
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
		{"no audience", "grant_type=" + url.QueryEscape(exchange.GrantType), nil, 400, "invalid_request"},
		{"empty audience", "grant_type=" + url.QueryEscape(exchange.GrantType) + "&audience=", nil, 400, "invalid_request"},
		{"two audiences", "grant_type=" + url.QueryEscape(exchange.GrantType) + "&audience=a&audience=b", nil, 400, "invalid_request"},
		{"subject token, no edge configured", "grant_type=" + url.QueryEscape(exchange.GrantType) + "&audience=a&subject_token=x", nil, 400, "invalid_request"},
		{"other token type", "grant_type=" + url.QueryEscape(exchange.GrantType) + "&audience=a&requested_token_type=urn:x", nil, 400, "invalid_request"},
		{"malformed form", "%zz", nil, 400, "invalid_request"},
		{"json body", `{"grant_type":"x"}`, func(r *http.Request) { r.Header.Set("Content-Type", "application/json") }, 400, "invalid_request"},
		{"GET", "", func(r *http.Request) { r.Method = "GET" }, 405, "invalid_request"},
		{"from outside", ok, func(r *http.Request) { r.RemoteAddr = "10.0.0.8:5555" }, 403, "access_denied"},
		{"huge", "grant_type=" + strings.Repeat("a", 1<<20), nil, 400, "invalid_request"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, out := post(t, h, tt.body, tt.mod)
			if code != tt.code || out["error"] != tt.err {
				t.Fatalf("%d %v, want %d %s", code, out, tt.code, tt.err)
			}
			if _, leaked := out["access_token"]; leaked {
				t.Fatal("an error carried a token")
			}
		})
	}
	if code, out := post(t, exchange.Handler(tokens{fail: true}, nil), ok, nil); code != 503 || out["error"] != "temporarily_unavailable" {
		t.Fatalf("agent down: %d %v", code, out)
	}
}

// subjects accepts the subject token "good" and refuses the others as
// expired.
type subjects struct{}

func (subjects) Exchange(_ context.Context, external string) (string, *txn.Claims, error) {
	if external != "good" {
		return "", nil, &edge.Error{Reason: edge.ReasonExpired, Err: errors.New("expired")}
	}
	return "txn-token", &txn.Claims{Expiry: jwt.NewNumericDate(time.Now().Add(time.Minute))}, nil
}

func TestSubjectTokenExchange(t *testing.T) {
	h := exchange.Handler(tokens{}, subjects{})
	form := func(kv ...string) string {
		v := url.Values{"grant_type": {exchange.GrantType}}
		for i := 0; i < len(kv); i += 2 {
			v.Add(kv[i], kv[i+1])
		}
		return v.Encode()
	}
	code, out := post(t, h, form("subject_token", "good", "subject_token_type", exchange.TokenType), nil)
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
			code, out := post(t, h, tt.body, nil)
			desc, _ := out["error_description"].(string)
			if code != 400 || out["error"] != "invalid_request" || !strings.Contains(desc, tt.desc) {
				t.Fatalf("%d %v, want invalid_request naming %q", code, out, tt.desc)
			}
			if strings.Contains(desc, "stale") || out["access_token"] != nil {
				t.Fatal("the error carried a token")
			}
		})
	}
}
