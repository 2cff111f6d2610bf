package config

import (
	"reflect"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// TestDiffNewFields: a field the hot-reload list does not name (here an
// field of route rules added after it was written) needs a
// restart, alone or in a route added whole. ("mirror" stands for a field
// added to route rules after the list was written.)
func TestDiffNewFields(t *testing.T) {
	type rule struct {
		Peers  []string `yaml:"peers"`
		Mirror []string `yaml:"mirror"`
	}
	type listener struct {
		Routes []rule `yaml:"routes"`
	}
	type shape struct {
		Inbound []listener `yaml:"inbound"`
	}
	old := shape{Inbound: []listener{{Routes: []rule{{Peers: []string{"a"}}}}}}
	for _, tc := range []struct {
		name         string
		next         shape
		hot, restart []string
	}{
		{"changed", shape{Inbound: []listener{{Routes: []rule{{Peers: []string{"b"}, Mirror: []string{"x"}}}}}},
			[]string{"inbound[0].routes[0].peers"}, []string{"inbound[0].routes[0].mirror"}},
		{"in a new route", shape{Inbound: []listener{{Routes: []rule{{Peers: []string{"a"}}, {Peers: []string{"b"}, Mirror: []string{"x"}}}}}},
			nil, []string{"inbound[0].routes[1]"}},
		{"a new route without it", shape{Inbound: []listener{{Routes: []rule{{Peers: []string{"a"}}, {Peers: []string{"b"}}}}}},
			[]string{"inbound[0].routes[1].peers"}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var changed, hot, restart []string
			diffValue("", reflect.ValueOf(old), reflect.ValueOf(tc.next), &changed)
			for _, p := range changed {
				if isHot(p) {
					hot = append(hot, p)
				} else {
					restart = append(restart, p)
				}
			}
			if d := cmp.Diff(tc.hot, hot); d != "" {
				t.Errorf("hot (-want +got):\n%s", d)
			}
			if d := cmp.Diff(tc.restart, restart); d != "" {
				t.Errorf("restart (-want +got):\n%s", d)
			}
		})
	}
}
