package peercred

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"sync"
	"time"
)

// maxSocketPath is the longest unix socket path (sun_path less its NUL).
const maxSocketPath = 107

// ListenUnix listens on a stream unix socket at the absolute path, with
// permissions perm (0600: the owner only; 0660: the group too) and, if gid
// is not negative, owned by group gid. The socket is made in a private
// directory beside path, given its mode and group there, and renamed into
// place, so nobody can connect to it before it has them. A stale socket
// left at path (one nothing listens on) is replaced; a live one, or a file
// that is not a socket, is an error. Closing the listener removes the
// socket, if it is still the one it made.
func ListenUnix(path string, perm fs.FileMode, gid int) (net.Listener, error) {
	if !filepath.IsAbs(path) {
		return nil, fmt.Errorf("peercred: socket path %q is not absolute", path)
	}
	if len(path) > maxSocketPath {
		return nil, fmt.Errorf("peercred: socket path %q is longer than %d bytes", path, maxSocketPath)
	}
	if perm&^0o770 != 0 {
		return nil, fmt.Errorf("peercred: socket permissions %v give access to other users", perm)
	}
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode().Type() != fs.ModeSocket {
			return nil, fmt.Errorf("peercred: %s exists and is not a socket; not replacing it", path)
		}
		if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
			c.Close()
			return nil, fmt.Errorf("peercred: %s: another process is listening on it", path)
		}
	} else if !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("peercred: %w", err)
	}
	dir, err := os.MkdirTemp(filepath.Dir(path), ".credflow-")
	if err != nil {
		return nil, fmt.Errorf("peercred: socket directory: %w", err)
	}
	defer os.RemoveAll(dir)
	tmp := filepath.Join(dir, "s")
	if len(tmp) > maxSocketPath {
		return nil, fmt.Errorf("peercred: socket path %q is too long to be made safely (the directory name is over %d bytes)", path, maxSocketPath-len(tmp)+len(filepath.Dir(path)))
	}
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: tmp, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("peercred: %w", err)
	}
	ln.SetUnlinkOnClose(false)
	fail := func(err error) (net.Listener, error) {
		ln.Close()
		return nil, fmt.Errorf("peercred: %w", err)
	}
	if gid >= 0 {
		if err := os.Chown(tmp, -1, gid); err != nil {
			return fail(err)
		}
	}
	if err := os.Chmod(tmp, perm); err != nil {
		return fail(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fail(err)
	}
	fi, err := os.Lstat(path)
	if err != nil {
		return fail(err)
	}
	return &unixListener{UnixListener: ln, path: path, made: fi}, nil
}

// unixListener removes its socket file on Close.
type unixListener struct {
	*net.UnixListener
	path string
	made fs.FileInfo
	once sync.Once
}

func (l *unixListener) Close() error {
	err := l.UnixListener.Close()
	l.once.Do(func() {
		if fi, serr := os.Lstat(l.path); serr == nil && os.SameFile(fi, l.made) {
			os.Remove(l.path)
		}
	})
	return err
}
