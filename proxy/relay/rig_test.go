package relay

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"io"
	"math/big"
	mrand "math/rand/v2"
	"net"
	"runtime"
	"sync"
	"syscall"
	"testing"
	"time"
)

// kind is the pair of connections a test hands to Copy.
type kind int

const (
	// kindTCP: *net.TCPConn on both sides, the kernel path.
	kindTCP kind = iota
	// kindTLS: a is the server end of a TLS 1.3 connection from a peer
	// sidecar, b plain TCP to the app: the buffered path.
	kindTLS
	// kindPlain: TCP on both sides, hidden behind a wrapper type so that
	// the buffered path runs without TLS costs.
	kindPlain
)

// spliced reports whether Copy takes the kernel path for this kind.
func (k kind) spliced() bool { return k == kindTCP && runtime.GOOS == "linux" }

func (k kind) String() string {
	return [...]string{"tcp", "tls", "plain"}[k]
}

// plainConn hides *net.TCPConn from Copy's type checks while keeping
// CloseWrite.
type plainConn struct{ *net.TCPConn }

// fixture owns two loopback listeners: front, where peers reach the relay,
// and app, where the relay reaches the app.
type fixture struct {
	kind             kind
	front, app       net.Listener
	serverTLS        *tls.Config
	clientTLS        *tls.Config
	mu               sync.Mutex // serialises dial+accept so accepted ends match
	frontPort, appPt int
}

func newFixture(t testing.TB, k kind) *fixture {
	t.Helper()
	f := &fixture{kind: k, front: listen(t), app: listen(t)}
	f.frontPort = f.front.Addr().(*net.TCPAddr).Port
	f.appPt = f.app.Addr().(*net.TCPAddr).Port
	if k == kindTLS {
		f.serverTLS, f.clientTLS = tlsConfigs(t)
	}
	return f
}

func listen(t testing.TB) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

// pair is one relayed connection: the test plays client (the peer on a's
// side) and backend (the app on b's side); Copy gets a and b.
type pair struct {
	client, a, b, backend net.Conn
}

func (p pair) closeAll() {
	for _, c := range []net.Conn{p.client, p.a, p.b, p.backend} {
		c.Close()
	}
}

func (f *fixture) pair(t testing.TB) pair {
	t.Helper()
	p, err := f.dial()
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// dial makes a pair; it may run outside the test's goroutine.
func (f *fixture) dial() (pair, error) {
	f.mu.Lock()
	client, a, err1 := dialAccept(f.front)
	b, backend, err2 := dialAccept(f.app)
	f.mu.Unlock()
	p := pair{client: client, a: a, b: b, backend: backend}
	if err := errors.Join(err1, err2); err != nil {
		for _, c := range []net.Conn{client, a, b, backend} {
			if c != nil {
				c.Close()
			}
		}
		return pair{}, err
	}
	switch f.kind {
	case kindTLS:
		tc := tls.Client(client, f.clientTLS)
		ts := tls.Server(a, f.serverTLS)
		errc := make(chan error, 1)
		go func() { errc <- ts.Handshake() }()
		err1, err2 := tc.Handshake(), <-errc
		p.client, p.a = tc, ts
		if err := errors.Join(err1, err2); err != nil {
			p.closeAll()
			return pair{}, err
		}
	case kindPlain:
		p.a, p.b = plainConn{a.(*net.TCPConn)}, plainConn{b.(*net.TCPConn)}
	}
	return p, nil
}

func dialAccept(ln net.Listener) (dialed, accepted net.Conn, err error) {
	d, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		return nil, nil, err
	}
	a, err := ln.Accept()
	if err != nil {
		d.Close()
		return nil, nil, err
	}
	return d, a, nil
}

// relay starts Copy on p and returns a channel for its Result.
func relay(ctx context.Context, p pair, opts Options) <-chan Result {
	res := make(chan Result, 1)
	go func() { res <- Copy(ctx, p.a, p.b, opts) }()
	return res
}

// wait returns Copy's Result or fails the test after d.
func wait(t testing.TB, res <-chan Result, d time.Duration) Result {
	t.Helper()
	select {
	case r := <-res:
		return r
	case <-time.After(d):
		t.Fatalf("Copy still running after %v", d)
		return Result{}
	}
}

// tlsConfigs returns TLS 1.3 configurations for a server with an in-memory
// self-signed ECDSA certificate and a client that trusts it.
func tlsConfigs(t testing.TB) (server, client *tls.Config) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "relay.test"},
		DNSNames:              []string{"relay.test"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(cert)
	server = &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key, Leaf: cert}},
	}
	client = &tls.Config{MinVersion: tls.VersionTLS13, RootCAs: roots, ServerName: "relay.test"}
	return server, client
}

// payload returns n deterministic pseudo-random bytes, different per seed.
func payload(n int, seed uint64) []byte {
	p := make([]byte, n)
	var s [32]byte
	s[0] = byte(seed)
	s[1] = byte(n)
	s[2] = byte(n >> 8)
	mrand.NewChaCha8(s).Read(p)
	return p
}

// closeWriteConn half-closes a test endpoint.
func closeWriteConn(t testing.TB, c net.Conn) {
	t.Helper()
	if err := c.(closeWriter).CloseWrite(); err != nil {
		t.Errorf("CloseWrite: %v", err)
	}
}

// readAll reads c to EOF within d.
func readAll(c net.Conn, d time.Duration) ([]byte, error) {
	c.SetReadDeadline(time.Now().Add(d))
	return io.ReadAll(c)
}

// goroutinesBackTo waits until the number of goroutines is at most n, and
// reports the last count seen.
func goroutinesBackTo(n int, d time.Duration) int {
	end := time.Now().Add(d)
	for {
		g := runtime.NumGoroutine()
		if g <= n || time.Now().After(end) {
			return g
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// isEOF reports whether err is what a reader sees when the relay closes its
// peer: EOF, or a reset.
func isEOF(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, syscall.ECONNRESET)
}

// relayClosed reports an error unless Copy closed both a and b (without
// waiting for a garbage collection to finalise them).
func relayClosed(p pair) error {
	for name, c := range map[string]net.Conn{"a": p.a, "b": p.b} {
		if err := c.SetReadDeadline(time.Time{}); !errors.Is(err, net.ErrClosed) {
			return fmt.Errorf("Copy returned with %s open (SetReadDeadline: %v)", name, err)
		}
	}
	return nil
}

// NetConn lets Copy find the TCP connection under a plainConn, as it does
// under the sidecars' wrappers, so that the buffered path can park.
func (c plainConn) NetConn() net.Conn { return c.TCPConn }
