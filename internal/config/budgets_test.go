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
		{", park: -1s", "", "timeouts.park"},
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

// TestParseTokenIssuanceLimits is S19-2's configuration: the token
// endpoint's issuance limits per caller, absent (exchange's defaults),
// set, and refused when negative.
func TestParseTokenIssuanceLimits(t *testing.T) {
	const base = "token_endpoint:\n  listen: 127.0.0.1:15080\n  audiences: [spiffe://example.org/backend]\n"
	c, err := config.Parse([]byte(base + listener))
	if err != nil {
		t.Fatal(err)
	}
	if te := c.TokenEndpoint; te.NewAudienceRate != 0 || te.NewAudienceBurst != 0 || te.MaxAudiences != 0 {
		t.Errorf("absent: %+v, want zeros (exchange's defaults)", te)
	}
	c, err = config.Parse([]byte(base + "  new_audience_rate: 0.5\n  new_audience_burst: 3\n  max_audiences: 40\n" + listener))
	if err != nil {
		t.Fatal(err)
	}
	if te := c.TokenEndpoint; te.NewAudienceRate != 0.5 || te.NewAudienceBurst != 3 || te.MaxAudiences != 40 {
		t.Errorf("set: %+v", te)
	}
	for field, want := range map[string]string{
		"new_audience_rate: -1":  "token_endpoint.new_audience_rate: must be a positive number",
		"new_audience_burst: -1": "token_endpoint.new_audience_burst: must be positive",
		"max_audiences: -5":      "token_endpoint.max_audiences: must be positive",
		"new_audience_rat: 1":    "new_audience_rat",
	} {
		if _, err := config.Parse([]byte(base + "  " + field + "\n" + listener)); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v, want %q", field, err, want)
		}
	}
}

// TestParsePark: timeouts.park absent leaves the data plane's default (0),
// a duration is taken as is, and 0 turns parking off (negative for the
// data plane).
func TestParsePark(t *testing.T) {
	for _, tc := range []struct {
		park string
		want time.Duration
	}{
		{"", 0},
		{", park: 30s", 30 * time.Second},
		{", park: 0", -1},
		{", park: 0s", -1},
	} {
		c, err := config.Parse([]byte(strings.Replace(valid, "timeouts: {handshake: 3s, drain: 1m}", "timeouts: {handshake: 3s, drain: 1m"+tc.park+"}", 1)))
		if err != nil {
			t.Fatalf("%q: %v", tc.park, err)
		}
		if c.ParkAfter != tc.want {
			t.Errorf("%q: ParkAfter %v, want %v", tc.park, c.ParkAfter, tc.want)
		}
	}
}
