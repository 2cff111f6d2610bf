//go:build linux

package proxy_test

import (
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/credflow/credflow/credential"
	"github.com/credflow/credflow/internal/peercred"
	"github.com/credflow/credflow/internal/testca"
	"github.com/credflow/credflow/proxy"
	"github.com/credflow/credflow/proxy/capture"
)

// TestCaptureEgress: an app calls an external API's own address in plain
// HTTP (http://<the API's address>/, port 80), knowing nothing of the
// sidecar; the rules of `credflow init` redirect the connection to the
// capture listener, whose destination for that address names an egress
// listener; the egress listener calls the API over TLS with the injected
// token, the app's own Authorization removed. Over IPv4 and IPv6. The
// egress listener's callers list this process's uid: the caller of a
// handed-over connection is found by its original destination (a lookup
// by the listener's address would find no socket: caller_unknown), and
// with another uid listed the request is refused (caller_not_allowed) and
// never reaches the API. In a network namespace of its own.
func TestCaptureEgress(t *testing.T) {
	if !inOwnNetns(t) {
		return
	}
	ca := testca.New(t, td)
	startNetnsServer(t, ca) // the namespace's addresses
	api := startExternalAPI(t, true)
	self, other, _ := selfAndOther()

	for _, x := range []struct {
		name    string
		callers peercred.Callers
		want    int
	}{
		{"self", self, http.StatusOK},
		{"other", other, http.StatusForbidden},
	} {
		t.Run(x.name, func(t *testing.T) {
			before := len(api.requests())
			acc := &accessLog{}
			tok := &credential.Cache{Name: "api-token", Source: &fixedSource{}}
			p, reg := startProxy(t, proxy.Config{
				SVIDs:     static{svid: ca.Issue(t, spiffeid.RequireFromPath(td, "/frontend"))},
				Bundles:   x509bundle.NewSet(ca.Bundle()),
				AccessLog: acc.logger(),
				Outbound: []proxy.Outbound{
					{Name: "capture", Listen: "127.0.0.1:0", Expect: policy(t, "spiffe://example.org/nobody"), Capture: &capture.Capture{
						Destinations: []capture.Destination{
							{Prefix: netip.MustParsePrefix(server4 + "/32"), Port: 80, Egress: "api"},
							{Prefix: netip.MustParsePrefix(server6 + "/128"), Port: 80, Egress: "api"},
						},
					}},
					{Name: "api", Listen: "127.0.0.1:0", Upstream: api.srv.Listener.Addr().String(), Callers: x.callers,
						Egress: &proxy.Egress{ServerName: "example.com", RootCAs: api.roots(),
							Inject: &credential.Injector{Rules: []credential.Rule{{Cache: tok, Place: credential.PlaceBearer}}}}},
				},
			})
			capPort := fmt.Sprint(p.Addr("capture").(*net.TCPAddr).Port)
			mustExec(t, "iptables", "-t", "nat", "-A", "OUTPUT", "-p", "tcp", "-s", app4, "-j", "REDIRECT", "--to-ports", capPort)
			mustExec(t, "ip6tables", "-t", "nat", "-A", "OUTPUT", "-p", "tcp", "-s", app6, "-j", "REDIRECT", "--to-ports", capPort)
			t.Cleanup(func() {
				exec.Command("iptables", "-t", "nat", "-F", "OUTPUT").Run()
				exec.Command("ip6tables", "-t", "nat", "-F", "OUTPUT").Run()
			})

			for i, c := range []struct{ src, dst string }{{app4, server4}, {app6, server6}} {
				client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
					DialContext: (&net.Dialer{Timeout: 3 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(c.src)}}).DialContext}}
				url := "http://" + net.JoinHostPort(c.dst, "80") + "/v1/charges?id=7"
				status, body, hdr := get(t, client, http.MethodGet, url, http.Header{"Authorization": {"Bearer the-app-s-own"}})
				client.CloseIdleConnections()
				if status != x.want {
					t.Fatalf("the app's call to %s: %d %q (%s), want %d", url, status, body, hdr.Get("X-Credflow-Reason"), x.want)
				}
				if x.want != http.StatusOK {
					if why := hdr.Get("X-Credflow-Reason"); why != "caller_not_allowed" {
						t.Errorf("refused with %q, want caller_not_allowed", why)
					}
					continue
				}
				_, apiPort, _ := net.SplitHostPort(api.srv.Listener.Addr().String())
				if want := "HTTP/2.0 GET /v1/charges?id=7 host=example.com:" + apiPort; body != want {
					t.Errorf("the API answered %q, want %q", body, want)
				}
				seen := api.requests()
				if len(seen) != before+i+1 {
					t.Fatalf("the API saw %d requests, want %d", len(seen)-before, i+1)
				}
				if got := seen[len(seen)-1].Header.Values("Authorization"); len(got) != 1 || !strings.HasPrefix(got[0], "Bearer tok-") {
					t.Errorf("the API received Authorization %q, want only the injected token", got)
				}
				acc.waitLine(t, "listener=api", "credential=api-token", "status=200")
			}
			if x.want != http.StatusOK {
				if n := len(api.requests()) - before; n != 0 {
					t.Errorf("the API saw %d requests from a caller not allowed", n)
				}
			}
			m := &inbound{reg: reg}
			if n := m.metric(t, "credflow_refusals_total", "reason=caller_unknown"); n != 0 {
				t.Errorf("caller_unknown refusals: %v (the caller was looked up by the wrong address)", n)
			}
			if n := m.metric(t, "credflow_tls_connections_total", "direction=outbound"); n != 0 {
				t.Errorf("%v mTLS connections to the mesh: the captured calls went to a sidecar, not to the egress listener", n)
			}
		})
	}
}
