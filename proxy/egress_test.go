package proxy_test

import (
	"context"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/credflow/credflow/credential"
	"github.com/credflow/credflow/internal/testca"
	"github.com/credflow/credflow/proxy"
)

// externalAPI is an HTTPS server outside the mesh that records what it is
// sent.
type externalAPI struct {
	srv  *httptest.Server
	mu   sync.Mutex
	seen []*http.Request
	// status answers a request; default 200.
	status func(r *http.Request) int
}

func startExternalAPI(t *testing.T, h2 bool) *externalAPI {
	t.Helper()
	api := &externalAPI{}
	api.srv = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		api.mu.Lock()
		api.seen = append(api.seen, r)
		status := api.status
		api.mu.Unlock()
		code := http.StatusOK
		if status != nil {
			code = status(r)
		}
		w.WriteHeader(code)
		fmt.Fprintf(w, "%s %s %s host=%s", r.Proto, r.Method, r.URL.RequestURI(), r.Host)
	}))
	api.srv.EnableHTTP2 = h2
	api.srv.StartTLS()
	t.Cleanup(api.srv.Close)
	return api
}

func (a *externalAPI) requests() []*http.Request {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]*http.Request(nil), a.seen...)
}

func (a *externalAPI) roots() *x509.CertPool {
	pool := x509.NewCertPool()
	pool.AddCert(a.srv.Certificate())
	return pool
}

// egressRig is a sidecar with one egress listener ("api") to an external
// API.
type egressRig struct {
	addr string
	acc  *accessLog
	m    *inbound
}

func startEgress(t *testing.T, api *externalAPI, eg proxy.Egress) *egressRig {
	t.Helper()
	ca := testca.New(t, td)
	acc := &accessLog{}
	// httptest's certificate is for example.com and 127.0.0.1.
	p, reg := startProxy(t, proxy.Config{
		SVIDs:     static{svid: ca.Issue(t, spiffeid.RequireFromPath(td, "/frontend"))},
		Bundles:   x509bundle.NewSet(ca.Bundle()),
		Outbound:  []proxy.Outbound{{Name: "api", Listen: "127.0.0.1:0", Upstream: api.srv.Listener.Addr().String(), Egress: &eg}},
		AccessLog: acc.logger(),
	})
	return &egressRig{addr: p.Addr("api").String(), acc: acc, m: &inbound{reg: reg}}
}

// fixedSource answers tokens named after a counter, valid for an hour.
type fixedSource struct{ n atomic.Int64 }

func (s *fixedSource) Fetch(context.Context) (credential.Credential, error) {
	v, err := credential.NewSecret(fmt.Sprintf("tok-%d", s.n.Add(1)))
	return credential.Credential{Value: v, Expires: time.Now().Add(time.Hour)}, err
}

type downSource struct{}

func (downSource) Fetch(context.Context) (credential.Credential, error) {
	return credential.Credential{}, fmt.Errorf("token endpoint: connection refused")
}

func get(t *testing.T, c *http.Client, method, url string, hdr http.Header) (int, string, http.Header) {
	t.Helper()
	req, err := http.NewRequest(method, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range hdr {
		req.Header[k] = v
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body), resp.Header
}

// TestEgressForwards: the app's plain HTTP/1.1 or h2c request reaches the
// external HTTPS server, over HTTP/2 when it offers it, with its method,
// canonical path and query, the server's name as Host, and the injected
// token in place of the app's own Authorization; the access log names the
// credential and the external server.
func TestEgressForwards(t *testing.T) {
	for _, tc := range []struct {
		name      string
		serverH2  bool
		client    *http.Client
		wantProto string
	}{
		{"http1 app, h2 server", true, http.DefaultClient, "HTTP/2.0"},
		{"h2c app, http1 server", false, h2cClient(), "HTTP/1.1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			api := startExternalAPI(t, tc.serverH2)
			tok := &credential.Cache{Name: "oauth", Source: &fixedSource{}}
			eg := startEgress(t, api, proxy.Egress{ServerName: "example.com", RootCAs: api.roots(),
				Inject: &credential.Injector{Rules: []credential.Rule{{Cache: tok, Place: credential.PlaceBearer}}}})
			code, body, _ := get(t, tc.client, http.MethodPost, "http://"+eg.addr+"/v1/./charges//x?amount=5&c=d",
				http.Header{"Authorization": {"Bearer the-app-s-own"}})
			if code != http.StatusOK {
				t.Fatalf("status %d: %s", code, body)
			}
			port := api.srv.Listener.Addr().(*net.TCPAddr).Port
			if want := fmt.Sprintf("%s POST /v1/charges/x?amount=5&c=d host=example.com:%d", tc.wantProto, port); body != want {
				t.Errorf("the server saw %q, want %q", body, want)
			}
			seen := api.requests()
			if len(seen) != 1 || seen[0].Header.Get("Authorization") != "Bearer tok-1" {
				t.Fatalf("the server saw %d requests, Authorization %q", len(seen), seen[0].Header.Get("Authorization"))
			}
			if strings.Contains(body, "tok-1") {
				t.Errorf("the app's response holds the token")
			}
			eg.acc.waitLine(t, "direction=outbound", "listener=api", "decision=allow", "credential=oauth",
				"upstream="+api.srv.Listener.Addr().String(), "method=POST", "path=/v1/charges/x", "status=200")
		})
	}
}

// TestEgressRefusals: each way a request must not go out is refused with
// its reason, and the external server sees nothing: an unverifiable
// certificate (system roots, or the wrong name), no valid credential, the
// app's own credential where a rule refuses it, TRACE, a path with no
// canonical form.
func TestEgressRefusals(t *testing.T) {
	ok := &credential.Cache{Name: "oauth", Source: &fixedSource{}}
	down := &credential.Cache{Name: "down", Source: downSource{}, Timeout: time.Second}
	bearer := func(c *credential.Cache, refuse bool) *credential.Injector {
		return &credential.Injector{Rules: []credential.Rule{{Cache: c, Place: credential.PlaceBearer, RefuseApp: refuse}}}
	}
	for _, tc := range []struct {
		name   string
		eg     func(api *externalAPI) proxy.Egress
		method string
		path   string
		hdr    http.Header
		status int
		reason string
	}{
		{"system roots do not hold the server's CA", func(*externalAPI) proxy.Egress {
			return proxy.Egress{ServerName: "example.com", Inject: bearer(ok, false)}
		}, "GET", "/", nil, 502, "upstream_untrusted"},
		{"the certificate is not for the name", func(api *externalAPI) proxy.Egress {
			return proxy.Egress{ServerName: "api.other.example", RootCAs: api.roots(), Inject: bearer(ok, false)}
		}, "GET", "/", nil, 502, "upstream_untrusted"},
		{"no valid credential", func(api *externalAPI) proxy.Egress {
			return proxy.Egress{ServerName: "example.com", RootCAs: api.roots(), Inject: bearer(down, false)}
		}, "GET", "/", nil, 503, "credential_unavailable"},
		{"the app's own Authorization, refused by the rule", func(api *externalAPI) proxy.Egress {
			return proxy.Egress{ServerName: "example.com", RootCAs: api.roots(), Inject: bearer(ok, true)}
		}, "GET", "/", http.Header{"Authorization": {"Bearer mine"}}, 403, "app_credential"},
		{"TRACE would echo the credential", func(api *externalAPI) proxy.Egress {
			return proxy.Egress{ServerName: "example.com", RootCAs: api.roots(), Inject: bearer(ok, false)}
		}, "TRACE", "/", nil, 405, "trace_refused"},
		{"a path with no canonical form", func(api *externalAPI) proxy.Egress {
			return proxy.Egress{ServerName: "example.com", RootCAs: api.roots(), Inject: bearer(ok, false)}
		}, "GET", "/v1/%2e%2e%2fadmin", nil, 400, "bad_path"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			api := startExternalAPI(t, true)
			eg := startEgress(t, api, tc.eg(api))
			code, body, hdr := get(t, http.DefaultClient, tc.method, "http://"+eg.addr+tc.path, tc.hdr)
			if code != tc.status || hdr.Get("X-Credflow-Reason") != tc.reason {
				t.Errorf("got %d %q (%s), want %d %s", code, hdr.Get("X-Credflow-Reason"), body, tc.status, tc.reason)
			}
			if n := len(api.requests()); n != 0 {
				t.Errorf("the external server saw %d requests", n)
			}
			if strings.Contains(body, "tok-") {
				t.Errorf("the answer holds a token: %q", body)
			}
			eg.acc.waitLine(t, "listener=api", "reason="+tc.reason, fmt.Sprintf("status=%d", tc.status))
			if n := eg.m.metric(t, "credflow_refusals_total", "direction=outbound", "reason="+tc.reason); n != 1 {
				t.Errorf("%s refusals = %v, want 1", tc.reason, n)
			}
		})
	}
}

// TestEgressUnauthorizedRefreshes: the external server refuses the first
// token with 401; the app gets that 401, and the next request carries a
// new token, fetched once however many requests saw the 401.
func TestEgressUnauthorizedRefreshes(t *testing.T) {
	api := startExternalAPI(t, true)
	api.status = func(r *http.Request) int {
		if r.Header.Get("Authorization") == "Bearer tok-1" {
			return http.StatusUnauthorized
		}
		return http.StatusOK
	}
	src := &fixedSource{}
	tok := &credential.Cache{Name: "oauth", Source: src, MinBackoff: time.Hour}
	eg := startEgress(t, api, proxy.Egress{ServerName: "example.com", RootCAs: api.roots(),
		Inject: &credential.Injector{Rules: []credential.Rule{{Cache: tok, Place: credential.PlaceBearer}}}})
	if code, _, _ := get(t, http.DefaultClient, "GET", "http://"+eg.addr+"/", nil); code != http.StatusUnauthorized {
		t.Fatalf("first request: %d, want the server's 401", code)
	}
	for range 5 {
		if code, body, _ := get(t, http.DefaultClient, "GET", "http://"+eg.addr+"/", nil); code != http.StatusOK {
			t.Fatalf("after the 401: %d %s", code, body)
		}
	}
	if n := src.n.Load(); n != 2 {
		t.Errorf("%d token fetches, want 2: the first, and one refresh after the 401", n)
	}
}
