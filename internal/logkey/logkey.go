// Package logkey holds the attribute keys of every structured log line that
// CredentialFlow writes, so that one name means one thing across packages.
//
// Values logged under these keys are never tokens, private keys or full
// certificates: SPIFFE IDs, trust domains, serial numbers and reasons only.
package logkey

// Attribute keys, in alphabetical order.
const (
	Audience     = "audience"
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
)
