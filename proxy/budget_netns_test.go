//go:build linux

package proxy_test

import (
	"bytes"
	"errors"
	"log/slog"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/credflow/credflow/internal/testca"
	"github.com/credflow/credflow/proxy"
)

// reasonLines counts the lines written to it that name one of reasons.
type reasonLines struct {
	mu      sync.Mutex
	reasons []string
	n       int
}

func (w *reasonLines) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, r := range w.reasons {
		if bytes.Contains(p, []byte(`"reason":"`+r+`"`)) {
			w.n++
		}
	}
	return len(p), nil
}

func (w *reasonLines) count() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.n
}

// TestIdleConnectionsFlood is S19-1's acceptance: 2,000 plain TCP
// connections that send nothing, from four addresses other than the
// peer's (127.0.0.2-5, in a network namespace of the test's own), do not
// keep the app from calling out nor a real peer from connecting, though
// they outnumber max_connections (1000 here) two to one: each source has
// at most HandshakesPerSource (32) connections waiting for a handshake,
// further ones are closed at accept ("source_limit"), and those admitted
// are closed at the first-byte deadline ("first_byte_timeout"), long
// before the handshake timeout (30s here). Refusals are counted in full,
// but their access-log lines are rate-limited.
func TestIdleConnectionsFlood(t *testing.T) {
	if !inOwnNetns(t) {
		return
	}
	mustExec(t, "ip", "link", "set", "lo", "up")
	const (
		n         = 2000
		sources   = 4
		perSource = 32 // the default HandshakesPerSource
		admitted  = sources * perSource
	)
	ca := testca.New(t, td)
	lines := &reasonLines{reasons: []string{"source_limit", "first_byte_timeout"}}
	start := time.Now()
	r := startBudgetRig(t, ca, proxy.Config{
		MaxConnections:   1000,
		HandshakeTimeout: 30 * time.Second,
		AccessLog:        slog.New(slog.NewJSONHandler(lines, nil)),
	})

	idle := make([]net.Conn, 0, n)
	t.Cleanup(func() {
		for _, c := range idle {
			c.Close()
		}
	})
	for i := range n {
		d := net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, byte(2+i%sources))}}
		c, err := d.Dial("tcp", r.in)
		if err != nil {
			t.Fatalf("idle connection %d: %v", i, err)
		}
		idle = append(idle, c)
	}
	// Every idle connection is in the listener's queue before the peer's,
	// so the sidecar takes them all before it.
	peer := clientConfig(ca.Issue(t, spiffeid.RequireFromPath(td, "/peer")))
	if _, err := echoOnce(r.in, peer, "a real peer"); err != nil {
		t.Fatalf("a real peer behind %d idle connections: %v (refusals: limit %v, source_limit %v, handshake_limit %v)", n, err,
			r.front.metric(t, "credflow_refusals_total", "reason=limit"), r.front.metric(t, "credflow_refusals_total", "reason=source_limit"),
			r.front.metric(t, "credflow_refusals_total", "reason=handshake_limit"))
	}
	if err := r.outbound(); err != nil {
		t.Fatalf("the app's call out with %d idle inbound connections: %v", n, err)
	}
	if got := r.front.metric(t, "credflow_refusals_total", "direction=inbound", "reason=source_limit"); got != n-admitted {
		t.Errorf("source_limit refusals = %v, want %d (all but %d per source)", got, n-admitted, perSource)
	}

	// Every idle connection is closed: those refused at once, and the
	// admitted ones at the first-byte deadline, not the handshake timeout.
	deadline := time.Now().Add(20 * time.Second)
	open := 0
	for _, c := range idle {
		c.SetReadDeadline(deadline)
		_, err := c.Read(make([]byte, 1))
		var ne net.Error
		if err == nil || errors.As(err, &ne) && ne.Timeout() {
			open++
		}
	}
	if open > 0 {
		t.Fatalf("%d of %d idle connections still open 20s later", open, n)
	}
	r.front.waitMetric(t, admitted, "credflow_refusals_total", "direction=inbound", "reason=first_byte_timeout")
	for _, reason := range []string{"limit", "handshake_limit", "handshake_timeout"} {
		if got := r.front.metric(t, "credflow_refusals_total", "reason="+reason); got != 0 {
			t.Errorf("%s refusals = %v, want 0", reason, got)
		}
	}
	r.front.waitMetric(t, 0, "credflow_inbound_handshakes")
	// At most the burst, then 10 a second.
	if got, most := lines.count(), 50+10*int(time.Since(start).Seconds()+1); got > most {
		t.Errorf("%d access-log lines for %d refusals, want at most %d", got, n, most)
	}
	t.Logf("%d idle connections: %d admitted, closed at the first-byte deadline; %d access-log lines", n, admitted, lines.count())
}
