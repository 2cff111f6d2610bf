// Package agent is CredentialFlow's identity side: a client of the SPIFFE
// Workload API (served by the SPIRE agent) that keeps the workload's current
// X.509-SVID, its X.509 and JWT trust bundles (federated trust domains
// included) and a cache of JWT-SVIDs per audience.
//
// A [Source] is handed to the data plane through go-spiffe's one-method
// interfaces (x509svid.Source, x509bundle.Source, jwtbundle.Source), so TLS
// configurations built once read the current SVID on every handshake and
// rotation never restarts a listener. The data plane learns of rotations
// through [Source.Changed].
//
// The Source never hands out an expired SVID. While the agent is unreachable
// it keeps serving the cached SVID until that expires, reconnects each watch
// with a bounded exponential backoff, and reports why it is not ready through
// [Source.Ready].
//
// A [JWTValidator] validates the JWT-SVIDs of callers; a
// [JWTValidationCache] verifies the signature of each token once and
// rechecks, on every later use, its times and that the key that signed it
// is still in the JWT bundle.
//
// Subpackage register reconciles declared workload identities with the SPIRE
// server API.
package agent
