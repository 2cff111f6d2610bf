package config_test

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/credflow/credflow/internal/config"
	"github.com/credflow/credflow/internal/peercred"
)

const listener = "outbound:\n  - {name: b, listen: 127.0.0.1:15001, upstream: b:1, expect: [spiffe://example.org/b]}\n"

func TestParseTokenEndpoint(t *testing.T) {
	tests := []struct {
		name, yaml string
		want       *config.TokenEndpoint
	}{
		{"absent", "", nil},
		{"empty address", "token_endpoint: \"\"\n", nil},
		{"TCP, callers and audiences", `
token_endpoint:
  listen: 127.0.0.1:15080
  callers: {uids: [1001, 0]}
  audiences: [spiffe://example.org/backend, vault]
`, &config.TokenEndpoint{Network: "tcp", Address: "127.0.0.1:15080", SocketGroup: -1,
			Callers: peercred.Callers{UIDs: []uint32{1001, 0}}, Audiences: []string{"spiffe://example.org/backend", "vault"}}},
		{"unix socket with a group", `
token_endpoint:
  listen: unix:///run/credflow/token.sock
  socket_group: 2000
  callers: {uids: [1001], gids: [2000]}
  audiences: ["*"]
`, &config.TokenEndpoint{Network: "unix", Address: "/run/credflow/token.sock", SocketGroup: 2000,
			Callers: peercred.Callers{UIDs: []uint32{1001}, GIDs: []uint32{2000}}, Audiences: []string{"*"}}},
		{"plain address with an edge section: transaction tokens only", "token_endpoint: localhost:15080\n" + edgeConfig,
			&config.TokenEndpoint{Network: "tcp", Address: "localhost:15080", SocketGroup: -1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			file := tt.yaml + listener
			if strings.Contains(tt.yaml, "edge:") {
				file = tt.yaml
			}
			c, err := config.Parse([]byte(file))
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.want, c.TokenEndpoint); diff != "" {
				t.Fatalf("TokenEndpoint (-want +got):\n%s", diff)
			}
		})
	}
}

func TestParseTokenEndpointErrors(t *testing.T) {
	tests := []struct{ name, yaml, want string }{
		{"plain address, no audiences: the old form no longer serves every audience", "token_endpoint: 127.0.0.1:15080\n",
			`token_endpoint.audiences: required: the audiences this workload's JWT-SVIDs may be issued for (token_endpoint: {listen: 127.0.0.1:15080, audiences: [spiffe://example.org/backend]}; "*" allows every audience)`},
		{"mapping without listen", "token_endpoint: {audiences: [a]}\n", "token_endpoint.listen: required"},
		{"not on loopback", "token_endpoint: {listen: 0.0.0.0:15080, audiences: [a]}\n", "token_endpoint.listen: \"0.0.0.0:15080\": must be a loopback address"},
		{"a pod IP", "token_endpoint: {listen: 10.1.2.3:15080, audiences: [a]}\n", "token_endpoint.listen"},
		{"clash with admin", "admin: 127.0.0.1:15000\ntoken_endpoint: {listen: 127.0.0.1:15000, audiences: [a]}\n", "clashes with admin"},
		{"clash with a listener", "token_endpoint: {listen: 127.0.0.1:15001, audiences: [a]}\n", "outbound[0].listen: 127.0.0.1:15001 clashes with token_endpoint"},
		{"relative socket path", "token_endpoint: {listen: unix://token.sock, audiences: [a]}\n", "must be absolute"},
		{"long socket path", "token_endpoint: {listen: unix:///" + strings.Repeat("x", 120) + ", audiences: [a]}\n", "at most 107 bytes"},
		{"socket_group on TCP", "token_endpoint: {listen: 127.0.0.1:15080, socket_group: 5, audiences: [a]}\n", "token_endpoint.socket_group: only applies to a unix://"},
		{"gids on TCP", "token_endpoint: {listen: 127.0.0.1:15080, callers: {gids: [5]}, audiences: [a]}\n", "token_endpoint.callers.gids: a TCP caller has no group"},
		{"negative uid", "token_endpoint: {listen: 127.0.0.1:15080, callers: {uids: [-1]}, audiences: [a]}\n", "token_endpoint.callers.uids[0]: -1 is not a uid"},
		{"uid (uid_t)-1", "token_endpoint: {listen: 127.0.0.1:15080, callers: {uids: [4294967295]}, audiences: [a]}\n", "token_endpoint.callers.uids[0]"},
		{"user name for a uid", "token_endpoint: {listen: 127.0.0.1:15080, callers: {uids: [alice]}, audiences: [a]}\n", "token_endpoint.callers.uids[0]: \"alice\" is not a whole number"},
		{"bad gid", "token_endpoint: {listen: unix:///run/t.sock, callers: {gids: [-3]}, audiences: [a]}\n", "token_endpoint.callers.gids[0]"},
		{"empty audience", "token_endpoint: {listen: 127.0.0.1:15080, audiences: [a, \"\"]}\n", "token_endpoint.audiences[1]: empty"},
		{"unknown field", "token_endpoint: {listen: 127.0.0.1:15080, audience: [a]}\n", "token_endpoint.audience: unknown field (did you mean audiences?)"},
		{"unknown callers field", "token_endpoint: {listen: 127.0.0.1:15080, callers: {users: [1]}, audiences: [a]}\n", "token_endpoint.callers.users: unknown field"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := config.Parse([]byte(tt.yaml + listener))
			if err == nil {
				t.Fatalf("parsed: %+v", c.TokenEndpoint)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error %q does not contain %q", err, tt.want)
			}
		})
	}
}
