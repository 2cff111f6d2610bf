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
	"sync"
	"time"

	"github.com/go-jose/go-jose/v4"
)

// Key-set limits and defaults.
const (
	// MaxJWKSSize bounds a JWKS document.
	MaxJWKSSize = 1 << 20
	// DefaultRefresh is the shortest interval between two refreshes.
	DefaultRefresh = 5 * time.Minute
	// FetchTimeout bounds one fetch of a JWKS URL.
	FetchTimeout = 5 * time.Second
)

// KeySetConfig says where an issuer's keys come from: exactly one of File
// and URL.
type KeySetConfig struct {
	// File is a JWKS file, re-read on refresh.
	File string
	// URL is an https:// JWKS URL.
	URL string
	// TLS is the client configuration for URL; nil means the system roots.
	TLS *tls.Config
	// Refresh is the shortest interval between refreshes, which happen
	// only when a token names a key the set does not hold; default
	// DefaultRefresh.
	Refresh time.Duration
	// OnRefresh, if set, is called after every refresh attempt with its
	// outcome (metrics).
	OnRefresh func(err error)
}

// KeySet is an issuer's cached JWKS.
type KeySet struct {
	cfg    KeySetConfig
	client *http.Client
	now    func() time.Time

	mu     sync.Mutex // held across a refresh, so refreshes never overlap
	keys   jose.JSONWebKeySet
	last   time.Time // last refresh attempt
	loaded bool
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

// Load reads the key set now, whatever the refresh interval.
func (ks *KeySet) Load(ctx context.Context) error {
	ks.mu.Lock()
	defer ks.mu.Unlock()
	return ks.refreshLocked(ctx)
}

// Key returns the key for kid usable with alg, refreshing the set once if
// it does not hold one and the refresh interval has passed. An empty kid
// matches when the set holds exactly one key usable with alg.
func (ks *KeySet) Key(ctx context.Context, kid, alg string) (*jose.JSONWebKey, error) {
	ks.mu.Lock()
	defer ks.mu.Unlock()
	if k := ks.findLocked(kid, alg); k != nil {
		return k, nil
	}
	if ks.loaded && ks.now().Sub(ks.last) < ks.cfg.Refresh {
		return nil, errors.New("no such key, and the key set was refreshed recently")
	}
	if err := ks.refreshLocked(ctx); err != nil {
		return nil, err
	}
	if k := ks.findLocked(kid, alg); k != nil {
		return k, nil
	}
	return nil, errors.New("no such key after a refresh")
}

func (ks *KeySet) findLocked(kid, alg string) *jose.JSONWebKey {
	var match *jose.JSONWebKey
	n := 0
	for i := range ks.keys.Keys {
		k := &ks.keys.Keys[i]
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

// refreshLocked reads the set. A failed read keeps the keys already held.
func (ks *KeySet) refreshLocked(ctx context.Context) error {
	ks.last, ks.loaded = ks.now(), true
	data, err := ks.read(ctx)
	if err == nil {
		var set jose.JSONWebKeySet
		if err = json.Unmarshal(data, &set); err != nil {
			err = fmt.Errorf("edge: JWKS does not parse: %w", err)
		} else {
			ks.keys = set
		}
	}
	if ks.cfg.OnRefresh != nil {
		ks.cfg.OnRefresh(err)
	}
	return err
}

func (ks *KeySet) read(ctx context.Context) ([]byte, error) {
	if ks.cfg.File != "" {
		f, err := os.Open(ks.cfg.File)
		if err != nil {
			return nil, fmt.Errorf("edge: %w", err)
		}
		defer f.Close()
		return readLimited(f, ks.cfg.File)
	}
	ctx, cancel := context.WithTimeout(ctx, FetchTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, ks.cfg.URL, nil)
	if err != nil {
		return nil, fmt.Errorf("edge: %w", err)
	}
	req.Header.Set("Accept", "application/jwk-set+json, application/json")
	resp, err := ks.client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("edge: fetching JWKS: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("edge: fetching JWKS %s: status %d", ks.cfg.URL, resp.StatusCode)
	}
	return readLimited(resp.Body, ks.cfg.URL)
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
