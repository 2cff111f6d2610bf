package bench

import (
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/hpke"
	"crypto/mlkem"
	"crypto/rand"
	"crypto/x509"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/cloudflare/circl/kem"
	"github.com/cloudflare/circl/kem/mlkem/mlkem768"
	"github.com/cloudflare/circl/kem/xwing"
	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/credflow/credflow/internal/hostenv"
	"github.com/credflow/credflow/pqc/mldsatoken"
)

// OpResult is the median cost of one operation over repeats.
type OpResult struct {
	Scheme  string  `json:"scheme"`
	Op      string  `json:"op"`
	Micros  float64 `json:"us_per_op"`
	MinUS   float64 `json:"min_us"`
	MaxUS   float64 `json:"max_us"`
	Bytes   int     `json:"bytes,omitempty"` // size of what the op produces, where it means something
	Repeats int     `json:"repeats"`
}

// timeOp runs f n times per repeat and returns the median µs per op.
func timeOp(scheme, op string, n, repeats, size int, f func() error) (OpResult, error) {
	var per []float64
	for range repeats {
		start := time.Now()
		for range n {
			if err := f(); err != nil {
				return OpResult{}, fmt.Errorf("bench: %s %s: %w", scheme, op, err)
			}
		}
		per = append(per, float64(time.Since(start).Nanoseconds())/float64(n)/1000)
	}
	slices.Sort(per)
	return OpResult{Scheme: scheme, Op: op, Micros: per[len(per)/2], MinUS: per[0], MaxUS: per[len(per)-1], Bytes: size, Repeats: repeats}, nil
}

// RunKEM measures key generation, encapsulation and decapsulation of Go's
// crypto/mlkem and crypto/hpke against circl's ML-KEM-768 and X-Wing.
func RunKEM(n, repeats int) ([]OpResult, error) {
	var out []OpResult
	add := func(r OpResult, err error) error {
		out = append(out, r)
		return err
	}
	// Go crypto/mlkem ML-KEM-768.
	dk, err := mlkem.GenerateKey768()
	if err != nil {
		return nil, err
	}
	ek := dk.EncapsulationKey()
	_, ct := ek.Encapsulate()
	if err := add(timeOp("go crypto/mlkem ML-KEM-768", "keygen", n, repeats, len(ek.Bytes()), func() error { _, err := mlkem.GenerateKey768(); return err })); err != nil {
		return nil, err
	}
	if err := add(timeOp("go crypto/mlkem ML-KEM-768", "encaps", n, repeats, len(ct), func() error { ek.Encapsulate(); return nil })); err != nil {
		return nil, err
	}
	if err := add(timeOp("go crypto/mlkem ML-KEM-768", "decaps", n, repeats, 32, func() error { _, err := dk.Decapsulate(ct); return err })); err != nil {
		return nil, err
	}
	// circl schemes through the kem.Scheme interface.
	for _, sc := range []struct {
		name string
		s    kem.Scheme
	}{{"circl ML-KEM-768", mlkem768.Scheme()}, {"circl X-Wing", xwing.Scheme()}} {
		pk, sk, err := sc.s.GenerateKeyPair()
		if err != nil {
			return nil, err
		}
		ct, _, err := sc.s.Encapsulate(pk)
		if err != nil {
			return nil, err
		}
		if err := add(timeOp(sc.name, "keygen", n, repeats, sc.s.PublicKeySize(), func() error { _, _, err := sc.s.GenerateKeyPair(); return err })); err != nil {
			return nil, err
		}
		if err := add(timeOp(sc.name, "encaps", n, repeats, sc.s.CiphertextSize(), func() error { _, _, err := sc.s.Encapsulate(pk); return err })); err != nil {
			return nil, err
		}
		if err := add(timeOp(sc.name, "decaps", n, repeats, sc.s.SharedKeySize(), func() error { _, err := sc.s.Decapsulate(sk, ct); return err })); err != nil {
			return nil, err
		}
	}
	// Go crypto/hpke with the ML-KEM-768+X25519 hybrid KEM: one-shot
	// seal and open of a 32-byte message.
	for _, k := range []struct {
		name string
		kem  hpke.KEM
	}{{"go crypto/hpke MLKEM768-X25519", hpke.MLKEM768X25519()}, {"go crypto/hpke DHKEM(X25519) baseline", hpke.DHKEM(ecdhX25519())}} {
		priv, err := k.kem.GenerateKey()
		if err != nil {
			return nil, err
		}
		msg := make([]byte, 32)
		sealed, err := hpke.Seal(priv.PublicKey(), hpke.HKDFSHA256(), hpke.AES128GCM(), nil, msg)
		if err != nil {
			return nil, err
		}
		if err := add(timeOp(k.name, "seal", n, repeats, len(sealed), func() error {
			_, err := hpke.Seal(priv.PublicKey(), hpke.HKDFSHA256(), hpke.AES128GCM(), nil, msg)
			return err
		})); err != nil {
			return nil, err
		}
		if err := add(timeOp(k.name, "open", n, repeats, 0, func() error {
			_, err := hpke.Open(priv, hpke.HKDFSHA256(), hpke.AES128GCM(), nil, sealed)
			return err
		})); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// RunTokens measures an ES256 JWT against an ML-DSA-65 token bound to the
// SVID (package pqc/mldsatoken): sign and verify cost and token size.
// Verification includes everything a receiver does: for ES256 the
// signature with a known key; for ML-DSA-65 also the binding's chain and
// ES256 signature, as a receiver would without caching bindings.
func RunTokens(n, repeats int) ([]OpResult, error) {
	td := spiffeid.RequireTrustDomainFromString("bench.example")
	ca, caKey, err := newCA(td)
	if err != nil {
		return nil, err
	}
	svid, err := newSVID(ca, caKey, spiffeid.RequireFromPath(td, "/edge"))
	if err != nil {
		return nil, err
	}
	bundles := x509bundle.NewSet(x509bundle.FromX509Authorities(td, []*x509.Certificate{ca}))
	const aud = "spiffe://bench.example/backend"
	now := time.Now()
	claims := mldsatoken.Claims{Subject: "user-42", Audience: []string{aud}, IssuedAt: now.Unix(), Expiry: now.Add(time.Minute).Unix(), ID: "j", Txn: "t"}

	// ES256 JWT with go-jose.
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: key}, (&jose.SignerOptions{}).WithType("JWT"))
	if err != nil {
		return nil, err
	}
	es := func() (string, error) {
		return jwt.Signed(signer).Claims(map[string]any{"iss": svid.ID.String(), "sub": claims.Subject, "aud": claims.Audience,
			"iat": claims.IssuedAt, "exp": claims.Expiry, "jti": claims.ID, "txn": claims.Txn}).Serialize()
	}
	esTok, err := es()
	if err != nil {
		return nil, err
	}
	var out []OpResult
	add := func(r OpResult, err error) error {
		out = append(out, r)
		return err
	}
	if err := add(timeOp("ES256 JWT (go-jose)", "sign", n, repeats, len(esTok), func() error { _, err := es(); return err })); err != nil {
		return nil, err
	}
	if err := add(timeOp("ES256 JWT (go-jose)", "verify", n, repeats, 0, func() error {
		tok, err := jwt.ParseSigned(esTok, []jose.SignatureAlgorithm{jose.ES256})
		if err != nil {
			return err
		}
		var c map[string]any
		return tok.Claims(&key.PublicKey, &c)
	})); err != nil {
		return nil, err
	}
	ms, err := mldsatoken.NewSigner(svid, time.Hour)
	if err != nil {
		return nil, err
	}
	mlTok, err := ms.Sign(claims)
	if err != nil {
		return nil, err
	}
	if err := add(timeOp("ML-DSA-65 token, SVID-bound", "sign", n, repeats, len(mlTok), func() error { _, err := ms.Sign(claims); return err })); err != nil {
		return nil, err
	}
	if err := add(timeOp("ML-DSA-65 token, SVID-bound", "verify", n, repeats, 0, func() error {
		_, err := mldsatoken.Verify(mlTok, bundles, aud, time.Now())
		return err
	})); err != nil {
		return nil, err
	}
	if err := add(timeOp("ML-DSA-65 token, SVID-bound", "bind (keygen + ES256)", max(n/10, 1), repeats, 0, func() error {
		_, err := mldsatoken.NewSigner(svid, time.Hour)
		return err
	})); err != nil {
		return nil, err
	}
	return out, nil
}

// OpTable renders operation results as Markdown.
func OpTable(title, intro string, env *hostenv.Environment, rs []OpResult) string {
	var b strings.Builder
	fmt.Fprintf(&b, "# %s\n\n%s\n\n", title, intro)
	writeEnv(&b, env)
	b.WriteString("| scheme | operation | µs/op (median) | min–max | bytes |\n|---|---|---|---|---|\n")
	for _, r := range rs {
		size := ""
		if r.Bytes > 0 {
			size = fmt.Sprint(r.Bytes)
		}
		fmt.Fprintf(&b, "| %s | %s | %.1f | %.1f–%.1f | %s |\n", r.Scheme, r.Op, r.Micros, r.MinUS, r.MaxUS, size)
	}
	return b.String()
}

func writeEnv(b *strings.Builder, env *hostenv.Environment) {
	fmt.Fprintf(b, "Environment: %s, %d CPUs, GOMAXPROCS %d, kernel %s, %s, tcp_available_ulp %q, "+
		"cpu pressure avg10 %.2f → %.2f%s, %s.\n\n",
		env.CPU, env.NumCPU, env.GOMAXPROCS, env.Kernel, env.GoVersion, env.ULP,
		env.PressureBefore, env.PressureAfter, map[bool]string{true: " (NOISY)", false: ""}[env.Noisy],
		env.Time.Format("2006-01-02 15:04 UTC"))
}

func ecdhX25519() ecdh.Curve { return ecdh.X25519() }
