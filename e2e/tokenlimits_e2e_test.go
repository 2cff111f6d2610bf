package e2e_test

import (
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/credflow/credflow/internal/sidecartest"
)

// TestE2ETokenIssuanceLimits is S19-2 on real SPIRE: a local caller
// looping over 10,000 distinct audiences at the token endpoint gets tokens
// for a burst of them (new_audience_burst, 20 by default) and then 5 a
// second (new_audience_rate); every other request is refused at once with
// 429, Retry-After and token_rate_limited, and never reaches the agent
// (the sidecar's JWT-SVID cache misses are bounded the same way).
// Meanwhile another workload's JWT-SVIDs for new audiences, each signed by
// the SPIRE server, keep coming, and audiences already issued are still
// served.
func TestE2ETokenIssuanceLimits(t *testing.T) {
	const (
		n     = 10000
		rate  = 5  // the default new_audience_rate
		burst = 20 // the default new_audience_burst
	)
	s, bin, _ := startWorkloads(t, 0, map[int]string{uidFrontend: "/frontend", uidBackend: "/backend"})
	ctx := t.Context()
	tok, err := sidecartest.FreeAddr()
	if err != nil {
		t.Fatal(err)
	}
	out, err := sidecartest.FreeAddr()
	if err != nil {
		t.Fatal(err)
	}
	// The caller is this test, root.
	sc := startSidecar(t, s, bin, uidFrontend, "frontend", fmt.Sprintf("workload_api: %s\nadmin: \"{{admin}}\"\n", s.AgentAddr())+
		fmt.Sprintf("token_endpoint: {listen: %q, callers: {uids: [0]}, audiences: [\"*\"]}\n", tok)+
		fmt.Sprintf("outbound:\n  - {name: b, listen: %q, upstream: \"127.0.0.1:1\", expect: [spiffe://example.org/backend]}\n", out))
	client := &http.Client{Timeout: 30 * time.Second}
	get := func(aud string) (int, http.Header) {
		t.Helper()
		resp, err := client.PostForm("http://"+tok+"/token", url.Values{"grant_type": {"urn:ietf:params:oauth:grant-type:token-exchange"}, "audience": {aud}})
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		return resp.StatusCode, resp.Header
	}

	// Another workload asks the SPIRE server for new signatures throughout.
	probe := func(i int) (time.Duration, error) {
		t0 := time.Now()
		_, err := s.FetchJWTSVID(ctx, uidBackend, fmt.Sprintf("spiffe://example.org/probe-%d", i))
		return time.Since(t0), err
	}
	var before []time.Duration
	for i := range 3 {
		d, err := probe(i)
		if err != nil {
			t.Fatal(err)
		}
		before = append(before, d)
	}
	var (
		mu     sync.Mutex
		during []time.Duration
		errs   []error
		stop   = make(chan struct{})
		probes sync.WaitGroup
	)
	probes.Go(func() {
		for i := 100; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			d, err := probe(i)
			mu.Lock()
			during, errs = append(during, d), append(errs, err)
			mu.Unlock()
		}
	})

	start := time.Now()
	var issued, limited int
	for i := range n {
		code, h := get(fmt.Sprintf("spiffe://example.org/svc-%d", i))
		switch {
		case code == 200:
			issued++
		case code == 429 && h.Get("X-Credflow-Reason") == "token_rate_limited":
			limited++
			if s, err := strconv.Atoi(h.Get("Retry-After")); err != nil || s < 1 {
				t.Fatalf("request %d: Retry-After %q", i, h.Get("Retry-After"))
			}
		default:
			t.Fatalf("request %d: %d %q", i, code, h.Get("X-Credflow-Reason"))
		}
		if most := burst + int(rate*time.Since(start).Seconds()) + 1; issued > most {
			t.Fatalf("%d of %d distinct audiences issued in %s: past %d, the issuance is not limited", issued, i+1, time.Since(start), most)
		}
	}
	elapsed := time.Since(start)
	close(stop)
	probes.Wait()
	if code, _ := get("spiffe://example.org/svc-0"); code != 200 {
		t.Errorf("an audience already issued, after the loop: %d", code)
	}
	misses, err := sc.Metric(ctx, "credflow_jwt_svid_cache_total", "result=miss")
	if err != nil {
		t.Fatal(err)
	}
	refused, err := sc.Metric(ctx, "credflow_refusals_total", "direction=token_endpoint", "reason=token_rate_limited")
	if err != nil {
		t.Fatal(err)
	}
	if most := burst + int(rate*elapsed.Seconds()) + 1; misses > float64(most) || issued < burst || limited != n-issued || refused != float64(limited) {
		t.Errorf("in %s: %d issued, %d refused (%v counted), %v agent round trips; want %d-%d issued and round trips, the rest refused",
			elapsed, issued, limited, refused, misses, burst, most)
	}
	if logged := len(sc.LogLines(`"reason":"token_rate_limited"`)); logged > 50+10*int(elapsed.Seconds()+1) {
		t.Errorf("%d log lines for %d refusals", logged, limited)
	}
	mu.Lock()
	defer mu.Unlock()
	for i, err := range errs {
		if err != nil {
			t.Errorf("another workload's JWT-SVID %d during the loop: %v", i, err)
		}
	}
	if len(during) == 0 {
		t.Error("no JWT-SVID fetched by another workload during the loop")
	}
	slices.Sort(before)
	slices.Sort(during)
	t.Logf("%d distinct audiences in %s: %d issued, %d refused (token_rate_limited), %v agent round trips; "+
		"another workload's new JWT-SVIDs: before median %s, during %d, median %s, max %s",
		n, elapsed.Round(time.Millisecond), issued, limited, misses, before[len(before)/2].Round(time.Millisecond),
		len(during), during[len(during)/2].Round(time.Millisecond), during[len(during)-1].Round(time.Millisecond))
}
