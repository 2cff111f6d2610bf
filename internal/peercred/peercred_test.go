package peercred_test

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/credflow/credflow/internal/peercred"
	"github.com/credflow/credflow/internal/testenv"
)

// dialEnv makes the test binary a client: "tcp ADDR" or "unix PATH". It
// dials, then holds the connection open until the server closes it; with
// "tcp-close ADDR" it sends a few bytes and exits at once.
const dialEnv = "PEERCRED_TEST_DIAL"

func TestMain(m *testing.M) {
	if spec := os.Getenv(dialEnv); spec != "" {
		network, addr, _ := strings.Cut(spec, " ")
		network, closeEarly := strings.CutSuffix(network, "-close")
		c, err := net.Dial(network, addr)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(3)
		}
		if closeEarly {
			c.Write([]byte("request"))
			os.Exit(0)
		}
		io.Copy(io.Discard, c)
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// accept returns the credentials Of reports for the next connection on ln.
func accept(t *testing.T, ln net.Listener) (peercred.Cred, error) {
	t.Helper()
	c, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	return peercred.Of(c)
}

func TestTCPOwnerIsThisProcess(t *testing.T) {
	for _, network := range []string{"tcp4", "tcp6"} {
		t.Run(network, func(t *testing.T) {
			host := map[string]string{"tcp4": "127.0.0.1", "tcp6": "[::1]"}[network]
			ln, err := net.Listen(network, host+":0")
			if err != nil {
				t.Fatalf("no %s loopback here: %v", network, err)
			}
			defer ln.Close()
			c, err := net.Dial(network, ln.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			got, err := accept(t, ln)
			if err != nil {
				t.Fatal(err)
			}
			if want := (peercred.Cred{UID: uint32(os.Geteuid()), GID: peercred.NoID}); got != want {
				t.Fatalf("Of = %+v, want %+v", got, want)
			}
		})
	}
}

// TestTCPClosedPeer: a client that closed its socket before the lookup
// has no owner. Older kernels (and every kernel, once the socket is in
// TIME_WAIT) report such a socket as uid 0; taking that as root would let
// any caller pass as root by closing early.
func TestTCPClosedPeer(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	c.Write([]byte("request"))
	c.Close()
	if got, err := accept(t, ln); !errors.Is(err, peercred.ErrNoOwner) {
		t.Fatalf("Of after the client closed = %+v, %v; want ErrNoOwner", got, err)
	}
}

func TestTCPOwnerNotLocal(t *testing.T) {
	// No socket of this namespace is 192.0.2.1:40000 talking to
	// 127.0.0.1:1 (TEST-NET-1 is never local).
	_, err := peercred.TCPOwner(netip.MustParseAddrPort("192.0.2.1:40000"), netip.MustParseAddrPort("127.0.0.1:1"))
	if !errors.Is(err, peercred.ErrNoOwner) {
		t.Fatalf("TCPOwner of a remote peer: %v, want ErrNoOwner", err)
	}
	if _, err := peercred.TCPOwner(netip.MustParseAddrPort("127.0.0.1:1"), netip.MustParseAddrPort("[::1]:2")); err == nil {
		t.Fatal("TCPOwner of an IPv4 client and an IPv6 server: no error")
	}
}

func TestUnixPeerIsThisProcess(t *testing.T) {
	path := filepath.Join(t.TempDir(), "s.sock")
	ln, err := peercred.ListenUnix(path, 0o600, -1)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	got, err := accept(t, ln)
	if err != nil {
		t.Fatal(err)
	}
	if want := (peercred.Cred{UID: uint32(os.Geteuid()), GID: uint32(os.Getegid()), PID: int32(os.Getpid())}); got != want {
		t.Fatalf("Of = %+v, want %+v", got, want)
	}
}

func TestOfOtherConn(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	if _, err := peercred.Of(a); !errors.Is(err, peercred.ErrUnsupported) {
		t.Fatalf("Of(net.Pipe) = %v, want ErrUnsupported", err)
	}
}

// shared makes a directory every uid can enter, with a copy of the test
// binary every uid can run, for clients run as another user.
func shared(t *testing.T) (dir, bin string) {
	t.Helper()
	testenv.NeedsRoot(t, "running a client as another uid")
	dir, err := os.MkdirTemp("", "peercred-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(self)
	if err != nil {
		t.Fatal(err)
	}
	bin = filepath.Join(dir, "client")
	if err := os.WriteFile(bin, data, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir, bin
}

// client starts the test binary as uid:gid dialing network addr.
func client(t *testing.T, bin string, uid, gid uint32, network, addr string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(bin, "-test.run=^$")
	cmd.Env = append(os.Environ(), dialEnv+"="+network+" "+addr)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: gid, Groups: []uint32{}}, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	return cmd
}

// TestOtherUID: a client running as another uid is seen as that uid over
// loopback TCP and over a unix socket; a unix socket with mode 0600 keeps
// it out altogether.
func TestOtherUID(t *testing.T) {
	dir, bin := shared(t)
	const uid, gid = 4242, 4343
	t.Run("tcp", func(t *testing.T) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		client(t, bin, uid, gid, "tcp", ln.Addr().String())
		got, err := accept(t, ln)
		if err != nil || got != (peercred.Cred{UID: uid, GID: peercred.NoID}) {
			t.Fatalf("Of = %+v, %v; want uid %d", got, err, uid)
		}
	})
	t.Run("tcp, closed before the lookup", func(t *testing.T) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		if err := client(t, bin, uid, gid, "tcp-close", ln.Addr().String()).Wait(); err != nil {
			t.Fatal(err)
		}
		if got, err := accept(t, ln); !errors.Is(err, peercred.ErrNoOwner) {
			t.Fatalf("Of = %+v, %v; want ErrNoOwner (a closed socket names no live caller; some kernels report it as uid 0)", got, err)
		}
	})
	t.Run("unix group socket", func(t *testing.T) {
		path := filepath.Join(dir, "group.sock")
		ln, err := peercred.ListenUnix(path, 0o660, gid)
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		cmd := client(t, bin, uid, gid, "unix", path)
		got, err := accept(t, ln)
		if err != nil || got != (peercred.Cred{UID: uid, GID: gid, PID: int32(cmd.Process.Pid)}) {
			t.Fatalf("Of = %+v, %v; want uid %d gid %d pid %d", got, err, uid, gid, cmd.Process.Pid)
		}
	})
	t.Run("unix owner-only socket", func(t *testing.T) {
		path := filepath.Join(dir, "owner.sock")
		ln, err := peercred.ListenUnix(path, 0o600, gid)
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		cmd := client(t, bin, uid, gid, "unix", path)
		err = cmd.Wait()
		var exit *exec.ExitError
		if !errors.As(err, &exit) || exit.ExitCode() != 3 {
			t.Fatalf("a client of another uid on a 0600 socket: %v, want a refused connect (exit 3)", err)
		}
	})
}

func TestListenUnix(t *testing.T) {
	dir := t.TempDir()
	t.Run("mode and group", func(t *testing.T) {
		path := filepath.Join(dir, "m.sock")
		ln, err := peercred.ListenUnix(path, 0o660, os.Getegid())
		if err != nil {
			t.Fatal(err)
		}
		fi, err := os.Lstat(path)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Type() != fs.ModeSocket || fi.Mode().Perm() != 0o660 || fi.Sys().(*syscall.Stat_t).Gid != uint32(os.Getegid()) {
			t.Fatalf("socket %v gid %d", fi.Mode(), fi.Sys().(*syscall.Stat_t).Gid)
		}
		ln.Close()
		if _, err := os.Lstat(path); !errors.Is(err, fs.ErrNotExist) {
			t.Fatalf("socket left after Close: %v", err)
		}
		if entries, _ := os.ReadDir(dir); len(entries) != 0 {
			t.Fatalf("left in the directory: %v", entries)
		}
	})
	t.Run("stale socket replaced", func(t *testing.T) {
		path := filepath.Join(dir, "stale.sock")
		old, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
		if err != nil {
			t.Fatal(err)
		}
		old.SetUnlinkOnClose(false)
		old.Close() // the file stays, nothing listens: a crashed sidecar's socket
		ln, err := peercred.ListenUnix(path, 0o600, -1)
		if err != nil {
			t.Fatalf("over a stale socket: %v", err)
		}
		defer ln.Close()
		c, err := net.Dial("unix", path)
		if err != nil {
			t.Fatal(err)
		}
		c.Close()
	})
	live := filepath.Join(dir, "live.sock")
	ln, err := peercred.ListenUnix(live, 0o600, -1)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	regular := filepath.Join(dir, "file")
	if err := os.WriteFile(regular, []byte("keep me"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name, path string
		perm       fs.FileMode
		want       string
	}{
		{"live socket", live, 0o600, "another process is listening"},
		{"regular file", regular, 0o600, "not a socket"},
		{"relative path", "token.sock", 0o600, "not absolute"},
		{"world-writable", filepath.Join(dir, "w.sock"), 0o666, "other users"},
		{"too long", "/" + strings.Repeat("d", 110), 0o600, "longer than"},
		{"no such directory", filepath.Join(dir, "nodir", "s.sock"), 0o600, "socket directory"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			l, err := peercred.ListenUnix(tt.path, tt.perm, -1)
			if err == nil {
				l.Close()
				t.Fatal("no error")
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("%v, want %q", err, tt.want)
			}
		})
	}
	if b, err := os.ReadFile(regular); err != nil || string(b) != "keep me" {
		t.Fatalf("the regular file was touched: %q %v", b, err)
	}
	if c, err := net.Dial("unix", live); err != nil {
		t.Fatalf("the live socket was replaced: %v", err)
	} else {
		c.Close()
	}
}

func TestCallersAllows(t *testing.T) {
	unixCred := peercred.Cred{UID: 1001, GID: 2000, PID: 7}
	tcpCred := peercred.Cred{UID: 1001, GID: peercred.NoID}
	tests := []struct {
		name    string
		callers peercred.Callers
		cred    peercred.Cred
		want    bool
	}{
		{"empty allows all", peercred.Callers{}, unixCred, true},
		{"uid listed", peercred.Callers{UIDs: []uint32{1001}}, tcpCred, true},
		{"uid not listed", peercred.Callers{UIDs: []uint32{1002}}, tcpCred, false},
		{"gid listed", peercred.Callers{GIDs: []uint32{2000}}, unixCred, true},
		{"gid not listed", peercred.Callers{UIDs: []uint32{1002}, GIDs: []uint32{2001}}, unixCred, false},
		{"a TCP caller has no gid", peercred.Callers{GIDs: []uint32{2000}}, tcpCred, false},
		{"NoID listed as gid matches no TCP caller", peercred.Callers{GIDs: []uint32{peercred.NoID}}, tcpCred, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.callers.Allows(tt.cred); got != tt.want {
				t.Fatalf("Allows(%v) = %v, want %v", tt.cred, got, tt.want)
			}
		})
	}
	if s := unixCred.String(); s != "uid=1001 gid=2000 pid=7" {
		t.Fatalf("String = %q", s)
	}
	if s := tcpCred.String(); s != "uid=1001" {
		t.Fatalf("String = %q", s)
	}
}

func TestParseUIDs(t *testing.T) {
	for in, want := range map[string]string{"1000": "[1000]", "0, 1000,1002": "[0 1000 1002]"} {
		got, err := peercred.ParseUIDs(in)
		if err != nil || fmt.Sprint(got) != want {
			t.Errorf("ParseUIDs(%q) = %v, %v; want %s", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "1000,", "app", "-1", "4294967295", "4294967296", "1000;1001"} {
		if got, err := peercred.ParseUIDs(bad); err == nil {
			t.Errorf("ParseUIDs(%q) = %v, want an error", bad, got)
		}
	}
}
