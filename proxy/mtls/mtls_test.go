package mtls_test

import (
	"crypto/tls"
	"crypto/x509"
	"io"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/credflow/credflow/internal/testca"
	"github.com/credflow/credflow/proxy/mtls"
	"github.com/credflow/credflow/reason"
)

var td = spiffeid.RequireTrustDomainFromString("example.org")

type static struct{ svid *x509svid.SVID }

func (s static) GetX509SVID() (*x509svid.SVID, error) { return s.svid, nil }

// swappable is a bundle source whose bundle can be replaced, as a Source's
// is on every Workload API update.
type swappable struct {
	b atomic.Pointer[x509bundle.Bundle]
}

func (s *swappable) GetX509BundleForTrustDomain(spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	return s.b.Load(), nil
}

// handshake runs a server with cfg and a client presenting svid over
// loopback TCP and returns the server's verdict.
func handshake(t *testing.T, server *tls.Config, svid *x509svid.SVID) error {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	errc := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			errc <- err
			return
		}
		defer c.Close()
		errc <- tls.Server(c, server).Handshake()
	}()
	cert := testca.TLSCertificate(svid)
	c, err := tls.Dial("tcp", ln.Addr().String(), &tls.Config{
		MinVersion: tls.VersionTLS13, InsecureSkipVerify: true,
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &cert, nil },
	})
	if err == nil {
		c.Close()
	}
	return <-errc
}

// TestVerifyCacheFollowsBundleAndExpiry: a chain that verified is not
// trusted from the cache once the bundle changes or the certificate expires.
func TestVerifyCacheFollowsBundleAndExpiry(t *testing.T) {
	ca := testca.New(t, td)
	bundles := &swappable{}
	bundles.b.Store(ca.Bundle())
	cfg := mtls.Config{
		SVIDs:     static{ca.Issue(t, spiffeid.RequireFromPath(td, "/server"))},
		Bundles:   bundles,
		Authorize: func(spiffeid.ID) bool { return true },
	}.Server()
	now := time.Now()
	client := ca.Issue(t, spiffeid.RequireFromPath(td, "/client"), testca.WithValidity(now.Add(-time.Minute), now.Add(2*time.Second)))

	for i := range 2 { // the second is served from the cache
		if err := handshake(t, cfg, client); err != nil {
			t.Fatalf("handshake %d: %v", i, err)
		}
	}
	// The trust domain's root is replaced: the cached result no longer holds.
	bundles.b.Store(testca.New(t, td).Bundle())
	if err := handshake(t, cfg, client); reason.Of(err) != reason.Untrusted {
		t.Fatalf("after the bundle changed: %v, want %s", err, reason.Untrusted)
	}
	// Back to the original root: trusted again, then expired.
	bundles.b.Store(ca.Bundle())
	if err := handshake(t, cfg, client); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Until(client.Certificates[0].NotAfter) + 100*time.Millisecond)
	if err := handshake(t, cfg, client); reason.Of(err) != reason.Expired {
		t.Fatalf("after expiry: %v, want %s", err, reason.Expired)
	}
}

// TestClockSkew covers F11 for X.509-SVIDs: a peer whose clock runs up to
// ClockSkew ahead (its certificates start in our future) is accepted;
// further ahead it is refused as not_yet_valid, and an expired certificate
// as expired, with no leeway.
func TestClockSkew(t *testing.T) {
	ca := testca.New(t, td)
	cfg := mtls.Config{
		SVIDs:     static{ca.Issue(t, spiffeid.RequireFromPath(td, "/server"))},
		Bundles:   x509bundle.NewSet(ca.Bundle()),
		Authorize: func(spiffeid.ID) bool { return true },
	}.Server()
	client := spiffeid.RequireFromPath(td, "/client")
	now := time.Now()
	for _, c := range []struct {
		name     string
		from, to time.Duration // the leaf's validity, from now
		intermed bool
		want     reason.Reason
	}{
		{"issued 25s ahead", 25 * time.Second, time.Hour, false, ""},
		{"issued 25s ahead, by an intermediate", 25 * time.Second, time.Hour, true, ""},
		{"issued 30s behind", -30 * time.Second, time.Hour, false, ""},
		{"issued 2m ahead", 2 * time.Minute, time.Hour, false, reason.NotYetValid},
		{"expired 5s ago", -time.Hour, -5 * time.Second, false, reason.Expired},
	} {
		opts := []testca.Option{testca.WithValidity(now.Add(c.from), now.Add(c.to))}
		if c.intermed {
			opts = append(opts, testca.WithIntermediate())
		}
		err := handshake(t, cfg, ca.Issue(t, client, opts...))
		if got := reason.Of(err); got != c.want || (c.want == "") != (err == nil) {
			t.Errorf("%s: %v (reason %q), want %q", c.name, err, got, c.want)
		}
	}
}

// TestNoResumptionNearExpiry: a session whose peer certificate expires
// within ResumeMargin is not resumed; the next connection makes a full
// handshake, which brings the peer's current certificate.
func TestNoResumptionNearExpiry(t *testing.T) {
	ca := testca.New(t, td)
	now := time.Now()
	for _, c := range []struct {
		left   time.Duration // the server certificate's time left
		resume bool
	}{
		{time.Hour, true},
		{mtls.ResumeMargin / 2, false},
	} {
		server := mtls.Config{
			SVIDs:     static{ca.Issue(t, spiffeid.RequireFromPath(td, "/server"), testca.WithValidity(now.Add(-time.Minute), now.Add(c.left)))},
			Bundles:   x509bundle.NewSet(ca.Bundle()),
			Authorize: func(spiffeid.ID) bool { return true },
		}.Server()
		client := mtls.Config{
			SVIDs:     static{ca.Issue(t, spiffeid.RequireFromPath(td, "/client"))},
			Bundles:   x509bundle.NewSet(ca.Bundle()),
			Authorize: func(spiffeid.ID) bool { return true },
		}.Client()
		addr := ticketServer(t, server)
		var resumed []bool
		for range 2 {
			tc, err := tls.Dial("tcp", addr, client)
			if err != nil {
				t.Fatalf("%v left: %v", c.left, err)
			}
			tc.Read(make([]byte, 1)) // takes in the session ticket
			resumed = append(resumed, tc.ConnectionState().DidResume)
			tc.Close()
		}
		if resumed[0] || resumed[1] != c.resume {
			t.Errorf("server certificate with %v left: resumed %v, want second resumed = %v", c.left, resumed, c.resume)
		}
	}
}

// FuzzVerify: a peer's certificate, as bytes on the wire. Whatever
// crypto/x509 parses, Verify never panics and never accepts it: nothing
// the fuzzer makes is signed by the bundle's root.
func FuzzVerify(f *testing.F) {
	ca := testca.New(f, td)
	bundles := x509bundle.NewSet(ca.Bundle())
	for _, svid := range []*x509svid.SVID{
		testca.New(f, td).Issue(f, spiffeid.RequireFromPath(td, "/client")),
		testca.New(f, td).Issue(f, spiffeid.RequireFromPath(td, "/client"), testca.WithURIs("spiffe://example.org/a", "spiffe://example.org/b")),
		testca.New(f, td).Issue(f, spiffeid.RequireFromPath(td, "/client"), testca.WithURIs("spiffe://example.org/a\x00b")),
	} {
		f.Add(svid.Certificates[0].Raw)
	}
	f.Fuzz(func(t *testing.T, der []byte) {
		cert, err := x509.ParseCertificate(der)
		if err != nil {
			return
		}
		if id, err := mtls.Verify([]*x509.Certificate{cert}, bundles, x509.ExtKeyUsageClientAuth, time.Now()); err == nil {
			t.Fatalf("a fuzzed certificate verified as %s", id)
		}
	})
}

// TestNoExtKeyUsageAny is B7's rule on the code itself: no product source
// verifies with x509.ExtKeyUsageAny, which accepts any key usage.
func TestNoExtKeyUsageAny(t *testing.T) {
	root := filepath.Join("..", "..")
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		switch {
		case err != nil:
			return err
		case d.IsDir() && (d.Name() == "bin" || d.Name() == "testdata" || strings.HasPrefix(d.Name(), ".")) && path != root:
			return filepath.SkipDir
		case d.IsDir() || !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go"):
			return nil
		}
		src, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		if strings.Contains(string(src), "ExtKeyUsage"+"Any") {
			t.Errorf("%s uses x509.ExtKeyUsageAny", path)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// ticketServer serves TLS with conf on loopback until the test ends: each
// connection that completes its handshake gets one byte (a client reading
// it takes in its session ticket too), and is read until the client
// closes.
func ticketServer(t *testing.T, conf *tls.Config) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				tc := tls.Server(c, conf)
				if tc.Handshake() == nil {
					tc.Write([]byte{1})
					io.Copy(io.Discard, tc)
				}
			}()
		}
	}()
	return ln.Addr().String()
}
