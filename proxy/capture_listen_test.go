package proxy_test

import (
	"net"
	"strconv"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/credflow/credflow/internal/testca"
	"github.com/credflow/credflow/proxy"
	"github.com/credflow/credflow/proxy/capture"
)

// TestCaptureListensOnBothLoopbacks: the capture rules redirect IPv4 to
// 127.0.0.1 and IPv6 to ::1 at the capture port, so a capture listener on
// one loopback address takes connections on the other one too (here made
// directly, so refused for want of an original destination), and closes
// both when the proxy stops.
func TestCaptureListensOnBothLoopbacks(t *testing.T) {
	if ln, err := net.Listen("tcp6", "[::1]:0"); err != nil {
		t.Skipf("this host has no IPv6 loopback (%v): there is no IPv6 to capture", err)
	} else {
		ln.Close()
	}
	ca := testca.New(t, td)
	for _, c := range []struct{ listen, other string }{{"127.0.0.1:0", "::1"}, {"[::1]:0", "127.0.0.1"}} {
		t.Run(c.listen, func(t *testing.T) {
			p, reg := startProxy(t, proxy.Config{
				SVIDs:    static{svid: ca.Issue(t, spiffeid.RequireFromPath(td, "/frontend"))},
				Bundles:  x509bundle.NewSet(ca.Bundle()),
				Outbound: []proxy.Outbound{{Name: "capture", Listen: c.listen, Capture: &capture.Capture{}}},
			})
			port := strconv.Itoa(p.Addr("capture").(*net.TCPAddr).Port)
			for i, addr := range []string{p.Addr("capture").String(), net.JoinHostPort(c.other, port)} {
				conn, err := net.DialTimeout("tcp", addr, 3*time.Second)
				if err != nil {
					t.Fatalf("the capture listener does not take connections on %s: %v", addr, err)
				}
				conn.SetDeadline(time.Now().Add(5 * time.Second))
				conn.Write([]byte("hello"))
				if n, err := conn.Read(make([]byte, 8)); err == nil {
					t.Fatalf("read %d bytes from a capture listener dialled directly on %s", n, addr)
				}
				conn.Close()
				(&inbound{reg: reg}).waitMetric(t, float64(i+1), "credflow_refusals_total", "reason=no_original_destination")
			}
		})
	}
}
