// Package freeport hands out loopback ports for the servers and sidecars
// tests and the benchmark harness start.
//
// A port from listening on :0 comes from the ephemeral range, where the
// kernel also picks the local ports of outgoing connections: with
// thousands of connections in flight, one of them can take the port
// between the check and the process's own listen (an end-to-end run
// failed with "bind: address already in use" that way), and two
// successive :0 checks can return the same port. So ports come from below
// the ephemeral range, are checked free, and are never handed out twice
// by one process; each process starts at a random port of that range, so
// test binaries running side by side rarely meet.
package freeport

import (
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
)

// Floor is the lowest port handed out: below it are well-known and
// registered services a machine may run.
const Floor = 20000

var ports allocator

type allocator struct {
	mu     sync.Mutex
	cursor int
	low    int // the first port handed out; 0: ask the kernel (:0)
	high   int // the ephemeral range's first port
}

// Addr returns a loopback address ("127.0.0.1:port") whose port was free
// a moment ago and has not been handed out before by this process.
func Addr() (string, error) {
	p, err := Port()
	if err != nil {
		return "", err
	}
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(p)), nil
}

// Port is Addr's port alone.
func Port() (int, error) { return ports.next() }

func (a *allocator) next() (int, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.high == 0 {
		a.high = EphemeralLow()
		a.low = Floor
		if a.high-a.low < 1000 {
			a.low = 0 // no room below the ephemeral range
		} else {
			a.cursor = a.low + rand.IntN(a.high-a.low)
		}
	}
	if a.low == 0 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return 0, fmt.Errorf("freeport: %w", err)
		}
		defer l.Close()
		return l.Addr().(*net.TCPAddr).Port, nil
	}
	for range a.high - a.low {
		port := a.cursor
		if a.cursor++; a.cursor >= a.high {
			a.cursor = a.low
		}
		if l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port))); err == nil {
			l.Close()
			return port, nil
		}
	}
	return 0, fmt.Errorf("freeport: no free loopback port in %d-%d", a.low, a.high-1)
}

// EphemeralLow reads the first port of the kernel's ephemeral range,
// 32768 when it cannot.
func EphemeralLow() int {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return 32768
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return 32768
	}
	n, err := strconv.Atoi(f[0])
	if err != nil {
		return 32768
	}
	return n
}
