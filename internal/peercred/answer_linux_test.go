package peercred

import (
	"encoding/binary"
	"errors"
	"net/netip"
	"testing"

	"golang.org/x/sys/unix"
)

var (
	testClient = netip.MustParseAddrPort("127.0.0.1:40000")
	testServer = netip.MustParseAddrPort("127.0.0.1:15080")
)

// answer builds the kernel's answer about a socket.
func answer(seq uint32, family, state uint8, local, remote netip.AddrPort, uid, inode uint32) []byte {
	b := make([]byte, sizeofNlmsghdr+sizeofDiagMsg)
	ne := binary.NativeEndian
	ne.PutUint32(b[0:], uint32(len(b)))
	ne.PutUint16(b[4:], unix.SOCK_DIAG_BY_FAMILY)
	ne.PutUint32(b[8:], seq)
	m := b[sizeofNlmsghdr:]
	m[0], m[1] = family, state
	if family == unix.AF_INET6 {
		local = netip.AddrPortFrom(netip.AddrFrom16(local.Addr().As16()), local.Port())
		remote = netip.AddrPortFrom(netip.AddrFrom16(remote.Addr().As16()), remote.Port())
	}
	putSockID(m[4:], local, remote)
	ne.PutUint32(m[4+sizeofSockID+12:], uid)
	ne.PutUint32(m[4+sizeofSockID+16:], inode)
	return b
}

func errorAnswer(seq uint32, errno unix.Errno) []byte {
	b := make([]byte, sizeofNlmsghdr+4+sizeofNlmsghdr)
	ne := binary.NativeEndian
	ne.PutUint32(b[0:], uint32(len(b)))
	ne.PutUint16(b[4:], unix.NLMSG_ERROR)
	ne.PutUint32(b[8:], seq)
	ne.PutUint32(b[sizeofNlmsghdr:], uint32(-int32(errno)))
	return b
}

func TestParseAnswer(t *testing.T) {
	const tcpTimeWait = 6
	other := netip.MustParseAddrPort("127.0.0.1:40001")
	tests := []struct {
		name    string
		b       []byte
		want    Cred
		noOwner bool // errors.Is ErrNoOwner; otherwise any error if want is zero
	}{
		{"established", answer(1, unix.AF_INET, tcpEstablished, testClient, testServer, 1001, 77), Cred{UID: 1001, GID: NoID}, false},
		{"half-closed by the client, still held", answer(1, unix.AF_INET, tcpFinWait2, testClient, testServer, 1001, 77), Cred{UID: 1001, GID: NoID}, false},
		{"dual-stack socket, mapped addresses", answer(1, unix.AF_INET6, tcpEstablished, testClient, testServer, 1001, 77), Cred{UID: 1001, GID: NoID}, false},
		{"TIME_WAIT reports uid 0", answer(1, unix.AF_INET, tcpTimeWait, testClient, testServer, 0, 0), Cred{}, true},
		{"orphaned reports uid 0", answer(1, unix.AF_INET, tcpFinWait1, testClient, testServer, 0, 0), Cred{}, true},
		{"orphaned with its creator's uid", answer(1, unix.AF_INET, tcpFinWait2, testClient, testServer, 1001, 0), Cred{}, true},
		{"not found", errorAnswer(1, unix.ENOENT), Cred{}, true},
		{"other error", errorAnswer(1, unix.EPERM), Cred{}, false},
		{"another socket", answer(1, unix.AF_INET, tcpEstablished, other, testServer, 1001, 77), Cred{}, false},
		{"stale sequence", answer(2, unix.AF_INET, tcpEstablished, testClient, testServer, 1001, 77), Cred{}, false},
		{"truncated", answer(1, unix.AF_INET, tcpEstablished, testClient, testServer, 1001, 77)[:40], Cred{}, false},
		{"empty", nil, Cred{}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseAnswer(tt.b, 1, testClient, testServer)
			switch {
			case tt.want != (Cred{}):
				if err != nil || got != tt.want {
					t.Fatalf("%+v, %v; want %+v", got, err, tt.want)
				}
			case tt.noOwner && !errors.Is(err, ErrNoOwner):
				t.Fatalf("%+v, %v; want ErrNoOwner", got, err)
			case err == nil:
				t.Fatalf("%+v, no error", got)
			}
		})
	}
}

// FuzzParseAnswer: no answer panics, and an answer without a live owner
// never yields credentials.
func FuzzParseAnswer(f *testing.F) {
	f.Add(answer(1, unix.AF_INET, tcpEstablished, testClient, testServer, 1001, 77))
	f.Add(answer(1, unix.AF_INET6, tcpEstablished, testClient, testServer, 1001, 77))
	f.Add(answer(1, unix.AF_INET, 6, testClient, testServer, 0, 0))
	f.Add(errorAnswer(1, unix.ENOENT))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := parseAnswer(b, 1, testClient, testServer)
		if err == nil && (len(b) < sizeofNlmsghdr+sizeofDiagMsg || binary.NativeEndian.Uint32(b[sizeofNlmsghdr+4+sizeofSockID+16:]) == 0 || c.GID != NoID) {
			t.Fatalf("credentials %+v from %x", c, b)
		}
	})
}
