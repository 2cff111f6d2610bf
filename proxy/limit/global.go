package limit

import (
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// The descriptor entries a global check sends (package rls); the rate
// limit service's configuration keys its limits on them (README, "Global
// limits").
const (
	KeyListener = "listener" // the inbound listener's name
	KeyKind     = "kind"     // KindRequest or KindConnection
	KeyPeer     = "peer"     // the peer's verified SPIFFE ID
	KeyRoute    = "route"    // the name of the HTTP route that allowed the request
)

// The kinds of hits a global check counts.
const (
	KindRequest    = "request"
	KindConnection = "connection"
)

// Global defaults.
const (
	DefaultDomain        = "credflow"
	DefaultGlobalTimeout = 100 * time.Millisecond
)

// FailureMode is what a global check answers when the rate limit service
// cannot: it is unreachable, slow past the timeout, or failing (its Redis
// is down).
type FailureMode uint8

const (
	// FailOpen lets the hit through: the local limits still apply. The
	// default, as Envoy's.
	FailOpen FailureMode = iota
	// FailClosed refuses the hit.
	FailClosed
)

// GlobalConfig is where the shared budget is kept: a rate limit service
// that speaks Envoy's Rate Limit Service API (envoy.service.ratelimit.v3),
// such as github.com/envoyproxy/ratelimit with Redis behind it.
type GlobalConfig struct {
	// Service is the service's gRPC address, host:port, in plain text:
	// to reach one across the network over mTLS, point Service at an
	// outbound listener of this sidecar.
	Service string
	// Domain is the configuration domain of the service the descriptors
	// are looked up in; default DefaultDomain.
	Domain string
	// Timeout bounds one check; default DefaultGlobalTimeout.
	Timeout time.Duration
	// FailureMode is the answer when the service does not give one.
	FailureMode FailureMode
}

// WithDefaults fills in the defaults.
func (c GlobalConfig) WithDefaults() GlobalConfig {
	if c.Domain == "" {
		c.Domain = DefaultDomain
	}
	if c.Timeout <= 0 {
		c.Timeout = DefaultGlobalTimeout
	}
	return c
}

// Hit is one event a global check counts: a request or a new connection
// of a peer on a listener.
type Hit struct {
	Listener string
	Kind     string // KindRequest or KindConnection
	Route    string // a request's named route, or ""
	Peer     spiffeid.ID
}

// Verdict is a global check's answer.
type Verdict struct {
	// OK lets the hit through.
	OK bool
	// RetryAfter, when the budget is spent, is the time until the
	// service's window resets.
	RetryAfter time.Duration
	// Err is why the service gave no answer; OK is then the failure
	// mode's.
	Err error
}
