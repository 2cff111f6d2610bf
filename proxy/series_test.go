package proxy_test

import (
	"fmt"
	"io"
	"net/http"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// seriesCount counts the metric series a registry exposes.
func seriesCount(t *testing.T, reg *prometheus.Registry) int {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, mf := range mfs {
		n += len(mf.Metric)
	}
	return n
}

// TestMetricSeriesBounded is B20: requests on 8,000 distinct paths,
// tokens of 1,800 workloads for 1,800 audiences and mTLS peers with 200
// distinct SPIFFE IDs (10,000 values) add no metric series once each kind of outcome has
// been seen once. CREDFLOW_SOAK=1 multiplies the counts by ten.
func TestMetricSeriesBounded(t *testing.T) {
	scale := 1
	if longForm() {
		scale = 10
	}
	hp := startHTTPPair(t, echoApp)
	client := &http.Client{}
	get := func(path, auth string) int {
		req, _ := http.NewRequest("GET", "http://"+hp.outAddr+path, nil)
		if auth != "" {
			req.Header.Set("Authorization", "Bearer "+auth)
		}
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode
	}
	otherPeer := func(i int) {
		echoOnce(hp.inAddr, clientConfig(hp.ca.Issue(t, spiffeid.RequireFromPath(td, fmt.Sprintf("/peer-%d", i)))), "GET / HTTP/1.1\r\nHost: b\r\n\r\n")
	}
	mint := func(i int) string {
		tok, err := hp.issuer.mint(spiffeid.RequireFromPath(td, fmt.Sprintf("/w-%d", i)), fmt.Sprintf("spiffe://example.org/aud-%d", i))
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	// Each outcome once: allowed, route denied, a token refused, a peer
	// from elsewhere.
	if code := get("/api/first", ""); code != 200 {
		t.Fatalf("allowed request: %d", code)
	}
	get("/outside/first", "")
	get("/api/first", mint(0))
	otherPeer(0)
	// The peer's connection ends after echoOnce returns, and its end adds
	// series: wait until the counts hold still.
	inBase, outBase := seriesCount(t, hp.in.reg), seriesCount(t, hp.out.reg)
	for deadline := time.Now().Add(3 * time.Second); time.Now().Before(deadline); {
		time.Sleep(300 * time.Millisecond)
		in, out := seriesCount(t, hp.in.reg), seriesCount(t, hp.out.reg)
		if in == inBase && out == outBase {
			break
		}
		inBase, outBase = in, out
	}

	for i := range 8000 * scale {
		if code := get(fmt.Sprintf("/outside/%d/x%d", i, i*7), ""); code != 403 {
			t.Fatalf("path %d: %d, want 403", i, code)
		}
	}
	for i := range 1800 * scale {
		if code := get(fmt.Sprintf("/api/%d", i), mint(i+1)); code != 401 {
			t.Fatalf("token %d: %d, want 401", i, code)
		}
	}
	for i := range 200 {
		otherPeer(i + 1)
	}
	in, out := seriesCount(t, hp.in.reg), seriesCount(t, hp.out.reg)
	t.Logf("series: inbound %d -> %d, outbound %d -> %d", inBase, in, outBase, out)
	if in != inBase || out != outBase {
		t.Errorf("metric series grew: inbound %d -> %d, outbound %d -> %d", inBase, in, outBase, out)
	}
}
