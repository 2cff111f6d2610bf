package app

import (
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"

	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/credflow/credflow/internal/config"
	"github.com/credflow/credflow/internal/logkey"
	"github.com/credflow/credflow/token/edge"
	"github.com/credflow/credflow/token/txn"
)

// newExchanger builds the edge exchange of a configuration. A JWKS file must
// load now; a JWKS URL that cannot be fetched yet is retried when the first
// token needs it, so the sidecar does not wait on the identity provider to
// start.
func newExchanger(ctx context.Context, c *config.Edge, svids x509svid.Source, m *edge.Metrics, log *slog.Logger) (*edge.Exchanger, error) {
	var issuers []edge.Issuer
	for _, is := range c.Issuers {
		kc := edge.KeySetConfig{File: is.JWKSFile, URL: is.JWKSURL, Refresh: is.JWKSRefresh, OnRefresh: m.Refreshed}
		if is.JWKSCAFile != "" {
			roots, err := loadRoots(is.JWKSCAFile)
			if err != nil {
				return nil, fmt.Errorf("edge issuer %s: %w", is.Issuer, err)
			}
			kc.TLS = &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}
		}
		ks, err := edge.NewKeySet(kc)
		if err != nil {
			return nil, fmt.Errorf("edge issuer %s: %w", is.Issuer, err)
		}
		if err := ks.Load(ctx); err != nil {
			if is.JWKSFile != "" {
				return nil, fmt.Errorf("edge issuer %s: %w", is.Issuer, err)
			}
			log.Warn("credflow: JWKS not loaded yet; retried on the first token", slog.String(logkey.Issuer, is.Issuer),
				slog.String(logkey.Error, err.Error()))
		}
		issuers = append(issuers, edge.Issuer{Issuer: is.Issuer, Audiences: is.Audiences, Algorithms: is.Algorithms, Keys: ks})
	}
	v, err := edge.NewValidator(issuers, c.Leeway)
	if err != nil {
		return nil, err
	}
	mint, err := txn.NewMinter(svids, txn.MintConfig{TTL: c.TxnTTL, Audiences: c.TxnAudiences, Scopes: c.Scopes})
	if err != nil {
		return nil, err
	}
	return edge.NewExchanger(v, mint), nil
}
