package app

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"time"

	"github.com/credflow/credflow/credential"
	"github.com/credflow/credflow/internal/config"
	"github.com/credflow/credflow/proxy"
)

// credentials are the running credential sources and the egress settings
// that inject them.
type credentials struct {
	caches []*credential.Cache
	egress map[string]*proxy.Egress // by listener name
}

// newCredentials builds a Cache for each configured credential source and
// the settings of each egress listener. A file source, and an OAuth2
// source's client secret file, is read once now, so that a missing file or
// a value that cannot go in a header (CR, LF, other control bytes) stops
// the start with its field named; an OAuth2 source is fetched by Run, the
// workload's JWT-SVID being needed first.
func newCredentials(ctx context.Context, cfg *config.Config, tokens proxy.TokenSource, log *slog.Logger) (*credentials, error) {
	cs := &credentials{egress: map[string]*proxy.Egress{}}
	byName := map[string]*credential.Cache{}
	for i, c := range cfg.Credentials {
		src, err := credentialSource(c, tokens)
		if err != nil {
			return nil, fmt.Errorf("credentials[%d] (%s): %w", i, c.Name, err)
		}
		if f, ok := src.(credential.File); ok {
			if _, err := f.Fetch(ctx); err != nil {
				return nil, fmt.Errorf("credentials[%d] (%s): %w", i, c.Name, err)
			}
		}
		if o, ok := src.(*credential.OAuth2); ok && o.Secret != nil {
			if _, err := o.Secret.Fetch(ctx); err != nil {
				return nil, fmt.Errorf("credentials[%d] (%s): oauth2.client_secret_file: %w", i, c.Name, err)
			}
		}
		cache := &credential.Cache{Name: c.Name, Source: src, Refresh: c.Refresh, Timeout: c.Timeout, Log: log}
		cs.caches = append(cs.caches, cache)
		byName[c.Name] = cache
	}
	for i, out := range cfg.Outbound {
		if out.Egress == nil {
			continue
		}
		eg := &proxy.Egress{ServerName: out.Egress.ServerName}
		if out.Egress.CAFile != "" {
			roots, err := loadRoots(out.Egress.CAFile)
			if err != nil {
				return nil, fmt.Errorf("outbound[%d].egress.ca_file: %w", i, err)
			}
			eg.RootCAs = roots
		}
		if len(out.Egress.Inject) > 0 {
			inj := &credential.Injector{Log: log}
			for _, in := range out.Egress.Inject {
				inj.Rules = append(inj.Rules, credential.Rule{Cache: byName[in.Credential], Paths: in.Paths,
					Place: credential.Place(in.Place), Name: in.Name, RefuseApp: in.RefuseApp, Optional: in.Optional})
			}
			eg.Inject = inj
		}
		cs.egress[out.Name] = eg
	}
	return cs, nil
}

// run keeps every credential fresh until ctx ends.
func (cs *credentials) run(ctx context.Context) {
	for _, c := range cs.caches {
		go c.Run(ctx)
	}
}

// states is /debug/credentials.
func (cs *credentials) states() []credential.State {
	out := make([]credential.State, len(cs.caches))
	for i, c := range cs.caches {
		out[i] = c.State()
	}
	return out
}

// credentialSource builds the source of a configured credential.
func credentialSource(c config.Credential, tokens proxy.TokenSource) (credential.Source, error) {
	if c.OAuth2 == nil {
		return credential.File{Path: c.File}, nil
	}
	o := c.OAuth2
	tr := &http.Transport{
		DialContext:         (&net.Dialer{Timeout: 5 * time.Second}).DialContext,
		TLSHandshakeTimeout: 5 * time.Second,
		ForceAttemptHTTP2:   true,
		MaxIdleConnsPerHost: 1,
		IdleConnTimeout:     time.Minute,
		TLSClientConfig:     &tls.Config{MinVersion: tls.VersionTLS12},
	}
	if o.CAFile != "" {
		roots, err := loadRoots(o.CAFile)
		if err != nil {
			return nil, fmt.Errorf("oauth2.ca_file: %w", err)
		}
		tr.TLSClientConfig.RootCAs = roots
	}
	return &credential.OAuth2{
		TokenURL: o.TokenURL, Method: o.Auth, ClientID: o.ClientID, Scopes: o.Scopes,
		Audience: o.Audience, Resource: o.Resource, AssertionAudience: o.AssertionAudience,
		Assertion: func(ctx context.Context, audience string) (string, error) {
			svid, err := tokens.FetchJWTSVID(ctx, audience)
			if err != nil {
				return "", err
			}
			return svid.Marshal(), nil
		},
		Secret: secretFile(o.ClientSecretFile),
		// A redirect would carry the assertion to another endpoint: the
		// 3xx is the answer, and the fetch fails naming it.
		Client: &http.Client{Transport: tr, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }},
	}, nil
}

// secretFile is the source of a client secret in a mounted file; nil for
// none.
func secretFile(path string) credential.Source {
	if path == "" {
		return nil
	}
	return credential.File{Path: path}
}

// loadRoots reads a PEM file of CA certificates.
func loadRoots(path string) (*x509.CertPool, error) {
	pem, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("%s holds no PEM certificate", path)
	}
	return roots, nil
}
