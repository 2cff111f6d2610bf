package app_test

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"

	"github.com/credflow/credflow/internal/sidecartest"
)

// TestRunPprof: /debug/pprof/ is served on the admin listener only with
// debug: {pprof: true}, and the sidecar then warns at start. No other
// listener serves it, on or off: TCP and HTTP, inbound and outbound, pass
// the request to the app. (net/http/pprof, linked into this process,
// registers itself on http.DefaultServeMux; no listener may serve that.)
func TestRunPprof(t *testing.T) {
	appSrv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "app:"+r.URL.Path) })}
	appLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go appSrv.Serve(appLn)
	t.Cleanup(func() { appSrv.Close() })
	const warning = "debug.pprof is on"

	for _, on := range []bool{false, true} {
		t.Run(fmt.Sprintf("pprof=%v", on), func(t *testing.T) {
			var addrs [4]string
			for i := range addrs {
				if addrs[i], err = sidecartest.FreeAddr(); err != nil {
					t.Fatal(err)
				}
			}
			inTCP, inHTTP, outTCP, outHTTP := addrs[0], addrs[1], addrs[2], addrs[3]
			ip := runInProcess(t, fmt.Sprintf(`debug: {pprof: %v}
inbound:
  - {name: tcp, listen: %q, app: %q, allow: [spiffe://example.org/backend]}
  - name: http
    listen: %q
    app: %q
    allow: [spiffe://example.org/backend]
    protocol: http
    routes: [{peers: [spiffe://example.org/backend], paths: ["/*"]}]
outbound:
  - {name: out-tcp, listen: %q, upstream: %q, expect: [spiffe://example.org/backend]}
  - {name: out-http, listen: %q, upstream: %q, expect: [spiffe://example.org/backend], protocol: http}
`, on, inTCP, appLn.Addr(), inHTTP, appLn.Addr(), outTCP, inTCP, outHTTP, inHTTP))

			backend := spiffeid.RequireFromPath(ip.ca.TrustDomain(), "/backend")
			mtls := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
				TLSClientConfig: tlsconfig.MTLSClientConfig(ip.ca.Issue(t, backend), ip.ca.Bundle(), tlsconfig.AuthorizeID(backend)),
			}}
			get := func(c *http.Client, url string) (int, string) {
				t.Helper()
				resp, err := c.Get(url)
				if err != nil {
					t.Fatalf("GET %s: %v", url, err)
				}
				defer resp.Body.Close()
				b, _ := io.ReadAll(resp.Body)
				return resp.StatusCode, string(b)
			}
			for _, url := range []string{"https://" + inTCP, "https://" + inHTTP} {
				if code, body := get(mtls, url+"/debug/pprof/"); code != 200 || body != "app:/debug/pprof/" {
					t.Errorf("inbound %s: %d %q, want the app's answer", url, code, body)
				}
			}
			for _, addr := range []string{outTCP, outHTTP} {
				if code, body := get(httpc, "http://"+addr+"/debug/pprof/"); code != 200 || body != "app:/debug/pprof/" {
					t.Errorf("outbound %s: %d %q, want the app's answer", addr, code, body)
				}
			}

			want := http.StatusNotFound
			if on {
				want = http.StatusOK
			}
			for _, p := range []string{"/debug/pprof/", "/debug/pprof/heap", "/debug/pprof/cmdline"} {
				if code, _ := get(httpc, "http://"+ip.admin+p); code != want {
					t.Errorf("admin %s: %d, want %d", p, code, want)
				}
			}
			if warned := len(ip.log.lines(warning)) > 0; warned != on {
				t.Errorf("warning at start: %v, want %v\n%s", warned, on, ip.log.lines(""))
			}
		})
	}
}
