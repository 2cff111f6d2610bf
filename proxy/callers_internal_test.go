package proxy

import (
	"errors"
	"testing"

	"github.com/credflow/credflow/internal/peercred"
	"github.com/credflow/credflow/reason"
)

// TestCheckCaller: a listener without callers takes every connection, even
// one whose caller is not known; with callers, an unknown caller is
// caller_unknown and a caller outside the list caller_not_allowed. A TCP
// caller has no gid, so a gid list never allows it.
func TestCheckCaller(t *testing.T) {
	unknown := errors.New("no owner")
	tcp := peercred.Cred{UID: 1001, GID: peercred.NoID}
	for _, c := range []struct {
		name    string
		callers peercred.Callers
		cred    peercred.Cred
		err     error
		want    reason.Reason
	}{
		{"any, known", peercred.Callers{}, tcp, nil, ""},
		{"any, unknown", peercred.Callers{}, peercred.Cred{}, unknown, ""},
		{"listed", peercred.Callers{UIDs: []uint32{1001}}, tcp, nil, ""},
		{"not listed", peercred.Callers{UIDs: []uint32{1002}}, tcp, nil, reason.CallerNotAllowed},
		{"unknown", peercred.Callers{UIDs: []uint32{0, 1001}}, peercred.Cred{}, unknown, reason.CallerUnknown},
		{"gids only, TCP", peercred.Callers{GIDs: []uint32{1001}}, tcp, nil, reason.CallerNotAllowed},
	} {
		if got := checkCaller(&c.callers, c.cred, c.err); got != c.want {
			t.Errorf("%s: %q, want %q", c.name, got, c.want)
		}
	}
}
