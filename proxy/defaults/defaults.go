// Package defaults declares the data plane's default timeouts and
// connection budget, once: proxy applies them to the zero fields of its
// Config, and the configuration (internal/config) reads them where a rule
// compares a field with another's effective value (timeouts.first_byte
// within timeouts.handshake, limits.outbound_reserve within
// limits.max_connections) or names a default in an error. It imports
// nothing, so the configuration stays a leaf.
package defaults

import "time"

// Timeouts.
const (
	HandshakeTimeout   = 10 * time.Second
	DialTimeout        = 5 * time.Second
	IdleTimeout        = time.Hour
	FirstByteTimeout   = 2 * time.Second
	RevalidateInterval = 5 * time.Second
)

// The connection budget.
const (
	MaxConnections      = 10000
	MaxHandshakes       = 256
	HandshakesPerSource = 32
)
