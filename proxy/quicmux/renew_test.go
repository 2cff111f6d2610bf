package quicmux

import (
	"testing"
	"time"
)

// TestRenewAt: a connection is replaced after 80% of the time left until
// its first certificate expiry.
func TestRenewAt(t *testing.T) {
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for _, c := range []struct{ left, want time.Duration }{
		{time.Hour, 48 * time.Minute},
		{10 * time.Second, 8 * time.Second},
		{0, 0},
		{-time.Minute, -48 * time.Second}, // already expired: due at once
	} {
		if got := renewAt(now.Add(c.left), now).Sub(now); got != c.want {
			t.Errorf("%s left: renewed after %s, want %s", c.left, got, c.want)
		}
	}
}

// TestLimitsDefaults: the zero Limits select the documented defaults.
func TestLimitsDefaults(t *testing.T) {
	c := Limits{}.Config()
	if c.MaxIncomingStreams != DefaultMaxStreams || c.HandshakeIdleTimeout != DefaultHandshakeTimeout ||
		c.MaxIdleTimeout != DefaultIdleTimeout || c.KeepAlivePeriod != DefaultIdleTimeout/3 ||
		c.InitialStreamReceiveWindow != DefaultStreamWindow || c.MaxStreamReceiveWindow != 8*DefaultStreamWindow ||
		c.InitialConnectionReceiveWindow != DefaultConnWindow || c.MaxConnectionReceiveWindow != 8*DefaultConnWindow ||
		c.Allow0RTT || c.MaxIncomingUniStreams != -1 {
		t.Fatalf("Limits{}.Config() = %+v", c)
	}
	if l := (Limits{}).withDefaults(); l.HandshakeRate != DefaultHandshakeRate {
		t.Fatalf("default handshake rate %v", l.HandshakeRate)
	}
}
