// Package audit keeps a tamper-evident audit trail: what the sidecar
// decided (access allowed or denied), what happened to its credentials, and
// how its configuration changed, in a file where an altered, removed,
// reordered or truncated record is found by Verify.
//
// The proxy hands an Event to (*Writer).Write, which never blocks and does
// no I/O: the event goes on a bounded queue and one goroutine, (*Writer).Run,
// writes it. Verify, and `credflow audit verify`, check a trail.
//
// # File format, version 1
//
// A trail is one or more files of JSON Lines (UTF-8, one JSON object per
// line, each line ending in "\n"). Every line is a record: an Event's
// fields, written by encoding/json (fields in the order of the Record type,
// empty ones left out, times in RFC 3339 with nanoseconds, UTC), plus
//
//	v     the schema version: 1
//	seq   the record's sequence number: 1 for the first record of the
//	      trail, then one more for each record, across files and restarts
//	prev  the SHA-256, lowercase hex, of the previous record's line
//	      (its exact bytes without the "\n"); for the first record of a
//	      trail, 64 zeros
//
// A line is exactly the encoding of the record it holds: Verify re-encodes
// each record and refuses a line that differs by a byte.
//
// The record types are "decision" (an access decision), "credential" (an
// event of a credential: its kind says which), "config" (a configuration
// reload and the fields it changed), and two the writer alone writes:
//
//   - "gap": events are missing here. dropped counts events refused
//     because the writer's queue was full, failed events that could not
//     be written (a disk full). reason "restart" marks a restart after the
//     writer stopped without its final checkpoint (events still queued
//     were lost), "partial_record" a restart that found the file ending
//     in the middle of a line, which it cut off.
//   - "checkpoint": a signature over the trail so far. checkpoint is
//     "periodic" (every Config.CheckpointEvery records, or after
//     Config.CheckpointInterval when records were written since the
//     last), "rotate" (the last record of a file before rotation) or
//     "final" (the last record the writer wrote before it stopped).
//
// # Checkpoints
//
// A checkpoint's x5c is the signer's X.509-SVID chain, leaf first, each
// certificate the standard base64 of its DER; its signature is the
// standard base64 of the signature by the SVID's private key over
// SHA-256(M), where M is the bytes
//
//	"credflow-audit-checkpoint-v1\n" seq "\n" prev "\n" time "\n" checkpoint "\n"
//
// with seq in decimal and prev, time and checkpoint as in the record.
// Because prev is the hash of the line before, which holds the hash of the
// one before it, a checkpoint's signature covers every record before it.
// ECDSA keys (P-256, P-384) sign ASN.1 DER (r, s); RSA keys sign with PSS,
// the salt as long as the hash; Ed25519 keys sign the 32 bytes of
// SHA-256(M) as their message. A checkpoint written with no SVID at hand
// has neither signature nor x5c, and unsigned says why ("no_svid",
// "sign_failed").
//
// A file is rotated when the next record would take it past
// Config.MaxBytes: the writer writes a "rotate" checkpoint, renames the
// file to Path + "." + the seq of its first record (audit.jsonl.1,
// audit.jsonl.1001, ...) and goes on in a new file at Path whose first
// record's prev is the hash of the rotate checkpoint. Verify puts files in
// order by the seq of their first record, so their names and the order
// they are given in do not matter.
//
// # What a trail proves
//
// Verify finds the first record that is not as the writer wrote it: a line
// that does not parse or is not in canonical form, a prev that is not the
// hash of the line before (a record altered), a seq that skips (records
// removed, or a file), a seq that goes back (records reordered or
// repeated), a file that ends in a partial line or a trail that does not
// end with a checkpoint (truncated), a checkpoint whose signature does not
// verify or whose x5c does not chain to the trust bundle at the
// checkpoint's time (forged). The last checkpoint must be signed: everything
// before it is then covered by a signature of the SPIFFE ID named in its
// leaf; an unsigned checkpoint before it is only a warning.
//
// A trail must end with a "final" checkpoint: one that ends otherwise is
// reported as truncated, which catches a trail cut just after a periodic
// checkpoint too. A trail still being written ends otherwise as well
// (VerifyOptions.Open accepts it). A trail cut just after the final
// checkpoint of an earlier run, before a restart, cannot be told from a
// complete one by the trail alone. Whoever holds the SVID's key can write a
// trail that verifies: the trail proves who wrote it and that nothing
// changed since, not that the writer told the truth.
//
// # What a trail never holds
//
// No field is meant to hold a token, a secret or a private key: tokens are
// named by their jti, keys by their key id, certificates by their serial
// number and anything else by its SHA-256 (Fingerprint). Checkpoints carry
// the writer's own certificate chain, which is public.
//
// # Durability
//
// The writer writes a batch of records with one write call and calls fsync
// after each checkpoint, before a rotation and at the end. A crash of the
// process loses the events still queued, one of the machine the records
// since the last fsync; the restart then writes a gap.
// A write that fails (ENOSPC or any other error) is cut off the file again,
// its events are counted as failed and the next record written is a gap
// that says how many; nothing waits for the disk but the writer goroutine.
package audit

import (
	"crypto/sha256"
	"encoding/hex"
	"time"
)

// Version is the version of the record format this package writes and
// reads: each record's v.
const Version = 1

// Type is the type of a record.
type Type string

// Record types. Callers write the first three; the writer writes gaps and
// checkpoints.
const (
	// TypeDecision is an access decision: a connection or a request
	// allowed or denied.
	TypeDecision Type = "decision"
	// TypeCredential is an event of a credential; its Kind says which.
	TypeCredential Type = "credential"
	// TypeConfig is a configuration reload.
	TypeConfig Type = "config"
	// TypeGap marks events missing from the trail.
	TypeGap Type = "gap"
	// TypeCheckpoint is a signature over the trail so far.
	TypeCheckpoint Type = "checkpoint"
)

// Kind is what happened to a credential.
type Kind string

// Credential kinds.
const (
	KindSVIDRotated         Kind = "svid_rotated"         // a new X.509-SVID (Serial, Fingerprint of the leaf, Until: its expiry)
	KindBundleUpdated       Kind = "bundle_updated"       // a trust bundle changed (TrustDomain, Fingerprint of its authorities)
	KindJWTSVIDFetched      Kind = "jwt_svid_fetched"     // a JWT-SVID fetched (Audience, KeyID, Until)
	KindTxnMinted           Kind = "txn_minted"           // a transaction token minted (JTI, Audience, Subject)
	KindTxnVerified         Kind = "txn_verified"         // a transaction token verified (JTI, PeerID, Reason when refused)
	KindEdgeExchange        Kind = "edge_exchange"        // an external token exchanged at the edge (Issuer, Subject, JTI of both as known)
	KindTokenIssued         Kind = "token_issued"         // the token endpoint issued a token (PeerID, Audience, JTI)
	KindCredentialFetched   Kind = "credential_fetched"   // an injected credential fetched (Credential, Until)
	KindCredentialRefreshed Kind = "credential_refreshed" // an injected credential refreshed ahead of expiry
	KindCredentialFailed    Kind = "credential_failed"    // fetching an injected credential failed (Credential, Reason)
	KindRateLimited         Kind = "rate_limited"         // a request or connection refused by a rate limit
	KindAnomaly             Kind = "anomaly"              // an anomaly detected (Detector, Subject)
	KindQuarantine          Kind = "quarantine"           // a subject quarantined or let out (Subject, Until)
	KindRevocation          Kind = "revocation"           // a revocation applied (Subject, Serial or JTI, Until)
)

// Access decisions, for Event.Decision.
const (
	Allow = "allow"
	Deny  = "deny"
)

// Event is what happened: one record of the trail without its chain. Type
// and Time are always set (Write fills in a zero Time); the other fields
// are set as they apply, and left empty are left out of the record.
//
// Every field holds an identifier, a name or a short code: never a token,
// a secret, a private key or a certificate. Pass a token's jti, a key's key
// id, a certificate's serial and the SHA-256 of anything else
// (Fingerprint).
type Event struct {
	// Type is the record type: TypeDecision, TypeCredential or
	// TypeConfig.
	Type Type `json:"type"`
	// Time is when it happened, written in UTC.
	Time time.Time `json:"time"`

	// Listener names the listener a decision was taken on.
	Listener string `json:"listener,omitempty"`
	// Direction is inbound or outbound.
	Direction string `json:"direction,omitempty"`
	// Transport is tcp or quic.
	Transport string `json:"transport,omitempty"`
	// PeerID is the peer's verified SPIFFE ID.
	PeerID string `json:"peer_id,omitempty"`
	// Decision is Allow or Deny.
	Decision string `json:"decision,omitempty"`
	// Reason is why (a refusal reason, a failure's short code).
	Reason string `json:"reason,omitempty"`
	// Route names the HTTP route a request matched.
	Route string `json:"route,omitempty"`
	// Method is the HTTP method of a request.
	Method string `json:"method,omitempty"`
	// Path is the canonical path of a request (never its query).
	Path string `json:"path,omitempty"`
	// Group is the negotiated TLS key-exchange group.
	Group string `json:"group,omitempty"`

	// Kind is what happened to a credential.
	Kind Kind `json:"kind,omitempty"`
	// Audience is a token's audience.
	Audience string `json:"audience,omitempty"`
	// JTI is a token's ID.
	JTI string `json:"jti,omitempty"`
	// KeyID is the ID of the key that signed or verified a token.
	KeyID string `json:"key_id,omitempty"`
	// Fingerprint is the SHA-256 of what the event is about, lowercase
	// hex (Fingerprint).
	Fingerprint string `json:"fingerprint,omitempty"`
	// Subject is whom a credential event is about: a SPIFFE ID, an
	// external token's subject, a source address.
	Subject string `json:"subject,omitempty"`
	// Issuer is an external token's issuer.
	Issuer string `json:"issuer,omitempty"`
	// TrustDomain is the trust domain of a bundle.
	TrustDomain string `json:"trust_domain,omitempty"`
	// Credential names an injected credential's source (never its
	// value).
	Credential string `json:"credential,omitempty"`
	// Detector names the anomaly detector that fired.
	Detector string `json:"detector,omitempty"`
	// Serial is a certificate's serial number, hex.
	Serial string `json:"serial,omitempty"`
	// Until is when something ends: a quarantine, a revocation, a
	// credential's validity.
	Until time.Time `json:"until,omitzero"`

	// Changed lists the configuration fields a reload changed.
	Changed []string `json:"changed,omitempty"`
}

// Fingerprint is the SHA-256 of data, lowercase hex: how an event names a
// certificate (its DER), a bundle or any value that must not be recorded
// itself.
func Fingerprint(data []byte) string {
	sum := sha256.Sum256(data)
	return hex.EncodeToString(sum[:])
}
