// Package rlstest runs a real global rate limit service for the tests of
// global limits: Envoy's rate limit service (bin/ratelimit, built by `make
// ratelimit` from deploy/ratelimit), in front of a Redis (package
// redistest runs one). It can be stopped and started again on its ports,
// for the failure-mode tests.
package rlstest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/credflow/credflow/internal/freeport"
	"github.com/credflow/credflow/internal/spiretest"
)

// Service is the rate limit service.
type Service struct {
	// GRPC is the address of its Rate Limit Service API.
	GRPC string
	proc *process
}

// StartService runs bin/ratelimit (binDir, or bin/ at the module's root
// when empty) against the Redis at redisAddr (host:port) with config, the
// YAML of its one configuration file, until Close.
func StartService(ctx context.Context, binDir, redisAddr, config string) (*Service, error) {
	if binDir == "" {
		var err error
		if binDir, err = spiretest.DefaultBinDir(); err != nil {
			return nil, err
		}
	}
	bin := filepath.Join(binDir, "ratelimit")
	if _, err := os.Stat(bin); err != nil {
		return nil, fmt.Errorf("rlstest: %w (make ratelimit builds it)", err)
	}
	root, err := os.MkdirTemp("", "rlstest-")
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Join(root, "credflow", "config"), 0o755); err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(root, "credflow", "config", "limits.yaml"), []byte(config), 0o644); err != nil {
		return nil, err
	}
	grpcPort, httpPort, debugPort := freePort(), freePort(), freePort()
	if grpcPort == 0 || httpPort == 0 || debugPort == 0 {
		return nil, errors.New("rlstest: no free port")
	}
	s := &Service{GRPC: net.JoinHostPort("127.0.0.1", strconv.Itoa(grpcPort))}
	health := fmt.Sprintf("http://127.0.0.1:%d/healthcheck", httpPort)
	s.proc = &process{name: "ratelimit", root: root, ready: func(ctx context.Context) error { return healthy(ctx, health) },
		cmd: func() *exec.Cmd {
			cmd := exec.Command(bin)
			cmd.Env = append(os.Environ(),
				"USE_STATSD=false",
				"LOG_LEVEL=warn",
				"REDIS_SOCKET_TYPE=tcp",
				"REDIS_URL="+redisAddr,
				"REDIS_TIMEOUT=1s",
				"RUNTIME_ROOT="+root,
				"RUNTIME_SUBDIRECTORY=credflow",
				"RUNTIME_WATCH_ROOT=false",
				"RUNTIME_IGNOREDOTFILES=true",
				"HOST=127.0.0.1", "PORT="+strconv.Itoa(httpPort),
				"GRPC_HOST=127.0.0.1", "GRPC_PORT="+strconv.Itoa(grpcPort),
				"DEBUG_HOST=127.0.0.1", "DEBUG_PORT="+strconv.Itoa(debugPort),
			)
			return cmd
		}}
	return s, s.proc.start(ctx)
}

// Stop stops the service.
func (s *Service) Stop() { s.proc.stop() }

// Start starts a stopped service again, on its ports.
func (s *Service) Start(ctx context.Context) error { return s.proc.start(ctx) }

// Close stops the service and removes its configuration.
func (s *Service) Close() {
	s.proc.stop()
	os.RemoveAll(s.proc.root)
}

// Log is the service's output so far.
func (s *Service) Log() string { return s.proc.log.String() }

// process is a server that can be stopped and started again.
type process struct {
	name  string
	root  string // a directory to remove at Close, if any
	cmd   func() *exec.Cmd
	ready func(context.Context) error
	log   lockedBuffer

	mu      sync.Mutex
	running *exec.Cmd
	done    chan struct{}
}

func (p *process) start(ctx context.Context) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.running != nil {
		return fmt.Errorf("rlstest: %s is running", p.name)
	}
	cmd := p.cmd()
	cmd.Stdout, cmd.Stderr = &p.log, &p.log
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("rlstest: %s: %w", p.name, err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	p.running, p.done = cmd, done
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	for {
		if err := p.ready(ctx); err == nil {
			return nil
		}
		select {
		case <-done:
			p.running = nil
			return fmt.Errorf("rlstest: %s exited: %s", p.name, p.log.String())
		case <-ctx.Done():
			return fmt.Errorf("rlstest: %s not ready: %w: %s", p.name, ctx.Err(), p.log.String())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func (p *process) stop() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.running == nil {
		return
	}
	p.running.Process.Kill()
	<-p.done
	p.running = nil
}

func healthy(ctx context.Context, url string) error {
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("health check: %s", resp.Status)
	}
	return nil
}

func freePort() int {
	p, _ := freeport.Port() // 0 on error: the server then fails to start, and says so
	return p
}

// lockedBuffer is a server's output, written by the process's copy
// goroutines and read by the test.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
