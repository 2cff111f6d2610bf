package config_test

import (
	"strings"
	"testing"
	"time"

	"github.com/credflow/credflow/internal/config"
)

// TestParseConnectionBudgets is S19-1's configuration: timeouts.first_byte
// and the limits of the inbound handshake budget and the outbound reserve,
// with their defaults, and the values refused.
func TestParseConnectionBudgets(t *testing.T) {
	c, err := config.Parse([]byte(valid))
	if err != nil {
		t.Fatal(err)
	}
	if c.FirstByteTimeout != 2*time.Second || c.OutboundReserve != 0 || c.MaxHandshakes != 0 || c.HandshakesPerSource != 0 {
		t.Errorf("defaults: first_byte %v, outbound_reserve %d, max_handshakes %d, handshakes_per_source %d; want 2s and 0 (proxy's defaults)",
			c.FirstByteTimeout, c.OutboundReserve, c.MaxHandshakes, c.HandshakesPerSource)
	}
	with := func(timeouts, limits string) string {
		s := strings.Replace(valid, "timeouts: {handshake: 3s, drain: 1m}", "timeouts: {handshake: 3s, drain: 1m"+timeouts+"}", 1)
		return strings.Replace(s, "limits: {max_connections: 50}", "limits: {max_connections: 50"+limits+"}", 1)
	}
	c, err = config.Parse([]byte(with(", first_byte: 500ms", ", outbound_reserve: 10, max_handshakes: 20, handshakes_per_source: 4")))
	if err != nil {
		t.Fatal(err)
	}
	if c.FirstByteTimeout != 500*time.Millisecond || c.OutboundReserve != 10 || c.MaxHandshakes != 20 || c.HandshakesPerSource != 4 {
		t.Errorf("parsed first_byte %v, outbound_reserve %d, max_handshakes %d, handshakes_per_source %d", c.FirstByteTimeout, c.OutboundReserve, c.MaxHandshakes, c.HandshakesPerSource)
	}
	for _, tc := range []struct{ timeouts, limits, want string }{
		{", first_byte: 5s", "", "timeouts.first_byte: 5s is longer than timeouts.handshake"},
		{"", ", outbound_reserve: 50", "limits.outbound_reserve: 50 leaves no slot"},
		{"", ", outbound_reserve: -1", "limits.outbound_reserve: must be positive"},
		{"", ", max_handshakes: -1", "limits.max_handshakes: must be positive"},
		{"", ", handshakes_per_source: -2", "limits.handshakes_per_source: must be positive"},
	} {
		if _, err := config.Parse([]byte(with(tc.timeouts, tc.limits))); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s%s: %v, want %q", tc.timeouts, tc.limits, err, tc.want)
		}
	}
}
