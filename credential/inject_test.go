package credential

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/credflow/credflow/reason"
)

// fixed is a Source answering one value, valid for an hour.
func fixed(t *testing.T, v string) *source {
	return &source{answer: func(int64) (Credential, error) {
		return Credential{Value: secret(t, v), Expires: time.Now().Add(time.Hour)}, nil
	}}
}

// failing is a Source whose every fetch fails.
func failing() *source {
	return &source{answer: func(int64) (Credential, error) { return Credential{}, errors.New("token endpoint: 500") }}
}

func TestInjectPlaces(t *testing.T) {
	tok := &Cache{Name: "oauth", Source: fixed(t, "tok-1")}
	key := &Cache{Name: "key", Source: fixed(t, "key-1")}
	pair := &Cache{Name: "pair", Source: fixed(t, "user:pa ss")}
	q := &Cache{Name: "q", Source: fixed(t, "a&b=c")}
	for _, tc := range []struct {
		name      string
		rules     []Rule
		url       string
		appHeader map[string]string
		wantHdr   map[string]string
		wantQuery string
		wantNames []string
	}{
		{
			name:      "bearer replaces the app's Authorization",
			rules:     []Rule{{Cache: tok, Place: PlaceBearer}},
			url:       "/v1/charges",
			appHeader: map[string]string{"Authorization": "Bearer app-own"},
			wantHdr:   map[string]string{"Authorization": "Bearer tok-1"},
			wantNames: []string{"oauth"},
		},
		{
			name:      "basic encodes the pair",
			rules:     []Rule{{Cache: pair, Place: PlaceBasic}},
			url:       "/",
			wantHdr:   map[string]string{"Authorization": "Basic dXNlcjpwYSBzcw=="},
			wantNames: []string{"pair"},
		},
		{
			name:      "a named header, and a bearer, both",
			rules:     []Rule{{Cache: key, Place: PlaceHeader, Name: "X-Api-Key"}, {Cache: tok, Place: PlaceBearer}},
			url:       "/",
			appHeader: map[string]string{"X-Api-Key": "smuggled"},
			wantHdr:   map[string]string{"X-Api-Key": "key-1", "Authorization": "Bearer tok-1"},
			wantNames: []string{"key", "oauth"},
		},
		{
			name:      "query parameter, the app's removed, the others kept in order",
			rules:     []Rule{{Cache: q, Place: PlaceQuery, Name: "api_key"}},
			url:       "/search?b=2&api_key=mine&a=1&api%5Fkey=again",
			wantQuery: "b=2&a=1&api_key=a%26b%3Dc",
			wantNames: []string{"q"},
		},
		{
			name:      "the first rule covering the path decides the place",
			rules:     []Rule{{Cache: key, Place: PlaceBearer, Paths: []string{"/admin/"}}, {Cache: tok, Place: PlaceBearer}},
			url:       "/admin/users",
			wantHdr:   map[string]string{"Authorization": "Bearer key-1"},
			wantNames: []string{"key"},
		},
		{
			name:      "a path no rule covers: nothing injected",
			rules:     []Rule{{Cache: key, Place: PlaceHeader, Name: "X-Api-Key", Paths: []string{"/v1/"}}},
			url:       "/v2/x",
			wantHdr:   map[string]string{"X-Api-Key": ""},
			wantNames: []string{},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := httptest.NewRequest(http.MethodGet, tc.url, nil)
			for k, v := range tc.appHeader {
				r.Header.Set(k, v)
			}
			in, why := (&Injector{Rules: tc.rules}).Inject(r, r.URL.Path)
			if why != "" {
				t.Fatalf("refused: %s", why)
			}
			for k, v := range tc.wantHdr {
				if got := r.Header.Get(k); got != v {
					t.Errorf("%s: %q, want %q", k, got, v)
				}
			}
			if tc.wantQuery != "" && r.URL.RawQuery != tc.wantQuery {
				t.Errorf("query %q, want %q", r.URL.RawQuery, tc.wantQuery)
			}
			if got := in.Names(); len(got) != len(tc.wantNames) || len(got) > 0 && got[0] != tc.wantNames[0] {
				t.Errorf("names %q, want %q", got, tc.wantNames)
			}
		})
	}
}

// TestInjectAppCredentialRefused: with RefuseApp, the app's own credential
// in the rule's place refuses the request and nothing is injected.
func TestInjectAppCredentialRefused(t *testing.T) {
	c := &Cache{Name: "oauth", Source: fixed(t, "tok-1")}
	inj := &Injector{Rules: []Rule{{Cache: c, Place: PlaceBearer, RefuseApp: true}}}
	r := httptest.NewRequest(http.MethodGet, "/", nil)
	r.Header.Set("Authorization", "Bearer app-own")
	if _, why := inj.Inject(r, "/"); why != reason.AppCredential {
		t.Fatalf("reason %q, want %q", why, reason.AppCredential)
	}
	if got := r.Header.Get("Authorization"); got != "Bearer app-own" {
		t.Errorf("Authorization %q after the refusal: the injected token must not be written", got)
	}
	r.Header.Del("Authorization")
	if _, why := inj.Inject(r, "/"); why != "" || r.Header.Get("Authorization") != "Bearer tok-1" {
		t.Errorf("without the app's credential: reason %q, Authorization %q", why, r.Header.Get("Authorization"))
	}
}

// TestInjectFailClosed: no valid credential refuses the request with
// credential_unavailable (nothing forwarded without it), and removes
// nothing it would not have replaced; an optional rule lets it go on
// without, but still without the app's own credential.
func TestInjectFailClosed(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	bad := &Cache{Name: "down", Source: failing(), MinBackoff: time.Hour}
	r := httptest.NewRequestWithContext(ctx, http.MethodGet, "/", nil)
	r.Header.Set("Authorization", "Bearer app-own")
	if _, why := (&Injector{Rules: []Rule{{Cache: bad, Place: PlaceBearer}}}).Inject(r, "/"); why != reason.CredentialUnavailable {
		t.Fatalf("reason %q, want %q", why, reason.CredentialUnavailable)
	}
	r = httptest.NewRequestWithContext(ctx, http.MethodGet, "/", nil)
	r.Header.Set("Authorization", "Bearer app-own")
	in, why := (&Injector{Rules: []Rule{{Cache: bad, Place: PlaceBearer, Optional: true}}}).Inject(r, "/")
	if why != "" || len(in.Names()) != 0 {
		t.Fatalf("optional rule: reason %q, injected %q", why, in.Names())
	}
	if got := r.Header.Get("Authorization"); got != "" {
		t.Errorf("optional rule forwarded the app's own Authorization %q", got)
	}
}

// TestInjectUnauthorizedRefreshesOnce: an upstream 401 for the injected
// token drops it and fetches one new token, however many requests see the
// 401 at once; the next requests carry the new token.
func TestInjectUnauthorizedRefreshesOnce(t *testing.T) {
	ctx := t.Context()
	src := &source{answer: token(t, time.Hour)}
	c := &Cache{Name: "oauth", Source: src, MinBackoff: time.Hour}
	inj := &Injector{Rules: []Rule{{Cache: c, Place: PlaceBearer}}}
	var ins []Injected
	for range 10 {
		r := httptest.NewRequestWithContext(ctx, http.MethodGet, "/", nil)
		in, why := inj.Inject(r, "/")
		if why != "" || r.Header.Get("Authorization") != "Bearer token-1" {
			t.Fatalf("reason %q, Authorization %q", why, r.Header.Get("Authorization"))
		}
		ins = append(ins, in)
	}
	ins[0].Responded(http.StatusOK)
	if n := src.fetches.Load(); n != 1 {
		t.Fatalf("%d fetches after a 200, want 1", n)
	}
	for _, in := range ins {
		in.Responded(http.StatusUnauthorized)
	}
	r := httptest.NewRequestWithContext(ctx, http.MethodGet, "/", nil)
	if _, why := inj.Inject(r, "/"); why != "" || r.Header.Get("Authorization") != "Bearer token-2" {
		t.Fatalf("after the 401s: reason %q, Authorization %q, want the second token", why, r.Header.Get("Authorization"))
	}
	if n := src.fetches.Load(); n != 2 {
		t.Errorf("%d fetches after 10 requests answered 401, want 2: one refresh, never a loop", n)
	}
}
