package bench

import (
	"net"
	"strconv"
	"testing"
)

// The harness's ports never repeat in a run and stay out of the range the
// kernel draws outgoing connections' local ports from.
func TestFreeAddrDistinctAndBelowEphemeralRange(t *testing.T) {
	low := ephemeralLow()
	seen := map[string]bool{}
	for range 200 {
		addr, err := freeAddr()
		if err != nil {
			t.Fatal(err)
		}
		if seen[addr] {
			t.Fatalf("%s handed out twice", addr)
		}
		seen[addr] = true
		_, p, _ := net.SplitHostPort(addr)
		port, _ := strconv.Atoi(p)
		if low-portFloor >= 1000 && (port < portFloor || port >= low) {
			t.Fatalf("port %d outside [%d, %d)", port, portFloor, low)
		}
	}
}
