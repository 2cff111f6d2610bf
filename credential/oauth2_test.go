package credential

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"slices"
	"strings"
	"testing"
	"time"
)

const svid = "eyJhbGciOiJFUzI1NiJ9.svid-claims.svid-signature" // stands in for a JWT-SVID

// tokenServer answers the token requests with handler, after checking
// the form the source sent for method.
func tokenServer(t *testing.T, method string, handler func(w http.ResponseWriter)) *httptest.Server {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if err := r.ParseForm(); err != nil {
			t.Errorf("form: %v", err)
		}
		want := map[string]string{"scope": "payments:read payments:write", "client_id": "spiffe://example.org/frontend"}
		switch method {
		case GrantJWTBearer:
			want["grant_type"], want["assertion"] = grantTypeJWTBearer, svid
		case ClientAssertionSPIFFE:
			want["grant_type"], want["client_assertion_type"], want["client_assertion"] = "client_credentials", assertionTypeSPIFFE, svid
		}
		for k, v := range want {
			if got := r.PostForm.Get(k); got != v {
				t.Errorf("%s: %s = %q, want %q", method, k, got, v)
			}
		}
		if r.PostForm.Has("client_secret") {
			t.Error("a client secret was sent")
		}
		handler(w)
	}))
	t.Cleanup(srv.Close)
	return srv
}

func oauth2Source(url, method string) *OAuth2 {
	return &OAuth2{
		TokenURL: url + "/oauth2/token", Method: method, ClientID: "spiffe://example.org/frontend",
		Scopes: []string{"payments:read", "payments:write"},
		Assertion: func(_ context.Context, aud string) (string, error) {
			if !strings.HasSuffix(aud, "/oauth2/token") {
				return "", errors.New("wrong audience " + aud)
			}
			return svid, nil
		},
	}
}

func jsonAnswer(status int, body string) func(http.ResponseWriter) {
	return func(w http.ResponseWriter) {
		w.Header().Set("Content-Type", "application/json; charset=utf-8")
		w.WriteHeader(status)
		w.Write([]byte(body))
	}
}

// TestOAuth2Token: both methods send the JWT-SVID as the only proof and
// read the token and its life.
func TestOAuth2Token(t *testing.T) {
	for _, method := range []string{GrantJWTBearer, ClientAssertionSPIFFE} {
		srv := tokenServer(t, method, jsonAnswer(200, `{"access_token":"at-1","token_type":"bearer","expires_in":3599,"scope":"payments:read"}`))
		before := time.Now()
		cred, err := oauth2Source(srv.URL, method).Fetch(t.Context())
		if err != nil {
			t.Fatalf("%s: %v", method, err)
		}
		if cred.Value.Reveal() != "at-1" || cred.Expires.Before(before.Add(3599*time.Second)) || cred.Expires.After(time.Now().Add(3599*time.Second)) {
			t.Errorf("%s: got %q expiring %v", method, cred.Value.Reveal(), cred.Expires)
		}
	}
}

// TestOAuth2BadAnswers: every answer the sidecar cannot use is an error
// naming the problem, and no error repeats a token or the assertion.
func TestOAuth2BadAnswers(t *testing.T) {
	for name, c := range map[string]struct {
		answer func(http.ResponseWriter)
		want   string
	}{
		"500":              {jsonAnswer(500, `{"error":"server_error"}`), "500 Internal Server Error: server_error"},
		"refused":          {jsonAnswer(400, `{"error":"invalid_grant","error_description":"assertion expired\r\nX: y"}`), "invalid_grant (assertion expiredX: y)"},
		"garbage":          {jsonAnswer(200, `{"access_token": "at-`), "not a JSON token response"},
		"not JSON":         {func(w http.ResponseWriter) { w.Header().Set("Content-Type", "text/html"); w.Write([]byte("<html>")) }, `"text/html"`},
		"no expires_in":    {jsonAnswer(200, `{"access_token":"at-2","token_type":"Bearer"}`), "no expires_in"},
		"zero expires_in":  {jsonAnswer(200, `{"access_token":"at-2","token_type":"Bearer","expires_in":0}`), "out of range"},
		"no token":         {jsonAnswer(200, `{"token_type":"Bearer","expires_in":60}`), "no access_token"},
		"not bearer":       {jsonAnswer(200, `{"access_token":"at-2","token_type":"DPoP","expires_in":60}`), `token_type "DPoP"`},
		"token with CR/LF": {jsonAnswer(200, `{"access_token":"at-2\r\nX-Evil: 1","token_type":"Bearer","expires_in":60}`), "not allowed in an HTTP header"},
		"oversized":        {jsonAnswer(200, `{"access_token":"`+strings.Repeat("a", maxTokenResponse)+`"}`), "larger than"},
	} {
		srv := tokenServer(t, GrantJWTBearer, c.answer)
		_, err := oauth2Source(srv.URL, GrantJWTBearer).Fetch(t.Context())
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: got %v, want an error with %q", name, err, c.want)
			continue
		}
		if strings.Contains(err.Error(), "at-2") || strings.Contains(err.Error(), svid) {
			t.Errorf("%s: the error holds a token: %v", name, err)
		}
	}
}

// TestOAuth2Unreachable: a token endpoint that is down or too slow fails
// within the caller's deadline.
func TestOAuth2Unreachable(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}))
	url := srv.URL
	srv.Close()
	if _, err := oauth2Source(url, GrantJWTBearer).Fetch(t.Context()); err == nil || !strings.Contains(err.Error(), "connection refused") {
		t.Errorf("endpoint down: %v", err)
	}

	release := make(chan struct{})
	slow := httptest.NewServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) { <-release }))
	defer slow.Close()
	defer close(release)
	ctx, cancel := context.WithTimeout(t.Context(), 200*time.Millisecond)
	defer cancel()
	if _, err := oauth2Source(slow.URL, GrantJWTBearer).Fetch(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("slow endpoint: %v, want the deadline", err)
	}
}

// TestOAuth2TokenURL: the assertion goes only over https, or plain http
// to a loopback address.
func TestOAuth2TokenURL(t *testing.T) {
	for raw, ok := range map[string]bool{
		"https://auth.example.com/oauth2/token": true,
		"http://127.0.0.1:4444/oauth2/token":    true,
		"http://[::1]:4444/oauth2/token":        true,
		"http://auth.example.com/oauth2/token":  false,
		"http://10.0.0.5/oauth2/token":          false,
		"ftp://auth.example.com/token":          false,
		"https:///token":                        false,
	} {
		if err := checkTokenURL(raw); (err == nil) != ok {
			t.Errorf("%s: %v, want allowed=%v", raw, err, ok)
		}
	}
	called := false
	o := oauth2Source("http://auth.example.com", GrantJWTBearer)
	o.Assertion = func(context.Context, string) (string, error) { called = true; return svid, nil }
	if _, err := o.Fetch(t.Context()); err == nil || called {
		t.Errorf("a plain-http endpoint off loopback: %v, assertion fetched: %v", err, called)
	}
}

// TestOAuth2ClientSecret: for a provider that knows nothing else, the
// client credentials grant with the client ID and a secret read from its
// file at each fetch (client_secret_basic, both form-encoded); a rotated
// secret is used from the next fetch; the secret is in no error, and one
// that cannot be read or holds CR/LF is not sent.
func TestOAuth2ClientSecret(t *testing.T) {
	const id = "spiffe://example.org/frontend"
	var got []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		user, pass, ok := r.BasicAuth()
		u, _ := url.QueryUnescape(user)
		p, _ := url.QueryUnescape(pass)
		r.ParseForm()
		if !ok || u != id || r.PostForm.Get("grant_type") != "client_credentials" || r.PostForm.Has("client_secret") || r.PostForm.Has("assertion") {
			t.Errorf("basic %v %q, form %v", ok, u, r.PostForm)
		}
		got = append(got, p)
		if p == "s3cret: two&three" {
			jsonAnswer(401, `{"error":"invalid_client"}`)(w)
			return
		}
		jsonAnswer(200, `{"access_token":"at-1","token_type":"Bearer","expires_in":60}`)(w)
	}))
	defer srv.Close()
	path := t.TempDir() + "/client-secret"
	write := func(v string) {
		if err := os.WriteFile(path, []byte(v), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	src := &OAuth2{TokenURL: srv.URL + "/oauth2/token", Method: ClientSecret, ClientID: id, Secret: File{Path: path}}

	write("s3cret-one\n")
	if cred, err := src.Fetch(t.Context()); err != nil || cred.Value.Reveal() != "at-1" {
		t.Fatalf("got %q, %v", cred.Value.Reveal(), err)
	}
	write("s3cret: two&three\n") // rotated; this provider does not know it yet
	_, err := src.Fetch(t.Context())
	if err == nil || !strings.Contains(err.Error(), "invalid_client") || strings.Contains(err.Error(), "s3cret") {
		t.Errorf("a secret the provider refuses: %v", err)
	}
	if want := []string{"s3cret-one", "s3cret: two&three"}; !slices.Equal(got, want) {
		t.Errorf("the provider was sent %q, want %q", got, want)
	}
	for name, content := range map[string]string{"CR/LF": "s3cret\r\nX: y", "empty": ""} {
		write(content)
		if _, err := src.Fetch(t.Context()); err == nil || strings.Contains(err.Error(), "s3cret") {
			t.Errorf("%s: %v", name, err)
		}
	}
	os.Remove(path)
	if _, err := src.Fetch(t.Context()); err == nil || !strings.Contains(err.Error(), "client secret") {
		t.Errorf("no secret file: %v", err)
	}
	if len(got) != 2 {
		t.Errorf("%d requests, want 2: one with no usable secret was sent", len(got))
	}
}
