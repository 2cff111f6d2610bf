// Package reason is the one list of why the sidecar refused a peer, a
// caller or a request, closed a connection, or could not do its job. Each
// reason is a stable, machine-readable word: it is the value of the
// `reason` field of access-log lines, the `reason` label of the refusal
// and closure metrics, the X-Credflow-Reason response header and the end of
// a gRPC status message. Its Info says how each transport tells it: the
// HTTP status, the gRPC code and the TLS alert.
//
// A new reason goes in the constants below and in the table; the package's
// test fails if one is missing from either.
package reason

import (
	"errors"
	"net/http"
	"slices"

	"google.golang.org/grpc/codes"
)

// Reason is why something was refused, closed or failed.
type Reason string

// Handshakes: the peer's X.509-SVID and the connection's security.
const (
	NoPeerCert       Reason = "no_peer_cert"      // the peer presented no certificate
	InvalidSVID      Reason = "invalid_svid"      // the certificate is not an X.509-SVID
	BadEKU           Reason = "bad_eku"           // the certificate may not be used for this side of TLS
	Untrusted        Reason = "untrusted"         // the chain does not verify against its trust domain's bundle
	Expired          Reason = "expired"           // the peer's certificate has expired
	NotYetValid      Reason = "not_yet_valid"     // the peer's certificate is not valid yet
	Unauthorized     Reason = "unauthorized"      // a verified peer the policy does not allow
	PQRequired       Reason = "pq_required"       // a classical key exchange where a hybrid one is required
	NoSVIDYet        Reason = "no_svid_yet"       // this side has no valid SVID to present
	HandshakeFailed  Reason = "handshake_failed"  // not TLS, or TLS that failed for another cause
	HandshakeTimeout Reason = "handshake_timeout" // the handshake did not finish in time
	PeerRefused      Reason = "peer_refused"      // the peer refused this side's certificate
	Timeout          Reason = "timeout"           // a QUIC attempt that timed out (the call falls back to TCP)
)

// Admission: connections turned away before or at their handshake.
const (
	Limit                 Reason = "limit"                   // max_connections reached
	SourceLimit           Reason = "source_limit"            // one source address holds its share of handshakes
	HandshakeLimit        Reason = "handshake_limit"         // max_handshakes in progress
	FDLimit               Reason = "fd_limit"                // no file descriptor left
	StreamLimit           Reason = "stream_limit"            // a QUIC connection's stream limit
	FirstByteTimeout      Reason = "first_byte_timeout"      // the client sent nothing in time
	RecentlyFailed        Reason = "recently_failed"         // the upstream failed a moment ago; not retried yet
	NoOriginalDestination Reason = "no_original_destination" // a captured connection whose destination is unknown
	BadStreamHeader       Reason = "bad_stream_header"       // a QUIC stream that does not start with its header
	CallerNotAllowed      Reason = "caller_not_allowed"      // a local process that is not one of the callers
	CallerUnknown         Reason = "caller_unknown"          // a local process whose user the kernel cannot name
)

// Closures: established connections the sidecar ends.
const (
	PolicyRevoked Reason = "policy_revoked" // the policy no longer allows the peer
	PeerExpired   Reason = "peer_expired"   // the peer's certificate expired (close_on_peer_expiry)
	MaxAge        Reason = "max_age"        // the connection reached max_connection_age
	RapidReset    Reason = "rapid_reset"    // an HTTP/2 peer that resets streams as fast as it opens them
)

// The app and the upstream.
const (
	AppUnavailable      Reason = "app_unavailable"      // the app refused or dropped the connection
	AppBusy             Reason = "app_busy"             // app_connections are all in use
	AppTimeout          Reason = "app_timeout"          // the app did not answer in app_response_timeout
	AppBadUpgrade       Reason = "app_bad_upgrade"      // the app switched protocols unasked
	ClientCanceled      Reason = "client_canceled"      // the caller went away before the answer
	UpstreamUnavailable Reason = "upstream_unavailable" // the upstream could not be reached
	NoIdentity          Reason = "no_identity"          // the Workload API has no identity for this workload
)

// HTTP requests.
const (
	HostMismatch        Reason = "host_mismatch"         // an HTTP/2 Host header that differs from :authority
	BadConnectionHeader Reason = "bad_connection_header" // a Connection header naming a managed header
	BadPath             Reason = "bad_path"              // a path that does not normalize
	RouteDenied         Reason = "route_denied"          // no route allows the peer this method and path
	UpgradeDenied       Reason = "upgrade_denied"        // no route allows this protocol upgrade
	HeaderTimeout       Reason = "header_timeout"        // no request header in time
)

// JWT-SVIDs on requests.
const (
	MissingToken      Reason = "missing_token"       // no JWT-SVID where one is required
	BadToken          Reason = "bad_token"           // a JWT-SVID that does not verify
	TokenExpired      Reason = "token_expired"       // an expired JWT-SVID
	TokenNotYetValid  Reason = "token_not_yet_valid" // a JWT-SVID not valid yet
	TokenPeerMismatch Reason = "token_peer_mismatch" // a JWT-SVID whose subject is not the mTLS peer
	NoToken           Reason = "no_token"            // no JWT-SVID to attach from the Workload API
)

// External tokens presented at the edge.
const (
	ExternalMissing       Reason = "external_missing"        // no bearer token
	ExternalMalformed     Reason = "external_malformed"      // not a compact JWS, or too large
	ExternalBadAlg        Reason = "external_bad_alg"        // an algorithm the issuer may not use
	ExternalBadHeader     Reason = "external_bad_header"     // a JOSE header that does not pass
	ExternalUnknownIssuer Reason = "external_unknown_issuer" // an issuer that is not trusted
	ExternalUnknownKey    Reason = "external_unknown_key"    // a key the issuer's JWKS does not hold
	ExternalBadSignature  Reason = "external_bad_signature"  // a signature that does not verify
	ExternalExpired       Reason = "external_expired"        // expired, or not valid yet
	ExternalWrongAudience Reason = "external_wrong_audience" // not meant for this service
	ExternalBadClaims     Reason = "external_bad_claims"     // claims that do not parse or pass
	NoExchanger           Reason = "no_exchanger"            // no transaction-token minter is configured
)

// Transaction tokens.
const (
	TxnMissing         Reason = "txn_missing"           // no transaction token where one is required
	TxnMalformed       Reason = "txn_malformed"         // not a compact JWS, or too large
	TxnBadHeader       Reason = "txn_bad_header"        // a JOSE header that does not pass
	TxnBadSignature    Reason = "txn_bad_signature"     // a signature that does not verify
	TxnBadClaims       Reason = "txn_bad_claims"        // claims that do not parse or pass
	TxnBadChain        Reason = "txn_bad_chain"         // the signer's chain does not verify
	TxnExpired         Reason = "txn_expired"           // expired, or not valid yet
	TxnWrongAudience   Reason = "txn_wrong_audience"    // minted for another audience
	TxnNotMinter       Reason = "txn_not_minter"        // signed by a workload that may not mint
	TxnReplayed        Reason = "txn_replayed"          // a single-use token presented again
	TxnReplayCacheFull Reason = "txn_replay_cache_full" // the replay cache cannot take another token
	TxnMintFailed      Reason = "txn_mint_failed"       // this side could not mint one
)

// Rate limits of inbound listeners.
const (
	RateLimited      Reason = "rate_limited"      // a peer identity past its limit, or the listener past its total
	LimitUnavailable Reason = "limit_unavailable" // the global rate limit service gave no answer, and its failure mode is deny
)

// Abuse answered and operators' revocations: a peer refused, and its
// established connections closed.
const (
	Quarantined Reason = "quarantined" // a peer identity or source address in quarantine on this sidecar
	Revoked     Reason = "revoked"     // a peer identity or certificate serial on the deny list
	TxnRevoked  Reason = "txn_revoked" // a transaction token whose jti is on the deny list
)

// Credentials the sidecar injects on egress listeners.
const (
	CredentialUnavailable Reason = "credential_unavailable" // no valid credential to inject
	AppCredential         Reason = "app_credential"         // the app sent a credential where the sidecar injects one
	UpstreamUntrusted     Reason = "upstream_untrusted"     // an external server whose certificate does not verify
	TraceRefused          Reason = "trace_refused"          // a TRACE request, which would echo the injected credential
)

// The local token endpoint.
const (
	BadHost            Reason = "bad_host"        // a Host header that is not loopback
	InvalidRequest     Reason = "invalid_request" // a request the endpoint does not accept
	UnsupportedGrant   Reason = "unsupported_grant_type"
	AudienceNotAllowed Reason = "audience_not_allowed" // an audience not in token_endpoint.audiences
	TokenRateLimited   Reason = "token_rate_limited"   // a caller asking for new audiences too fast
)

// The Workload API: why this side has no usable identity.
const (
	Starting         Reason = "starting"          // no SVID received yet
	AgentUnavailable Reason = "agent_unavailable" // the Workload API socket cannot be reached
	StreamEnded      Reason = "stream_ended"      // the Workload API closed a watch stream
	BadResponse      Reason = "bad_response"      // an answer that does not parse
	APIError         Reason = "api_error"         // any other Workload API error
	SVIDExpired      Reason = "svid_expired"      // this side's SVID expired and no newer one came
	Closed           Reason = "closed"            // the source has stopped
)

// TLS alerts (RFC 8446, section 6.2) the table refers to.
const (
	alertBadCertificate         uint8 = 42
	alertUnsupportedCertificate uint8 = 43
	alertCertificateExpired     uint8 = 45
	alertUnknownCA              uint8 = 48
	alertAccessDenied           uint8 = 49
	alertInsufficientSecurity   uint8 = 71
	alertCertificateRequired    uint8 = 116
)

// Info is how a reason is told to whoever was refused.
type Info struct {
	// Status is the HTTP status of a refused request.
	Status int
	// Code is the gRPC status of a refused gRPC call.
	Code codes.Code
	// Alert is the TLS alert of a refused handshake, 0 where the reason
	// is not one.
	Alert uint8
}

var (
	forbidden   = Info{Status: http.StatusForbidden, Code: codes.PermissionDenied}
	badRequest  = Info{Status: http.StatusBadRequest, Code: codes.InvalidArgument}
	unauth      = Info{Status: http.StatusUnauthorized, Code: codes.Unauthenticated}
	badGateway  = Info{Status: http.StatusBadGateway, Code: codes.Unavailable}
	unavailable = Info{Status: http.StatusServiceUnavailable, Code: codes.Unavailable}
	tooMany     = Info{Status: http.StatusTooManyRequests, Code: codes.ResourceExhausted}
	timeout     = Info{Status: http.StatusGatewayTimeout, Code: codes.DeadlineExceeded}
)

func handshake(alert uint8) Info {
	return Info{Status: http.StatusForbidden, Code: codes.PermissionDenied, Alert: alert}
}

var table = map[Reason]Info{
	NoPeerCert:       handshake(alertCertificateRequired),
	InvalidSVID:      handshake(alertBadCertificate),
	BadEKU:           handshake(alertUnsupportedCertificate),
	Untrusted:        handshake(alertUnknownCA),
	Expired:          handshake(alertCertificateExpired),
	NotYetValid:      handshake(alertCertificateExpired), // "expired or not currently valid"
	Unauthorized:     handshake(alertAccessDenied),
	PQRequired:       handshake(alertInsufficientSecurity),
	NoSVIDYet:        unavailable,
	HandshakeFailed:  badGateway,
	HandshakeTimeout: timeout,
	PeerRefused:      badGateway,
	Timeout:          timeout,

	Limit:                 unavailable,
	SourceLimit:           unavailable,
	HandshakeLimit:        unavailable,
	FDLimit:               unavailable,
	StreamLimit:           unavailable,
	FirstByteTimeout:      badRequest,
	RecentlyFailed:        badGateway,
	NoOriginalDestination: badRequest,
	BadStreamHeader:       badRequest,
	CallerNotAllowed:      forbidden,
	CallerUnknown:         forbidden,

	PolicyRevoked: forbidden,
	PeerExpired:   unauth,
	MaxAge:        unavailable,
	RapidReset:    tooMany,

	AppUnavailable:      badGateway,
	AppBusy:             unavailable,
	AppTimeout:          timeout,
	AppBadUpgrade:       badGateway,
	ClientCanceled:      {Status: 499, Code: codes.Canceled}, // nobody reads it: the caller left
	UpstreamUnavailable: badGateway,
	// The inbound JWT-SVID check answers 401: the workload cannot vouch
	// for the token's audience without an identity of its own.
	NoIdentity: unauth,

	HostMismatch:        badRequest,
	BadConnectionHeader: badRequest,
	BadPath:             badRequest,
	RouteDenied:         forbidden,
	UpgradeDenied:       forbidden,
	HeaderTimeout:       {Status: http.StatusRequestTimeout, Code: codes.DeadlineExceeded},

	MissingToken:      unauth,
	BadToken:          unauth,
	TokenExpired:      unauth,
	TokenNotYetValid:  unauth,
	TokenPeerMismatch: unauth,
	NoToken:           unavailable,

	RateLimited:      tooMany,
	LimitUnavailable: unavailable,

	Quarantined: forbidden,
	Revoked:     forbidden,
	TxnRevoked:  unauth,

	CredentialUnavailable: unavailable,
	AppCredential:         forbidden,
	UpstreamUntrusted:     badGateway,
	TraceRefused:          {Status: http.StatusMethodNotAllowed, Code: codes.Unimplemented},

	ExternalMissing:       unauth,
	ExternalMalformed:     unauth,
	ExternalBadAlg:        unauth,
	ExternalBadHeader:     unauth,
	ExternalUnknownIssuer: unauth,
	ExternalUnknownKey:    unauth,
	ExternalBadSignature:  unauth,
	ExternalExpired:       unauth,
	ExternalWrongAudience: unauth,
	ExternalBadClaims:     unauth,
	NoExchanger:           unauth,

	TxnMissing:         unauth,
	TxnMalformed:       unauth,
	TxnBadHeader:       unauth,
	TxnBadSignature:    unauth,
	TxnBadClaims:       unauth,
	TxnBadChain:        unauth,
	TxnExpired:         unauth,
	TxnWrongAudience:   unauth,
	TxnNotMinter:       unauth,
	TxnReplayed:        unauth,
	TxnReplayCacheFull: unauth,
	TxnMintFailed:      unauth,

	BadHost:            badRequest,
	InvalidRequest:     badRequest,
	UnsupportedGrant:   badRequest,
	AudienceNotAllowed: badRequest,
	TokenRateLimited:   tooMany,

	Starting:         unavailable,
	AgentUnavailable: unavailable,
	StreamEnded:      unavailable,
	BadResponse:      unavailable,
	APIError:         unavailable,
	SVIDExpired:      unavailable,
	Closed:           unavailable,
}

// Info returns how r is told. A reason missing from the table (a defect
// the package test catches) is told as a plain HTTP 403 / PermissionDenied
// / bad_certificate, the safe default for a refusal.
func (r Reason) Info() Info {
	if i, ok := table[r]; ok {
		return i
	}
	return handshake(alertBadCertificate)
}

// Known reports whether r is one of the reasons of this package.
func Known(r Reason) bool {
	_, ok := table[r]
	return ok
}

// All returns every reason, sorted.
func All() []Reason {
	all := make([]Reason, 0, len(table))
	for r := range table {
		all = append(all, r)
	}
	slices.Sort(all)
	return all
}

// Error is an error that carries its reason.
type Error interface {
	error
	Why() Reason
}

// Of returns the reason carried by err or by an error it wraps, or "".
func Of(err error) Reason {
	var e Error
	if errors.As(err, &e) {
		return e.Why()
	}
	return ""
}
