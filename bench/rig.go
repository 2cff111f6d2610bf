package bench

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	crand "crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/credflow/credflow/internal/freeport"
	"github.com/credflow/credflow/internal/wlapitest"
)

// rig holds what the topologies share: one trust domain with a client and
// a server identity, the same certificates as files (for ghostunnel and
// HAProxy) and behind two stand-in Workload APIs (for the credflow
// sidecars), the binaries, and every process the harness started.
type rig struct {
	dir  string
	bins Binaries
	td   spiffeid.TrustDomain

	ca     *x509.Certificate
	caKey  *ecdsa.PrivateKey
	bundle *x509bundle.Bundle

	wlClient, wlServer *wlapitest.Server
	// jwtKey signs both stand-ins' JWT-SVIDs.
	jwtKey    *ecdsa.PrivateKey
	procs     []*proc
	fileLimit uint64
	// pprof turns on the sidecars' profiles (debug: {pprof: true}).
	pprof bool
}

// Binaries are the programs the harness runs as processes.
type Binaries struct {
	// Credflow is the sidecar; Ghostunnel the T4 peer; HAProxy the T5
	// peer; Self this harness (for the plain relays of T1 and T2).
	Credflow, Ghostunnel, HAProxy, Self string
}

var (
	clientPath = "/client"
	serverPath = "/server"
)

func newRig(ctx context.Context, dir string, bins Binaries, fileLimit uint64) (*rig, error) {
	r := &rig{dir: dir, bins: bins, td: spiffeid.RequireTrustDomainFromString("bench.example"), fileLimit: fileLimit}
	var err error
	if r.ca, r.caKey, err = newCA(r.td); err != nil {
		return nil, err
	}
	r.bundle = x509bundle.FromX509Authorities(r.td, []*x509.Certificate{r.ca})
	client, err := r.issue(clientPath)
	if err != nil {
		return nil, err
	}
	server, err := r.issue(serverPath)
	if err != nil {
		return nil, err
	}
	if err := r.writeFiles(client, server); err != nil {
		return nil, err
	}
	if r.wlClient, err = wlapitest.Start(ctx, filepath.Join(dir, "client.sock"), client, r.bundle); err != nil {
		return nil, err
	}
	if r.wlServer, err = wlapitest.Start(ctx, filepath.Join(dir, "server.sock"), server, r.bundle); err != nil {
		return nil, err
	}
	// One JWT authority for the trust domain, as one SPIRE server is: the
	// inbound sidecar of T3h-jwt validates the JWT-SVIDs the outbound
	// one gets.
	if r.jwtKey, err = ecdsa.GenerateKey(elliptic.P256(), crand.Reader); err != nil {
		return nil, err
	}
	r.wlClient.SetJWTKey(r.jwtKey)
	r.wlServer.SetJWTKey(r.jwtKey)
	return r, nil
}

// serverName is the server identity's DNS SAN: ghostunnel's client checks
// a host name as well as the SPIFFE ID.
const serverName = "server.bench.example"

func (r *rig) issue(path string) (*x509svid.SVID, error) {
	var dns []string
	if path == serverPath {
		dns = []string{serverName}
	}
	return newSVID(r.ca, r.caKey, spiffeid.RequireFromPath(r.td, path), dns...)
}

// rotate gives both identities new SVIDs, as an agent does at rotation.
func (r *rig) rotate() error {
	client, err := r.issue(clientPath)
	if err != nil {
		return err
	}
	server, err := r.issue(serverPath)
	if err != nil {
		return err
	}
	r.wlClient.SetSVID(client, nil)
	r.wlServer.SetSVID(server, nil)
	return nil
}

// writeFiles writes ca.pem, and for each identity NAME.crt, NAME.key and
// NAME.pem (certificate and key together, as HAProxy takes them).
func (r *rig) writeFiles(client, server *x509svid.SVID) error {
	caPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: r.ca.Raw})
	if err := os.WriteFile(filepath.Join(r.dir, "ca.pem"), caPEM, 0o644); err != nil {
		return err
	}
	for name, svid := range map[string]*x509svid.SVID{"client": client, "server": server} {
		certs, key, err := svid.Marshal()
		if err != nil {
			return err
		}
		for file, data := range map[string][]byte{name + ".crt": certs, name + ".key": key, name + ".pem": append(append([]byte{}, certs...), key...)} {
			if err := os.WriteFile(filepath.Join(r.dir, file), data, 0o600); err != nil {
				return err
			}
		}
	}
	return nil
}

func (r *rig) path(name string) string { return filepath.Join(r.dir, name) }

// proc is a process the harness started: a sidecar, a relay or a peer.
type proc struct {
	name  string
	cmd   *exec.Cmd
	admin string // credflow's admin address, for its metrics
	log   string // the file its output goes to
	done  chan struct{}
}

// exited is the error for a process that stopped when it should be
// running: its exit status and the end of its log, so that a failed run
// (in CI, where the log directory is gone) says why.
func (p *proc) exited() error {
	const tail = 2048
	b, _ := os.ReadFile(p.log)
	if len(b) > tail {
		b = b[len(b)-tail:]
		if i := bytes.IndexByte(b, '\n'); i >= 0 {
			b = b[i+1:]
		}
	}
	return fmt.Errorf("bench: %s exited (%v); the end of its log %s:\n%s", p.name, p.cmd.ProcessState, p.log, bytes.TrimSpace(b))
}

// start runs a program, its output in dir/NAME.log.
func (r *rig) start(name string, args ...string) (*proc, error) {
	return r.startEnv(name, nil, args...)
}

// startEnv is start with env added to the harness's environment.
func (r *rig) startEnv(name string, env []string, args ...string) (*proc, error) {
	logf, err := os.Create(r.path(name + ".log"))
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	cmd := exec.Command(args[0], args[1:]...)
	if len(env) > 0 {
		cmd.Env = append(os.Environ(), env...)
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("bench: starting %s: %w", name, err)
	}
	p := &proc{name: name, cmd: cmd, log: logf.Name(), done: make(chan struct{})}
	go func() { cmd.Wait(); close(p.done) }()
	r.procs = append(r.procs, p)
	return p, nil
}

// stopAll stops every process the harness started, and only those.
func (r *rig) stopAll() {
	for _, p := range r.procs {
		p.cmd.Process.Signal(syscall.SIGTERM)
	}
	for _, p := range r.procs {
		p.wait()
	}
}

// stop stops p (SIGTERM, then SIGKILL after 5 s) and waits for it.
func (p *proc) stop() {
	p.cmd.Process.Signal(syscall.SIGTERM)
	p.wait()
}

// wait waits for p to exit, killing it after 5 s.
func (p *proc) wait() {
	select {
	case <-p.done:
	case <-time.After(5 * time.Second):
		p.cmd.Process.Kill()
		<-p.done
	}
}

// waitListening waits until addr accepts TCP connections, or the process
// exits, or timeout passes.
func (p *proc) waitListening(addr string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		select {
		case <-p.done:
			return p.exited()
		default:
		}
		if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
			c.Close()
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Errorf("bench: %s is not listening on %s after %v", p.name, addr, timeout)
}

// waitReady polls a credflow sidecar's /readyz.
func (p *proc) waitReady(timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		select {
		case <-p.done:
			return p.exited()
		default:
		}
		if resp, err := http.Get("http://" + p.admin + "/readyz"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return nil
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("bench: %s not ready after %v", p.name, timeout)
}

// cpu is the process's CPU time so far: the sum of its threads' time on a
// CPU from /proc/PID/task/*/schedstat (nanoseconds), or, if that cannot be
// read, user plus system time from /proc/PID/stat (10 ms ticks). Threads
// that have exited drop out of the first; Go's rarely exit.
func (p *proc) cpu() time.Duration {
	tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/schedstat", p.cmd.Process.Pid))
	var ns int64
	for _, t := range tasks {
		b, err := os.ReadFile(t)
		if err != nil {
			continue
		}
		f := strings.Fields(string(b))
		if len(f) > 0 {
			v, _ := strconv.ParseInt(f[0], 10, 64)
			ns += v
		}
	}
	if ns > 0 {
		return time.Duration(ns)
	}
	return p.cpuTicks()
}

func (p *proc) cpuTicks() time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p.cmd.Process.Pid))
	if err != nil {
		return 0
	}
	// Fields after the parenthesized command name; utime and stime are
	// fields 14 and 15 of the whole line, in clock ticks (100 per second).
	_, rest, ok := strings.Cut(string(b), ") ")
	if !ok {
		return 0
	}
	f := strings.Fields(rest)
	if len(f) < 13 {
		return 0
	}
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+st) * 10 * time.Millisecond
}

// rss is the process's resident set size in bytes.
func (p *proc) rss() int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p.cmd.Process.Pid))
	if err != nil {
		return 0
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return kb << 10
		}
	}
	return 0
}

// metric reads one series from a credflow sidecar's /metrics: a name, with
// its labels as Prometheus prints them when it has any
// (`name{label="value"}`).
func (p *proc) metric(name string) (float64, error) {
	if p.admin == "" {
		return 0, errors.New("bench: not a credflow sidecar")
	}
	resp, err := http.Get("http://" + p.admin + "/metrics")
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	var b strings.Builder
	buf := make([]byte, 32<<10)
	for {
		n, err := resp.Body.Read(buf)
		b.Write(buf[:n])
		if err != nil {
			break
		}
	}
	for line := range strings.SplitSeq(b.String(), "\n") {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			return strconv.ParseFloat(strings.TrimSpace(v), 64)
		}
	}
	return 0, fmt.Errorf("bench: %s has no metric %s", p.name, name)
}

// freeAddr returns a loopback address with a port free at the time of the
// call, never handed out before in this run (internal/freeport).
func freeAddr() (string, error) { return freeport.Addr() }

// raiseFileLimit lifts this process's descriptor limit (and its children's)
// to n when it can; connection scale needs two descriptors per connection
// per sidecar. It returns the limit in force.
func raiseFileLimit(n uint64) uint64 {
	var lim syscall.Rlimit
	syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim)
	if lim.Cur >= n {
		return lim.Cur
	}
	want := syscall.Rlimit{Cur: n, Max: max(n, lim.Max)}
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &want); err != nil {
		// Not root: as far as the hard limit allows.
		want = syscall.Rlimit{Cur: lim.Max, Max: lim.Max}
		syscall.Setrlimit(syscall.RLIMIT_NOFILE, &want)
	}
	syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim)
	return lim.Cur
}

// negotiated handshakes with t's inbound sidecar as its outbound would and
// returns the key-exchange group and cipher suite.
func (r *rig) negotiated(t *topology) (group, cipher string, err error) {
	if t == nil || t.link == "" {
		return "", "", errors.New("bench: no credflow pair to ask")
	}
	client, err := r.issue(clientPath)
	if err != nil {
		return "", "", err
	}
	conf := &tls.Config{
		MinVersion:         tls.VersionTLS13,
		InsecureSkipVerify: true, // the identity is not in question here
		Certificates:       []tls.Certificate{{Certificate: [][]byte{client.Certificates[0].Raw}, PrivateKey: client.PrivateKey}},
	}
	c, err := tls.Dial("tcp", t.link, conf)
	if err != nil {
		return "", "", fmt.Errorf("bench: handshake with %s: %w", t.name, err)
	}
	defer c.Close()
	cs := c.ConnectionState()
	return cs.CurveID.String(), tls.CipherSuiteName(cs.CipherSuite), nil
}
