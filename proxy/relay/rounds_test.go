package relay

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// TestHalfCloseRounds (F13): 10,000 request/reply exchanges, each on its own
// relayed connection and started by a half-close from the client, half on
// the kernel path and half on the buffered path; one in five ends with the
// backend resetting instead of replying. Afterwards no socket on the test's
// ports is left in CLOSE_WAIT (a relay that did not close after its peer
// did), and no file descriptor or goroutine is left behind.
func TestHalfCloseRounds(t *testing.T) {
	const (
		rounds  = 10_000
		workers = 32
	)
	if testing.Short() {
		t.Skip("10,000 connections")
	}
	fixtures := []*fixture{newFixture(t, kindTCP), newFixture(t, kindPlain)}
	ports := map[int]bool{}
	for _, f := range fixtures {
		ports[f.frontPort], ports[f.appPt] = true, true
	}
	base := runtime.NumGoroutine()
	baseFDs := openFDs(t)
	start := time.Now()

	var (
		wg       sync.WaitGroup
		failures = make(chan error, workers)
		next     = make(chan int)
	)
	for range workers {
		wg.Go(func() {
			for i := range next {
				if err := halfCloseRound(t, fixtures[i%2], i); err != nil {
					select {
					case failures <- fmt.Errorf("round %d (%v): %w", i, fixtures[i%2].kind, err):
					default:
					}
				}
			}
		})
	}
	deadline := time.Now().Add(40 * time.Second)
feed:
	for i := range rounds {
		select {
		case next <- i:
		case err := <-failures:
			t.Error(err)
			break feed
		}
		if time.Now().After(deadline) {
			t.Errorf("only %d rounds within the time limit", i)
			break
		}
	}
	close(next)
	wg.Wait()
	close(failures)
	for err := range failures {
		t.Error(err)
	}
	t.Logf("%d rounds in %v", rounds, time.Since(start))

	if n, err := closeWait(ports); err != nil {
		t.Fatal(err)
	} else if n != 0 {
		t.Errorf("%d sockets in CLOSE_WAIT on ports %v", n, ports)
	}
	if got := goroutinesBackTo(base, 2*time.Second); got > base {
		t.Errorf("goroutines: %d after the rounds, %d before", got, base)
	}
	if got := openFDs(t); baseFDs >= 0 && got > baseFDs {
		t.Errorf("open file descriptors: %d after the rounds, %d before", got, baseFDs)
	}
}

// openFDs counts the process's open file descriptors other than pipes, or
// returns -1 where /proc is missing. The kernel path splices through pipes
// the runtime keeps in a pool and closes only when a garbage collection
// empties it, so a pipe pair still cached after the rounds is not a leak;
// sockets, which a leaking relay would hold, are all counted.
func openFDs(t *testing.T) int {
	t.Helper()
	fds, err := os.ReadDir("/proc/self/fd")
	if os.IsNotExist(err) {
		return -1
	} else if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, fd := range fds {
		if target, err := os.Readlink("/proc/self/fd/" + fd.Name()); err == nil && strings.HasPrefix(target, "pipe:") {
			continue
		}
		n++
	}
	return n
}

// halfCloseRound: the client sends a request and shuts down its write side;
// the backend reads to EOF, replies and closes; the client reads the whole
// reply and EOF.
func halfCloseRound(t *testing.T, f *fixture, i int) error {
	p, err := f.dial()
	if err != nil {
		return err
	}
	// Only the test's own ends: closing a and b is Copy's job, and what
	// the CLOSE_WAIT check verifies.
	defer p.client.Close()
	defer p.backend.Close()
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	res := relay(ctx, p, Options{})
	req := []byte("request " + strconv.Itoa(i))
	reply := bytes.Repeat([]byte{byte(i)}, 1+i%3000)

	if _, err := p.client.Write(req); err != nil {
		return err
	}
	if err := p.client.(closeWriter).CloseWrite(); err != nil {
		return err
	}
	got, err := readAll(p.backend, 5*time.Second)
	if err != nil || !bytes.Equal(got, req) {
		return fmt.Errorf("request: got %q, %v", got, err)
	}
	if i%5 == 4 {
		p.backend.(*net.TCPConn).SetLinger(0)
		p.backend.Close() // RST
		if _, err := readAll(p.client, 5*time.Second); err != nil && !isEOF(err) {
			return fmt.Errorf("after reset: %w", err)
		}
		select {
		case r := <-res:
			if !errors.Is(r.Err, syscall.ECONNRESET) {
				return fmt.Errorf("Result.Err = %v, want ECONNRESET", r.Err)
			}
			return relayClosed(p)
		case <-time.After(5 * time.Second):
			return fmt.Errorf("Copy still running")
		}
	}
	if _, err := p.backend.Write(reply); err != nil {
		return err
	}
	p.backend.Close()
	got, err = readAll(p.client, 5*time.Second)
	if err != nil || !bytes.Equal(got, reply) {
		return fmt.Errorf("reply: got %d bytes, %v; want %d", len(got), err, len(reply))
	}
	select {
	case r := <-res:
		return errors.Join(r.Err, relayClosed(p))
	case <-time.After(5 * time.Second):
		return fmt.Errorf("Copy still running")
	}
}

// closeWait counts the sockets in /proc/net/tcp and /proc/net/tcp6 in state
// CLOSE_WAIT (08) whose local or remote port is in ports.
func closeWait(ports map[int]bool) (int, error) {
	n := 0
	for _, name := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		f, err := os.Open(name)
		if os.IsNotExist(err) {
			continue
		} else if err != nil {
			return 0, err
		}
		sc := bufio.NewScanner(f)
		sc.Scan() // header
		for sc.Scan() {
			// sl local_address rem_address st ...
			fields := strings.Fields(sc.Text())
			if len(fields) < 4 || fields[3] != "08" {
				continue
			}
			if ports[hexPort(fields[1])] || ports[hexPort(fields[2])] {
				n++
			}
		}
		err = sc.Err()
		f.Close()
		if err != nil {
			return 0, err
		}
	}
	return n, nil
}

// hexPort parses the port of a /proc/net/tcp address such as
// "0100007F:1F90".
func hexPort(addr string) int {
	_, port, ok := strings.Cut(addr, ":")
	if !ok {
		return -1
	}
	p, err := strconv.ParseUint(port, 16, 16)
	if err != nil {
		return -1
	}
	return int(p)
}

// TestCloseWaitDetector checks closeWait itself: a socket whose peer has
// closed and that is not closed yet is in CLOSE_WAIT.
func TestCloseWaitDetector(t *testing.T) {
	f := newFixture(t, kindTCP)
	p := f.pair(t)
	defer p.closeAll()
	p.client.Close()
	ports := map[int]bool{f.frontPort: true}
	var n int
	for range 100 {
		var err error
		if n, err = closeWait(ports); err != nil {
			t.Fatal(err)
		} else if n == 1 {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if n != 1 {
		t.Errorf("closeWait = %d with one socket left in CLOSE_WAIT, want 1", n)
	}
}
