package quicmux

import (
	"bytes"
	"testing"
)

// FuzzReadStreamHeader: the header a peer writes at the start of each QUIC
// stream. Parsing never panics, reads at most its own bytes, and what
// parses is what header writes.
func FuzzReadStreamHeader(f *testing.F) {
	f.Add(header("app"))
	f.Add(header(""))
	f.Add([]byte{headerVersion, 255})
	f.Add([]byte{headerVersion + 1, 3, 'a', 'p', 'p'})
	f.Add(append(header("web"), "GET / HTTP/1.1\r\n"...))
	f.Fuzz(func(t *testing.T, data []byte) {
		r := bytes.NewReader(data)
		target, err := readHeader(r)
		if err != nil {
			return
		}
		h := header(target)
		if !bytes.Equal(data[:len(h)], h) {
			t.Fatalf("parsed %q from % x, which header writes as % x", target, data, h)
		}
		if consumed := len(data) - r.Len(); consumed != len(h) {
			t.Fatalf("read %d bytes for a %d-byte header", consumed, len(h))
		}
	})
}
