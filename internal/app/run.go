package app

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"

	"github.com/credflow/credflow/agent"
	"github.com/credflow/credflow/internal/admin"
	"github.com/credflow/credflow/internal/config"
	"github.com/credflow/credflow/internal/logkey"
	"github.com/credflow/credflow/pqc"
	"github.com/credflow/credflow/proxy"
	"github.com/credflow/credflow/proxy/edge"
	"github.com/credflow/credflow/proxy/exchange"
)

func configFlag(name, usage string, args []string, stderr io.Writer) (string, error) {
	var path string
	fs := newFlagSet(name, usage, stderr)
	fs.StringVar(&path, "c", "", "configuration file (YAML; see README)")
	if err := parseFlags(fs, args); err != nil {
		return "", err
	}
	if path == "" {
		return "", fmt.Errorf("%w: -c FILE is required", errUsage)
	}
	return path, nil
}

// runCheck validates a configuration file.
func runCheck(_ context.Context, args []string, stdout, stderr io.Writer) error {
	path, err := configFlag("check", "credflow check -c FILE", args, stderr)
	if err != nil {
		return err
	}
	c, err := config.Load(path)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(stdout, "%s: valid (%d inbound, %d outbound listeners)\n", path, len(c.Inbound), len(c.Outbound))
	return err
}

func newLogger(w io.Writer, level, format string) *slog.Logger {
	var l slog.Level
	_ = l.UnmarshalText([]byte(level))
	opts := &slog.HandlerOptions{Level: l}
	if format == "text" {
		return slog.New(slog.NewTextHandler(w, opts))
	}
	return slog.New(slog.NewJSONHandler(w, opts))
}

// runSidecar runs the sidecar until SIGINT or SIGTERM (which drain it) or
// ctx ends; SIGHUP reloads the configuration file.
func runSidecar(ctx context.Context, args []string, _, stderr io.Writer) error {
	path, err := configFlag("run", "credflow run -c FILE", args, stderr)
	if err != nil {
		return err
	}
	cfg, err := config.Load(path)
	if err != nil {
		return err
	}
	log := newLogger(stderr, cfg.LogLevel, cfg.LogFormat)
	if cfg.KeyExchange.Requires() {
		if err := pqc.HybridAvailable(); err != nil {
			return fmt.Errorf("key_exchange requires hybrid post-quantum groups, but %w", err)
		}
	}

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	src, err := agent.New(agent.Config{
		Addr:    workloadAPIAddr(cfg.WorkloadAPI),
		Logger:  log,
		Metrics: agent.NewMetrics(reg),
	})
	if err != nil {
		return err
	}
	pc := proxyConfig(cfg, src, log, proxy.NewMetrics(reg))
	var exchanger *edge.Exchanger
	if cfg.Edge != nil {
		if exchanger, err = newExchanger(ctx, cfg.Edge, src, edge.NewMetrics(reg), log); err != nil {
			return err
		}
		pc.Exchanger = exchanger
	}
	p, err := proxy.New(pc)
	if err != nil {
		return err
	}
	if err := p.Listen(); err != nil {
		return err
	}
	adminLn, err := net.Listen("tcp", cfg.Admin)
	if err != nil {
		return fmt.Errorf("admin listener %s: %w", cfg.Admin, err)
	}

	signals := make(chan os.Signal, 4)
	signal.Notify(signals, os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
	defer signal.Stop(signals)

	// srcCtx outlives the proxy, so outbound connections keep their SVID
	// while draining; proxyCtx stops the listeners.
	srcCtx, stopSrc := context.WithCancel(context.WithoutCancel(ctx))
	proxyCtx, stopProxy := context.WithCancel(srcCtx)
	defer stopSrc()
	defer stopProxy()

	srcDone := make(chan error, 1)
	go func() { srcDone <- src.Run(srcCtx) }()
	proxyDone := make(chan error, 1)
	go func() { proxyDone <- p.Serve(proxyCtx) }()
	adminSrv := &http.Server{
		Handler: admin.Handler(admin.Deps{
			Gatherer:         reg,
			SVIDs:            src,
			TrustDomains:     src.TrustDomains,
			Policies:         p.Policies,
			KeyExchange:      p.KeyExchange().String,
			NegotiatedGroups: p.NegotiatedGroups,
			Ready: func() error {
				if p.Draining() {
					return errors.New("draining")
				}
				return src.Ready()
			},
		}),
		ReadHeaderTimeout: 5 * time.Second,
		IdleTimeout:       time.Minute,
	}
	go adminSrv.Serve(adminLn)
	defer adminSrv.Close()
	if cfg.TokenEndpoint != "" {
		tokLn, err := net.Listen("tcp", cfg.TokenEndpoint)
		if err != nil {
			return fmt.Errorf("token endpoint %s: %w", cfg.TokenEndpoint, err)
		}
		tokSrv := &http.Server{Handler: exchange.Handler(src, subjectExchanger(exchanger)), ReadHeaderTimeout: 5 * time.Second, IdleTimeout: time.Minute}
		go tokSrv.Serve(tokLn)
		defer tokSrv.Close()
	}

	log.Info("credflow: running", slog.String(logkey.Config, path), slog.String(logkey.Admin, adminLn.Addr().String()),
		slog.String(logkey.KeyExchange, cfg.KeyExchange.String()))
	for {
		select {
		case <-ctx.Done():
			return nil
		case err := <-proxyDone:
			return err
		case sig := <-signals:
			if sig == syscall.SIGHUP {
				reload(path, cfg, p, log)
				continue
			}
			log.Info("credflow: draining", slog.String(logkey.Signal, sig.String()), slog.Duration(logkey.Timeout, cfg.DrainTimeout))
			dctx, cancel := context.WithTimeout(context.Background(), cfg.DrainTimeout)
			err := p.Drain(dctx)
			cancel()
			if err != nil {
				log.Warn("credflow: drain deadline passed with connections open", slog.String(logkey.Error, err.Error()))
			}
			stopProxy()
			<-proxyDone
			stopSrc()
			<-srcDone
			log.Info("credflow: stopped")
			return nil
		}
	}
}

// subjectExchanger is the token endpoint's exchanger: nil, not a nil
// pointer, when no edge is configured.
func subjectExchanger(x *edge.Exchanger) exchange.Exchanger {
	if x == nil {
		return nil
	}
	return x
}

func proxyConfig(cfg *config.Config, src *agent.Source, log *slog.Logger, m *proxy.Metrics) proxy.Config {
	pc := proxy.Config{
		SVIDs:              src,
		Bundles:            src,
		HandshakeTimeout:   cfg.HandshakeTimeout,
		DialTimeout:        cfg.DialTimeout,
		IdleTimeout:        cfg.IdleTimeout,
		MaxConnections:     cfg.MaxConnections,
		RevalidateInterval: cfg.Revalidate,
		MaxConnectionAge:   cfg.MaxConnectionAge,
		CloseOnPeerExpiry:  cfg.CloseOnPeerExpiry,
		KeyExchange:        cfg.KeyExchange,
		NoResumption:       cfg.NoResumption,
		QUIC: proxy.QUICLimits{
			MaxStreams:       cfg.QUICMaxStreams,
			HandshakeTimeout: cfg.QUICHandshakeTimeout,
			IdleTimeout:      cfg.QUICIdleTimeout,
			HandshakeRate:    cfg.QUICHandshakeRate,
		},
		Logger:    log,
		AccessLog: log,
		Metrics:   m,
		Tokens:    src,
		ValidateJWT: func(token, audience string) (*jwtsvid.SVID, error) {
			return agent.ValidateJWTSVID(token, src, audience)
		},
	}
	for _, in := range cfg.Inbound {
		pc.Inbound = append(pc.Inbound, proxy.Inbound{Name: in.Name, Listen: in.Listen, App: in.App, Allow: in.Allow,
			QUICListen: in.QUICListen, HTTP: in.HTTP})
	}
	for _, out := range cfg.Outbound {
		pc.Outbound = append(pc.Outbound, proxy.Outbound{Name: out.Name, Listen: out.Listen, Upstream: out.Upstream, Expect: out.Expect,
			QUICUpstream: out.QUICUpstream, QUICTarget: out.QUICTarget, HTTP: out.HTTP, Capture: out.Capture})
	}
	return pc
}

// reload applies the policies of a changed configuration file. An invalid
// file is refused and the running configuration kept. Listener addresses,
// capture destinations, timeouts and limits need a restart; a change to
// them is reported and not applied.
func reload(path string, cur *config.Config, p *proxy.Proxy, log *slog.Logger) {
	next, err := config.Load(path)
	if err != nil {
		log.Error("credflow: reload refused, keeping the running configuration", slog.String(logkey.Error, err.Error()))
		return
	}
	if !sameListeners(cur, next) {
		log.Error("credflow: reload refused: listeners were added, removed or moved; restart to apply")
		return
	}
	for _, in := range next.Inbound {
		if err := p.SetPolicy(in.Name, in.Allow); err != nil {
			log.Error("credflow: reload", slog.String(logkey.Error, err.Error()))
		}
	}
	for _, out := range next.Outbound {
		if err := p.SetPolicy(out.Name, out.Expect); err != nil {
			log.Error("credflow: reload", slog.String(logkey.Error, err.Error()))
		}
	}
	log.Info("credflow: configuration reloaded", slog.String(logkey.Config, path))
}

func sameListeners(a, b *config.Config) bool {
	key := func(c *config.Config) []string {
		var k []string
		for _, in := range c.Inbound {
			k = append(k, "in|"+in.Name+"|"+in.Listen+"|"+in.App+"|"+in.QUICListen)
		}
		for _, out := range c.Outbound {
			k = append(k, "out|"+out.Name+"|"+out.Listen+"|"+out.Upstream+"|"+out.QUICUpstream+"|"+out.QUICTarget)
			if out.Capture != nil {
				for _, d := range out.Capture.Destinations {
					k = append(k, fmt.Sprintf("dest|%s|%d|%s|%s", d.Prefix, d.Port, d.Host, strings.Join(d.Expect.Patterns(), ",")))
				}
			}
		}
		return k
	}
	return slices.Equal(key(a), key(b))
}
