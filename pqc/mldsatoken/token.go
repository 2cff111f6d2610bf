// Package mldsatoken is an experiment: internal tokens signed with ML-DSA-65
// (FIPS 204, from circl) that any workload can verify with nothing but the
// SPIFFE trust bundles.
//
// A workload generates an ML-DSA-65 key and binds its public key to its
// SPIFFE identity with a Binding: a statement (SPIFFE ID, ML-DSA public key,
// expiry) signed with the workload's X.509-SVID key, carrying the SVID chain.
// Tokens are compact JWS with alg "ML-DSA-65" whose header carries the
// binding. A verifier checks the chain against the bundle of the ID's trust
// domain, the binding's ES256 signature by the leaf, then the token's ML-DSA
// signature by the bound key: a hybrid chain in which the post-quantum key
// is vouched for by the classical SVID.
//
// It is kept off the sidecar's production path; a test checks that the
// credflow binary does not link it.
package mldsatoken

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/cloudflare/circl/sign/mldsa/mldsa65"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// Alg is the JOSE algorithm name of the token signature.
const Alg = "ML-DSA-65"

// Type is the token's typ header.
const Type = "txntoken+jwt"

// MaxTokenSize bounds what Verify parses.
const MaxTokenSize = 64 << 10

var b64 = base64.RawURLEncoding

// Errors Verify classifies refusals with (errors.Is).
var (
	ErrMalformed = errors.New("mldsatoken: malformed token")
	ErrAlg       = errors.New("mldsatoken: algorithm not allowed")
	ErrBinding   = errors.New("mldsatoken: binding does not verify")
	ErrSignature = errors.New("mldsatoken: token signature does not verify")
	ErrClaims    = errors.New("mldsatoken: claims refused")
)

// Signer mints tokens for one workload.
type Signer struct {
	id      spiffeid.ID
	key     *mldsa65.PrivateKey
	binding string // compact ES256 JWS
}

// bindingClaims is what the SVID key signs.
type bindingClaims struct {
	Sub string `json:"sub"`
	Key string `json:"mldsa65"` // base64url public key
	Exp int64  `json:"exp"`
}

// NewSigner generates an ML-DSA-65 key and binds it to svid's identity
// until the SVID's leaf expires or ttl passes, whichever is first. The SVID
// key must be ECDSA P-256 (ES256), as SPIRE issues by default.
func NewSigner(svid *x509svid.SVID, ttl time.Duration) (*Signer, error) {
	pub, priv, err := mldsa65.GenerateKey(rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("mldsatoken: %w", err)
	}
	ek, ok := svid.PrivateKey.(*ecdsa.PrivateKey)
	if !ok {
		return nil, errors.New("mldsatoken: the SVID key is not ECDSA")
	}
	pubBytes, _ := pub.MarshalBinary()
	exp := time.Now().Add(ttl)
	if na := svid.Certificates[0].NotAfter; na.Before(exp) {
		exp = na
	}
	var x5c []string
	for _, c := range svid.Certificates {
		x5c = append(x5c, base64.StdEncoding.EncodeToString(c.Raw))
	}
	header, _ := json.Marshal(map[string]any{"alg": "ES256", "typ": "mldsa-binding+jwt", "x5c": x5c})
	claims, _ := json.Marshal(bindingClaims{Sub: svid.ID.String(), Key: b64.EncodeToString(pubBytes), Exp: exp.Unix()})
	input := b64.EncodeToString(header) + "." + b64.EncodeToString(claims)
	digest := sha256.Sum256([]byte(input))
	r, s, err := ecdsa.Sign(rand.Reader, ek, digest[:])
	if err != nil {
		return nil, fmt.Errorf("mldsatoken: %w", err)
	}
	sig := make([]byte, 64)
	r.FillBytes(sig[:32])
	s.FillBytes(sig[32:])
	return &Signer{id: svid.ID, key: priv, binding: input + "." + b64.EncodeToString(sig)}, nil
}

// Claims are a token's claims.
type Claims struct {
	Issuer   string   `json:"iss"` // the minting workload's SPIFFE ID
	Subject  string   `json:"sub"`
	Audience []string `json:"aud"`
	IssuedAt int64    `json:"iat"`
	Expiry   int64    `json:"exp"`
	ID       string   `json:"jti"`
	Txn      string   `json:"txn,omitempty"`
}

// Sign mints a token with the given claims; Issuer is set to the signer's
// SPIFFE ID.
func (s *Signer) Sign(c Claims) (string, error) {
	c.Issuer = s.id.String()
	header, _ := json.Marshal(map[string]any{"alg": Alg, "typ": Type, "x5b": s.binding})
	payload, err := json.Marshal(c)
	if err != nil {
		return "", fmt.Errorf("mldsatoken: %w", err)
	}
	input := b64.EncodeToString(header) + "." + b64.EncodeToString(payload)
	sig := make([]byte, mldsa65.SignatureSize)
	if err := mldsa65.SignTo(s.key, []byte(input), nil, true, sig); err != nil {
		return "", fmt.Errorf("mldsatoken: %w", err)
	}
	return input + "." + b64.EncodeToString(sig), nil
}

// Verify checks a token for audience at time now against the X.509 bundles
// and returns its claims.
func Verify(token string, bundles x509bundle.Source, audience string, now time.Time) (*Claims, error) {
	if len(token) > MaxTokenSize {
		return nil, fmt.Errorf("%w: %d bytes", ErrMalformed, len(token))
	}
	header, payload, sig, input, err := split(token)
	if err != nil {
		return nil, err
	}
	var h struct {
		Alg string `json:"alg"`
		Typ string `json:"typ"`
		X5B string `json:"x5b"`
	}
	if err := json.Unmarshal(header, &h); err != nil {
		return nil, fmt.Errorf("%w: header: %v", ErrMalformed, err)
	}
	if h.Alg != Alg {
		return nil, fmt.Errorf("%w: %q", ErrAlg, h.Alg)
	}
	if h.Typ != Type {
		return nil, fmt.Errorf("%w: typ %q", ErrMalformed, h.Typ)
	}
	id, key, err := verifyBinding(h.X5B, bundles, now)
	if err != nil {
		return nil, err
	}
	if !mldsa65.Verify(key, []byte(input), nil, sig) {
		return nil, ErrSignature
	}
	var c Claims
	dec := json.NewDecoder(bytes.NewReader(payload))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&c); err != nil {
		return nil, fmt.Errorf("%w: claims: %v", ErrMalformed, err)
	}
	switch {
	case c.Issuer != id.String():
		return nil, fmt.Errorf("%w: iss %q is not the bound identity %s", ErrClaims, c.Issuer, id)
	case audience == "" || !slices.Contains(c.Audience, audience):
		return nil, fmt.Errorf("%w: audience %q not in %q", ErrClaims, audience, c.Audience)
	case c.Expiry == 0 || !now.Before(time.Unix(c.Expiry, 0)):
		return nil, fmt.Errorf("%w: expired or no exp", ErrClaims)
	}
	return &c, nil
}

func split(token string) (header, payload, sig []byte, input string, err error) {
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		return nil, nil, nil, "", fmt.Errorf("%w: %d parts", ErrMalformed, len(parts))
	}
	dec := func(s string) ([]byte, error) { return b64.DecodeString(s) }
	if header, err = dec(parts[0]); err == nil {
		if payload, err = dec(parts[1]); err == nil {
			sig, err = dec(parts[2])
		}
	}
	if err != nil {
		return nil, nil, nil, "", fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	return header, payload, sig, parts[0] + "." + parts[1], nil
}

// verifyBinding checks a binding and returns the bound identity and key.
func verifyBinding(binding string, bundles x509bundle.Source, now time.Time) (spiffeid.ID, *mldsa65.PublicKey, error) {
	header, payload, sig, input, err := split(binding)
	if err != nil {
		return spiffeid.ID{}, nil, fmt.Errorf("%w: %v", ErrBinding, err)
	}
	var h struct {
		Alg string   `json:"alg"`
		X5C []string `json:"x5c"`
	}
	if err := json.Unmarshal(header, &h); err != nil || h.Alg != "ES256" || len(h.X5C) == 0 || len(h.X5C) > 4 {
		return spiffeid.ID{}, nil, fmt.Errorf("%w: header", ErrBinding)
	}
	var chain []*x509.Certificate
	for _, s := range h.X5C {
		der, err := base64.StdEncoding.DecodeString(s)
		if err != nil {
			return spiffeid.ID{}, nil, fmt.Errorf("%w: x5c: %v", ErrBinding, err)
		}
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return spiffeid.ID{}, nil, fmt.Errorf("%w: x5c: %v", ErrBinding, err)
		}
		chain = append(chain, c)
	}
	leaf := chain[0]
	if len(leaf.URIs) != 1 || leaf.IsCA {
		return spiffeid.ID{}, nil, fmt.Errorf("%w: leaf is not an X.509-SVID", ErrBinding)
	}
	id, err := spiffeid.FromURI(leaf.URIs[0])
	if err != nil {
		return spiffeid.ID{}, nil, fmt.Errorf("%w: %v", ErrBinding, err)
	}
	bundle, err := bundles.GetX509BundleForTrustDomain(id.TrustDomain())
	if err != nil {
		return spiffeid.ID{}, nil, fmt.Errorf("%w: %v", ErrBinding, err)
	}
	roots, inter := x509.NewCertPool(), x509.NewCertPool()
	for _, c := range bundle.X509Authorities() {
		roots.AddCert(c)
	}
	for _, c := range chain[1:] {
		inter.AddCert(c)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, CurrentTime: now,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		return spiffeid.ID{}, nil, fmt.Errorf("%w: chain: %v", ErrBinding, err)
	}
	pub, ok := leaf.PublicKey.(*ecdsa.PublicKey)
	if !ok || len(sig) != 64 {
		return spiffeid.ID{}, nil, fmt.Errorf("%w: not ES256", ErrBinding)
	}
	digest := sha256.Sum256([]byte(input))
	if !ecdsaVerify(pub, digest[:], sig) {
		return spiffeid.ID{}, nil, fmt.Errorf("%w: signature", ErrBinding)
	}
	var c bindingClaims
	if err := json.Unmarshal(payload, &c); err != nil {
		return spiffeid.ID{}, nil, fmt.Errorf("%w: claims: %v", ErrBinding, err)
	}
	if c.Sub != id.String() || !now.Before(time.Unix(c.Exp, 0)) {
		return spiffeid.ID{}, nil, fmt.Errorf("%w: subject or expiry", ErrBinding)
	}
	raw, err := b64.DecodeString(c.Key)
	if err != nil {
		return spiffeid.ID{}, nil, fmt.Errorf("%w: key: %v", ErrBinding, err)
	}
	var key mldsa65.PublicKey
	if err := key.UnmarshalBinary(raw); err != nil {
		return spiffeid.ID{}, nil, fmt.Errorf("%w: key: %v", ErrBinding, err)
	}
	return id, &key, nil
}

func ecdsaVerify(pub *ecdsa.PublicKey, digest, sig []byte) bool {
	// Raw r||s (JWS) to ASN.1 for ecdsa.VerifyASN1.
	asn1Sig, err := rawToASN1(sig)
	if err != nil {
		return false
	}
	return ecdsa.VerifyASN1(pub, digest, asn1Sig)
}
