package proxy

import (
	"bytes"
	"testing"
)

// FuzzReadStreamHeader: the header a peer writes at the start of each QUIC
// stream. Parsing never panics, reads at most its own bytes, and what
// parses is what streamHeader writes.
func FuzzReadStreamHeader(f *testing.F) {
	f.Add(streamHeader("app"))
	f.Add(streamHeader(""))
	f.Add([]byte{streamHeaderVersion, 255})
	f.Add([]byte{streamHeaderVersion + 1, 3, 'a', 'p', 'p'})
	f.Add(append(streamHeader("web"), "GET / HTTP/1.1\r\n"...))
	f.Fuzz(func(t *testing.T, data []byte) {
		r := bytes.NewReader(data)
		target, err := readStreamHeader(r)
		if err != nil {
			return
		}
		h := streamHeader(target)
		if !bytes.Equal(data[:len(h)], h) {
			t.Fatalf("parsed %q from % x, which streamHeader writes as % x", target, data, h)
		}
		if consumed := len(data) - r.Len(); consumed != len(h) {
			t.Fatalf("read %d bytes for a %d-byte header", consumed, len(h))
		}
	})
}
