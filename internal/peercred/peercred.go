// Package peercred tells who is on the other end of a local connection, as
// the kernel sees it: the uid, gid and pid of a unix-socket peer
// (SO_PEERCRED), or the uid that owns the client socket of a TCP connection
// between two sockets of this network namespace (NETLINK_SOCK_DIAG). A
// Callers policy then says which local users may use a listener.
//
// It is for listeners that serve processes of the same host, such as the
// sidecar's token endpoint: a loopback TCP port can be reached by every
// process in the network namespace, whatever its uid, so the uid has to be
// asked of the kernel, not of the request.
//
// Only Linux answers; elsewhere Of returns ErrUnsupported.
package peercred

import (
	"errors"
	"fmt"
	"net"
	"slices"
	"strconv"
	"strings"
)

// NoID is a uid or gid that is not known: the kernel's (uid_t)-1, which no
// user has.
const NoID = ^uint32(0)

// Cred is a local caller as the kernel saw it when it connected.
type Cred struct {
	// UID is the effective uid of the process that connected (unix
	// socket) or that created the client socket (TCP).
	UID uint32
	// GID is the effective gid of a unix-socket peer; NoID for a TCP peer,
	// whose socket records no group.
	GID uint32
	// PID is the process id of a unix-socket peer; 0 for a TCP peer.
	PID int32
}

// String is "uid=1001 gid=1001 pid=42", leaving out what is not known.
func (c Cred) String() string {
	var b strings.Builder
	b.WriteString("uid=" + strconv.FormatUint(uint64(c.UID), 10))
	if c.GID != NoID {
		b.WriteString(" gid=" + strconv.FormatUint(uint64(c.GID), 10))
	}
	if c.PID != 0 {
		b.WriteString(" pid=" + strconv.FormatInt(int64(c.PID), 10))
	}
	return b.String()
}

// Errors of Of, for errors.Is.
var (
	// ErrUnsupported: not Linux, or a connection that is neither a unix
	// socket nor TCP.
	ErrUnsupported = errors.New("peercred: the caller of this kind of connection cannot be known")
	// ErrNoOwner: the kernel knows no live socket of a user at the other
	// end of a TCP connection. The peer is on another host or in another
	// network namespace, or it closed its socket (a closed socket has no
	// owner; the kernel may report it as root).
	ErrNoOwner = errors.New("peercred: no local socket with an owner at the other end")
)

// Callers says which local users may connect. The zero value allows every
// caller.
type Callers struct {
	// UIDs are the allowed uids.
	UIDs []uint32
	// GIDs are the allowed gids: a caller whose effective gid is one of
	// them is allowed. Supplementary groups are not seen, and a TCP caller
	// has no gid (Cred.GID is NoID), so GIDs only ever allow unix-socket
	// callers.
	GIDs []uint32
}

// EnvCallerUIDs is the environment variable that gives a sidecar its
// default callers: uids separated by commas ("1000,1001"). In Kubernetes
// the injector sets it to the uids of the pod's other containers; the
// listeners whose configuration names no callers then take those.
const EnvCallerUIDs = "CREDFLOW_CALLER_UIDS"

// ParseUIDs reads a list of uids separated by commas, as EnvCallerUIDs
// holds. It refuses an empty list, an empty entry and NoID.
func ParseUIDs(s string) ([]uint32, error) {
	var uids []uint32
	for f := range strings.SplitSeq(s, ",") {
		f = strings.TrimSpace(f)
		u, err := strconv.ParseUint(f, 10, 32)
		if err != nil || uint32(u) == NoID {
			return nil, fmt.Errorf("peercred: %q is not a uid", f)
		}
		uids = append(uids, uint32(u))
	}
	return uids, nil
}

// Any reports whether c allows every caller (no uid or gid is listed).
func (c Callers) Any() bool { return len(c.UIDs) == 0 && len(c.GIDs) == 0 }

// Allows reports whether cred is one of the callers: its uid is listed, or
// its gid is. With nothing listed every caller is allowed.
func (c Callers) Allows(cred Cred) bool {
	if c.Any() {
		return true
	}
	return slices.Contains(c.UIDs, cred.UID) || cred.GID != NoID && slices.Contains(c.GIDs, cred.GID)
}

// Of returns the credentials of the process at the other end of c: a
// *net.UnixConn (SO_PEERCRED, taken when the peer connected) or a
// *net.TCPConn whose peer is a socket of this network namespace (the owner
// of that socket). A connection that wraps another (NetConn, as *tls.Conn
// has) is unwrapped.
func Of(c net.Conn) (Cred, error) {
	for {
		w, ok := c.(interface{ NetConn() net.Conn })
		if !ok {
			break
		}
		c = w.NetConn()
	}
	switch c := c.(type) {
	case *net.UnixConn:
		return unixPeer(c)
	case *net.TCPConn:
		client, ok1 := c.RemoteAddr().(*net.TCPAddr)
		server, ok2 := c.LocalAddr().(*net.TCPAddr)
		if !ok1 || !ok2 {
			return Cred{}, ErrUnsupported
		}
		return TCPOwner(client.AddrPort(), server.AddrPort())
	}
	return Cred{}, ErrUnsupported
}
