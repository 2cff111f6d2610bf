// Package spiretest runs a real SPIRE server and agent for tests and the
// demo: built from the pinned module under deploy/spire by `make spire`,
// configured in a temporary directory on free loopback ports with an SQLite
// datastore, join-token node attestation and the unix workload attestor.
//
// Entries are registered through the SPIRE server API (spire-api-sdk), and
// workloads get distinct identities by running as distinct uids (see
// Command). Every process started here is stopped by Close.
package spiretest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	agentv1 "github.com/spiffe/spire-api-sdk/proto/spire/api/server/agent/v1"
	entryv1 "github.com/spiffe/spire-api-sdk/proto/spire/api/server/entry/v1"
	"github.com/spiffe/spire-api-sdk/proto/spire/api/types"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/credflow/credflow/internal/freeport"
)

// Options configures a SPIRE deployment. The zero value works.
type Options struct {
	// TrustDomain defaults to "example.org".
	TrustDomain string
	// CATTL is the server CA's lifetime. Default 10m.
	CATTL time.Duration
	// X509SVIDTTL is the default X.509-SVID lifetime. Default 1m.
	X509SVIDTTL time.Duration
	// JWTSVIDTTL is the default JWT-SVID lifetime. Default 1m.
	JWTSVIDTTL time.Duration
	// BinDir holds spire-server and spire-agent. Default: bin/ at the root
	// of the credflow module that contains the working directory.
	BinDir string
	// JWTIssuer, if set, is the server's jwt_issuer: the iss claim of the
	// JWT-SVIDs it signs (an authorization server's jwt-bearer grant
	// requires one).
	JWTIssuer string
	// Logf, if set, receives progress lines (t.Logf in tests).
	Logf func(format string, args ...any)
	// Datastore is a PostgreSQL connection string for the servers'
	// datastore; empty means SQLite in the server's data directory.
	Datastore string
	// SecondServer runs a second server on the same datastore (Datastore
	// is then required), as SPIRE runs highly available. The agent reaches
	// the servers through a front that connects each new connection to the
	// first server that accepts it, as a Kubernetes Service would.
	SecondServer bool
	// Federation, if set, gives the server a bundle endpoint and
	// federation relationships (see StartFederated). Not with
	// SecondServer, whose server would bind the same endpoint port.
	Federation *Federation
}

// SPIRE is a running SPIRE server and agent.
type SPIRE struct {
	opts       Options
	td         spiffeid.TrustDomain
	dir        string // world-traversable, so other uids reach the socket
	serverBin  string
	agentBin   string
	serverPort int
	conn       *grpc.ClientConn

	mu      sync.Mutex
	server  *exec.Cmd
	server2 *exec.Cmd
	agent   *exec.Cmd
	token   string

	server2Port int
	front       net.Listener // SecondServer: the agent's way to the servers
}

// NodeID is the SPIFFE ID path of the agent's node alias; register
// workloads with the ID from SPIRE.NodeID as parent.
const nodePath = "/node"

// Start builds the configuration, starts the server, creates a join token
// and starts the agent, and waits until both are healthy.
func Start(ctx context.Context, opts Options) (_ *SPIRE, err error) {
	if opts.TrustDomain == "" {
		opts.TrustDomain = "example.org"
	}
	if opts.CATTL == 0 {
		opts.CATTL = 10 * time.Minute
	}
	if opts.X509SVIDTTL == 0 {
		opts.X509SVIDTTL = time.Minute
	}
	if opts.JWTSVIDTTL == 0 {
		opts.JWTSVIDTTL = time.Minute
	}
	if opts.Logf == nil {
		opts.Logf = func(string, ...any) {}
	}
	td, err := spiffeid.TrustDomainFromString(opts.TrustDomain)
	if err != nil {
		return nil, fmt.Errorf("spiretest: trust domain: %w", err)
	}
	binDir := opts.BinDir
	if binDir == "" {
		if binDir, err = DefaultBinDir(); err != nil {
			return nil, err
		}
	}
	s := &SPIRE{opts: opts, td: td,
		serverBin: filepath.Join(binDir, "spire-server"),
		agentBin:  filepath.Join(binDir, "spire-agent"),
	}
	for _, b := range []string{s.serverBin, s.agentBin} {
		if _, err := os.Stat(b); err != nil {
			return nil, fmt.Errorf("spiretest: %s not found: run `make spire` to build SPIRE", b)
		}
	}
	// Short paths: unix socket paths are limited to 108 bytes.
	if s.dir, err = os.MkdirTemp("", "cfspire-"); err != nil {
		return nil, fmt.Errorf("spiretest: %w", err)
	}
	defer func() {
		if err != nil {
			s.Close()
		}
	}()
	if err := os.Chmod(s.dir, 0o755); err != nil {
		return nil, fmt.Errorf("spiretest: %w", err)
	}
	if opts.SecondServer && opts.Datastore == "" {
		return nil, errors.New("spiretest: a second server needs a shared Datastore")
	}
	for _, d := range []string{"server", "server2", "agent", "agent/public"} {
		if err := os.MkdirAll(filepath.Join(s.dir, d), 0o755); err != nil {
			return nil, fmt.Errorf("spiretest: %w", err)
		}
	}
	if s.serverPort, err = freePort(); err != nil {
		return nil, err
	}
	agentPort := s.serverPort
	if opts.SecondServer {
		if s.server2Port, err = freePort(); err != nil {
			return nil, err
		}
		if s.front, err = net.Listen("tcp", "127.0.0.1:0"); err != nil {
			return nil, fmt.Errorf("spiretest: %w", err)
		}
		go s.serveFront()
		agentPort = s.front.Addr().(*net.TCPAddr).Port
	}
	if err := s.writeConfigs(agentPort); err != nil {
		return nil, err
	}
	if err := s.StartServer(ctx); err != nil {
		return nil, err
	}
	if opts.SecondServer {
		if err := s.StartServer2(ctx); err != nil {
			return nil, err
		}
	}
	s.conn, err = grpc.NewClient("unix://"+s.ServerSocket(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, fmt.Errorf("spiretest: server API client: %w", err)
	}
	tok, err := s.joinToken(ctx)
	if err != nil {
		return nil, err
	}
	s.token = tok
	if err := s.StartAgent(ctx); err != nil {
		return nil, err
	}
	return s, nil
}

// DefaultBinDir returns bin/ at the root of the credflow module that
// contains the working directory.
func DefaultBinDir() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", fmt.Errorf("spiretest: %w", err)
	}
	for {
		b, err := os.ReadFile(filepath.Join(dir, "go.mod"))
		if err == nil && strings.HasPrefix(string(b), "module github.com/credflow/credflow\n") {
			return filepath.Join(dir, "bin"), nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("spiretest: not inside the credflow module; set Options.BinDir")
		}
		dir = parent
	}
}

// TrustDomain is the deployment's trust domain.
func (s *SPIRE) TrustDomain() spiffeid.TrustDomain { return s.td }

// NodeID is the SPIFFE ID of the agent's node, the parent of workload entries.
func (s *SPIRE) NodeID() spiffeid.ID {
	id, _ := spiffeid.FromPath(s.td, nodePath)
	return id
}

// ID returns the SPIFFE ID with path p in the deployment's trust domain.
func (s *SPIRE) ID(p string) spiffeid.ID {
	id, err := spiffeid.FromPath(s.td, p)
	if err != nil {
		panic(fmt.Sprintf("spiretest: bad path %q: %v", p, err))
	}
	return id
}

// Dir is the deployment's directory; it and its "bin" subdirectory are
// readable and traversable by every uid.
func (s *SPIRE) Dir() string { return s.dir }

// AgentSocket is the path of the Workload API socket.
func (s *SPIRE) AgentSocket() string { return filepath.Join(s.dir, "agent", "public", "api.sock") }

// AgentAddr is the Workload API address, "unix://" + AgentSocket.
func (s *SPIRE) AgentAddr() string { return "unix://" + s.AgentSocket() }

// ServerSocket is the path of the server's admin API socket.
func (s *SPIRE) ServerSocket() string { return filepath.Join(s.dir, "server", "api.sock") }

// ServerBin and AgentBin are the SPIRE binaries in use.
func (s *SPIRE) ServerBin() string { return s.serverBin }

// AgentBin is the spire-agent binary in use.
func (s *SPIRE) AgentBin() string { return s.agentBin }

// Conn is a gRPC connection to the server's admin API.
func (s *SPIRE) Conn() *grpc.ClientConn { return s.conn }

// serverConf is the configuration of server dir ("server" or "server2").
func (s *SPIRE) serverConf(dir string, port int) string {
	datastore := fmt.Sprintf("database_type = \"sqlite3\"\n      connection_string = %q", filepath.Join(s.dir, dir, "data", "datastore.sqlite3"))
	if s.opts.Datastore != "" {
		datastore = fmt.Sprintf("database_type = \"postgres\"\n      connection_string = %q", s.opts.Datastore)
	}
	return fmt.Sprintf(`server {
  bind_address = "127.0.0.1"
  bind_port = "%d"
  socket_path = %q
  trust_domain = %q
  data_dir = %q
  log_level = "INFO"
  ca_key_type = "ec-p256"
  ca_ttl = %q
  default_x509_svid_ttl = %q
  default_jwt_svid_ttl = %q
%s%s}
plugins {
  DataStore "sql" {
    plugin_data {
      %s
    }
  }
  NodeAttestor "join_token" {
    plugin_data {}
  }
  KeyManager "disk" {
    plugin_data {
      keys_path = %q
    }
  }
}
`, port, filepath.Join(s.dir, dir, "api.sock"), s.td.Name(), filepath.Join(s.dir, dir, "data"),
		s.opts.CATTL, s.opts.X509SVIDTTL, s.opts.JWTSVIDTTL, s.jwtIssuerConf(), s.federationConf(), datastore,
		filepath.Join(s.dir, dir, "data", "keys.json"))
}

func (s *SPIRE) jwtIssuerConf() string {
	if s.opts.JWTIssuer == "" {
		return ""
	}
	return fmt.Sprintf("  jwt_issuer = %q\n", s.opts.JWTIssuer)
}

func (s *SPIRE) writeConfigs(agentPort int) error {
	agent := fmt.Sprintf(`agent {
  data_dir = %q
  log_level = "INFO"
  server_address = "127.0.0.1"
  server_port = "%d"
  socket_path = %q
  trust_domain = %q
  insecure_bootstrap = true
}
plugins {
  NodeAttestor "join_token" {
    plugin_data {}
  }
  KeyManager "disk" {
    plugin_data {
      directory = %q
    }
  }
  WorkloadAttestor "unix" {
    plugin_data {}
  }
}
`, filepath.Join(s.dir, "agent", "data"), agentPort, s.AgentSocket(), s.td.Name(),
		filepath.Join(s.dir, "agent", "data"))
	for _, d := range []string{"server", "server2"} {
		if err := os.MkdirAll(filepath.Join(s.dir, d, "data"), 0o700); err != nil {
			return fmt.Errorf("spiretest: %w", err)
		}
	}
	if err := os.MkdirAll(filepath.Join(s.dir, "agent", "data"), 0o700); err != nil {
		return fmt.Errorf("spiretest: %w", err)
	}
	if err := os.WriteFile(filepath.Join(s.dir, "server", "server.conf"), []byte(s.serverConf("server", s.serverPort)), 0o600); err != nil {
		return fmt.Errorf("spiretest: %w", err)
	}
	if s.opts.SecondServer {
		if err := os.WriteFile(filepath.Join(s.dir, "server2", "server.conf"), []byte(s.serverConf("server2", s.server2Port)), 0o600); err != nil {
			return fmt.Errorf("spiretest: %w", err)
		}
	}
	if err := os.WriteFile(filepath.Join(s.dir, "agent", "agent.conf"), []byte(agent), 0o600); err != nil {
		return fmt.Errorf("spiretest: %w", err)
	}
	return nil
}

// StartServer starts the server (again) and waits until it is healthy.
func (s *SPIRE) StartServer(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.server != nil {
		return errors.New("spiretest: server already running")
	}
	cmd, err := s.spawn("server", s.serverBin, "run", "-config", filepath.Join(s.dir, "server", "server.conf"))
	if err != nil {
		return err
	}
	s.server = cmd
	return s.waitHealthy(ctx, cmd, "server", s.serverBin, "healthcheck", "-socketPath", s.ServerSocket())
}

// StartServer2 starts the second server (again) and waits until it is
// healthy.
func (s *SPIRE) StartServer2(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.opts.SecondServer || s.server2 != nil {
		return errors.New("spiretest: no second server configured, or it is running")
	}
	cmd, err := s.spawn("server2", s.serverBin, "run", "-config", filepath.Join(s.dir, "server2", "server.conf"))
	if err != nil {
		return err
	}
	s.server2 = cmd
	return s.waitHealthy(ctx, cmd, "server2", s.serverBin, "healthcheck", "-socketPath", filepath.Join(s.dir, "server2", "api.sock"))
}

// StopServer2 stops the second server (SIGTERM, then SIGKILL after 10s).
func (s *SPIRE) StopServer2() error { return s.stop(&s.server2, syscall.SIGTERM) }

// serveFront relays each connection from the agent to the first server
// that accepts it, until the front is closed.
func (s *SPIRE) serveFront() {
	for {
		c, err := s.front.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			var up net.Conn
			for _, port := range []int{s.serverPort, s.server2Port} {
				if up, err = net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", port), time.Second); err == nil {
					break
				}
			}
			if up == nil {
				return
			}
			defer up.Close()
			done := make(chan struct{}, 2)
			go func() { io.Copy(up, c); done <- struct{}{} }()
			go func() { io.Copy(c, up); done <- struct{}{} }()
			<-done // either side ending ends the pair
		}()
	}
}

// StartAgent starts the agent (again) and waits until it is healthy. The
// first start attests with a join token; restarts reuse the agent's stored
// SVID and key.
func (s *SPIRE) StartAgent(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.agent != nil {
		return errors.New("spiretest: agent already running")
	}
	cmd, err := s.spawn("agent", s.agentBin, "run", "-config", filepath.Join(s.dir, "agent", "agent.conf"), "-joinToken", s.token)
	if err != nil {
		return err
	}
	s.agent = cmd
	return s.waitHealthy(ctx, cmd, "agent", s.agentBin, "healthcheck", "-socketPath", s.AgentSocket())
}

// StopServer stops the server gracefully (SIGTERM, then SIGKILL after 10s).
func (s *SPIRE) StopServer() error { return s.stop(&s.server, syscall.SIGTERM) }

// StopAgent stops the agent gracefully (SIGTERM, then SIGKILL after 10s).
func (s *SPIRE) StopAgent() error { return s.stop(&s.agent, syscall.SIGTERM) }

// KillAgent kills the agent with SIGKILL, as a crash would.
func (s *SPIRE) KillAgent() error { return s.stop(&s.agent, syscall.SIGKILL) }

func (s *SPIRE) stop(p **exec.Cmd, sig syscall.Signal) error {
	s.mu.Lock()
	cmd := *p
	*p = nil
	s.mu.Unlock()
	if cmd == nil {
		return nil
	}
	return terminate(cmd, sig)
}

// terminate signals cmd's process group and waits for it, killing it if it
// has not exited after 10 seconds.
func terminate(cmd *exec.Cmd, sig syscall.Signal) error {
	_ = syscall.Kill(-cmd.Process.Pid, sig)
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-done
	}
	return nil
}

// Close stops the agent and the server and removes the directory.
func (s *SPIRE) Close() {
	_ = s.StopAgent()
	_ = s.StopServer()
	_ = s.StopServer2()
	if s.front != nil {
		_ = s.front.Close()
	}
	if s.conn != nil {
		_ = s.conn.Close()
	}
	if s.dir != "" {
		_ = os.RemoveAll(s.dir)
	}
}

// Logs returns the tail (up to n bytes) of the server's and agent's logs,
// for test failure messages.
func (s *SPIRE) Logs(n int) string {
	var b strings.Builder
	for _, name := range []string{"server", "server2", "agent"} {
		data, err := os.ReadFile(filepath.Join(s.dir, name, name+".log"))
		if err != nil {
			continue
		}
		if len(data) > n {
			data = data[len(data)-n:]
		}
		fmt.Fprintf(&b, "--- spire-%s log (tail) ---\n%s\n", name, data)
	}
	return b.String()
}

func (s *SPIRE) spawn(name, bin string, args ...string) (*exec.Cmd, error) {
	logf, err := os.OpenFile(filepath.Join(s.dir, name, name+".log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fmt.Errorf("spiretest: %w", err)
	}
	defer logf.Close()
	cmd := exec.Command(bin, args...)
	cmd.Dir = filepath.Join(s.dir, name)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("spiretest: starting spire-%s: %w", name, err)
	}
	s.opts.Logf("spiretest: spire-%s started (pid %d)", name, cmd.Process.Pid)
	return cmd, nil
}

// waitHealthy polls the binary's healthcheck subcommand until it succeeds,
// the process exits, or 60 seconds pass. s.mu is held.
func (s *SPIRE) waitHealthy(ctx context.Context, cmd *exec.Cmd, name, bin string, args ...string) error {
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	start := time.Now()
	for {
		if err := exec.CommandContext(ctx, bin, args...).Run(); err == nil {
			s.opts.Logf("spiretest: spire-%s healthy after %s", name, time.Since(start).Round(time.Millisecond))
			return nil
		}
		if exited(cmd) {
			return fmt.Errorf("spiretest: spire-%s exited during start-up\n%s", name, s.Logs(4000))
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("spiretest: spire-%s not healthy: %w\n%s", name, ctx.Err(), s.Logs(4000))
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// exited reports whether cmd's process has exited, without reaping it.
func exited(cmd *exec.Cmd) bool {
	return syscall.Kill(cmd.Process.Pid, 0) != nil || processState(cmd.Process.Pid) == "Z"
}

func processState(pid int) string {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return ""
	}
	// pid (comm) S ...: the state follows the last ')'.
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 || i+2 >= len(b) {
		return ""
	}
	return string(b[i+2])
}

func (s *SPIRE) joinToken(ctx context.Context) (string, error) {
	tok, err := agentv1.NewAgentClient(s.conn).CreateJoinToken(ctx, &agentv1.CreateJoinTokenRequest{
		Ttl:     3600,
		AgentId: &types.SPIFFEID{TrustDomain: s.td.Name(), Path: nodePath},
	})
	if err != nil {
		return "", fmt.Errorf("spiretest: creating join token: %w", err)
	}
	return tok.Value, nil
}

// Entry describes a workload registration made by Register.
type Entry struct {
	// ID is the workload's SPIFFE ID.
	ID spiffeid.ID
	// UID selects the workload by its unix uid.
	UID int
	// X509SVIDTTL and JWTSVIDTTL override the server defaults when set.
	X509SVIDTTL, JWTSVIDTTL time.Duration
	// FederatesWith names federated trust domains.
	FederatesWith []string
}

// Register creates an entry for a workload running as e.UID, parented to
// the node, through the server API. It returns the entry ID.
func (s *SPIRE) Register(ctx context.Context, e Entry) (string, error) {
	resp, err := entryv1.NewEntryClient(s.conn).BatchCreateEntry(ctx, &entryv1.BatchCreateEntryRequest{
		Entries: []*types.Entry{{
			SpiffeId:      &types.SPIFFEID{TrustDomain: e.ID.TrustDomain().Name(), Path: e.ID.Path()},
			ParentId:      &types.SPIFFEID{TrustDomain: s.td.Name(), Path: nodePath},
			Selectors:     []*types.Selector{{Type: "unix", Value: "uid:" + strconv.Itoa(e.UID)}},
			X509SvidTtl:   int32(e.X509SVIDTTL / time.Second),
			JwtSvidTtl:    int32(e.JWTSVIDTTL / time.Second),
			FederatesWith: e.FederatesWith,
		}},
	})
	if err != nil {
		return "", fmt.Errorf("spiretest: creating entry for %s: %w", e.ID, err)
	}
	r := resp.Results[0]
	if c := codes.Code(r.Status.Code); c != codes.OK {
		return "", fmt.Errorf("spiretest: creating entry for %s: %w", e.ID, status.Error(c, r.Status.Message))
	}
	return r.Entry.Id, nil
}

// Delete deletes entries by ID through the server API.
func (s *SPIRE) Delete(ctx context.Context, ids ...string) error {
	resp, err := entryv1.NewEntryClient(s.conn).BatchDeleteEntry(ctx, &entryv1.BatchDeleteEntryRequest{Ids: ids})
	if err != nil {
		return fmt.Errorf("spiretest: deleting entries: %w", err)
	}
	for _, r := range resp.Results {
		if c := codes.Code(r.Status.Code); c != codes.OK {
			return fmt.Errorf("spiretest: deleting entry %s: %w", r.Id, status.Error(c, r.Status.Message))
		}
	}
	return nil
}

// Command returns a command that runs as uid (and gid = uid) with no
// supplementary groups, so that the unix attestor gives it that uid's
// identity. The binary must be reachable by that uid: put it under
// s.Dir(), for example with InstallBinary. Running as another uid needs
// root.
func (s *SPIRE) Command(ctx context.Context, uid int, name string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if uid != os.Getuid() {
		cmd.SysProcAttr.Credential = &syscall.Credential{Uid: uint32(uid), Gid: uint32(uid), Groups: []uint32{}}
	}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.Dir = s.dir
	return cmd
}

// InstallBinary makes the executable at src reachable by every uid, under
// s.Dir()/bin, and returns its new path. It hard-links when it can and
// copies otherwise.
func (s *SPIRE) InstallBinary(src string) (string, error) {
	dir := filepath.Join(s.dir, "bin")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("spiretest: %w", err)
	}
	dst := filepath.Join(dir, filepath.Base(src))
	_ = os.Remove(dst)
	if err := os.Link(src, dst); err != nil {
		data, err := os.ReadFile(src)
		if err != nil {
			return "", fmt.Errorf("spiretest: %w", err)
		}
		if err := os.WriteFile(dst, data, 0o755); err != nil {
			return "", fmt.Errorf("spiretest: %w", err)
		}
	}
	if err := os.Chmod(dst, 0o755); err != nil {
		return "", fmt.Errorf("spiretest: %w", err)
	}
	return dst, nil
}

// freePort returns a TCP port on 127.0.0.1 that was free a moment ago
// (internal/freeport).
func freePort() (int, error) { return freeport.Port() }
