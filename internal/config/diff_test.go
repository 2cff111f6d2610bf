package config_test

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/credflow/credflow/internal/config"
)

const reloadBase = `
admin: 127.0.0.1:15000
timeouts: {idle: 1h}
limits: {max_connections: 100}
inbound:
  - name: api
    listen: 127.0.0.1:15006
    app: 127.0.0.1:8080
    protocol: http
    allow: [spiffe://example.org]
    routes:
      - {peers: [spiffe://example.org/frontend], methods: [GET], paths: [/api/*]}
    jwt: {require: true}
outbound:
  - name: backend
    listen: 127.0.0.1:15001
    upstream: backend:15006
    expect: [spiffe://example.org/backend]
`

// TestDiff: a reload compares the running file and the new one field by
// field. Policies, routes and token settings of listeners can change while
// running; every other field that changed is named as needing a restart,
// fields added to the file later included.
func TestDiff(t *testing.T) {
	tests := []struct {
		name         string
		edits        [][2]string
		hot, restart []string
	}{
		{"nothing", nil, nil, nil},
		{"allow and expect", [][2]string{{"allow: [spiffe://example.org]", "allow: [spiffe://example.org/frontend]"},
			{"expect: [spiffe://example.org/backend]", "expect: [spiffe://example.org/backend2]"}},
			[]string{"inbound[0].allow", "outbound[0].expect"}, nil},
		{"a route revoked", [][2]string{{"paths: [/api/*]", "paths: [/health]"}}, []string{"inbound[0].routes[0].paths"}, nil},
		{"a route added", [][2]string{{"    jwt:", "      - {peers: [spiffe://example.org/admin], paths: [/admin/*]}\n    jwt:"}},
			[]string{"inbound[0].routes[1].peers", "inbound[0].routes[1].paths"}, nil},
		{"token settings", [][2]string{{"jwt: {require: true}", "jwt: {require: true, pass: true, header: X-Token}\n    txn_token: {minters: [spiffe://example.org/edge]}\n    case_insensitive_paths: true"}},
			[]string{"inbound[0].case_insensitive_paths", "inbound[0].jwt.header", "inbound[0].jwt.pass", "inbound[0].txn_token.minters"}, nil},
		{"timeouts and limits", [][2]string{{"idle: 1h", "idle: 2h"}, {"max_connections: 100", "max_connections: 200"}},
			nil, []string{"timeouts.idle", "limits.max_connections"}},
		// Fields compare as written: one set to its default, or removed
		// when it held the default, changed all the same.
		{"written defaults", [][2]string{{"admin: 127.0.0.1:15000\n", "admin: 127.0.0.1:15000\ntimeouts: {drain: 30s}\n"}, {"timeouts: {idle: 1h}\n", ""}},
			nil, []string{"timeouts.idle", "timeouts.drain"}},
		{"mixed: nothing applies", [][2]string{{"paths: [/api/*]", "paths: [/health]"}, {"app: 127.0.0.1:8080", "app: 127.0.0.1:8081"}},
			[]string{"inbound[0].routes[0].paths"}, []string{"inbound[0].app"}},
		{"a listener added", [][2]string{{"outbound:\n", "outbound:\n  - {name: b2, listen: 127.0.0.1:15002, upstream: b:1, expect: [spiffe://example.org/b]}\n"}},
			[]string{"outbound[0].expect"}, []string{"outbound[0].name", "outbound[0].listen", "outbound[0].upstream", "outbound[1]"}},
		{"a section added", [][2]string{{"admin:", "quic: {max_streams: 10}\nadmin:"}, {"limits: {max_connections: 100}\n", ""}},
			nil, []string{"limits.max_connections", "quic.max_streams"}},
		{"protocol", [][2]string{{"    protocol: http\n", "    protocol: http\n    app_protocol: h2c\n"}}, nil, []string{"inbound[0].app_protocol"}},
	}
	old, err := config.Parse([]byte(reloadBase))
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			file := reloadBase
			for _, e := range tt.edits {
				if !strings.Contains(file, e[0]) {
					t.Fatalf("%q not in the file", e[0])
				}
				file = strings.Replace(file, e[0], e[1], 1)
			}
			next, err := config.Parse([]byte(file))
			if err != nil {
				t.Fatal(err)
			}
			hot, restart := config.Diff(old, next)
			if diff := cmp.Diff(tt.hot, hot); diff != "" {
				t.Errorf("hot (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tt.restart, restart); diff != "" {
				t.Errorf("restart (-want +got):\n%s", diff)
			}
		})
	}
}
