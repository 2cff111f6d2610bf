package anomaly

import (
	"strings"

	"github.com/credflow/credflow/reason"
)

// Category is the kind of refusal a reason is, as far as the detectors
// care.
type Category uint8

// Categories.
const (
	// Allowed is the empty reason: the connection or request was allowed.
	Allowed Category = iota
	// Access is a peer the sidecar would not let in or through: a
	// handshake whose certificate is missing, not an SVID, untrusted,
	// expired or not for this use, a non-TLS or failed handshake, and a
	// verified peer the policy or the routes refuse (unauthorized,
	// route_denied, upgrade_denied). RefusalBurst counts these.
	Access
	// Token is a credential on a request that does not pass: a JWT-SVID
	// missing, invalid, expired or not the mTLS peer's, and every
	// transaction-token (txn_*) and external-token (external_*) refusal
	// except those that are this side's failure (txn_mint_failed,
	// txn_replay_cache_full). TokenFailures counts these.
	Token
	// Other is every other reason: limits, timeouts, the app or the
	// upstream failing, this side having no identity. No detector counts
	// them: they say little about the peer's intent.
	Other
)

// String is the category's name.
func (c Category) String() string {
	switch c {
	case Allowed:
		return "allowed"
	case Access:
		return "access"
	case Token:
		return "token"
	default:
		return "other"
	}
}

// Class returns the category of the reason r. It is the one place where
// reasons map to detectors; a reason it does not know is Other, except
// that a new txn_* or external_* reason is Token.
func Class(r reason.Reason) Category {
	switch r {
	case "":
		return Allowed
	case reason.NoPeerCert, reason.InvalidSVID, reason.BadEKU, reason.Untrusted,
		reason.Expired, reason.NotYetValid, reason.HandshakeFailed,
		reason.Unauthorized, reason.RouteDenied, reason.UpgradeDenied:
		return Access
	case reason.MissingToken, reason.BadToken, reason.TokenExpired,
		reason.TokenNotYetValid, reason.TokenPeerMismatch:
		return Token
	case reason.TxnMintFailed, reason.TxnReplayCacheFull:
		return Other // this side's failure, not the caller's
	}
	if s := string(r); strings.HasPrefix(s, "txn_") || strings.HasPrefix(s, "external_") {
		return Token
	}
	return Other
}
