// Package redistest runs a throwaway redis-server for tests: the Debian
// package's binary, on a free loopback port, keeping nothing on disk
// (--save "" --appendonly no), killed when the test ends. A test can kill
// it and start a new one on the same port to play an outage.
package redistest

import (
	"bufio"
	"bytes"
	"fmt"
	"net"
	"os/exec"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/credflow/credflow/internal/freeport"
	"github.com/credflow/credflow/internal/testenv"
)

// readyTimeout bounds the wait for a new server to answer PING.
const readyTimeout = 10 * time.Second

// Server is a redis-server run by a test.
type Server struct {
	// Addr is the server's host:port on loopback.
	Addr string

	t   testing.TB
	dir string

	mu  sync.Mutex
	cmd *exec.Cmd // nil while killed
}

// Start starts a redis-server on a free loopback port and kills it when
// t ends. Without redis-server on PATH it skips t (fails it under
// CI=true).
func Start(t testing.TB) *Server {
	t.Helper()
	testenv.NeedsCommand(t, "redis-server", "apt-get install redis-server")
	addr, err := freeport.Addr()
	if err != nil {
		t.Fatal(err)
	}
	s := &Server{Addr: addr, t: t, dir: t.TempDir()}
	t.Cleanup(s.Kill)
	s.Restart()
	return s
}

// Restart starts a new, empty redis-server on the same port, after
// killing the running one if any; it returns once the server answers.
func (s *Server) Restart() {
	s.t.Helper()
	s.Kill()
	_, port, _ := net.SplitHostPort(s.Addr)
	if _, err := strconv.Atoi(port); err != nil {
		s.t.Fatalf("redistest: address %s: %v", s.Addr, err)
	}
	var out bytes.Buffer
	cmd := exec.Command("redis-server", "--port", port, "--bind", "127.0.0.1",
		"--save", "", "--appendonly", "no", "--dir", s.dir, "--loglevel", "warning")
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		s.t.Fatalf("redistest: %v", err)
	}
	s.mu.Lock()
	s.cmd = cmd
	s.mu.Unlock()
	if err := s.waitReady(); err != nil {
		s.Kill()
		s.t.Fatalf("redistest: redis-server on %s: %v\n%s", s.Addr, err, out.String())
	}
}

// Kill kills the server, if running, and waits for it to exit.
func (s *Server) Kill() {
	s.mu.Lock()
	cmd := s.cmd
	s.cmd = nil
	s.mu.Unlock()
	if cmd == nil {
		return
	}
	cmd.Process.Kill()
	cmd.Wait()
}

// waitReady waits until the server answers PING with PONG.
func (s *Server) waitReady() error {
	deadline := time.Now().Add(readyTimeout)
	var last error
	for time.Now().Before(deadline) {
		if last = ping(s.Addr); last == nil {
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Errorf("no PONG within %v: %w", readyTimeout, last)
}

// ping sends PING to addr and checks the answer.
func ping(addr string) error {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(time.Second))
	if _, err := c.Write([]byte("PING\r\n")); err != nil {
		return err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return err
	}
	if line != "+PONG\r\n" {
		return fmt.Errorf("answer %q", line)
	}
	return nil
}
