// Package jwstest signs compact JWS for tests with exactly the protected
// header bytes the test gives: member order, duplicates and case variants
// included, which a JOSE library's signer would normalise away. It exists
// to test what validators do with headers no honest signer writes.
package jwstest

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/rsa"
	"encoding/base64"
	"math/big"
	"testing"
)

// Sign returns header.payload.signature, each part base64url without
// padding, signed with key (an *ecdsa.PrivateKey or *rsa.PrivateKey) by the
// JWS algorithm alg: ES256, ES384, RS256 or PS256. The header is not
// parsed: header names the algorithm the test claims, alg the one it uses.
func Sign(t testing.TB, alg string, key crypto.Signer, header, payload string) string {
	t.Helper()
	input := base64.RawURLEncoding.EncodeToString([]byte(header)) + "." + base64.RawURLEncoding.EncodeToString([]byte(payload))
	var sig []byte
	var err error
	switch alg {
	case "ES256", "ES384":
		h, size := crypto.SHA256, 32
		if alg == "ES384" {
			h, size = crypto.SHA384, 48
		}
		k, ok := key.(*ecdsa.PrivateKey)
		if !ok {
			t.Fatalf("jwstest: %s needs an ECDSA key, not %T", alg, key)
		}
		var r, s *big.Int
		if r, s, err = ecdsa.Sign(rand.Reader, k, digest(h, input)); err == nil {
			sig = make([]byte, 2*size)
			r.FillBytes(sig[:size])
			s.FillBytes(sig[size:])
		}
	case "RS256":
		sig, err = key.Sign(rand.Reader, digest(crypto.SHA256, input), crypto.SHA256)
	case "PS256":
		sig, err = key.Sign(rand.Reader, digest(crypto.SHA256, input), &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash, Hash: crypto.SHA256})
	default:
		t.Fatalf("jwstest: algorithm %q is not supported", alg)
	}
	if err != nil {
		t.Fatalf("jwstest: signing with %s: %v", alg, err)
	}
	return input + "." + base64.RawURLEncoding.EncodeToString(sig)
}

func digest(h crypto.Hash, input string) []byte {
	d := h.New()
	d.Write([]byte(input))
	return d.Sum(nil)
}
