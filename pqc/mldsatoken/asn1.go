package mldsatoken

import (
	"encoding/asn1"
	"math/big"
)

// rawToASN1 converts a JWS ES256 signature (r||s, 32 bytes each) to the
// ASN.1 form crypto/ecdsa verifies.
func rawToASN1(sig []byte) ([]byte, error) {
	var v struct{ R, S *big.Int }
	v.R = new(big.Int).SetBytes(sig[:32])
	v.S = new(big.Int).SetBytes(sig[32:])
	return asn1.Marshal(v)
}
