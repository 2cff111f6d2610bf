package rawio_test

import (
	"bytes"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"syscall"
	"testing"
	"time"

	"github.com/credflow/credflow/proxy/rawio"
)

// pair returns a connected loopback TCP pair: a wrapped, b plain.
func pair(t testing.TB) (a net.Conn, b *net.TCPConn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		accepted <- c
	}()
	d, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	s := <-accepted
	if s == nil {
		t.Fatal("accept failed")
	}
	a = rawio.Wrap(d)
	t.Cleanup(func() { a.Close(); s.Close() })
	return a, s.(*net.TCPConn)
}

// under returns the connection a wrapper wraps, or c.
func under(c net.Conn) net.Conn {
	if u, ok := c.(interface{ NetConn() net.Conn }); ok {
		return u.NetConn()
	}
	return c
}

func wrapped(t testing.TB, c net.Conn) {
	t.Helper()
	if runtime.GOOS != "linux" {
		return
	}
	if _, ok := c.(*net.TCPConn); ok {
		t.Fatal("Wrap returned the *net.TCPConn itself on Linux")
	}
}

func TestWrapLeavesOtherConnsAlone(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	if got := rawio.Wrap(a); got != a {
		t.Fatalf("Wrap(net.Pipe end) = %T, want the conn itself", got)
	}
	c, _ := pair(t)
	if again := rawio.Wrap(c); again != c {
		t.Fatalf("Wrap of a wrapped conn = %T, want it unchanged", again)
	}
}

func TestListenerWraps(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	wl := rawio.Listener(ln)
	defer wl.Close()
	go func() {
		if c, err := net.Dial("tcp", ln.Addr().String()); err == nil {
			c.Write([]byte("hello"))
			c.Close()
		}
	}()
	c, err := wl.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	wrapped(t, c)
	if got, err := io.ReadAll(c); err != nil || string(got) != "hello" {
		t.Fatalf("ReadAll = %q, %v; want \"hello\"", got, err)
	}
	wl.Close()
	if _, err := wl.Accept(); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Accept after Close: %v; want net.ErrClosed", err)
	}
}

func TestNetConnIsTheSocket(t *testing.T) {
	a, b := pair(t)
	wrapped(t, a)
	u, ok := a.(interface{ NetConn() net.Conn })
	if runtime.GOOS != "linux" {
		return
	}
	if !ok {
		t.Fatal("wrapped conn has no NetConn")
	}
	tc, ok := u.NetConn().(*net.TCPConn)
	if !ok {
		t.Fatalf("NetConn() = %T, want *net.TCPConn", u.NetConn())
	}
	if tc.LocalAddr().String() != b.RemoteAddr().String() {
		t.Fatalf("NetConn's local address %v, want the peer's remote address %v", tc.LocalAddr(), b.RemoteAddr())
	}
}

// TestCopiesBothWays moves 8 MiB in each direction at once, byte for byte:
// reads find an empty socket and wait, and writes most likely find a full
// one (loopback buffers grow to a few MiB; the write-deadline case of
// TestErrorsAreTCPConns is the one that surely waits).
func TestCopiesBothWays(t *testing.T) {
	a, b := pair(t)
	wrapped(t, a)
	const size = 8 << 20
	up, down := make([]byte, size), make([]byte, size)
	rand.Read(up)
	rand.Read(down)

	type result struct {
		got []byte
		err error
	}
	read := func(c net.Conn) chan result {
		ch := make(chan result, 1)
		go func() {
			buf := make([]byte, size)
			_, err := io.ReadFull(c, buf)
			ch <- result{buf, err}
		}()
		return ch
	}
	atB, atA := read(b), read(a)
	errs := make(chan error, 2)
	go func() {
		n, err := a.Write(up)
		if err == nil && n != size {
			err = io.ErrShortWrite
		}
		errs <- err
	}()
	go func() { _, err := b.Write(down); errs <- err }()
	for range 2 {
		if err := <-errs; err != nil {
			t.Fatalf("write: %v", err)
		}
	}
	for name, want := range map[string]struct {
		ch   chan result
		want []byte
	}{"at the plain end": {atB, up}, "at the wrapped end": {atA, down}} {
		r := <-want.ch
		if r.err != nil {
			t.Fatalf("read %s: %v", name, r.err)
		}
		if !bytes.Equal(r.got, want.want) {
			t.Fatalf("read %s: bytes differ from those written", name)
		}
	}
}

// describe says what err is, without the addresses that differ between
// two connections: the types down the chain, the operation, the errno.
func describe(err error) string {
	switch e := err.(type) {
	case nil:
		return "nil"
	case *net.OpError:
		return fmt.Sprintf("OpError{%s %s source=%t addr=%t}(%s)", e.Op, e.Net, e.Source != nil, e.Addr != nil, describe(e.Err))
	case *os.SyscallError:
		return fmt.Sprintf("SyscallError{%s}(%s)", e.Syscall, describe(e.Err))
	}
	var ne net.Error
	timeout := errors.As(err, &ne) && ne.Timeout()
	return fmt.Sprintf("%T %q timeout=%t", err, err.Error(), timeout)
}

// TestErrorsAreTCPConns runs each case on a wrapped connection and on a
// plain *net.TCPConn and wants the same counts and the same errors from
// both.
func TestErrorsAreTCPConns(t *testing.T) {
	cases := []struct {
		name string
		run  func(t *testing.T, c net.Conn, peer *net.TCPConn) (int, error)
	}{
		{"EOF", func(t *testing.T, c net.Conn, peer *net.TCPConn) (int, error) {
			peer.Write([]byte("last"))
			peer.CloseWrite()
			if got, err := io.ReadAll(c); err != nil || string(got) != "last" {
				t.Fatalf("ReadAll = %q, %v; want \"last\", nil", got, err)
			}
			return c.Read(make([]byte, 4))
		}},
		{"zero-length read", func(t *testing.T, c net.Conn, _ *net.TCPConn) (int, error) {
			return c.Read(nil)
		}},
		{"zero-length write", func(t *testing.T, c net.Conn, _ *net.TCPConn) (int, error) {
			return c.Write(nil)
		}},
		{"zero-length read, closed", func(t *testing.T, c net.Conn, _ *net.TCPConn) (int, error) {
			c.Close()
			return c.Read(nil)
		}},
		{"zero-length write, closed", func(t *testing.T, c net.Conn, _ *net.TCPConn) (int, error) {
			c.Close()
			return c.Write(nil)
		}},
		{"read deadline", func(t *testing.T, c net.Conn, _ *net.TCPConn) (int, error) {
			c.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
			return c.Read(make([]byte, 1))
		}},
		{"read deadline already passed, data waiting", func(t *testing.T, c net.Conn, peer *net.TCPConn) (int, error) {
			peer.Write([]byte("x"))
			c.SetReadDeadline(time.Now().Add(-time.Second))
			return c.Read(make([]byte, 1))
		}},
		{"write deadline", func(t *testing.T, c net.Conn, _ *net.TCPConn) (int, error) {
			big := make([]byte, 64<<20) // more than both sockets' buffers; nobody reads
			c.SetWriteDeadline(time.Now().Add(500 * time.Millisecond))
			n, err := c.Write(big)
			if n <= 0 || n >= len(big) {
				t.Fatalf("Write past the deadline reported %d bytes written; want what the sockets took, 0 < n < %d", n, len(big))
			}
			return 1, err // n itself differs with the sockets' buffers
		}},
		{"read, closed", func(t *testing.T, c net.Conn, _ *net.TCPConn) (int, error) {
			c.Close()
			return c.Read(make([]byte, 1))
		}},
		{"write, closed", func(t *testing.T, c net.Conn, _ *net.TCPConn) (int, error) {
			c.Close()
			return c.Write([]byte("x"))
		}},
		{"close while reading", func(t *testing.T, c net.Conn, _ *net.TCPConn) (int, error) {
			type result struct {
				n   int
				err error
			}
			done := make(chan result, 1)
			go func() {
				n, err := c.Read(make([]byte, 1))
				done <- result{n, err}
			}()
			time.Sleep(20 * time.Millisecond) // most likely waiting in the poller by now; the error is the same either way
			c.Close()
			select {
			case r := <-done:
				return r.n, r.err
			case <-time.After(time.Minute):
				t.Fatal("Close did not end a Read in progress")
				return 0, nil
			}
		}},
		{"read, peer reset", func(t *testing.T, c net.Conn, peer *net.TCPConn) (int, error) {
			// Unread data at the peer makes its close a reset.
			c.Write([]byte("unread"))
			waitUntil(t, func() bool { return readable(peer) })
			peer.Close()
			c.SetReadDeadline(time.Now().Add(time.Minute))
			return c.Read(make([]byte, 1))
		}},
		{"write, peer reset", func(t *testing.T, c net.Conn, peer *net.TCPConn) (int, error) {
			peer.SetLinger(0)
			peer.Close() // RST
			var err error
			for i := 0; err == nil && i < 1000; i++ {
				_, err = c.Write([]byte("into a reset connection"))
				if err == nil {
					time.Sleep(time.Millisecond)
				}
			}
			return 0, err
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			a, peerA := pair(t)
			wrapped(t, a)
			b, peerB := pair(t)

			wn, werr := tc.run(t, a, peerA)
			pn, perr := tc.run(t, under(b), peerB)
			if wn != pn || describe(werr) != describe(perr) {
				t.Fatalf("wrapped: %d, %s\nplain *net.TCPConn: %d, %s", wn, describe(werr), pn, describe(perr))
			}
			if tc.name != "zero-length read" && tc.name != "zero-length write" && werr == nil {
				t.Fatalf("no error from either; the case tests nothing")
			}
		})
	}
}

// readable reports whether c has bytes to read, without taking them.
func readable(c *net.TCPConn) bool {
	rc, err := c.SyscallConn()
	if err != nil {
		return false
	}
	var n int
	rc.Read(func(fd uintptr) bool {
		var b [1]byte
		n, _, _ = syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		return true
	})
	return n > 0
}

func waitUntil(t *testing.T, ok func() bool) {
	t.Helper()
	for deadline := time.Now().Add(time.Minute); !ok(); time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("condition not met in a minute")
		}
	}
}

// TestSynchronizesThroughTheSocket: a write to a socket happens before the
// read that receives it, for the race detector too (go test -race; without
// the annotations the raw calls lack, it reports this as a race).
func TestSynchronizesThroughTheSocket(t *testing.T) {
	a, b := pair(t)
	bw := rawio.Wrap(b)
	var shared int
	done := make(chan int)
	go func() {
		buf := make([]byte, 1)
		if _, err := bw.Read(buf); err != nil {
			t.Error(err)
		}
		done <- shared
	}()
	shared = 42
	if _, err := a.Write([]byte{1}); err != nil {
		t.Fatal(err)
	}
	if got := <-done; got != 42 {
		t.Fatalf("reader saw %d, want 42", got)
	}
}

// BenchmarkPingPong is one byte each way per iteration over loopback:
// system calls and waits, nothing else, with and without the raw calls.
func BenchmarkPingPong(b *testing.B) {
	for _, mode := range []string{"net", "raw"} {
		b.Run("conn="+mode, func(b *testing.B) {
			a, peer := pair(b)
			if mode == "net" {
				a = under(a)
			}
			go func() {
				buf := make([]byte, 1)
				for {
					if _, err := peer.Read(buf); err != nil {
						return
					}
					if _, err := peer.Write(buf); err != nil {
						return
					}
				}
			}()
			buf := make([]byte, 1)
			b.ReportAllocs()
			for b.Loop() {
				if _, err := a.Write(buf); err != nil {
					b.Fatal(err)
				}
				if _, err := io.ReadFull(a, buf); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
