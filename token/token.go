// Package token holds the rules the token packages (token/edge, token/txn,
// token/exchange) share with the configuration, declared once: the longest
// life of a transaction token, who a transaction token may be minted for,
// the signature algorithms an external issuer may be configured with, and
// the token endpoint's every-audience marker. It imports no other package
// of the project, so the configuration can check a file against these
// rules without linking the token code.
package token

import (
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// MaxTxnTTL is the longest lifetime a transaction token is minted with and
// accepted with. A transaction token covers the call graph of one external
// request; five minutes is room for a slow one, and bounds how long a token
// copied from a log or a compromised hop can be replayed.
const MaxTxnTTL = 5 * time.Minute

// AnyAudience in the token endpoint's audiences allows every audience.
const AnyAudience = "*"

// Algorithms are the JWS algorithms an external issuer may be configured
// with: asymmetric ones only. HMAC and none are never accepted, whatever
// the configuration says.
var Algorithms = []string{
	"RS256", "RS384", "RS512",
	"PS256", "PS384", "PS512",
	"ES256", "ES384", "ES512",
	"EdDSA",
}

// CheckAlgorithm reports whether name is one of Algorithms.
func CheckAlgorithm(name string) error {
	if !slices.Contains(Algorithms, name) {
		return fmt.Errorf("%q is not an asymmetric JWS algorithm (RS*, PS*, ES*, EdDSA)", name)
	}
	return nil
}

// CheckTxnAudiences reports whether auds is an audience a transaction
// token may be minted for: one or more distinct SPIFFE IDs, of workloads
// or trust domains, and no workload together with its own trust domain
// (which would let every workload in it accept the token anyway).
func CheckTxnAudiences(auds []string) error {
	if len(auds) == 0 {
		return errors.New("an audience needs at least one SPIFFE ID")
	}
	ids := make([]spiffeid.ID, len(auds))
	for i, a := range auds {
		id, err := spiffeid.FromString(a)
		if err != nil {
			return fmt.Errorf("audience %q is not a SPIFFE ID: %w", a, err)
		}
		if slices.Contains(ids[:i], id) {
			return fmt.Errorf("audience %q is named twice", a)
		}
		ids[i] = id
	}
	for _, id := range ids {
		if id.Path() != "" && slices.Contains(ids, id.TrustDomain().ID()) {
			return fmt.Errorf("audience names %s and its trust domain, which every workload in it accepts", id)
		}
	}
	return nil
}
