package audit

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"
)

// Checkpoint kinds, for Record.Checkpoint.
const (
	CheckpointPeriodic = "periodic"
	CheckpointRotate   = "rotate"
	CheckpointFinal    = "final"
)

// Reasons of unsigned checkpoints and of gaps.
const (
	UnsignedNoSVID     = "no_svid"        // the SVID source had none
	UnsignedSignFailed = "sign_failed"    // the key refused to sign
	GapRestart         = "restart"        // the writer had stopped without its final checkpoint
	GapPartialRecord   = "partial_record" // a restart found the file ending mid-line
)

// zeroHash is the prev of the first record of a trail.
const zeroHash = "0000000000000000000000000000000000000000000000000000000000000000"

// checkpointContext starts the bytes a checkpoint signs.
const checkpointContext = "credflow-audit-checkpoint-v1\n"

// Record is one line of a trail: an event and its place in the chain. See
// the package documentation for the meaning of each field.
type Record struct {
	// V is the format version, Version.
	V int `json:"v"`
	// Seq is the record's sequence number, from 1.
	Seq uint64 `json:"seq"`
	// Prev is the SHA-256 (lowercase hex) of the previous line.
	Prev string `json:"prev"`

	Event

	// Dropped counts, in a gap, the events refused for a full queue.
	Dropped uint64 `json:"dropped,omitempty"`
	// Failed counts, in a gap, the events that could not be written.
	Failed uint64 `json:"failed,omitempty"`

	// Checkpoint is a checkpoint's kind: CheckpointPeriodic,
	// CheckpointRotate or CheckpointFinal.
	Checkpoint string `json:"checkpoint,omitempty"`
	// Signature is a checkpoint's signature, standard base64.
	Signature string `json:"signature,omitempty"`
	// X5C is the signer's certificate chain, leaf first, each DER in
	// standard base64.
	X5C []string `json:"x5c,omitempty"`
	// Unsigned says why a checkpoint has no signature.
	Unsigned string `json:"unsigned,omitempty"`
}

// errNotCanonical reports a line that parses but is not byte for byte the
// encoding of its record.
var errNotCanonical = errors.New("not the canonical encoding of its record")

// ParseRecord parses one line of a trail (without its "\n"). It refuses a
// line that is not valid JSON, has fields the format does not know, is of
// another version, or is not exactly the encoding the writer would produce.
func ParseRecord(line []byte) (Record, error) {
	var r Record
	dec := json.NewDecoder(bytes.NewReader(line))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&r); err != nil {
		return Record{}, fmt.Errorf("audit: record does not parse: %w", err)
	}
	if dec.More() {
		return Record{}, errors.New("audit: record does not parse: data after the JSON object")
	}
	if r.V != Version {
		return Record{}, fmt.Errorf("audit: record of unknown version %d (this is version %d)", r.V, Version)
	}
	again, err := r.marshal()
	if err != nil || !bytes.Equal(again, line) {
		return Record{}, fmt.Errorf("audit: %w", errNotCanonical)
	}
	return r, nil
}

// marshal is the record's line, without "\n".
func (r *Record) marshal() ([]byte, error) {
	return json.Marshal(r)
}

// checkpointDigest is the SHA-256 of the bytes a checkpoint signs.
func (r *Record) checkpointDigest() []byte {
	var b []byte
	b = append(b, checkpointContext...)
	b = strconv.AppendUint(b, r.Seq, 10)
	b = append(b, '\n')
	b = append(b, r.Prev...)
	b = append(b, '\n')
	b = r.Time.UTC().AppendFormat(b, time.RFC3339Nano)
	b = append(b, '\n')
	b = append(b, r.Checkpoint...)
	b = append(b, '\n')
	sum := sha256.Sum256(b)
	return sum[:]
}

// sign signs the checkpoint r with key and records chain as its x5c.
func (r *Record) sign(key crypto.Signer, chain []*x509.Certificate) error {
	digest := r.checkpointDigest()
	var (
		sig []byte
		err error
	)
	switch key.Public().(type) {
	case *ecdsa.PublicKey:
		sig, err = key.Sign(rand.Reader, digest, crypto.SHA256)
	case *rsa.PublicKey:
		sig, err = key.Sign(rand.Reader, digest, &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash, Hash: crypto.SHA256})
	case ed25519.PublicKey:
		sig, err = key.Sign(rand.Reader, digest, crypto.Hash(0))
	default:
		return fmt.Errorf("audit: cannot sign with a %T key", key.Public())
	}
	if err != nil {
		return fmt.Errorf("audit: signing checkpoint %d: %w", r.Seq, err)
	}
	r.Signature = base64.StdEncoding.EncodeToString(sig)
	r.X5C = make([]string, len(chain))
	for i, c := range chain {
		r.X5C[i] = base64.StdEncoding.EncodeToString(c.Raw)
	}
	return nil
}

// chain parses the checkpoint's x5c.
func (r *Record) chain() ([]*x509.Certificate, error) {
	if len(r.X5C) == 0 {
		return nil, errors.New("no x5c")
	}
	certs := make([]*x509.Certificate, len(r.X5C))
	for i, s := range r.X5C {
		der, err := base64.StdEncoding.DecodeString(s)
		if err != nil {
			return nil, fmt.Errorf("x5c[%d] is not base64: %w", i, err)
		}
		if certs[i], err = x509.ParseCertificate(der); err != nil {
			return nil, fmt.Errorf("x5c[%d] is not a certificate: %w", i, err)
		}
	}
	return certs, nil
}

// checkSignature checks the checkpoint's signature against the public key
// of leaf.
func (r *Record) checkSignature(leaf *x509.Certificate) error {
	sig, err := base64.StdEncoding.DecodeString(r.Signature)
	if err != nil {
		return fmt.Errorf("signature is not base64: %w", err)
	}
	digest := r.checkpointDigest()
	ok := false
	switch pub := leaf.PublicKey.(type) {
	case *ecdsa.PublicKey:
		ok = ecdsa.VerifyASN1(pub, digest, sig)
	case *rsa.PublicKey:
		ok = rsa.VerifyPSS(pub, crypto.SHA256, digest, sig, &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash}) == nil
	case ed25519.PublicKey:
		ok = ed25519.Verify(pub, digest, sig)
	default:
		return fmt.Errorf("the signer's key is a %T, which checkpoints are never signed with", leaf.PublicKey)
	}
	if !ok {
		return errors.New("signature does not verify with the key of its x5c leaf")
	}
	return nil
}

// hashLine is the SHA-256 of line, lowercase hex: the next record's prev.
func hashLine(line []byte) string {
	sum := sha256.Sum256(line)
	return hex.EncodeToString(sum[:])
}
