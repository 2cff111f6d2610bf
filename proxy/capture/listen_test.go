package capture

import (
	"errors"
	"net"
	"strconv"
	"testing"
	"time"
)

// TestListenBothLoopbacks: a capture listener on one loopback address also
// listens on the other family's at the same port, since `credflow init`
// redirects IPv4 to 127.0.0.1 and IPv6 to ::1.
func TestListenBothLoopbacks(t *testing.T) {
	if ln, err := net.Listen("tcp6", "[::1]:0"); err != nil {
		t.Skipf("this host has no IPv6 loopback (%v): there is no IPv6 to capture", err)
	} else {
		ln.Close()
	}
	for _, c := range []struct{ listen, other string }{{"127.0.0.1:0", "::1"}, {"[::1]:0", "127.0.0.1"}} {
		t.Run(c.listen, func(t *testing.T) {
			ln, twin, err := Listen(c.listen)
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			if twin == nil {
				t.Fatal("no listener on the other loopback address")
			}
			defer twin.Close()
			port := ln.Addr().(*net.TCPAddr).Port
			if want := net.JoinHostPort(c.other, strconv.Itoa(port)); twin.Addr().String() != want {
				t.Fatalf("the other listener is on %s, want %s", twin.Addr(), want)
			}
		})
	}
}

// TestListenNoTwin: an unspecified address takes both families already,
// and a fixed port held in the other family is an error, since whatever
// holds it would receive the pod's traffic in clear.
func TestListenNoTwin(t *testing.T) {
	ln, twin, err := Listen("[::]:0")
	if err != nil {
		t.Skipf("no IPv6 on this host: %v", err)
	}
	ln.Close()
	if twin != nil {
		twin.Close()
		t.Fatalf("a second listener on %s beside an unspecified address", twin.Addr())
	}

	held, err := net.Listen("tcp6", "[::1]:0")
	if err != nil {
		t.Skipf("this host has no IPv6 loopback (%v)", err)
	}
	defer held.Close()
	port := strconv.Itoa(held.Addr().(*net.TCPAddr).Port)
	if ln, twin, err := Listen(net.JoinHostPort("127.0.0.1", port)); err == nil {
		ln.Close()
		if twin != nil {
			twin.Close()
		}
		t.Fatalf("bound 127.0.0.1:%s while ::1:%s is held elsewhere", port, port)
	}
}

// TestTargetNotRedirected: a connection made to the capture listener
// directly has no original destination.
func TestTargetNotRedirected(t *testing.T) {
	ln, twin, err := Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if twin != nil {
		defer twin.Close()
	}
	client, err := net.DialTimeout("tcp", ln.Addr().String(), 3*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	c, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if dst, err := Target(c, ln.Addr()); !errors.Is(err, ErrNoOriginalDst) {
		t.Fatalf("Target of a direct connection: %v, %v; want ErrNoOriginalDst", dst, err)
	}
}
