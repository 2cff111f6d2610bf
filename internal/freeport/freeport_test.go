package freeport

import (
	"net"
	"strconv"
	"testing"
)

// Ports never repeat in a process and stay out of the range the kernel
// draws outgoing connections' local ports from.
func TestDistinctAndBelowEphemeralRange(t *testing.T) {
	low := EphemeralLow()
	seen := map[string]bool{}
	for range 200 {
		addr, err := Addr()
		if err != nil {
			t.Fatal(err)
		}
		if seen[addr] {
			t.Fatalf("%s handed out twice", addr)
		}
		seen[addr] = true
		_, p, _ := net.SplitHostPort(addr)
		port, _ := strconv.Atoi(p)
		if low-Floor >= 1000 && (port < Floor || port >= low) {
			t.Fatalf("port %d outside [%d, %d)", port, Floor, low)
		}
	}
}
