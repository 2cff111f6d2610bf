package app

import (
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"time"

	"github.com/credflow/credflow/agent"
	"github.com/credflow/credflow/internal/config"
	"github.com/credflow/credflow/internal/logkey"
	"github.com/credflow/credflow/internal/peercred"
	"github.com/credflow/credflow/token/exchange"
)

// The agent's JWT-SVID cache tells the endpoint which audiences cost the
// SPIRE server nothing.
var _ exchange.Cache = (*agent.Source)(nil)

// tokenEndpoint is the running token endpoint.
type tokenEndpoint struct {
	ep  *exchange.Endpoint
	srv *http.Server
}

// startTokenEndpoint listens on the configured address and serves the
// token endpoint on it until close.
func startTokenEndpoint(te *config.TokenEndpoint, c exchange.Config, log *slog.Logger) (*tokenEndpoint, error) {
	var (
		ln  net.Listener
		err error
	)
	switch te.Network {
	case "unix":
		perm := fs.FileMode(0o600)
		if te.SocketGroup >= 0 {
			perm = 0o660
		}
		ln, err = peercred.ListenUnix(te.Address, perm, te.SocketGroup)
	default:
		ln, err = net.Listen("tcp", te.Address)
	}
	if err != nil {
		return nil, fmt.Errorf("token endpoint %s: %w", te.Address, err)
	}
	c.Callers, c.Audiences, c.Log = te.Callers, te.Audiences, log
	c.NewAudienceRate, c.NewAudienceBurst, c.MaxAudiences = te.NewAudienceRate, te.NewAudienceBurst, te.MaxAudiences
	t := &tokenEndpoint{ep: exchange.New(c)}
	t.srv = &http.Server{Handler: t.ep, ConnContext: t.ep.ConnContext,
		ReadHeaderTimeout: 5 * time.Second, ReadTimeout: 10 * time.Second, IdleTimeout: time.Minute, MaxHeaderBytes: 16 << 10}
	go t.srv.Serve(ln)
	addr := te.Address // the socket path: the listener names the path it was made at
	if te.Network == "tcp" {
		addr = ln.Addr().String()
	}
	log.Info("credflow: token endpoint listening", slog.String(logkey.Listener, te.Network+":"+addr))
	warnOpenTokenEndpoint(te, log)
	return t, nil
}

func (t *tokenEndpoint) close() { t.srv.Close() }

// warnOpenTokenEndpoint says when the endpoint serves every local user or
// every audience.
func warnOpenTokenEndpoint(te *config.TokenEndpoint, log *slog.Logger) {
	if te.Callers.Any() {
		if te.Network == "tcp" {
			log.Warn("credflow: token_endpoint has no callers: every local process, of any uid, can get this workload's tokens; list token_endpoint.callers.uids")
		} else {
			log.Info("credflow: token_endpoint has no callers: every process that may open the socket can get this workload's tokens")
		}
	}
	if slices.Contains(te.Audiences, exchange.AnyAudience) {
		log.Warn("credflow: token_endpoint issues JWT-SVIDs for any audience (\"*\")")
	}
}
