package bench

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
	"math/big"
	"net"
	"net/url"
	"slices"
	"sort"
	"syscall"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/credflow/credflow/proxy/mtls"
)

// KexGroups are the key-exchange groups measured, the baseline first.
var KexGroups = []tls.CurveID{tls.X25519, tls.CurveP256, tls.X25519MLKEM768, tls.SecP256r1MLKEM768, tls.SecP384r1MLKEM1024}

// KexResult is one repeat of the handshake scenario for one group.
type KexResult struct {
	Group   string `json:"group"`
	Resumed bool   `json:"resumed"`
	Repeat  int    `json:"repeat"`
	N       int    `json:"handshakes"`
	// CPUMicros is the CPU time of both sides together per handshake
	// (user+system of this process, which runs both).
	CPUMicros float64 `json:"cpu_us_per_handshake"`
	// PerSecond is sequential handshakes per second of wall time.
	PerSecond float64 `json:"handshakes_per_s"`
	P50Micros float64 `json:"p50_us"`
	P99Micros float64 `json:"p99_us"`
	// ClientHelloBytes is the size of the client's first flight (TLS
	// records), and Segments1460 the TCP segments it takes at a 1460-byte
	// MSS (loopback's MSS is 64 KiB, so it is one segment here).
	ClientHelloBytes int `json:"client_hello_bytes"`
	Segments1460     int `json:"segments_at_mss_1460"`
}

// RunKex measures full and resumed mutual TLS 1.3 handshakes, as the
// sidecar makes them (proxy/mtls configurations: SVIDs, verification and
// authorization in VerifyConnection), over real loopback TCP, n handshakes
// per group and mode per repeat, groups interleaved within each repeat.
func RunKex(ctx context.Context, n, repeats int) ([]KexResult, error) {
	server, client, bundles, err := newIdentities()
	if err != nil {
		return nil, err
	}
	allow := func(spiffeid.ID) bool { return true }

	var out []KexResult
	for r := range repeats {
		for _, resumed := range []bool{false, true} {
			for _, g := range KexGroups {
				if err := ctx.Err(); err != nil {
					return out, err
				}
				sc := mtls.Config{SVIDs: staticSVID{server}, Bundles: bundles, Authorize: allow}.Server()
				cc := mtls.Config{SVIDs: staticSVID{client}, Bundles: bundles, Authorize: allow}.Client()
				sc.CurvePreferences = []tls.CurveID{g}
				cc.CurvePreferences = []tls.CurveID{g}
				if !resumed {
					cc.ClientSessionCache = nil
				}
				res, err := measureHandshakes(sc, cc, n, resumed)
				if err != nil {
					return out, fmt.Errorf("bench: %s resumed=%v: %w", g, resumed, err)
				}
				res.Group, res.Resumed, res.Repeat = g.String(), resumed, r
				out = append(out, res)
			}
		}
	}
	return out, nil
}

type staticSVID struct{ svid *x509svid.SVID }

func (s staticSVID) GetX509SVID() (*x509svid.SVID, error) { return s.svid, nil }

// countingConn counts the bytes a client writes before its first read: the
// ClientHello flight.
type countingConn struct {
	net.Conn
	first   int
	reading bool
}

func (c *countingConn) Write(b []byte) (int, error) {
	if !c.reading {
		c.first += len(b)
	}
	return c.Conn.Write(b)
}

func (c *countingConn) Read(b []byte) (int, error) {
	c.reading = true
	return c.Conn.Read(b)
}

func measureHandshakes(sc, cc *tls.Config, n int, resumed bool) (KexResult, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return KexResult{}, err
	}
	defer ln.Close()
	serverErr := make(chan error, 1)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				serverErr <- nil
				return
			}
			tc := tls.Server(c, sc)
			if err := tc.Handshake(); err != nil {
				c.Close()
				serverErr <- err
				return
			}
			// One byte each way, so that session tickets are sent and
			// read, then close.
			buf := make([]byte, 1)
			if _, err := tc.Read(buf); err == nil {
				tc.Write(buf)
			}
			tc.Close()
		}
	}()
	one := func() (time.Duration, int, bool, error) {
		start := time.Now()
		raw, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			return 0, 0, false, err
		}
		cc2 := &countingConn{Conn: raw}
		tc := tls.Client(cc2, cc)
		defer tc.Close()
		if err := tc.Handshake(); err != nil {
			return 0, 0, false, err
		}
		elapsed := time.Since(start)
		buf := []byte{1}
		if _, err := tc.Write(buf); err != nil {
			return 0, 0, false, err
		}
		if _, err := tc.Read(buf); err != nil {
			return 0, 0, false, err
		}
		return elapsed, cc2.first, tc.ConnectionState().DidResume, nil
	}
	if resumed { // prime the session cache
		if _, _, _, err := one(); err != nil {
			return KexResult{}, err
		}
	}
	lat := make([]time.Duration, 0, n)
	hello := 0
	cpu0 := cpuTime()
	wall0 := time.Now()
	for range n {
		d, first, didResume, err := one()
		if err != nil {
			select {
			case serr := <-serverErr:
				return KexResult{}, errors.Join(err, serr)
			default:
			}
			return KexResult{}, err
		}
		if didResume != resumed {
			return KexResult{}, fmt.Errorf("resumed=%v, want %v", didResume, resumed)
		}
		lat = append(lat, d)
		hello = first
	}
	wall := time.Since(wall0)
	cpu := cpuTime() - cpu0
	slices.Sort(lat)
	return KexResult{
		N:                n,
		CPUMicros:        float64(cpu.Microseconds()) / float64(n),
		PerSecond:        float64(n) / wall.Seconds(),
		P50Micros:        float64(lat[n/2].Microseconds()),
		P99Micros:        float64(lat[(n*99)/100].Microseconds()),
		ClientHelloBytes: hello,
		Segments1460:     (hello + 1459) / 1460,
	}, nil
}

// cpuTime is this process's user plus system CPU time.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// newIdentities makes a trust domain "bench.example" with a server and a
// client SVID, and its bundle set.
func newIdentities() (server, client *x509svid.SVID, bundles *x509bundle.Set, err error) {
	td := spiffeid.RequireTrustDomainFromString("bench.example")
	ca, caKey, err := newCA(td)
	if err != nil {
		return nil, nil, nil, err
	}
	if server, err = newSVID(ca, caKey, spiffeid.RequireFromPath(td, "/server")); err != nil {
		return nil, nil, nil, err
	}
	if client, err = newSVID(ca, caKey, spiffeid.RequireFromPath(td, "/client")); err != nil {
		return nil, nil, nil, err
	}
	return server, client, x509bundle.NewSet(x509bundle.FromX509Authorities(td, []*x509.Certificate{ca})), nil
}

func newCA(td spiffeid.TrustDomain) (*x509.Certificate, *ecdsa.PrivateKey, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	u, _ := url.Parse(td.IDString())
	tmpl := &x509.Certificate{
		// Named subjects, as SPIRE's are: OpenSSL (HAProxy) takes a leaf
		// whose empty issuer equals its empty subject for self-signed.
		Subject:      pkix.Name{Organization: []string{"CredentialFlow bench"}, CommonName: td.Name() + " CA"},
		SerialNumber: big.NewInt(1), NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign, URIs: []*url.URL{u},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, nil, err
	}
	cert, err := x509.ParseCertificate(der)
	return cert, key, err
}

// newSVID issues an ECDSA P-256 X.509-SVID, as SPIRE does by default, with
// the given DNS names too (as SPIRE's dns_names do).
func newSVID(ca *x509.Certificate, caKey *ecdsa.PrivateKey, id spiffeid.ID, dnsNames ...string) (*x509svid.SVID, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	serial, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	tmpl := &x509.Certificate{
		Subject:      pkix.Name{Organization: []string{"CredentialFlow bench"}},
		SerialNumber: serial, NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour),
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		URIs:        []*url.URL{id.URL()},
		DNSNames:    dnsNames,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		return nil, err
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	return &x509svid.SVID{ID: id, Certificates: []*x509.Certificate{leaf}, PrivateKey: key}, nil
}

// KexSummary is the median and spread of one group and mode over repeats.
type KexSummary struct {
	Group              string
	Resumed            bool
	CPUMicros, CPUMin  float64
	CPUMax             float64
	PerSecond          float64
	PerSecMin          float64
	PerSecMax          float64
	P50Micros          float64
	P99Micros          float64
	ClientHelloBytes   int
	Segments1460       int
	RateVsBaseline     float64 // handshakes/s relative to X25519 in the same mode
	CPUVsBaseline      float64
	ResultsInThisGroup int
}

// SummarizeKex reduces results to medians per group and mode, with ratios
// against X25519 in the same mode.
func SummarizeKex(results []KexResult) []KexSummary {
	type key struct {
		g string
		r bool
	}
	by := map[key][]KexResult{}
	for _, r := range results {
		by[key{r.Group, r.Resumed}] = append(by[key{r.Group, r.Resumed}], r)
	}
	median := func(rs []KexResult, f func(KexResult) float64) (med, lo, hi float64) {
		v := make([]float64, len(rs))
		for i, r := range rs {
			v[i] = f(r)
		}
		sort.Float64s(v)
		return v[len(v)/2], v[0], v[len(v)-1]
	}
	var out []KexSummary
	for _, resumed := range []bool{false, true} {
		var base KexSummary
		for _, g := range KexGroups {
			rs := by[key{g.String(), resumed}]
			if len(rs) == 0 {
				continue
			}
			s := KexSummary{Group: g.String(), Resumed: resumed, ResultsInThisGroup: len(rs)}
			s.CPUMicros, s.CPUMin, s.CPUMax = median(rs, func(r KexResult) float64 { return r.CPUMicros })
			s.PerSecond, s.PerSecMin, s.PerSecMax = median(rs, func(r KexResult) float64 { return r.PerSecond })
			s.P50Micros, _, _ = median(rs, func(r KexResult) float64 { return r.P50Micros })
			s.P99Micros, _, _ = median(rs, func(r KexResult) float64 { return r.P99Micros })
			s.ClientHelloBytes, s.Segments1460 = rs[0].ClientHelloBytes, rs[0].Segments1460
			if g == tls.X25519 {
				base = s
			}
			if base.PerSecond > 0 {
				s.RateVsBaseline = s.PerSecond / base.PerSecond
				s.CPUVsBaseline = s.CPUMicros / base.CPUMicros
			}
			out = append(out, s)
		}
	}
	return out
}
