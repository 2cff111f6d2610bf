// Package anomaly detects abuse by the peers of an inbound listener as it
// happens and responds to it: it raises an alert, quarantines the peer for
// a while, or asks for the token it used to be revoked.
//
// The proxy calls (*Detector).Observe once for every outcome of a
// connection or a request, with whom it was about (a Subject: the verified
// SPIFFE ID, or the source address when there is none), when, on which
// route, and the refusal reason (empty when allowed). Four detectors, each
// configured on its own and off by default, look at these:
//
//   - refusal_burst: too many access refusals (failed handshakes,
//     unauthorized, route_denied) from one subject in a short time;
//   - token_failures: the same for token refusals (bad_token,
//     token_peer_mismatch, txn_*, external_*);
//   - rate_spike: a subject's request rate far above its own moving
//     baseline;
//   - new_caller: a subject calling a watched route it never called
//     before, once a learning period is over.
//
// A detection is an Event. Its Action says what follows: alert only;
// quarantine, which adds the subject to the Quarantine table the proxy
// consults before admitting anyone; or revoke, which quarantines too and
// hands the offending token's ID to the proxy's OnRevoke callback. Events
// go to Sinks: a structured log line (LogSink), a Prometheus counter
// (Metrics) and an Alertmanager webhook (Webhook). After a detector fires
// for a subject it keeps quiet about that subject for a cooldown, so that
// one attack is one event.
//
// The detectors never read the clock: every decision is a function of the
// observations' times. State is kept per subject in least-recently-used
// caches of bounded size; a subject evicted and seen again starts afresh.
package anomaly

import (
	"time"

	"github.com/credflow/credflow/reason"
)

// Kind is what an observation is the outcome of.
type Kind uint8

// Kinds.
const (
	// Request is an HTTP request or a gRPC call.
	Request Kind = iota
	// Connection is a connection: its handshake and admission.
	Connection
)

// String is "request" or "connection".
func (k Kind) String() string {
	if k == Connection {
		return "connection"
	}
	return "request"
}

// Observation is the outcome of one connection or request.
type Observation struct {
	// Subject is whom it was about; observations of the zero Subject are
	// ignored.
	Subject Subject
	// Time is when it happened. The detectors use it as their only clock.
	Time time.Time
	// Kind is whether it was a connection or a request.
	Kind Kind
	// Route names the route (or the canonical path pattern) of a request,
	// or the listener of a connection; empty when there is none.
	Route string
	// Reason is why it was refused; empty when it was allowed.
	Reason reason.Reason
	// JTI is the ID of the transaction token the request carried, when
	// the caller knows it. It is only ever handed to OnRevoke: never
	// logged, never sent to a sink.
	JTI string
}

// Action is what a detection does.
type Action string

// Actions, in increasing order of severity. Each does what the ones before
// it do.
const (
	// ActionNone is no detection; Observe returns it when nothing fired.
	ActionNone Action = ""
	// ActionAlert reports the event to the sinks.
	ActionAlert Action = "alert"
	// ActionQuarantine also refuses the subject until the event's Until:
	// it is added to the Quarantine.
	ActionQuarantine Action = "quarantine"
	// ActionRevoke also asks for the token of the observation that fired
	// to be revoked, through Options.OnRevoke.
	ActionRevoke Action = "revoke"
)

// severity orders actions; -1 is an action this package does not know.
func (a Action) severity() int {
	switch a {
	case ActionNone:
		return 0
	case ActionAlert:
		return 1
	case ActionQuarantine:
		return 2
	case ActionRevoke:
		return 3
	}
	return -1
}

// quarantines reports whether a puts the subject in quarantine.
func (a Action) quarantines() bool { return a.severity() >= 2 }

// Rule names a detector; it is the detector label of metrics and alerts.
type Rule string

// The detectors.
const (
	RefusalBurst  Rule = "refusal_burst"
	TokenFailures Rule = "token_failures"
	RateSpike     Rule = "rate_spike"
	NewCaller     Rule = "new_caller"
)

// rule indices, in the order of rules.
const (
	iRefusal = iota
	iToken
	iSpike
	iNovel
	numRules
)

var rules = [numRules]Rule{RefusalBurst, TokenFailures, RateSpike, NewCaller}

// Event is one detection.
type Event struct {
	// Detector is the detector that fired.
	Detector Rule
	// Subject is whom it fired about.
	Subject Subject
	// Action is the detector's configured action.
	Action Action
	// Time is the time of the observation that fired it.
	Time time.Time
	// Until is the end of the quarantine for ActionQuarantine and
	// ActionRevoke, zero for ActionAlert.
	Until time.Time
	// Evidence is what the detector saw.
	Evidence Evidence
}

// Evidence is what a detector saw when it fired. Fields that do not apply
// to the detector are zero.
type Evidence struct {
	// Count is, for refusal_burst and token_failures, the refusals of the
	// detector's class since Since (since the subject's bucket was last
	// full); for rate_spike, the requests so far in the current interval.
	Count int
	// Limit is, for refusal_burst and token_failures, the configured
	// Count: more than Limit refusals within Window fire.
	Limit int
	// Since is, for refusal_burst and token_failures, the time of the
	// first refusal counted; for rate_spike, the start of the interval.
	Since time.Time
	// Window is the configured Window (refusal_burst, token_failures) or
	// Interval (rate_spike).
	Window time.Duration
	// Rate is, for rate_spike, the current interval's rate so far, per
	// second.
	Rate float64
	// Baseline is, for rate_spike, the subject's moving baseline rate per
	// second before this interval.
	Baseline float64
	// Route is the route of the observation that fired.
	Route string
	// Reason is the reason of the observation that fired; empty when it
	// was allowed.
	Reason reason.Reason
}
