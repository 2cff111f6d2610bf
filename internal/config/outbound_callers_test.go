package config_test

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/credflow/credflow/internal/config"
	"github.com/credflow/credflow/internal/peercred"
)

// TestParseOutboundCallers: callers.uids of TCP, HTTP and capture outbound
// listeners are parsed; no callers is every local process; a loopback
// address needs no allow_non_loopback, and an address other hosts can
// reach is taken with it.
func TestParseOutboundCallers(t *testing.T) {
	const file = `
outbound:
  - {name: tcp, listen: 127.0.0.1:15001, upstream: b:1, expect: [spiffe://example.org/b], callers: {uids: [1001, 0]}}
  - {name: http, listen: "[::1]:15002", upstream: b:1, expect: [spiffe://example.org/b], protocol: http, callers: {uids: [1002]}}
  - {name: capture, listen: localhost:15003, capture: {destinations: []}, callers: {uids: [1003]}}
  - {name: open, listen: 127.0.0.2:15004, upstream: b:1, expect: [spiffe://example.org/b]}
  - {name: wide, listen: 0.0.0.0:15005, upstream: b:1, expect: [spiffe://example.org/b], allow_non_loopback: true}
  - {name: wide6, listen: "[::]:15006", upstream: b:1, expect: [spiffe://example.org/b], allow_non_loopback: true, callers: {uids: [1001]}}
  - {name: pod, listen: 10.1.2.3:15007, capture: {destinations: []}, allow_non_loopback: true}
`
	c, err := config.Parse([]byte(file))
	if err != nil {
		t.Fatal(err)
	}
	type got struct {
		Name             string
		Callers          peercred.Callers
		AllowNonLoopback bool
	}
	var g []got
	for _, o := range c.Outbound {
		g = append(g, got{o.Name, o.Callers, o.AllowNonLoopback})
	}
	want := []got{
		{"tcp", peercred.Callers{UIDs: []uint32{1001, 0}}, false},
		{"http", peercred.Callers{UIDs: []uint32{1002}}, false},
		{"capture", peercred.Callers{UIDs: []uint32{1003}}, false},
		{"open", peercred.Callers{}, false},
		{"wide", peercred.Callers{}, true},
		{"wide6", peercred.Callers{UIDs: []uint32{1001}}, true},
		{"pod", peercred.Callers{}, true},
	}
	if diff := cmp.Diff(want, g); diff != "" {
		t.Fatalf("outbound callers (-want +got):\n%s", diff)
	}
}

// TestParseOutboundCallersErrors: an outbound listener on an address other
// hosts can reach is refused without allow_non_loopback, naming the field
// and the setting; bad callers are refused naming the entry, and gids
// (a TCP socket has no group) are refused.
func TestParseOutboundCallersErrors(t *testing.T) {
	out := func(fields string) string {
		return "outbound:\n  - {name: b, upstream: b:1, expect: [spiffe://example.org/b], " + fields + "}\n"
	}
	tests := []struct{ name, yaml, want string }{
		{"0.0.0.0", out("listen: 0.0.0.0:15001"),
			"outbound[0].listen: 0.0.0.0:15001 is not a loopback address; set allow_non_loopback: true to listen there"},
		{"[::]", out(`listen: "[::]:15001"`), "outbound[0].listen: [::]:15001 is not a loopback address"},
		{"empty host", out(`listen: ":15001"`), "outbound[0].listen: :15001 is not a loopback address"},
		{"a pod IP", out("listen: 10.1.2.3:15001"), "outbound[0].listen: 10.1.2.3:15001 is not a loopback address"},
		{"a host name", out("listen: myhost:15001"), "outbound[0].listen: myhost:15001 is not a loopback address"},
		{"allow_non_loopback: false", out("listen: 0.0.0.0:15001, allow_non_loopback: false"), "outbound[0].listen: 0.0.0.0:15001 is not a loopback address"},
		{"capture on 0.0.0.0", "outbound:\n  - {name: c, listen: 0.0.0.0:15001, capture: {destinations: []}}\n",
			"outbound[0].listen: 0.0.0.0:15001 is not a loopback address; set allow_non_loopback: true"},
		{"HTTP on 0.0.0.0", out("listen: 0.0.0.0:15001, protocol: http"), "outbound[0].listen: 0.0.0.0:15001 is not a loopback address"},
		{"gids", out("listen: 127.0.0.1:15001, callers: {gids: [1001]}"), "outbound[0].callers.gids: a TCP caller has no group the kernel can name; use uids"},
		{"negative uid", out("listen: 127.0.0.1:15001, callers: {uids: [1001, -1]}"), "outbound[0].callers.uids[1]: -1 is not a uid or gid"},
		{"uid (uid_t)-1", out("listen: 127.0.0.1:15001, callers: {uids: [4294967295]}"), "outbound[0].callers.uids[0]"},
		{"user name for a uid", out("listen: 127.0.0.1:15001, callers: {uids: [alice]}"), "outbound[0].callers.uids[0]"},
		{"unknown callers field", out("listen: 127.0.0.1:15001, callers: {users: [1]}"), "outbound[0].callers.users: unknown field"},
		{"callers not a mapping", out("listen: 127.0.0.1:15001, callers: [1001]"), "outbound[0].callers"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := config.Parse([]byte(tt.yaml))
			if err == nil {
				t.Fatalf("parsed: %+v", c.Outbound)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error %q does not contain %q", err, tt.want)
			}
		})
	}
}

// TestDiffOutboundCallers: an outbound listener's callers.uids can change
// while running; allow_non_loopback needs a restart.
func TestDiffOutboundCallers(t *testing.T) {
	parse := func(s string) *config.Config {
		t.Helper()
		c, err := config.Parse([]byte(s))
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	base := parse(reloadBase)
	for _, tt := range []struct {
		name, from, to string
		hot, restart   []string
	}{
		{"callers listed", "    expect: [spiffe://example.org/backend]\n", "    expect: [spiffe://example.org/backend]\n    callers: {uids: [1001]}\n",
			[]string{"outbound[0].callers.uids"}, nil},
		{"allow_non_loopback", "    expect: [spiffe://example.org/backend]\n", "    expect: [spiffe://example.org/backend]\n    allow_non_loopback: true\n",
			nil, []string{"outbound[0].allow_non_loopback"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if !strings.Contains(reloadBase, tt.from) {
				t.Fatalf("%q not in the file", tt.from)
			}
			hot, restart := config.Diff(base, parse(strings.Replace(reloadBase, tt.from, tt.to, 1)))
			if diff := cmp.Diff(tt.hot, hot); diff != "" {
				t.Errorf("hot (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tt.restart, restart); diff != "" {
				t.Errorf("restart (-want +got):\n%s", diff)
			}
		})
	}
}
