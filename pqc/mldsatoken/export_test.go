package mldsatoken

import (
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/sha256"
)

// esSignForTest signs input with k as an ES256 JWS signature (r||s).
func esSignForTest(k *ecdsa.PrivateKey, input string) (string, error) {
	digest := sha256.Sum256([]byte(input))
	r, s, err := ecdsa.Sign(rand.Reader, k, digest[:])
	if err != nil {
		return "", err
	}
	sig := make([]byte, 64)
	r.FillBytes(sig[:32])
	s.FillBytes(sig[32:])
	return b64.EncodeToString(sig), nil
}
