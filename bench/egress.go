package bench

import (
	"context"
	"encoding/pem"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"

	"github.com/credflow/credflow/credential"
	"github.com/credflow/credflow/internal/hostenv"
	"github.com/credflow/credflow/internal/hydratest"
	"github.com/credflow/credflow/internal/spiretest"
	"github.com/credflow/credflow/internal/wlapitest"
)

// The egress benchmark's listeners: the same external API behind each,
// one injecting a cached OAuth token and one not.
const (
	egressPlain    = "plain"
	egressInjected = "injected"
	egressIssuer   = "https://jwt.bench.example"
	egressClient   = "spiffe://bench.example/client"
)

// EgressConfig shapes the egress benchmark.
type EgressConfig struct {
	Credflow, Hydra string // the binaries
	Dir             string // the sidecar's configuration and log
	Repeats         int
	Rate            int // requests per second, open loop
	Duration        time.Duration
	Conns           int // the app's keep-alive connections
	ColdFetches     int
}

// EgressResult is one measured run through one listener.
type EgressResult = PairedResult

// EgressRun is the egress benchmark's results.
type EgressRun struct {
	Rate     int            `json:"rate"`
	Duration time.Duration  `json:"duration"`
	Conns    int            `json:"conns"`
	Results  []EgressResult `json:"results"`
	// APIConns is the connections the sidecars opened to the API.
	APIConns int64 `json:"api_conns"`
	// TokenFetches is the tokens the sidecar fetched during the run.
	TokenFetches float64 `json:"token_fetches"`
	// ColdFetchMS are cold-cache fetches (a JWT-SVID from the Workload API,
	// a token from Hydra); WarmGetNS is a cached Get.
	ColdFetchMS []float64 `json:"cold_fetch_ms"`
	WarmGetNS   float64   `json:"warm_get_ns"`
}

// RunEgress measures what credential injection costs an egress request:
// one credflow sidecar with two egress listeners to the same HTTPS API
// (HTTP/2 over TLS 1.3, in this process), one injecting an OAuth token
// that Ory Hydra issued for the workload's JWT-SVID and the other
// nothing; open-loop HTTP/1.1 requests through each, interleaved within
// every repeat, the sidecar's CPU per request compared. Then cold-cache
// fetches against the same Hydra.
func RunEgress(ctx context.Context, c EgressConfig) (*EgressRun, error) {
	r, err := newRig(ctx, c.Dir, Binaries{Credflow: c.Credflow}, raiseFileLimit(4096))
	if err != nil {
		return nil, err
	}
	defer r.stopAll()
	r.wlClient.SetJWTIssuer(egressIssuer)

	hydra, err := hydratest.Start(ctx, filepath.Dir(c.Hydra), time.Hour)
	if err != nil {
		return nil, err
	}
	defer hydra.Close()
	scopes := []string{"bench"}
	if err := hydra.CreatePublicClient(ctx, egressClient, scopes); err != nil {
		return nil, err
	}
	key := spiretest.JWTKey{KeyID: wlapitest.JWTKeyID, Public: r.jwtKey.Public()}
	if err := hydra.TrustJWTIssuer(ctx, egressIssuer, egressClient, key, scopes, time.Now().Add(2*time.Hour)); err != nil {
		return nil, err
	}

	// The API counts requests by whether they carry a bearer token: the
	// injected listeners' do, the plain ones' must not.
	var withBearer, without, apiConns atomic.Int64
	api := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if strings.HasPrefix(req.Header.Get("Authorization"), "Bearer ") {
			withBearer.Add(1)
		} else {
			without.Add(1)
		}
		io.Copy(io.Discard, req.Body)
		w.Write(rpcBody)
	}))
	api.EnableHTTP2 = true
	api.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			apiConns.Add(1)
		}
	}
	api.StartTLS()
	defer api.Close()
	caFile := r.path("api-ca.pem")
	caPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: api.Certificate().Raw})
	if err := os.WriteFile(caFile, caPEM, 0o644); err != nil {
		return nil, err
	}

	// Two sidecars, each with both listeners. Each repeat loads one's plain
	// listener and the other's injected one at the same time, so both
	// figures are taken under the same machine conditions, and swaps the
	// sidecars' roles in the next repeat, so neither process's luck
	// (which core, which neighbour) favours one listener.
	var scs [2]pairedSidecar
	for i := range scs {
		scs[i].addrs = map[string]string{}
		for _, l := range []string{egressPlain, egressInjected} {
			if scs[i].addrs[l], err = freeAddr(); err != nil {
				return nil, err
			}
		}
		cfg := fmt.Sprintf(`credentials:
  - name: api-token
    oauth2: {token_url: %q, client_id: %q, scopes: [bench]}
outbound:
  - name: %s
    listen: %q
    upstream: %q
    egress: {server_name: example.com, ca_file: %q}
  - name: %s
    listen: %q
    upstream: %q
    egress:
      server_name: example.com
      ca_file: %q
      inject: [{credential: api-token}]
`, hydra.TokenURL(), egressClient, egressPlain, scs[i].addrs[egressPlain], api.Listener.Addr(), caFile,
			egressInjected, scs[i].addrs[egressInjected], api.Listener.Addr(), caFile)
		if scs[i].p, err = r.credflow(fmt.Sprintf("egress-%d", i), r.wlClient.Addr(), cfg); err != nil {
			return nil, err
		}
	}

	run := &EgressRun{Rate: c.Rate, Duration: c.Duration, Conns: c.Conns}
	var b0, w0, c0 int64
	load := func(ctx context.Context, addr string) (latencies, int, int, error) {
		lat, failed, err := rpcHTTP1(ctx, addr, c.Conns, c.Rate, c.Duration)
		return lat, failed, c.Conns, err // rpcHTTP1 warms each connection with a request first
	}
	// Every injected request carried the token, no plain one did (a
	// failed request may not have reached the API).
	checked := func(plain, inj PairedResult) error {
		b, w := int(withBearer.Load()-b0), int(without.Load()-w0)
		if b > inj.Requests || w > plain.Requests || b+w < inj.Requests+plain.Requests-inj.Failed-plain.Failed {
			return fmt.Errorf("egress: the API saw %d requests with a bearer token and %d without; %d injected and %d plain were sent",
				b, w, inj.Requests, plain.Requests)
		}
		run.APIConns += apiConns.Load() - c0
		b0, w0, c0 = withBearer.Load(), without.Load(), apiConns.Load()
		return nil
	}
	if run.Results, err = runPaired(ctx, scs, egressPlain, egressInjected, c.Repeats, load, checked); err != nil {
		return nil, err
	}
	for _, sc := range scs {
		n, err := sc.p.metric(`credflow_credential_fetches_total{credential="api-token"}`)
		if err != nil {
			return nil, err
		}
		run.TokenFetches += n
	}
	if run.ColdFetchMS, run.WarmGetNS, err = coldFetches(ctx, r.wlClient.Addr(), hydra.TokenURL(), scopes, c.ColdFetches); err != nil {
		return nil, err
	}
	return run, nil
}

// coldFetches times Get on n new caches, as the sidecar's first request
// for a credential waits for it: a JWT-SVID for the token endpoint from
// the Workload API, then the jwt-bearer grant at Hydra; and a Get on a warm
// one.
func coldFetches(ctx context.Context, wl, tokenURL string, scopes []string, n int) ([]float64, float64, error) {
	client, err := workloadapi.New(ctx, workloadapi.WithAddr(wl))
	if err != nil {
		return nil, 0, err
	}
	defer client.Close()
	src := &credential.OAuth2{TokenURL: tokenURL, Method: credential.GrantJWTBearer, ClientID: egressClient, Scopes: scopes,
		Assertion: func(ctx context.Context, aud string) (string, error) {
			svid, err := client.FetchJWTSVID(ctx, jwtsvid.Params{Audience: aud})
			if err != nil {
				return "", err
			}
			return svid.Marshal(), nil
		}}
	var ms []float64
	var cache *credential.Cache
	for range n {
		cache = &credential.Cache{Name: "cold", Source: src}
		start := time.Now()
		if _, err := cache.Get(ctx); err != nil {
			return nil, 0, fmt.Errorf("cold fetch: %w", err)
		}
		ms = append(ms, float64(time.Since(start).Microseconds())/1000)
	}
	const gets = 100000
	start := time.Now()
	for range gets {
		if _, err := cache.Get(ctx); err != nil {
			return nil, 0, err
		}
	}
	return ms, float64(time.Since(start).Nanoseconds()) / gets, nil
}

// EgressTable renders an egress run.
func EgressTable(env *hostenv.Environment, run *EgressRun) string {
	var b strings.Builder
	fmt.Fprintf(&b, "# Egress: credential injection's cost\n\n"+
		"Two credflow sidecars, each with two egress listeners to the same HTTPS API (in the harness, HTTP/2 over TLS 1.3): "+
		"`%s` injects a cached OAuth token (`Authorization: Bearer`, obtained from Ory Hydra v2.3.0 with the workload's "+
		"JWT-SVID), `%s` injects nothing. In each repeat one sidecar's plain listener and the other's injected one carry "+
		"the same load at the same time (open-loop HTTP/1.1, 1 KB each way, %d requests/s for %v over %d connections "+
		"each), and the sidecars swap roles in the next; %d repeats. CPU is the loaded sidecar process's per request; "+
		"median (min–max); the ratio is taken within each repeat.\n\n", egressInjected, egressPlain, run.Rate, run.Duration, run.Conns, len(run.Results)/2)
	writeEnv(&b, env)
	w := &writer{}
	rm, rlo, rhi := pairedTable(w, run.Results, egressPlain, egressInjected)
	b.WriteString(w.String())
	cold, clo, chi := med(run.ColdFetchMS)
	sorted := slices.Clone(run.ColdFetchMS)
	slices.Sort(sorted)
	p90 := sorted[len(sorted)*9/10]
	fmt.Fprintf(&b, "\nThe API saw the token on every injected request and on no plain one (checked in each repeat); the sidecars "+
		"opened %d connections to it in all. Token requests the two sidecars made during the run: %.0f. Cold-cache fetch (a new `credential.Cache`: a JWT-SVID "+
		"from the stand-in Workload API, then the jwt-bearer grant at Hydra over loopback HTTP), %d fetches: median %.1f ms, "+
		"p90 %.1f ms (%.1f–%.1f). A Get on a warm cache: %.0f ns.\n",
		run.APIConns, run.TokenFetches, len(run.ColdFetchMS), cold, p90, clo, chi, run.WarmGetNS)
	b.WriteString("\n| target (issue 16) | measured | |\n|---|---|---|\n")
	fmt.Fprintf(&b, "| an egress request with a cached injected token costs at most 5%% more CPU than without | %.3f× (per-repeat ratios %.3f–%.3f) | %s |\n",
		rm, rlo, rhi, map[bool]string{true: "met", false: "not met"}[rm <= 1.05])
	return b.String()
}
