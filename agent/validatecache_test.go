package agent_test

import (
	"cmp"
	"crypto"
	"crypto/x509"
	"errors"
	"fmt"
	"reflect"
	"sync"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"

	"github.com/credflow/credflow/agent"
)

var exampleTD = spiffeid.RequireTrustDomainFromString("example.org")

// cacheFixture is a JWTValidationCache over a keyset, with a clock the
// test sets, and one token: issued at iat, expiring at exp.
type cacheFixture struct {
	ks       keyset
	bundle   *jwtbundle.Bundle // example.org's, in ks.bundles
	cache    *agent.JWTValidationCache
	clock    time.Time
	iat, exp time.Time
	token    string
}

func newCacheFixture(t testing.TB, leeway time.Duration, mod func(map[string]any)) *cacheFixture {
	t.Helper()
	ks := newKeyset(t)
	b, ok := ks.bundles.Get(exampleTD)
	if !ok {
		t.Fatal("no example.org bundle")
	}
	iat := time.Now().Truncate(time.Second)
	f := &cacheFixture{ks: ks, bundle: b, clock: iat, iat: iat, exp: iat.Add(5 * time.Minute)}
	f.cache = &agent.JWTValidationCache{Validator: agent.JWTValidator{Bundles: ks.bundles, Leeway: leeway}}
	f.cache.SetClock(func() time.Time { return f.clock })
	f.token = sign(t, jose.ES256, ks.key, map[jose.HeaderKey]any{"kid": "k1"}, claims(func(c map[string]any) {
		c["iat"], c["exp"] = f.iat.Unix(), f.exp.Unix()
		if mod != nil {
			mod(c)
		}
	}))
	return f
}

// copyKey returns a public key Equal to key but not the same value.
func copyKey(t *testing.T, key crypto.PublicKey) crypto.PublicKey {
	t.Helper()
	der, err := x509.MarshalPKIXPublicKey(key)
	if err != nil {
		t.Fatal(err)
	}
	out, err := x509.ParsePKIXPublicKey(der)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// sameSVID fails t unless got is what a fresh validation returned (want).
func sameSVID(t *testing.T, got, want *jwtsvid.SVID) {
	t.Helper()
	if got.ID != want.ID || !reflect.DeepEqual(got.Audience, want.Audience) || !got.Expiry.Equal(want.Expiry) ||
		!reflect.DeepEqual(got.Claims, want.Claims) || got.Hint != want.Hint || got.Marshal() != want.Marshal() {
		t.Fatalf("SVID %+v, a fresh validation gave %+v", got, want)
	}
}

// TestJWTValidationCache: a token validated once is answered from the cache
// while the JWT authority that signed it is still in the bundle, with the
// same key, and its times still hold at the clock's time; when either
// changes it is refused with the error a fresh validation gives, and
// dropped. Another audience is validated in full.
func TestJWTValidationCache(t *testing.T) {
	const aud2 = "spiffe://example.org/admin"
	at := func(d time.Duration, from func(*cacheFixture) time.Time) func(*testing.T, *cacheFixture) {
		return func(_ *testing.T, f *cacheFixture) { f.clock = from(f).Add(d) }
	}
	exp := func(f *cacheFixture) time.Time { return f.exp }
	iat := func(f *cacheFixture) time.Time { return f.iat }
	expired := func(c map[string]any) { c["exp"] = time.Now().Add(-time.Hour).Unix() }
	issuedAhead := func(c map[string]any) { c["iat"] = time.Now().Add(30 * time.Second).Unix() }
	notYet := func(c map[string]any) { c["nbf"] = time.Now().Add(30 * time.Second).Unix() }
	tests := []struct {
		name     string
		leeway   time.Duration
		mod      func(map[string]any)            // the token's claims
		first    string                          // audience of the first validation; default aud
		change   func(*testing.T, *cacheFixture) // after the first validation
		audience string                          // of the second validation; default aud
		refused  bool                            // the second is refused
		wantErr  error                           // and its error wraps wantErr, and reads
		twin     func(map[string]any)            // as a fresh validation's of a token so changed
		verified int64                           // full validations after the second
		kept     int                             // tokens kept after the second
	}{
		{name: "the same token again: a hit", verified: 1, kept: 1},
		{name: "59 s after exp, default leeway", change: at(59*time.Second, exp), verified: 1, kept: 1},
		{name: "61 s after exp, default leeway", change: at(61*time.Second, exp),
			refused: true, wantErr: jwt.ErrExpired, twin: expired, verified: 1},
		{name: "an hour after exp", change: at(time.Hour, exp),
			refused: true, wantErr: jwt.ErrExpired, twin: expired, verified: 1},
		{name: "9 s after exp, 10 s leeway", leeway: 10 * time.Second, change: at(9*time.Second, exp), verified: 1, kept: 1},
		{name: "11 s after exp, 10 s leeway", leeway: 10 * time.Second, change: at(11*time.Second, exp),
			refused: true, wantErr: jwt.ErrExpired, twin: expired, verified: 1},
		{name: "a leeway of an hour is a minute", leeway: time.Hour, change: at(61*time.Second, exp),
			refused: true, wantErr: jwt.ErrExpired, twin: expired, verified: 1},
		{name: "clock stepped back before iat, 10 s leeway", leeway: 10 * time.Second, change: at(-11*time.Second, iat),
			refused: true, wantErr: jwt.ErrIssuedInTheFuture, twin: issuedAhead, verified: 1},
		{name: "clock stepped back before nbf, 10 s leeway", leeway: 10 * time.Second, mod: func(c map[string]any) { c["nbf"] = c["iat"] },
			change: at(-11*time.Second, iat), refused: true, wantErr: jwt.ErrNotValidYet, twin: notYet, verified: 1},
		{name: "signing key removed from the bundle", change: func(_ *testing.T, f *cacheFixture) {
			f.bundle.RemoveJWTAuthority("k1")
		}, refused: true, verified: 2},
		{name: "signing key replaced under its kid", change: func(t *testing.T, f *cacheFixture) {
			f.bundle.AddJWTAuthority("k1", newKeyset(t).key.Public())
		}, refused: true, verified: 2},
		{name: "every authority replaced", change: func(t *testing.T, f *cacheFixture) {
			f.bundle.SetJWTAuthorities(map[string]crypto.PublicKey{"k2": newKeyset(t).key.Public()})
		}, refused: true, verified: 2},
		{name: "bundle of the trust domain gone", change: func(_ *testing.T, f *cacheFixture) {
			f.ks.bundles.Remove(exampleTD)
		}, refused: true, verified: 2},
		{name: "signing key removed, then an Equal copy put back", change: func(t *testing.T, f *cacheFixture) {
			f.bundle.RemoveJWTAuthority("k1")
			f.bundle.AddJWTAuthority("k1", copyKey(t, f.ks.key.Public()))
		}, verified: 1, kept: 1},
		{name: "another authority added", change: func(t *testing.T, f *cacheFixture) {
			f.bundle.AddJWTAuthority("k2", newKeyset(t).key.Public())
		}, verified: 1, kept: 1},
		{name: "another audience the token names", mod: func(c map[string]any) { c["aud"] = []string{aud, aud2} },
			audience: aud2, verified: 2, kept: 2},
		{name: "an audience the token does not name", audience: aud2, refused: true, verified: 2, kept: 1},
		{name: "an audience the token does not name, after a hit", mod: func(c map[string]any) { c["aud"] = []string{aud2} },
			first: aud2, audience: aud, refused: true, verified: 2, kept: 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			first, audience := cmp.Or(tt.first, aud), cmp.Or(tt.audience, aud)
			f := newCacheFixture(t, tt.leeway, tt.mod)
			fresh, err := f.cache.Validator.Validate(f.token, first)
			if err != nil {
				t.Fatal(err)
			}
			got, err := f.cache.Validate(f.token, first)
			if err != nil {
				t.Fatalf("first validation: %v", err)
			}
			sameSVID(t, got, fresh)
			if tt.change != nil {
				tt.change(t, f)
			}
			got, err = f.cache.Validate(f.token, audience)
			switch {
			case !tt.refused && err != nil:
				t.Fatalf("refused: %v", err)
			case !tt.refused:
				fresh, err := f.cache.Validator.Validate(f.token, audience)
				if err != nil {
					t.Fatalf("the cache accepted what a fresh validation refuses: %v", err)
				}
				sameSVID(t, got, fresh)
			case err == nil:
				t.Fatalf("accepted: %s", got.ID)
			case tt.wantErr != nil:
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("%v, want %v", err, tt.wantErr)
				}
				twin := sign(t, jose.ES256, f.ks.key, map[jose.HeaderKey]any{"kid": "k1"}, claims(tt.twin))
				if _, fresh := f.cache.Validator.Validate(twin, audience); fresh == nil || err.Error() != fresh.Error() {
					t.Fatalf("%q, a fresh validation says %v", err, fresh)
				}
			default:
				if _, fresh := f.cache.Validator.Validate(f.token, audience); fresh == nil || err.Error() != fresh.Error() {
					t.Fatalf("%v, a fresh validation says %v", err, fresh)
				}
			}
			if n := f.cache.Verified(); n != tt.verified {
				t.Errorf("%d full validations, want %d", n, tt.verified)
			}
			if n := f.cache.Len(); n != tt.kept {
				t.Errorf("%d tokens kept, want %d", n, tt.kept)
			}
			// Refused once, validated in full and refused again: nothing
			// of the refusal is kept. (A full validation reads the real
			// clock, not the test's: the times are left out.)
			if tt.refused && tt.wantErr == nil {
				if _, err := f.cache.Validate(f.token, audience); err == nil {
					t.Fatal("accepted the second time")
				}
				if n := f.cache.Verified(); n != tt.verified+1 {
					t.Errorf("%d full validations after a third, want %d", n, tt.verified+1)
				}
			}
		})
	}
}

// rotatingSource hands out a copy of its bundle, then replaces the key
// under kid in the bundle itself: the JWT authority is revoked while the
// token is being verified with the copy.
type rotatingSource struct {
	bundle *jwtbundle.Bundle
	kid    string
	next   crypto.PublicKey
	once   sync.Once
}

func (r *rotatingSource) GetJWTBundleForTrustDomain(td spiffeid.TrustDomain) (*jwtbundle.Bundle, error) {
	b, err := r.bundle.GetJWTBundleForTrustDomain(td)
	if err != nil {
		return nil, err
	}
	held := b.Clone()
	r.once.Do(func() { r.bundle.AddJWTAuthority(r.kid, r.next) })
	return held, nil
}

// TestJWTValidationCacheKeepsTheKeyThatVerified: the key a kept token is
// checked against is the one that verified its signature, not the one the
// bundle holds under its kid once the validation is over.
func TestJWTValidationCacheKeepsTheKeyThatVerified(t *testing.T) {
	ks := newKeyset(t)
	b, _ := ks.bundles.Get(exampleTD)
	src := &rotatingSource{bundle: b, kid: "k1", next: newKeyset(t).key.Public()}
	c := &agent.JWTValidationCache{Validator: agent.JWTValidator{Bundles: src}}
	tok := sign(t, jose.ES256, ks.key, map[jose.HeaderKey]any{"kid": "k1"}, claims(nil))
	if _, err := c.Validate(tok, aud); err != nil {
		t.Fatalf("verified with the key before the rotation: %v", err)
	}
	if svid, err := c.Validate(tok, aud); err == nil {
		t.Fatalf("accepted from the cache after its key was replaced: %s", svid.ID)
	}
	if _, err := c.Validator.Validate(tok, aud); err == nil {
		t.Fatal("a fresh validation accepts it")
	}
}

// TestJWTValidationCacheKeepsNoErrors: a refused token costs a full
// validation each time, with the error of JWTValidator.Validate, and is
// never kept.
func TestJWTValidationCacheKeepsNoErrors(t *testing.T) {
	ks := newKeyset(t)
	other := newKeyset(t)
	kid := map[jose.HeaderKey]any{"kid": "k1"}
	tests := []struct {
		name, token, audience string
	}{
		{"signed by another key", sign(t, jose.ES256, other.key, kid, claims(nil)), aud},
		{"expired", sign(t, jose.ES256, ks.key, kid, claims(func(c map[string]any) { c["exp"] = time.Now().Add(-time.Hour).Unix() })), aud},
		{"unknown kid", sign(t, jose.ES256, ks.key, map[jose.HeaderKey]any{"kid": "k9"}, claims(nil)), aud},
		{"no kid", sign(t, jose.ES256, ks.key, nil, claims(nil)), aud},
		{"another audience", sign(t, jose.ES256, ks.key, kid, claims(nil)), "spiffe://example.org/other"},
		{"no audience asked for", sign(t, jose.ES256, ks.key, kid, claims(nil)), ""},
		{"over MaxJWTSize", sign(t, jose.ES256, ks.key, kid, claims(func(c map[string]any) { c["pad"] = string(make([]byte, agent.MaxJWTSize)) })), aud},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := &agent.JWTValidationCache{Validator: agent.JWTValidator{Bundles: ks.bundles}}
			_, want := c.Validator.Validate(tt.token, tt.audience)
			if want == nil {
				t.Fatal("a fresh validation accepts it")
			}
			for range 3 {
				if svid, err := c.Validate(tt.token, tt.audience); err == nil || err.Error() != want.Error() {
					t.Fatalf("%v (%v), a fresh validation says %v", err, svid, want)
				}
			}
			if n := c.Len(); n != 0 {
				t.Fatalf("%d tokens kept", n)
			}
		})
	}
}

// TestJWTValidationCacheBound: a cache never keeps more than Max tokens;
// when full, it drops the tokens past their exp and leeway first.
func TestJWTValidationCacheBound(t *testing.T) {
	ks := newKeyset(t)
	kid := map[jose.HeaderKey]any{"kid": "k1"}
	now := time.Now().Truncate(time.Second)
	token := func(i int, exp time.Time) string {
		return sign(t, jose.ES256, ks.key, kid, claims(func(c map[string]any) {
			c["jti"], c["iat"], c["exp"] = fmt.Sprint(i), now.Unix(), exp.Unix()
		}))
	}
	for _, tt := range []struct{ max, extra int }{{1, 1}, {1, 5}, {8, 1}, {8, 20}} {
		t.Run(fmt.Sprintf("max %d, %d more", tt.max, tt.extra), func(t *testing.T) {
			c := &agent.JWTValidationCache{Validator: agent.JWTValidator{Bundles: ks.bundles}, Max: tt.max}
			for i := range tt.max + tt.extra {
				if _, err := c.Validate(token(i, now.Add(time.Hour)), aud); err != nil {
					t.Fatal(err)
				}
				if n := c.Len(); n > tt.max || n != min(i+1, tt.max) {
					t.Fatalf("after %d tokens, %d kept, want %d", i+1, n, min(i+1, tt.max))
				}
			}
		})
	}
	t.Run("expired first", func(t *testing.T) {
		const max = 8
		c := &agent.JWTValidationCache{Validator: agent.JWTValidator{Bundles: ks.bundles}, Max: max}
		clock := now
		c.SetClock(func() time.Time { return clock })
		var short, long []string
		for i := range max {
			if i%3 == 0 {
				short = append(short, token(i, now.Add(time.Minute)))
			} else {
				long = append(long, token(i, now.Add(time.Hour)))
			}
		}
		for _, tok := range append(short, long...) {
			if _, err := c.Validate(tok, aud); err != nil {
				t.Fatal(err)
			}
		}
		clock = now.Add(3 * time.Minute) // short past exp and leeway
		for i := range short {
			if _, err := c.Validate(token(100+i, now.Add(time.Hour)), aud); err != nil {
				t.Fatal(err)
			}
		}
		verified := c.Verified()
		for _, tok := range long {
			if _, err := c.Validate(tok, aud); err != nil {
				t.Fatal(err)
			}
		}
		if n := c.Verified() - verified; n != 0 {
			t.Errorf("%d of the %d unexpired tokens were evicted while expired ones were kept", n, len(long))
		}
		if n := c.Len(); n != max {
			t.Errorf("%d kept, want %d", n, max)
		}
	})
}

// TestJWTValidationCacheConcurrent, for the race detector: goroutines
// validate the same and different tokens, with evictions, while the bundle
// changes under them: each answer is right.
func TestJWTValidationCacheConcurrent(t *testing.T) {
	ks := newKeyset(t)
	other := newKeyset(t)
	b, _ := ks.bundles.Get(exampleTD)
	kid := map[jose.HeaderKey]any{"kid": "k1"}
	var good []string
	for i := range 12 {
		good = append(good, sign(t, jose.ES256, ks.key, kid, claims(func(c map[string]any) { c["jti"] = fmt.Sprint(i) })))
	}
	// Signed by a key the bundle holds under "k2" only now and then.
	sometimes := sign(t, jose.ES256, other.key, map[jose.HeaderKey]any{"kid": "k2"}, claims(nil))
	c := &agent.JWTValidationCache{Validator: agent.JWTValidator{Bundles: ks.bundles}, Max: 8}
	stop := make(chan struct{})
	var churn sync.WaitGroup
	churn.Go(func() {
		for {
			select {
			case <-stop:
				return
			default:
			}
			b.AddJWTAuthority("k2", other.key.Public())
			b.RemoveJWTAuthority("k2")
		}
	})
	var wg sync.WaitGroup
	for g := range 16 {
		wg.Go(func() {
			for i := range 200 {
				tok := good[(g+i)%len(good)]
				if i%2 == 0 {
					tok = good[0] // the same token from everyone
				}
				svid, err := c.Validate(tok, aud)
				if err != nil || svid.ID.String() != "spiffe://example.org/frontend" || svid.Marshal() != tok {
					t.Errorf("goroutine %d: %v, %v", g, svid, err)
					return
				}
				c.Validate(sometimes, aud) // either answer is right here
			}
		})
	}
	wg.Wait()
	close(stop)
	churn.Wait()
	if n := c.Len(); n > 8 {
		t.Errorf("%d kept, over Max", n)
	}
	// Out of the bundle for good: no goroutine's hit survives it.
	b.RemoveJWTAuthority("k2")
	if _, err := c.Validate(sometimes, aud); err == nil {
		t.Error("accepted a token whose key has left the bundle")
	}
}

func benchToken(b *testing.B) (keyset, string) {
	ks := newKeyset(b)
	return ks, sign(b, jose.ES256, ks.key, map[jose.HeaderKey]any{"kid": "k1"}, claims(func(c map[string]any) {
		c["exp"] = time.Now().Add(time.Hour).Unix()
	}))
}

// BenchmarkJWTValidator validates one ES256 JWT-SVID in full each time.
func BenchmarkJWTValidator(b *testing.B) {
	ks, tok := benchToken(b)
	v := agent.JWTValidator{Bundles: ks.bundles}
	for b.Loop() {
		if _, err := v.Validate(tok, aud); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkJWTCache validates the token of BenchmarkJWTValidator through a
// JWTValidationCache: after the first, every validation is a hit.
func BenchmarkJWTCache(b *testing.B) {
	ks, tok := benchToken(b)
	c := &agent.JWTValidationCache{Validator: agent.JWTValidator{Bundles: ks.bundles}}
	for b.Loop() {
		if _, err := c.Validate(tok, aud); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkJWTCacheParallel is BenchmarkJWTCache from GOMAXPROCS
// goroutines at once, for the lock's contention.
func BenchmarkJWTCacheParallel(b *testing.B) {
	ks, tok := benchToken(b)
	c := &agent.JWTValidationCache{Validator: agent.JWTValidator{Bundles: ks.bundles}}
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := c.Validate(tok, aud); err != nil {
				b.Error(err)
				return
			}
		}
	})
}
