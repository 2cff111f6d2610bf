package audit

import (
	"crypto"
	"crypto/x509"
)

// SignCheckpoint signs the checkpoint r with key as the writer does, for
// the tests that forge one.
func SignCheckpoint(r *Record, key crypto.Signer, chain []*x509.Certificate) error {
	return r.sign(key, chain)
}

// HashLine is the hash of a line, as the next record's prev.
var HashLine = hashLine

// Marshal is a record's line.
func Marshal(r *Record) ([]byte, error) { return r.marshal() }

// VerifyData is Verify of one file, audit.jsonl, that holds data.
func VerifyData(data []byte, opts VerifyOptions) (Report, error) {
	return verify([]string{"audit.jsonl"}, [][]byte{data}, opts)
}
