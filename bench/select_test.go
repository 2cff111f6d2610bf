package bench

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestParseSelection(t *testing.T) {
	for _, tc := range []struct {
		name                   string
		topologies, scenarios  string
		wantTops, wantScens    []string
		wantErr                string
		selected, notSelected  string // a topology id each, checked with Selection.topology
		scenario, notScenarios string // a scenario id each
	}{
		{name: "empty is everything", selected: idT5h, scenario: scScale},
		{name: "lists, in run order", topologies: "T3h,T0", scenarios: "rpc-grpc,bulk",
			wantTops: []string{idT0, idT3h}, wantScens: []string{scBulk, scRPCGRPC},
			selected: idT3h, notSelected: idT3hGRPC, scenario: scRPCGRPC, notScenarios: scRPCHTTP1},
		{name: "T3 is its three groups", topologies: "T3", wantTops: []string{idT3X25519, idT3MLKEM, idT3P256MLKEM},
			selected: idT3MLKEM, notSelected: idT3q},
		{name: "one T3 group", topologies: "T3-X25519MLKEM768", wantTops: []string{idT3MLKEM}, notSelected: idT3X25519},
		{name: "rpc is both RPC scenarios", scenarios: "rpc", wantScens: []string{scRPCHTTP1, scRPCGRPC}, notScenarios: scBulk},
		{name: "case, spaces, repeats and empty items", topologies: " t3H , T5,,T3h", scenarios: "Ping-Pong,",
			wantTops: []string{idT3h, idT5}, wantScens: []string{scPingPong}},
		{name: "the gRPC and JWT variants", topologies: "T3h-jwt,T3h-grpc", wantTops: []string{idT3hGRPC, idT3hJWT}, notSelected: idT3h},
		{name: "unknown topology", topologies: "T3,T6", wantErr: `unknown topology "T6"; valid: T0, T1, T2, T3-X25519,`},
		{name: "unknown scenario", scenarios: "rpc-http2", wantErr: `unknown scenario "rpc-http2"; valid: bulk, ping-pong, handshake, rpc-http1, rpc-grpc, rotation, scale; or rpc (rpc-http1, rpc-grpc)`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, err := ParseSelection(tc.topologies, tc.scenarios)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error %v, want one containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tc.wantTops, s.Topologies); diff != "" {
				t.Errorf("topologies (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tc.wantScens, s.Scenarios); diff != "" {
				t.Errorf("scenarios (-want +got):\n%s", diff)
			}
			if tc.selected != "" && !s.topology(tc.selected) {
				t.Errorf("%s not selected", tc.selected)
			}
			if tc.notSelected != "" && s.topology(tc.notSelected) {
				t.Errorf("%s selected", tc.notSelected)
			}
			if tc.scenario != "" && !s.scenario(tc.scenario) {
				t.Errorf("%s not selected", tc.scenario)
			}
			if tc.notScenarios != "" && s.scenario(tc.notScenarios) {
				t.Errorf("%s selected", tc.notScenarios)
			}
		})
	}
}
