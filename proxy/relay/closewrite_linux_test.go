package relay

import (
	"fmt"
	"net"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestCloseWriteAfterPeerGone: the backend answers and closes its socket
// entirely, as ghostunnel does; the client's last bytes reach a socket
// that then receives a reset. When the client half-closes, there is no
// write side left to shut down (ENOTCONN): the relay still ends cleanly,
// with no error to log.
func TestCloseWriteAfterPeerGone(t *testing.T) {
	for _, k := range []kind{kindTCP, kindPlain} {
		t.Run(fmt.Sprint(k), func(t *testing.T) {
			f := newFixture(t, k)
			p := f.pair(t)
			defer p.closeAll()
			res := relay(t.Context(), p, Options{})

			if _, err := p.backend.Write([]byte("reply")); err != nil {
				t.Fatal(err)
			}
			p.backend.Close()
			if got, err := readAll(p.client, 5*time.Second); err != nil || string(got) != "reply" {
				t.Fatalf("client read %q, %v; want the reply and EOF", got, err)
			}
			// Bytes to a closed socket: it answers with a reset, and b
			// leaves the connected state.
			if _, err := p.client.Write([]byte("late")); err != nil {
				t.Fatal(err)
			}
			b := p.b
			if pc, ok := b.(plainConn); ok {
				b = pc.TCPConn
			}
			waitTCPState(t, b.(*net.TCPConn), tcpClose)
			closeWriteConn(t, p.client)

			if r := wait(t, res, 5*time.Second); r.Err != nil {
				t.Errorf("Result.Err = %v, want nil", r.Err)
			}
		})
	}
}

// tcpClose is Linux's TCP_CLOSE state.
const tcpClose = 7

// waitTCPState waits until c's TCP state is state.
func waitTCPState(t *testing.T, c *net.TCPConn, state uint8) {
	t.Helper()
	rc, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		var info *unix.TCPInfo
		var gerr error
		if err := rc.Control(func(fd uintptr) { info, gerr = unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO) }); err != nil {
			t.Fatal(err)
		}
		if gerr != nil {
			t.Fatal(gerr)
		}
		if info.State == state {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("TCP state %d, want %d", info.State, state)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
