package anomaly

import (
	"testing"

	"github.com/credflow/credflow/reason"
)

// TestClass: every reason of package reason is in the category written
// here, so that a new reason is classified on purpose.
func TestClass(t *testing.T) {
	want := map[reason.Reason]Category{
		"": Allowed,

		reason.NoPeerCert: Access, reason.InvalidSVID: Access, reason.BadEKU: Access,
		reason.Untrusted: Access, reason.Expired: Access, reason.NotYetValid: Access,
		reason.HandshakeFailed: Access, reason.Unauthorized: Access,
		reason.RouteDenied: Access, reason.UpgradeDenied: Access,

		reason.MissingToken: Token, reason.BadToken: Token, reason.TokenExpired: Token,
		reason.TokenNotYetValid: Token, reason.TokenPeerMismatch: Token,

		reason.ExternalMissing: Token, reason.ExternalMalformed: Token, reason.ExternalBadAlg: Token,
		reason.ExternalBadHeader: Token, reason.ExternalUnknownIssuer: Token,
		reason.ExternalUnknownKey: Token, reason.ExternalBadSignature: Token,
		reason.ExternalExpired: Token, reason.ExternalWrongAudience: Token,
		reason.ExternalBadClaims: Token,

		reason.TxnMissing: Token, reason.TxnMalformed: Token, reason.TxnBadHeader: Token,
		reason.TxnBadSignature: Token, reason.TxnBadClaims: Token, reason.TxnBadChain: Token,
		reason.TxnExpired: Token, reason.TxnWrongAudience: Token, reason.TxnNotMinter: Token,
		reason.TxnReplayed: Token, reason.TxnRevoked: Token,
		// This side's failures, not the caller's.
		reason.TxnMintFailed: Other, reason.TxnReplayCacheFull: Other,
	}
	for _, r := range append(reason.All(), "") {
		w, ok := want[r]
		if !ok {
			w = Other
		}
		if got := Class(r); got != w {
			t.Errorf("Class(%q) = %v, want %v", r, got, w)
		}
	}
	for r := range want {
		if r != "" && !reason.Known(r) {
			t.Errorf("%q is not a reason of package reason", r)
		}
	}
	if got := Class("txn_future_failure"); got != Token {
		t.Errorf("a new txn_ reason is %v, want token", got)
	}
}
