package relay

import (
	"bytes"
	"context"
	"crypto/tls"
	"io"
	"net"
	"sync/atomic"
	"testing"
	"time"
)

// countingConn counts the writes that reach the socket.
type countingConn struct {
	*net.TCPConn
	writes atomic.Int64
}

func (c *countingConn) Write(p []byte) (int, error) {
	c.writes.Add(1)
	return c.TCPConn.Write(p)
}

// handshakeTLS runs a TLS handshake between a server over serverSide and a
// client over clientSide, and returns both ends.
func handshakeTLS(t *testing.T, serverSide, clientSide net.Conn) (server, client *tls.Conn) {
	t.Helper()
	serverTLS, clientTLS := tlsConfigs(t)
	server, client = tls.Server(serverSide, serverTLS), tls.Client(clientSide, clientTLS)
	errc := make(chan error, 1)
	go func() { errc <- server.Handshake() }()
	if err := client.Handshake(); err != nil {
		t.Fatal(err)
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	return server, client
}

// TestBatching: with Batching under the TLS connection, the relay's writes
// of up to 64 KiB leave as one write(2) each, not one per 16 KiB record, and
// the bytes arrive intact.
func TestBatching(t *testing.T) {
	for _, batching := range []bool{false, true} {
		f := newFixture(t, kindTCP)
		p := f.pair(t)
		counted := &countingConn{TCPConn: p.a.(*net.TCPConn)}
		var under net.Conn = counted
		if batching {
			under = Batching(counted)
		}
		ts, tc := handshakeTLS(t, under, p.client)
		p.a, p.client = ts, tc
		res := relay(context.Background(), p, Options{})
		before := counted.writes.Load()

		const size = 4 << 20
		want := payload(size, 7)
		go func() {
			p.backend.Write(want)
			p.backend.(*net.TCPConn).CloseWrite()
		}()
		tc.SetDeadline(time.Now().Add(30 * time.Second))
		got, err := io.ReadAll(tc)
		if err != nil || !bytes.Equal(got, want) {
			t.Fatalf("batching=%v: %d of %d bytes, intact=%v, err=%v", batching, len(got), size, bytes.Equal(got, want), err)
		}
		writes := counted.writes.Load() - before
		records := int64(size / (16 << 10))
		switch {
		case batching && writes > records/2:
			t.Errorf("batching: %d writes for %d records", writes, records)
		case !batching && writes < records:
			t.Errorf("without batching: %d writes for %d records: the test would prove nothing", writes, records)
		}
		t.Logf("batching=%v: %d writes for %d MiB (%d records at least)", batching, writes, size>>20, records)
		tc.Close()
		p.closeAll()
		wait(t, res, 10*time.Second)
	}
}

// TestMessageOneWrite: a message a little over the small buffer (a 1 KB
// HTTP request with its head) crosses the relay in one write each way, one
// TLS record towards the TLS side, once the first message has moved the
// direction to the medium buffer. With the small buffer alone, every such
// message took two reads and two writes.
func TestMessageOneWrite(t *testing.T) {
	const size, rounds = smallSize + 99, 100
	f := newFixture(t, kindTCP)
	p := f.pair(t)
	toClient := &countingConn{TCPConn: p.a.(*net.TCPConn)}
	toBackend := &countingConn{TCPConn: p.b.(*net.TCPConn)}
	ts, tc := handshakeTLS(t, Batching(toClient), p.client)
	p.a, p.b, p.client = ts, toBackend, tc
	res := relay(t.Context(), p, Options{})
	before := [2]int64{toClient.writes.Load(), toBackend.writes.Load()}

	msg, got := payload(size, 3), make([]byte, size)
	tc.SetDeadline(time.Now().Add(30 * time.Second))
	p.backend.SetDeadline(time.Now().Add(30 * time.Second))
	for i := range rounds {
		for _, c := range [][2]net.Conn{{tc, p.backend}, {p.backend, tc}} {
			if _, err := c[0].Write(msg); err != nil {
				t.Fatalf("round %d: %v", i, err)
			}
			if _, err := io.ReadFull(c[1], got); err != nil || !bytes.Equal(got, msg) {
				t.Fatalf("round %d: intact=%v, err=%v", i, bytes.Equal(got, msg), err)
			}
		}
	}
	for i, name := range []string{"to the TLS client", "to the backend"} {
		c := []*countingConn{toClient, toBackend}[i]
		// The first message may still split: it is what fills the small
		// buffer.
		if w := c.writes.Load() - before[i]; w > rounds+1 {
			t.Errorf("%s: %d writes for %d messages of %d bytes, want at most %d", name, w, rounds, size, rounds+1)
		}
	}
	tc.Close()
	p.closeAll()
	wait(t, res, 10*time.Second)
}
