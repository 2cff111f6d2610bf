// Package logkey holds the attribute keys of every structured log line that
// CredentialFlow writes, so that one name means one thing across packages.
//
// Values logged under these keys are never tokens, private keys or full
// certificates: SPIFFE IDs, trust domains, serial numbers and reasons only.
package logkey

// Attribute keys, in alphabetical order.
const (
	Admin    = "admin"
	Audience = "audience"
	Config   = "config"
	// Credential names a credential source (never its value).
	Credential   = "credential"
	Failures     = "failures"
	Changed      = "changed"
	Fields       = "fields"
	Signal       = "signal"
	Timeout      = "timeout"
	BytesFromApp = "bytes_from_app"
	BytesToApp   = "bytes_to_app"
	Decision     = "decision"
	Direction    = "direction"
	DurationMS   = "duration_ms"
	Group        = "group"
	KeyExchange  = "key_exchange"
	Listener     = "listener"
	Listen       = "listen" // a listener's configured address
	Method       = "method"
	Path         = "path"
	Proto        = "proto"
	Route        = "route" // an HTTP route's name
	Status       = "status"
	PeerID       = "peer_id"
	// ClaimedID is the SPIFFE ID in a certificate that did not verify:
	// what a refused peer claims to be. Only a verified ID is a PeerID.
	ClaimedID    = "claimed_id"
	Resumed      = "resumed"
	TLSVersion   = "tls_version"
	Transport    = "transport"
	Upstream     = "upstream" // an external API's host:port, on an egress listener
	Backoff      = "backoff"
	Entry        = "entry"
	Error        = "error"
	Expiry       = "expiry"
	Reason       = "reason"
	Serial       = "serial"
	SPIFFEID     = "spiffe_id"
	TrustDomain  = "trust_domain"
	TrustDomains = "trust_domains"
	Watch        = "watch"
	Txn          = "txn"
	TokenID      = "jti"
	Issuer       = "issuer"
	UID          = "uid"
	GID          = "gid"
	PID          = "pid"
	TokenType    = "token_type"
	// Entries counts the entries of the revocation list.
	Entries   = "entries"
	File      = "file"      // the path of a file read or watched
	Redis     = "redis"     // a Redis server's address
	Collector = "collector" // an OpenTelemetry collector's host:port

	// Anomaly detection (proxy/anomaly): an event and its evidence.
	Action   = "action"
	Baseline = "baseline"
	Count    = "count"
	Detector = "detector"
	Evidence = "evidence"
	Limit    = "limit"
	Rate     = "rate"
	Since    = "since"
	Subject  = "subject"
	Until    = "until"
	Window   = "window"
)
