package proxy_test

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/credflow/credflow/internal/peercred"
	"github.com/credflow/credflow/internal/testca"
	"github.com/credflow/credflow/proxy"
)

// selfAndOther are callers lists that allow this test process's uid, and
// that allow only another uid.
func selfAndOther() (self, other peercred.Callers, uid uint32) {
	uid = uint32(os.Getuid())
	return peercred.Callers{UIDs: []uint32{uid}}, peercred.Callers{UIDs: []uint32{uid + 1}}, uid
}

// TestOutboundCallersTCP: a TCP outbound listener whose callers list this
// process's uid relays its connections; one whose callers list only
// another uid closes them at accept, before any connection to the
// upstream, with caller_not_allowed in the access log (with the caller's
// uid) and in credflow_refusals_total. Apply swaps the lists, and the
// next connections are decided by the new ones.
func TestOutboundCallersTCP(t *testing.T) {
	ca := testca.New(t, td)
	in := startInbound(t, ca, policy(t, "spiffe://example.org/frontend"), 0)
	self, other, uid := selfAndOther()
	acc := &accessLog{}
	outs := func(mine, theirs peercred.Callers) []proxy.Outbound {
		return []proxy.Outbound{
			{Name: "mine", Listen: "127.0.0.1:0", Upstream: in.addr, Expect: policy(t, "spiffe://example.org/backend"), Callers: mine},
			{Name: "theirs", Listen: "127.0.0.1:0", Upstream: in.addr, Expect: policy(t, "spiffe://example.org/backend"), Callers: theirs},
		}
	}
	p, reg := startProxy(t, proxy.Config{
		SVIDs:     static{svid: ca.Issue(t, spiffeid.RequireFromPath(td, "/frontend"))},
		Bundles:   x509bundle.NewSet(ca.Bundle()),
		Outbound:  outs(self, other),
		AccessLog: acc.logger(),
	})
	out := &inbound{reg: reg}
	mine, theirs := p.Addr("mine").String(), p.Addr("theirs").String()

	if got := exchange(t, mine, "allowed"); got != "allowed" {
		t.Fatalf("through the listener that allows uid %d: %q", uid, got)
	}
	if got := exchange(t, theirs, "refused"); got != "" {
		t.Fatalf("through the listener that allows only uid %d: %q relayed", uid+1, got)
	}
	out.waitMetric(t, 1, "credflow_refusals_total", "direction=outbound", "reason=caller_not_allowed")
	acc.waitLine(t, "direction=outbound", "listener=theirs", "decision=deny", "reason=caller_not_allowed", fmt.Sprintf("uid=%d", uid))
	// The refused connection never reached the upstream.
	in.waitMetric(t, 1, "credflow_connections_total", "direction=inbound")

	// Reload: the lists swap.
	if err := p.Apply(nil, outs(other, self)); err != nil {
		t.Fatal(err)
	}
	if got := exchange(t, mine, "refused"); got != "" {
		t.Fatalf("after the reload, through the listener that allows only uid %d: %q relayed", uid+1, got)
	}
	if got := exchange(t, theirs, "allowed"); got != "allowed" {
		t.Fatalf("after the reload, through the listener that allows uid %d: %q", uid, got)
	}
	out.waitMetric(t, 2, "credflow_refusals_total", "direction=outbound", "reason=caller_not_allowed")
	acc.waitLine(t, "listener=mine", "reason=caller_not_allowed")
}

// TestOutboundCallersHTTP: an HTTP outbound listener checks the owner of
// the app's socket once per connection and refuses every request of a
// caller it does not list with 403 and X-Credflow-Reason:
// caller_not_allowed, before any token is attached or upstream reached.
// A reload that lists callers on a listener that had none refuses the
// next request of an open connection (the caller is looked up then), and
// one that drops the caller refuses the next request of a connection
// that was allowed.
func TestOutboundCallersHTTP(t *testing.T) {
	ca := testca.New(t, td)
	upstream := startBackendHTTP(t, ca, "spiffe://example.org/frontend")
	self, other, uid := selfAndOther()
	front := spiffeid.RequireFromPath(td, "/frontend")
	acc := &accessLog{}
	outs := func(mine, theirs, open peercred.Callers) []proxy.Outbound {
		var o []proxy.Outbound
		for _, x := range []struct {
			name    string
			callers peercred.Callers
		}{{"mine", mine}, {"theirs", theirs}, {"open", open}} {
			o = append(o, proxy.Outbound{Name: x.name, Listen: "127.0.0.1:0", Upstream: upstream, Expect: policy(t, "spiffe://example.org/backend"),
				HTTP: &proxy.OutboundHTTP{}, Callers: x.callers})
		}
		return o
	}
	p, reg := startProxy(t, proxy.Config{
		SVIDs:     static{svid: ca.Issue(t, front)},
		Bundles:   x509bundle.NewSet(ca.Bundle()),
		Outbound:  outs(self, other, peercred.Callers{}),
		Tokens:    source{j: newJWTIssuer(t), id: front},
		AccessLog: acc.logger(),
	})
	out := &inbound{reg: reg}
	// One client per listener, each keeping its connection open.
	clients := map[string]*http.Client{}
	get := func(name string) (int, string, string) {
		t.Helper()
		c := clients[name]
		if c == nil {
			c = &http.Client{Transport: &http.Transport{MaxConnsPerHost: 1}}
			clients[name] = c
			t.Cleanup(c.CloseIdleConnections)
		}
		resp, err := c.Get("http://" + p.Addr(name).String() + "/api/x")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, resp.Header.Get("X-Credflow-Reason"), string(body)
	}
	wantAllowed := func(name string) {
		t.Helper()
		if code, reason, body := get(name); code != 200 || !strings.Contains(body, "peer=[spiffe://example.org/frontend]") {
			t.Fatalf("%s: %d %q %s, want 200 from the upstream", name, code, reason, body)
		}
	}
	wantRefused := func(name string) {
		t.Helper()
		if code, reason, body := get(name); code != 403 || reason != "caller_not_allowed" || strings.Contains(body, "peer=") {
			t.Fatalf("%s: %d %q %s, want 403 caller_not_allowed", name, code, reason, body)
		}
	}

	wantAllowed("mine")
	wantAllowed("open")
	for range 2 { // every request of the connection
		wantRefused("theirs")
	}
	out.waitMetric(t, 2, "credflow_refusals_total", "direction=outbound", "reason=caller_not_allowed")
	acc.waitLine(t, "direction=outbound", "listener=theirs", "transport=http", "decision=deny", "reason=caller_not_allowed", "status=403",
		fmt.Sprintf("uid=%d", uid))
	// The refused requests took no upstream connection: one each for mine
	// and open.
	out.waitMetric(t, 2, "credflow_connections_total", "direction=outbound", "result=allowed")

	// Reload: mine no longer lists this uid, open lists only another one,
	// theirs lists this uid. The open connections get the new decision.
	if err := p.Apply(nil, outs(other, self, other)); err != nil {
		t.Fatal(err)
	}
	wantRefused("mine")
	wantRefused("open")
	wantAllowed("theirs")
	out.waitMetric(t, 4, "credflow_refusals_total", "direction=outbound", "reason=caller_not_allowed")
	if n := out.metric(t, "credflow_refusals_total", "reason=caller_unknown"); n != 0 {
		t.Errorf("caller_unknown refusals: %v, want 0 (uid %d is known)", n, uid)
	}
}
