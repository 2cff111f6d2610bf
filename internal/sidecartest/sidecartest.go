// Package sidecartest builds the credflow binary and runs sidecars as real
// processes under distinct uids beside a spiretest SPIRE, for end-to-end
// tests and the demo. Each sidecar's admin endpoint is polled for
// readiness, its log kept in a file, and its process stopped by Stop.
package sidecartest

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/credflow/credflow/internal/freeport"
	"github.com/credflow/credflow/internal/spiretest"
)

// Build compiles ./cmd/credflow of the module containing the working
// directory into dir and returns the binary's path.
func Build(ctx context.Context, dir string) (string, error) {
	binDir, err := spiretest.DefaultBinDir()
	if err != nil {
		return "", err
	}
	out := filepath.Join(dir, "credflow")
	cmd := exec.CommandContext(ctx, "go", "build", "-o", out, "./cmd/credflow")
	cmd.Dir = filepath.Dir(binDir)
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("sidecartest: go build: %v\n%s", err, b)
	}
	return out, nil
}

// Sidecar is a running `credflow run` process.
type Sidecar struct {
	Name  string
	Admin string // admin address, host:port
	Log   string // path of its log (stderr)
	// Config is the path of its configuration file; rewrite it and send
	// SIGHUP to reload.
	Config string
	cmd    *exec.Cmd
	done   chan struct{}
	once   sync.Once
}

// Start writes config (YAML, with the admin address substituted for
// {{admin}}) and runs `bin run -c` as uid, then waits up to timeout for
// /readyz. bin must be reachable by uid (spiretest's InstallBinary).
func Start(ctx context.Context, s *spiretest.SPIRE, bin string, uid int, name, config string, timeout time.Duration) (*Sidecar, error) {
	return StartWrapped(ctx, s, nil, bin, uid, name, config, timeout)
}

// StartWrapped is Start with the sidecar run under a wrapper command, for
// example prlimit with its arguments and "--".
func StartWrapped(ctx context.Context, s *spiretest.SPIRE, wrapper []string, bin string, uid int, name, config string, timeout time.Duration) (*Sidecar, error) {
	admin, err := FreeAddr()
	if err != nil {
		return nil, err
	}
	dir := filepath.Join(s.Dir(), "sidecar-"+name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("sidecartest: %w", err)
	}
	cfgPath := filepath.Join(dir, "credflow.yaml")
	config = strings.ReplaceAll(config, "{{admin}}", admin)
	if err := os.WriteFile(cfgPath, []byte(config), 0o644); err != nil {
		return nil, fmt.Errorf("sidecartest: %w", err)
	}
	logPath := filepath.Join(dir, "credflow.log")
	logf, err := os.Create(logPath)
	if err != nil {
		return nil, fmt.Errorf("sidecartest: %w", err)
	}
	defer logf.Close()
	argv := append(slices.Clone(wrapper), bin, "run", "-c", cfgPath)
	cmd := s.Command(context.WithoutCancel(ctx), uid, argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("sidecartest: starting sidecar %s: %w", name, err)
	}
	sc := &Sidecar{Name: name, Admin: admin, Log: logPath, Config: cfgPath, cmd: cmd, done: make(chan struct{})}
	go func() { cmd.Wait(); close(sc.done) }()
	if err := sc.WaitReady(ctx, timeout); err != nil {
		sc.Kill()
		return nil, err
	}
	return sc, nil
}

// WaitReady polls /readyz until it answers 200, the process exits, or
// timeout passes.
func (sc *Sidecar) WaitReady(ctx context.Context, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	var last string
	for {
		code, body, err := sc.Get(ctx, "/readyz")
		if err == nil && code == http.StatusOK {
			return nil
		}
		if err != nil {
			last = err.Error()
		} else {
			last = strings.TrimSpace(body)
		}
		select {
		case <-sc.done:
			return fmt.Errorf("sidecartest: sidecar %s exited during start-up:\n%s", sc.Name, sc.Tail(3000))
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("sidecartest: sidecar %s not ready after %s (%s):\n%s", sc.Name, timeout, last, sc.Tail(3000))
		}
	}
}

// Get fetches an admin path and returns the status code and body.
func (sc *Sidecar) Get(ctx context.Context, path string) (int, string, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+sc.Admin+path, nil)
	if err != nil {
		return 0, "", err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	return resp.StatusCode, string(b), err
}

// Metric returns the sum of every series of the named metric whose labels
// include all of the given name=value pairs.
func (sc *Sidecar) Metric(ctx context.Context, name string, labels ...string) (float64, error) {
	_, body, err := sc.Get(ctx, "/metrics")
	if err != nil {
		return 0, err
	}
	var total float64
	sn := bufio.NewScanner(strings.NewReader(body))
	sn.Buffer(make([]byte, 1<<20), 1<<20)
	for sn.Scan() {
		line := sn.Text()
		if !strings.HasPrefix(line, name+"{") && !strings.HasPrefix(line, name+" ") {
			continue
		}
		ok := true
		for _, l := range labels {
			k, v, _ := strings.Cut(l, "=")
			if !strings.Contains(line, k+`="`+v+`"`) {
				ok = false
			}
		}
		if !ok {
			continue
		}
		f := strings.Fields(line)
		v, err := strconv.ParseFloat(f[len(f)-1], 64)
		if err != nil {
			return 0, fmt.Errorf("sidecartest: metric line %q: %w", line, err)
		}
		total += v
	}
	return total, nil
}

// Signal sends sig to the sidecar.
func (sc *Sidecar) Signal(sig syscall.Signal) error { return sc.cmd.Process.Signal(sig) }

// Done is closed when the process has exited.
func (sc *Sidecar) Done() <-chan struct{} { return sc.done }

// ExitCode is the process's exit code once Done is closed.
func (sc *Sidecar) ExitCode() int { return sc.cmd.ProcessState.ExitCode() }

// Stop sends SIGTERM and waits up to timeout, then kills.
func (sc *Sidecar) Stop(timeout time.Duration) error {
	var err error
	sc.once.Do(func() {
		_ = sc.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-sc.done:
		case <-time.After(timeout):
			sc.Kill()
			err = fmt.Errorf("sidecartest: sidecar %s did not stop within %s", sc.Name, timeout)
		}
	})
	return err
}

// Kill kills the process group and waits for it.
func (sc *Sidecar) Kill() {
	_ = syscall.Kill(-sc.cmd.Process.Pid, syscall.SIGKILL)
	<-sc.done
}

// Tail returns up to n bytes of the end of the sidecar's log.
func (sc *Sidecar) Tail(n int) string {
	b, _ := os.ReadFile(sc.Log)
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}

// LogLines returns the log lines containing substr.
func (sc *Sidecar) LogLines(substr string) []string {
	b, _ := os.ReadFile(sc.Log)
	var out []string
	for line := range strings.SplitSeq(string(b), "\n") {
		if strings.Contains(line, substr) {
			out = append(out, line)
		}
	}
	return out
}

// FreeAddr returns a loopback address with a port that was free a moment
// ago, below the kernel's ephemeral range and never handed out before by
// this process (internal/freeport).
func FreeAddr() (string, error) { return freeport.Addr() }

// Echo serves a TCP echo app on loopback until ctx ends: each connection
// gets back what it sends, and its write side is closed when it half-closes.
func Echo(ctx context.Context) (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", fmt.Errorf("sidecartest: %w", err)
	}
	context.AfterFunc(ctx, func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				buf := make([]byte, 32<<10)
				if _, err := io.CopyBuffer(struct{ io.Writer }{c}, struct{ io.Reader }{c}, buf); err == nil || errors.Is(err, io.EOF) {
					c.(*net.TCPConn).CloseWrite()
				}
			}()
		}
	}()
	return l.Addr().String(), nil
}
