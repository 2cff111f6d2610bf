package bench

import (
	"bufio"
	"context"
	"encoding/binary"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"

	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// The server's byte protocols, chosen by the first byte a client sends.
const (
	opUpload = 'u' // read an 8-byte count and that many bytes, answer the count
	// (not a half-close: ghostunnel closes both directions at the first EOF)
	opDownload = 'd' // read an 8-byte count, send that many bytes, close
	opEcho     = 'e' // echo until EOF (ping-pong)
	opPing     = 'p' // answer one byte (a new connection's first exchange)
	opIdle     = 'i' // answer one byte, then hold the connection until EOF
)

// rpcBody is the 1 KB request and response of the RPC scenarios.
var rpcBody = []byte(strings.Repeat("x", 1024))

// startServer runs the target server on loopback: the byte protocols above,
// and, for a connection that starts otherwise, HTTP/1.1 and h2c (a 1 KB
// answer, and the gRPC health service).
func startServer(ctx context.Context) (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	gs := grpc.NewServer()
	healthpb.RegisterHealthServer(gs, health.NewServer())
	httpConns := newConnListener(l.Addr())
	protocols := new(http.Protocols)
	protocols.SetHTTP1(true)
	protocols.SetUnencryptedHTTP2(true)
	hs := &http.Server{
		Protocols: protocols,
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.ProtoMajor == 2 && strings.HasPrefix(r.Header.Get("Content-Type"), "application/grpc") {
				gs.ServeHTTP(w, r)
				return
			}
			io.Copy(io.Discard, r.Body)
			w.Write(rpcBody)
		}),
	}
	go hs.Serve(httpConns)
	context.AfterFunc(ctx, func() { l.Close(); hs.Close(); gs.Stop() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go serveConn(c, httpConns)
		}
	}()
	return l.Addr().String(), nil
}

func serveConn(c net.Conn, httpConns *connListener) {
	br := bufio.NewReaderSize(c, 256<<10)
	first, err := br.Peek(1)
	if err != nil {
		c.Close()
		return
	}
	switch first[0] {
	case opUpload, opDownload, opEcho, opPing, opIdle:
		br.Discard(1)
	default:
		httpConns.give(&peekedConn{Conn: c, r: br})
		return
	}
	defer c.Close()
	switch first[0] {
	case opUpload:
		var b [8]byte
		if _, err := io.ReadFull(br, b[:]); err != nil {
			return
		}
		n, _ := io.CopyN(io.Discard, br, int64(binary.BigEndian.Uint64(b[:])))
		binary.BigEndian.PutUint64(b[:], uint64(n))
		c.Write(b[:])
	case opDownload:
		var b [8]byte
		if _, err := io.ReadFull(br, b[:]); err != nil {
			return
		}
		writeN(c, int64(binary.BigEndian.Uint64(b[:])))
	case opEcho:
		buf := make([]byte, 64<<10)
		for {
			n, err := br.Read(buf)
			if n > 0 {
				if _, err := c.Write(buf[:n]); err != nil {
					return
				}
			}
			if err != nil {
				return
			}
		}
	case opPing, opIdle:
		c.Write(first[:1])
		io.Copy(io.Discard, br)
	}
}

// writeN writes n bytes in 128 KiB writes.
func writeN(w io.Writer, n int64) error {
	buf := make([]byte, 128<<10)
	for n > 0 {
		k := min(int64(len(buf)), n)
		if _, err := w.Write(buf[:k]); err != nil {
			return err
		}
		n -= k
	}
	return nil
}

// peekedConn is a connection whose first bytes sit in a reader.
type peekedConn struct {
	net.Conn
	r *bufio.Reader
}

func (p *peekedConn) Read(b []byte) (int, error) { return p.r.Read(b) }

// connListener hands accepted connections to an http.Server.
type connListener struct {
	addr   net.Addr
	conns  chan net.Conn
	closed chan struct{}
	once   sync.Once
}

func newConnListener(addr net.Addr) *connListener {
	return &connListener{addr: addr, conns: make(chan net.Conn), closed: make(chan struct{})}
}

func (l *connListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.closed:
		return nil, net.ErrClosed
	}
}

func (l *connListener) Close() error {
	l.once.Do(func() { close(l.closed) })
	return nil
}

func (l *connListener) Addr() net.Addr { return l.addr }

func (l *connListener) give(c net.Conn) {
	select {
	case l.conns <- c:
	case <-l.closed:
		c.Close()
	}
}
