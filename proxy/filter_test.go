package proxy_test

import (
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/credflow/credflow/proxy"
	"github.com/credflow/credflow/reason"
)

// TestHTTPFilters: a filter plugged into a listener's pipeline runs after
// the listener's own, on the verified peer and the canonical path, only for
// requests they let through; its refusal is answered with its reason's
// status and counted; an outbound filter's change to the request reaches
// the upstream and the app.
func TestHTTPFilters(t *testing.T) {
	var (
		mu   sync.Mutex
		seen []string
	)
	inbound := proxy.FilterFunc(func(r *proxy.Request) reason.Reason {
		mu.Lock()
		seen = append(seen, r.Peer.String()+" "+r.Path)
		mu.Unlock()
		if r.HTTP.Header.Get("X-Test-Refuse") != "" {
			return reason.TokenRateLimited
		}
		return ""
	})
	outbound := proxy.FilterFunc(func(r *proxy.Request) reason.Reason {
		r.HTTP.Header.Set("X-Test-Injected", "by the outbound filter")
		return ""
	})
	app := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "path=%s injected=%q", r.URL.Path, r.Header.Get("X-Test-Injected"))
	})
	hp := startHTTPPairWith(t, app, []proxy.Filter{inbound}, []proxy.Filter{outbound})
	get := func(path, extra string) (int, string) {
		return rawRequest(t, hp.outAddr, "GET "+path+" HTTP/1.1\r\nHost: backend\r\n"+extra+"Connection: close\r\n\r\n")
	}

	if code, body := get("/api/./a//b", ""); code != 200 || body != `path=/api/a/b injected="by the outbound filter"` {
		t.Fatalf("allowed request: %d %s", code, body)
	}
	if code, body := get("/admin", ""); code != 403 || !strings.Contains(body, "route_denied") {
		t.Fatalf("a request outside the routes: %d %s", code, body)
	}
	if code, body := get("/api/x", "X-Test-Refuse: 1\r\n"); code != http.StatusTooManyRequests || !strings.Contains(body, string(reason.TokenRateLimited)) {
		t.Fatalf("a request the filter refuses: %d %s", code, body)
	}
	hp.in.waitMetric(t, 1, "credflow_refusals_total", "reason="+string(reason.TokenRateLimited))

	front := spiffeid.RequireFromPath(td, "/frontend").String()
	mu.Lock()
	defer mu.Unlock()
	// The route refusal never reached the filter; the other two did, with
	// the peer and the canonical path.
	if want := []string{front + " /api/a/b", front + " /api/x"}; strings.Join(seen, "|") != strings.Join(want, "|") {
		t.Errorf("the filter saw %q, want %q", seen, want)
	}
}
