package bench

import (
	"fmt"
	"slices"
	"strings"
)

// Topology ids: the short names -topologies takes, one per topology of the
// mesh, and the prefix of the profile files of its sidecars.
const (
	idT0           = "T0"
	idT1           = "T1"
	idT2           = "T2"
	idT3X25519     = "T3-X25519"
	idT3MLKEM      = "T3-X25519MLKEM768"
	idT3P256MLKEM  = "T3-SecP256r1MLKEM768"
	idT3q          = "T3q"
	idT3h          = "T3h"
	idT3hGRPC      = "T3h-grpc"
	idT3hJWT       = "T3h-jwt"
	idT3Awake      = "T3-awake"
	idT3hAwake     = "T3h-awake"
	idT4           = "T4"
	idT5           = "T5"
	idT5h          = "T5h"
	topologyGroupT = "T3" // the three T3 key-exchange variants
)

// TopologyIDs lists the mesh's topologies by id, in the order they run.
var TopologyIDs = []string{idT0, idT1, idT2, idT3X25519, idT3MLKEM, idT3P256MLKEM, idT3q, idT3h, idT3hGRPC, idT3hJWT, idT3Awake, idT3hAwake, idT4, idT5, idT5h}

// Scenario ids: the mesh's scenarios, in the order they run. rpc-http1 is
// 1 KB HTTP/1.1 at a fixed rate (4 and 16 connections), rpc-grpc gRPC
// unary calls; both record results under the scenario "rpc".
const (
	scBulk      = "bulk"
	scPingPong  = "ping-pong"
	scHandshake = "handshake"
	scRPCHTTP1  = "rpc-http1"
	scRPCGRPC   = "rpc-grpc"
	scRotation  = "rotation"
	scScale     = "scale"
	scRPC       = "rpc" // both RPC scenarios
)

// ScenarioIDs lists the mesh's scenarios by id, in the order they run.
var ScenarioIDs = []string{scBulk, scPingPong, scHandshake, scRPCHTTP1, scRPCGRPC, scRotation, scScale}

// Selection is what a mesh run covers: topologies and scenarios by id. A
// nil list is every one.
type Selection struct {
	Topologies []string
	Scenarios  []string
}

// ParseSelection parses the comma-separated lists of -topologies and
// -scenarios. Ids are matched without regard to case; "T3" stands for the
// three T3 key-exchange variants and "rpc" for rpc-http1 and rpc-grpc. An
// empty list selects everything; an unknown id is an error that lists the
// valid ones.
func ParseSelection(topologies, scenarios string) (Selection, error) {
	var s Selection
	var err error
	if s.Topologies, err = parseIDs("topology", topologies, TopologyIDs,
		map[string][]string{topologyGroupT: {idT3X25519, idT3MLKEM, idT3P256MLKEM}}); err != nil {
		return Selection{}, err
	}
	if s.Scenarios, err = parseIDs("scenario", scenarios, ScenarioIDs,
		map[string][]string{scRPC: {scRPCHTTP1, scRPCGRPC}}); err != nil {
		return Selection{}, err
	}
	return s, nil
}

// parseIDs returns the ids of list, in valid's order, each once; nil for
// an empty list.
func parseIDs(what, list string, valid []string, groups map[string][]string) ([]string, error) {
	picked := map[string]bool{}
	for item := range strings.SplitSeq(list, ",") {
		item = strings.TrimSpace(item)
		if item == "" {
			continue
		}
		found := false
		for g, ids := range groups {
			if strings.EqualFold(item, g) {
				for _, id := range ids {
					picked[id] = true
				}
				found = true
			}
		}
		for _, id := range valid {
			if strings.EqualFold(item, id) {
				picked[id] = true
				found = true
			}
		}
		if !found {
			var names []string
			for g, ids := range groups {
				names = append(names, fmt.Sprintf("%s (%s)", g, strings.Join(ids, ", ")))
			}
			slices.Sort(names)
			return nil, fmt.Errorf("bench: unknown %s %q; valid: %s; or %s", what, item, strings.Join(valid, ", "), strings.Join(names, ", "))
		}
	}
	if len(picked) == 0 {
		return nil, nil
	}
	var out []string
	for _, id := range valid {
		if picked[id] {
			out = append(out, id)
		}
	}
	return out, nil
}

// topology reports whether the topology id is selected.
func (s Selection) topology(id string) bool {
	return s.Topologies == nil || slices.Contains(s.Topologies, id)
}

// scenario reports whether the scenario id is selected.
func (s Selection) scenario(id string) bool {
	return s.Scenarios == nil || slices.Contains(s.Scenarios, id)
}

// String describes the selection, "all" for what is not narrowed.
func (s Selection) String() string {
	list := func(ids []string) string {
		if ids == nil {
			return "all"
		}
		return strings.Join(ids, ", ")
	}
	return "topologies: " + list(s.Topologies) + "; scenarios: " + list(s.Scenarios)
}
