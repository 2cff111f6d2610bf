package edge

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/go-jose/go-jose/v4"
)

// Key-set limits and defaults.
const (
	// MaxJWKSSize bounds a JWKS document.
	MaxJWKSSize = 1 << 20
	// DefaultRefresh is how long a key set is used before it is read
	// again, when KeySetConfig.Refresh is zero.
	DefaultRefresh = 5 * time.Minute
	// MinRefresh is the shortest time between two reads of a key set,
	// whatever its cache headers say and however many tokens name keys it
	// does not hold (or Refresh, if that is shorter).
	MinRefresh = 30 * time.Second
	// FetchTimeout bounds one fetch of a JWKS URL.
	FetchTimeout = 5 * time.Second
)

// KeySetConfig says where an issuer's keys come from: exactly one of File
// and URL.
type KeySetConfig struct {
	// File is a JWKS file.
	File string
	// URL is an https:// JWKS URL.
	URL string
	// TLS is the client configuration for URL; nil means the system roots.
	TLS *tls.Config
	// Refresh is how long a key set is used before it is read again, so
	// that a key the issuer removed stops being trusted; default
	// DefaultRefresh. A URL whose response says it is fresh for less
	// (Cache-Control max-age minus Age, no-cache, no-store, or Expires) is
	// read again sooner, but not within MinRefresh of the last read.
	Refresh time.Duration
	// OnRefresh, if set, is called after every read with its outcome
	// (metrics).
	OnRefresh func(err error)
}

// KeySet is an issuer's cached JWKS.
//
// A token that needs the set once it is due is validated after a new read;
// tokens validated meanwhile use the keys held, so a slow issuer delays one
// validation, not all of them. A token naming a key ID the set does not
// hold reads it again too, at most once per MinRefresh. At most one read is
// in flight; a failed read keeps the keys held and is retried after
// MinRefresh.
type KeySet struct {
	cfg    KeySetConfig
	client *http.Client
	now    func() time.Time

	mu     sync.Mutex // guards the fields below; never held during a read
	keys   []jose.JSONWebKey
	last   time.Time // start of the last read
	due    time.Time // when the keys must be read again; zero: never read
	flight *flight   // the read in progress, if any
}

// flight is a read in progress; done is closed when err is set.
type flight struct {
	done chan struct{}
	err  error
}

// NewKeySet returns a key set; nothing is read until Load or the first Key.
func NewKeySet(cfg KeySetConfig) (*KeySet, error) {
	if (cfg.File == "") == (cfg.URL == "") {
		return nil, errors.New("edge: a key set needs exactly one of a JWKS file and a JWKS URL")
	}
	if cfg.URL != "" {
		u, err := url.Parse(cfg.URL)
		if err != nil || u.Scheme != "https" || u.Host == "" {
			return nil, fmt.Errorf("edge: JWKS URL %q is not an https:// URL", cfg.URL)
		}
	}
	if cfg.Refresh <= 0 {
		cfg.Refresh = DefaultRefresh
	}
	ks := &KeySet{cfg: cfg, now: time.Now}
	ks.client = &http.Client{
		Timeout: FetchTimeout,
		Transport: &http.Transport{
			TLSClientConfig:     cfg.TLS,
			TLSHandshakeTimeout: FetchTimeout,
			Proxy:               http.ProxyFromEnvironment,
		},
		CheckRedirect: func(req *http.Request, via []*http.Request) error {
			if req.URL.Scheme != "https" || len(via) > 3 {
				return errors.New("edge: JWKS redirect refused")
			}
			return nil
		},
	}
	return ks, nil
}

// Load reads the key set now, whatever its refresh interval, or waits for
// the read in flight.
func (ks *KeySet) Load(ctx context.Context) error {
	return ks.refresh(ctx)
}

// Key returns the key for kid usable with alg. An empty kid matches when
// the set holds exactly one key usable with alg.
func (ks *KeySet) Key(ctx context.Context, kid, alg string) (*jose.JSONWebKey, error) {
	ks.mu.Lock()
	keys, now := ks.keys, ks.now()
	due, reading := !now.Before(ks.due), ks.flight != nil
	recent := now.Sub(ks.last) < ks.floor()
	ks.mu.Unlock()

	k := find(keys, kid, alg)
	var err error
	switch {
	case due && !reading:
		// This validation reads the set; a failed read keeps the keys.
		err = ks.refresh(ctx)
	case k != nil:
		return k, nil
	case reading:
		// An unknown key: wait for the read in flight.
		err = ks.refresh(ctx)
	case recent:
		return nil, errors.New("no such key, and the key set was read recently")
	default:
		err = ks.refresh(ctx)
	}
	ks.mu.Lock()
	keys = ks.keys
	ks.mu.Unlock()
	if k := find(keys, kid, alg); k != nil {
		return k, nil
	}
	if err != nil {
		return nil, err
	}
	return nil, errors.New("no such key after a refresh")
}

func find(keys []jose.JSONWebKey, kid, alg string) *jose.JSONWebKey {
	var match *jose.JSONWebKey
	n := 0
	for i := range keys {
		k := &keys[i]
		if k.Use == "enc" || (k.Algorithm != "" && k.Algorithm != alg) || !k.Valid() || !k.IsPublic() {
			continue
		}
		if kid != "" && k.KeyID == kid {
			return k
		}
		if kid == "" {
			match, n = k, n+1
		}
	}
	if n == 1 {
		return match
	}
	return nil
}

// floor is the shortest time between two reads.
func (ks *KeySet) floor() time.Duration {
	return min(MinRefresh, ks.cfg.Refresh)
}

// refresh reads the set, or waits for the read in flight, and returns its
// outcome. The read does not hold ks.mu, and is not cancelled with ctx:
// other validations may be waiting for it (FetchTimeout bounds it).
func (ks *KeySet) refresh(ctx context.Context) error {
	ks.mu.Lock()
	if f := ks.flight; f != nil {
		ks.mu.Unlock()
		select {
		case <-f.done:
			return f.err
		case <-ctx.Done():
			return fmt.Errorf("edge: waiting for the JWKS: %w", ctx.Err())
		}
	}
	f := &flight{done: make(chan struct{})}
	ks.flight, ks.last = f, ks.now()
	ks.mu.Unlock()

	var set jose.JSONWebKeySet
	data, header, err := ks.read(context.WithoutCancel(ctx))
	if err == nil {
		if err = json.Unmarshal(data, &set); err != nil {
			err = fmt.Errorf("edge: JWKS does not parse: %w", err)
		}
	}

	ks.mu.Lock()
	now := ks.now()
	if err == nil {
		ks.keys = set.Keys
		ks.due = now.Add(ks.lifetime(header, now))
	} else {
		ks.due = now.Add(ks.floor())
	}
	ks.flight, f.err = nil, err
	ks.mu.Unlock()
	close(f.done)
	if ks.cfg.OnRefresh != nil {
		ks.cfg.OnRefresh(err)
	}
	return err
}

// lifetime is how long a set read at now with the response header h is
// used: Refresh, or less if h says so, but at least the floor.
func (ks *KeySet) lifetime(h http.Header, now time.Time) time.Duration {
	d := ks.cfg.Refresh
	if fresh, ok := freshness(h, now); ok {
		d = min(d, fresh)
	}
	return max(d, ks.floor())
}

// freshness reads how long a response stays fresh from its Cache-Control
// (max-age, less Age; no-cache and no-store mean not at all) or, without
// max-age, its Expires (against its Date, or now). ok is false when the
// header says nothing.
func freshness(h http.Header, now time.Time) (fresh time.Duration, ok bool) {
	for _, v := range h.Values("Cache-Control") {
		for d := range strings.SplitSeq(v, ",") {
			name, val, _ := strings.Cut(strings.TrimSpace(d), "=")
			switch strings.ToLower(name) {
			case "no-cache", "no-store":
				return 0, true
			case "max-age":
				secs, err := strconv.ParseInt(strings.Trim(val, `"`), 10, 64)
				if err != nil || secs < 0 {
					return 0, true // an unreadable max-age is stale
				}
				fresh, ok = time.Duration(min(secs, maxAgeCap))*time.Second, true
			}
		}
	}
	if ok {
		if age, err := strconv.ParseInt(h.Get("Age"), 10, 64); err == nil && age > 0 {
			fresh -= time.Duration(min(age, maxAgeCap)) * time.Second
		}
		return max(fresh, 0), true
	}
	if v := h.Get("Expires"); v != "" {
		exp, err := http.ParseTime(v)
		if err != nil {
			return 0, true // an invalid Expires is in the past (RFC 9111)
		}
		if date, err := http.ParseTime(h.Get("Date")); err == nil {
			now = date
		}
		return max(exp.Sub(now), 0), true
	}
	return 0, false
}

// maxAgeCap bounds the seconds read from a header, far above any Refresh.
const maxAgeCap = 1 << 31

// read returns the JWKS document and, for a URL, the response header.
func (ks *KeySet) read(ctx context.Context) ([]byte, http.Header, error) {
	if ks.cfg.File != "" {
		f, err := os.Open(ks.cfg.File)
		if err != nil {
			return nil, nil, fmt.Errorf("edge: %w", err)
		}
		defer f.Close()
		data, err := readLimited(f, ks.cfg.File)
		return data, nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, FetchTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, ks.cfg.URL, nil)
	if err != nil {
		return nil, nil, fmt.Errorf("edge: %w", err)
	}
	req.Header.Set("Accept", "application/jwk-set+json, application/json")
	resp, err := ks.client.Do(req)
	if err != nil {
		return nil, nil, fmt.Errorf("edge: fetching JWKS: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, nil, fmt.Errorf("edge: fetching JWKS %s: status %d", ks.cfg.URL, resp.StatusCode)
	}
	data, err := readLimited(resp.Body, ks.cfg.URL)
	return data, resp.Header, err
}

func readLimited(r io.Reader, name string) ([]byte, error) {
	data, err := io.ReadAll(io.LimitReader(r, MaxJWKSSize+1))
	if err != nil {
		return nil, fmt.Errorf("edge: reading JWKS %s: %w", name, err)
	}
	if len(data) > MaxJWKSSize {
		return nil, fmt.Errorf("edge: JWKS %s is over %d bytes", name, MaxJWKSSize)
	}
	return data, nil
}
