// Package pgtest runs a throwaway PostgreSQL server for tests: the
// Debian package's binaries, a new cluster in a temporary directory, on a
// free loopback port, as the postgres system user (PostgreSQL refuses to
// run as root), with trust authentication on loopback only.
package pgtest

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"github.com/credflow/credflow/internal/freeport"
)

// Server is a running PostgreSQL.
type Server struct {
	dir  string
	bin  string
	port int
	uid  uint32
	gid  uint32
}

// binDir finds the newest /usr/lib/postgresql/N/bin.
func binDir() (string, error) {
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	for i := len(dirs) - 1; i >= 0; i-- {
		if _, err := os.Stat(filepath.Join(dirs[i], "pg_ctl")); err == nil {
			return dirs[i], nil
		}
	}
	return "", errors.New("pgtest: no PostgreSQL under /usr/lib/postgresql (make deps installs the postgresql package)")
}

// Start initializes a cluster and starts it; Stop removes it.
func Start(ctx context.Context) (*Server, error) {
	bin, err := binDir()
	if err != nil {
		return nil, err
	}
	u, err := user.Lookup("postgres")
	if err != nil {
		return nil, fmt.Errorf("pgtest: the postgres system user: %w", err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	dir, err := os.MkdirTemp("", "cfpg-")
	if err != nil {
		return nil, err
	}
	if err := os.Chown(dir, uid, gid); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	port, err := freeport.Port()
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	s := &Server{dir: dir, bin: bin, port: port, uid: uint32(uid), gid: uint32(gid)}
	data := filepath.Join(dir, "data")
	if out, err := s.run(ctx, "initdb", "-D", data, "-U", "postgres", "--auth=trust", "-E", "UTF8"); err != nil {
		s.Stop()
		return nil, fmt.Errorf("pgtest: initdb: %w\n%s", err, out)
	}
	opts := fmt.Sprintf("-p %d -k %s -c listen_addresses=127.0.0.1 -c fsync=off", port, dir)
	if out, err := s.run(ctx, "pg_ctl", "-D", data, "-l", filepath.Join(dir, "log"), "-o", opts, "-w", "-t", "60", "start"); err != nil {
		log, _ := os.ReadFile(filepath.Join(dir, "log"))
		s.Stop()
		return nil, fmt.Errorf("pgtest: pg_ctl start: %w\n%s\n%s", err, out, log)
	}
	return s, nil
}

func (s *Server) run(ctx context.Context, name string, args ...string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(s.bin, name), args...)
	cmd.Dir = s.dir
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: s.uid, Gid: s.gid}}
	return cmd.CombinedOutput()
}

// CreateDB creates a database.
func (s *Server) CreateDB(ctx context.Context, name string) error {
	if out, err := s.run(ctx, "createdb", "-h", "127.0.0.1", "-p", strconv.Itoa(s.port), "-U", "postgres", name); err != nil {
		return fmt.Errorf("pgtest: createdb %s: %w\n%s", name, err, out)
	}
	return nil
}

// ConnString is a libpq connection string for database name.
func (s *Server) ConnString(name string) string {
	return fmt.Sprintf("dbname=%s user=postgres host=127.0.0.1 port=%d sslmode=disable", name, s.port)
}

// Stop stops the server and removes its files.
func (s *Server) Stop() {
	data := filepath.Join(s.dir, "data")
	if _, err := os.Stat(filepath.Join(data, "postmaster.pid")); err == nil {
		s.run(context.Background(), "pg_ctl", "-D", data, "-m", "immediate", "-w", "stop")
	}
	os.RemoveAll(s.dir)
}
