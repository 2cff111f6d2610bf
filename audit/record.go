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
	"unicode/utf8"
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

// marshal is the record's line, without "\n": exactly what
// json.Marshal(r) gives (FuzzRecordJSON holds them to it), written by hand
// because the writer encodes every event and encoding/json's reflection
// was half its time per record.
func (r *Record) marshal() ([]byte, error) {
	return r.appendJSON(make([]byte, 0, 512))
}

// appendJSON appends the record's JSON encoding to b, its fields in the
// order of the struct's (Event's in place), the omitempty and omitzero
// ones left out when empty, as encoding/json writes them.
func (r *Record) appendJSON(b []byte) ([]byte, error) {
	b = append(b, `{"v":`...)
	b = strconv.AppendInt(b, int64(r.V), 10)
	b = append(b, `,"seq":`...)
	b = strconv.AppendUint(b, r.Seq, 10)
	b = appendField(b, "prev", r.Prev)
	b = appendField(b, "type", string(r.Type))
	var err error
	b = append(b, `,"time":`...)
	if b, err = appendTime(b, r.Time); err != nil {
		return nil, err
	}
	for _, f := range [...]struct{ key, value string }{
		{"listener", r.Listener}, {"direction", r.Direction}, {"transport", r.Transport}, {"peer_id", r.PeerID},
		{"decision", r.Decision}, {"reason", r.Reason}, {"route", r.Route}, {"method", r.Method}, {"path", r.Path},
		{"group", r.Group}, {"kind", string(r.Kind)}, {"audience", r.Audience}, {"jti", r.JTI}, {"key_id", r.KeyID},
		{"fingerprint", r.Fingerprint}, {"subject", r.Subject}, {"issuer", r.Issuer}, {"trust_domain", r.TrustDomain},
		{"credential", r.Credential}, {"detector", r.Detector}, {"serial", r.Serial},
	} {
		if f.value != "" {
			b = appendField(b, f.key, f.value)
		}
	}
	if !r.Until.IsZero() {
		b = append(b, `,"until":`...)
		if b, err = appendTime(b, r.Until); err != nil {
			return nil, err
		}
	}
	b = appendList(b, "changed", r.Changed)
	if r.Dropped != 0 {
		b = append(b, `,"dropped":`...)
		b = strconv.AppendUint(b, r.Dropped, 10)
	}
	if r.Failed != 0 {
		b = append(b, `,"failed":`...)
		b = strconv.AppendUint(b, r.Failed, 10)
	}
	for _, f := range [...]struct{ key, value string }{{"checkpoint", r.Checkpoint}, {"signature", r.Signature}} {
		if f.value != "" {
			b = appendField(b, f.key, f.value)
		}
	}
	b = appendList(b, "x5c", r.X5C)
	if r.Unsigned != "" {
		b = appendField(b, "unsigned", r.Unsigned)
	}
	return append(b, '}'), nil
}

// appendField appends ,"key":"value".
func appendField(b []byte, key, value string) []byte {
	b = append(b, ',', '"')
	b = append(b, key...)
	b = append(b, '"', ':')
	return appendJSONString(b, value)
}

// appendList appends ,"key":[...] unless the list is empty.
func appendList(b []byte, key string, list []string) []byte {
	if len(list) == 0 {
		return b
	}
	b = append(b, ',', '"')
	b = append(b, key...)
	b = append(b, `":[`...)
	for i, s := range list {
		if i > 0 {
			b = append(b, ',')
		}
		b = appendJSONString(b, s)
	}
	return append(b, ']')
}

// appendTime appends t as time.Time's MarshalJSON does: RFC 3339 with
// nanoseconds, in quotes; a year outside 0–9999 is an error, as there.
func appendTime(b []byte, t time.Time) ([]byte, error) {
	if y := t.Year(); y < 0 || y > 9999 {
		return nil, fmt.Errorf("audit: time %v: year outside of range [0,9999]", t)
	}
	if _, off := t.Zone(); off <= -24*3600 || off >= 24*3600 {
		return nil, fmt.Errorf("audit: time %v: timezone hour outside of range [0,23]", t)
	}
	b = append(b, '"')
	b = t.AppendFormat(b, time.RFC3339Nano)
	return append(b, '"'), nil
}

// appendJSONString appends s as a JSON string the way encoding/json does
// by default: '"', '\\' and control characters escaped (\b \f \n \r \t
// by name), '<', '>' and '&' as \u003c \u003e \u0026, U+2028 and U+2029
// escaped, each byte of invalid UTF-8 as U+FFFD.
func appendJSONString(b []byte, s string) []byte {
	const hex = "0123456789abcdef"
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		if c := s[i]; c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' && c != '<' && c != '>' && c != '&' {
				i++
				continue
			}
			b = append(b, s[start:i]...)
			switch c {
			case '"', '\\':
				b = append(b, '\\', c)
			case '\b':
				b = append(b, '\\', 'b')
			case '\f':
				b = append(b, '\\', 'f')
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			default:
				b = append(b, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b = append(b, s[start:i]...)
			b = append(b, string(utf8.RuneError)...)
			i += size
			start = i
			continue
		}
		if r == '\u2028' || r == '\u2029' {
			b = append(b, s[start:i]...)
			b = append(b, '\\', 'u', '2', '0', '2', hex[r&0xf])
			i += size
			start = i
			continue
		}
		i += size
	}
	b = append(b, s[start:]...)
	return append(b, '"')
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
