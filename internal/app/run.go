package app

import (
	"cmp"
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
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"

	"github.com/credflow/credflow/agent"
	"github.com/credflow/credflow/audit"
	"github.com/credflow/credflow/credential"
	"github.com/credflow/credflow/internal/admin"
	"github.com/credflow/credflow/internal/config"
	"github.com/credflow/credflow/internal/heaproom"
	"github.com/credflow/credflow/internal/logkey"
	"github.com/credflow/credflow/internal/peercred"
	"github.com/credflow/credflow/internal/procs"
	"github.com/credflow/credflow/pqc"
	"github.com/credflow/credflow/proxy"
	"github.com/credflow/credflow/proxy/anomaly"
	"github.com/credflow/credflow/proxy/capture"
	"github.com/credflow/credflow/proxy/quicmux"
	"github.com/credflow/credflow/proxy/revoke"
	"github.com/credflow/credflow/token/edge"
	"github.com/credflow/credflow/token/exchange"
)

// loadConfig reads the configuration file at path and gives the outbound
// listeners and the token endpoint that list no callers the uids of
// $CREDFLOW_CALLER_UIDS, when it is set; it returns the fields it set.
func loadConfig(path string) (*config.Config, []string, error) {
	c, err := config.Load(path)
	if err != nil {
		return nil, nil, err
	}
	env := os.Getenv(peercred.EnvCallerUIDs)
	if env == "" {
		return c, nil, nil
	}
	uids, err := peercred.ParseUIDs(env)
	if err != nil {
		return nil, nil, fmt.Errorf("$%s: %w", peercred.EnvCallerUIDs, err)
	}
	return c, c.DefaultCallers(peercred.Callers{UIDs: uids}), nil
}

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

// runCheck validates a configuration file and lists the trust domains its
// policies name; with -socket, it warns about those the Workload API holds
// no bundle for.
func runCheck(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var (
		path, socket string
		wait         time.Duration
	)
	fs := newFlagSet("check", "credflow check -c FILE [-socket ADDR] [-wait DURATION]", stderr)
	fs.StringVar(&path, "c", "", "configuration file (YAML; see README)")
	fs.StringVar(&socket, "socket", "", "Workload API address: also compare the trust domains the policies name with the trust bundles it holds")
	fs.DurationVar(&wait, "wait", 5*time.Second, "with -socket: how long to wait for the trust bundles")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if path == "" {
		return fmt.Errorf("%w: -c FILE is required", errUsage)
	}
	c, defaulted, err := loadConfig(path)
	if err != nil {
		return err
	}
	named := c.PolicyTrustDomains()
	var names []string
	for _, n := range named {
		names = append(names, n.TrustDomain)
	}
	if _, err := fmt.Fprintf(stdout, "%s: valid (%d inbound, %d outbound listeners)\ntrust domains named by policies: %s\n",
		path, len(c.Inbound), len(c.Outbound), strings.Join(names, ", ")); err != nil {
		return err
	}
	if len(defaulted) > 0 {
		fmt.Fprintf(stdout, "callers from $%s (%s): %s\n", peercred.EnvCallerUIDs, os.Getenv(peercred.EnvCallerUIDs), strings.Join(defaulted, ", "))
	}
	if socket == "" {
		return nil
	}
	wctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	bundles, err := workloadapi.FetchX509Bundles(wctx, workloadapi.WithAddr(socket))
	if err != nil {
		return fmt.Errorf("the configuration is valid, but the trust bundles could not be fetched from %s: %w", socket, err)
	}
	var held []spiffeid.TrustDomain
	var heldNames []string
	for _, b := range bundles.Bundles() {
		held = append(held, b.TrustDomain())
		heldNames = append(heldNames, b.TrustDomain().Name())
	}
	slices.Sort(heldNames)
	if _, err := fmt.Fprintf(stdout, "trust bundles held: %s\n", strings.Join(heldNames, ", ")); err != nil {
		return err
	}
	for _, m := range missingBundles(named, held) {
		fmt.Fprintf(stderr, "warning: %s (%s): no trust bundle is held for it, so none of its workloads can be authenticated\n",
			m.TrustDomain, strings.Join(m.Fields, ", "))
	}
	return nil
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
	cfg, defaulted, err := loadConfig(path)
	if err != nil {
		return err
	}
	log := newLogger(stderr, cfg.LogLevel, cfg.LogFormat)
	if len(defaulted) > 0 {
		log.Info("local callers: the uids in $"+peercred.EnvCallerUIDs+" (the pod's containers)",
			slog.String("uids", os.Getenv(peercred.EnvCallerUIDs)), slog.Any("fields", defaulted))
	}
	if cfg.KeyExchange.Requires() {
		if err := pqc.HybridAvailable(); err != nil {
			return fmt.Errorf("key_exchange requires hybrid post-quantum groups, but %w", err)
		}
	}

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	procsChanged := prometheus.NewCounter(prometheus.CounterOpts{
		Name: "credflow_procs_changes_total",
		Help: "Times the sidecar changed the number of threads running Go code at once (go_sched_gomaxprocs_threads): one while its load is light, the runtime's default once it nears a core.",
	})
	heapRoomChanged := prometheus.NewCounter(prometheus.CounterOpts{
		Name: "credflow_heap_room_changes_total",
		Help: "Times the sidecar changed the garbage collector's percent (go_gc_gogc_percent): room for the heap while it allocates fast, the default once it is quiet.",
	})
	reg.MustRegister(procsChanged, heapRoomChanged)
	// The trail is made once the source is (it signs with the SVID): the
	// source reaches it through trailRef.
	var trailRef atomic.Pointer[trail]
	src, err := agent.New(agent.Config{
		Addr:    workloadAPIAddr(cfg.WorkloadAPI),
		Logger:  log,
		Metrics: agent.NewMetrics(reg),
		JWTFetched: func(audience string, expires time.Time) {
			trailRef.Load().Write(audit.Event{Type: audit.TypeCredential, Time: time.Now(), Kind: audit.KindJWTSVIDFetched,
				Audience: audience, Until: expires})
		},
	})
	if err != nil {
		return err
	}
	pm := proxy.NewMetrics(reg)
	creds, err := newCredentials(ctx, cfg, src, log)
	if err != nil {
		return err
	}
	if len(creds.caches) > 0 {
		reg.MustRegister(&credential.Collector{Caches: creds.caches})
	}
	deny, err := newDenyList(ctx, cfg.Revocation, log)
	if err != nil {
		return err
	}
	var shared revoke.Store
	if deny != nil {
		shared = deny.shared
	}
	tr, err := newTrail(cfg.Audit, src, reg, log)
	if err != nil {
		return err
	}
	trailRef.Store(tr)
	var sinks []anomaly.Sink
	if tr != nil {
		sinks = append(sinks, tr.anomalySink())
		for _, c := range creds.caches {
			c.Fetched = tr.credentialFetched
		}
	}
	detect, err := newDetection(cfg.Anomaly, reg, log, shared, sinks...)
	if err != nil {
		return err
	}
	traces, err := newTracing(cfg.Tracing, reg, log)
	if err != nil {
		return err
	}
	if traces != nil {
		defer traces.stop()
	}
	pc := proxyConfig(cfg, src, log, pm)
	pc.Inbound, pc.Outbound = listeners(cfg, creds.egress)
	if traces != nil {
		pc.Tracer, pc.TraceConnections = traces.provider, cfg.Tracing.Connections
		pc.TraceFollowOnly = cfg.Tracing.SampleRatio == 0
	}
	if deny != nil {
		pc.Revoked = deny.list
	}
	if detect != nil {
		pc.Anomaly = detect.detector
		detect.trail = tr
	}
	if tr != nil {
		pc.Audit = tr
	}
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
	if detect != nil {
		detect.proxy = p
	}
	if err := p.Listen(); err != nil {
		return err
	}
	warnNonLoopback(cfg, log)
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
	procsDone := make(chan struct{})
	go func() {
		defer close(procsDone)
		procs.Run(srcCtx, procs.Policy{}, log, func(int) { procsChanged.Inc() })
	}()
	defer func() { stopSrc(); <-procsDone }()
	heapRoomDone := make(chan struct{})
	go func() {
		defer close(heapRoomDone)
		heaproom.Run(srcCtx, heaproom.Policy{}, log, func(int) { heapRoomChanged.Inc() })
	}()
	defer func() { stopSrc(); <-heapRoomDone }()
	creds.run(srcCtx)
	if deny != nil {
		go deny.run(srcCtx)
	}
	if detect != nil {
		go detect.run(srcCtx)
	}
	if tr != nil {
		// The trail runs until the sidecar has stopped: its last records,
		// and its final checkpoint, come after the proxy's.
		auditDone := make(chan struct{})
		go func() { defer close(auditDone); tr.run(srcCtx) }()
		defer func() { stopSrc(); <-auditDone }()
		go tr.watchIdentity(srcCtx, src, func() []*x509bundle.Bundle {
			var bs []*x509bundle.Bundle
			for _, td := range src.TrustDomains() {
				if b, err := src.GetX509BundleForTrustDomain(td); err == nil {
					bs = append(bs, b)
				}
			}
			return bs
		}, src.Changed)
		if deny != nil {
			go tr.watchRevocations(srcCtx, deny.list)
		}
	}
	bundles := newBundleWarner(log, src.TrustDomains, cfg.PolicyTrustDomains())
	bundlesDone := make(chan struct{})
	go func() { defer close(bundlesDone); bundles.run(srcCtx, src.Changed) }()
	defer func() { stopSrc(); <-bundlesDone }()
	proxyDone := make(chan error, 1)
	go func() { proxyDone <- p.Serve(proxyCtx) }()
	adminSrv := &http.Server{
		Handler: admin.Handler(admin.Deps{
			Gatherer:                        reg,
			SVIDs:                           src,
			TrustDomains:                    src.TrustDomains,
			Policies:                        p.Policies,
			KeyExchange:                     p.KeyExchange().String,
			NegotiatedGroups:                p.NegotiatedGroups,
			PolicyTrustDomainsWithoutBundle: bundles.missing,
			Credentials:                     creds.states,
			Quarantined:                     detectQuarantined(detect),
			Lift:                            detectLift(detect),
			Pprof:                           cfg.Pprof,
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
	if cfg.Pprof {
		log.Warn("credflow: debug.pprof is on: the admin listener serves profiles under /debug/pprof/ "+
			"(CPU, heap, goroutine stacks, the command line) to whoever can reach it",
			slog.String(logkey.Admin, adminLn.Addr().String()))
	}
	var tok *tokenEndpoint
	if cfg.TokenEndpoint != nil {
		ec := exchange.Config{Tokens: src, Subjects: subjectExchanger(exchanger), Refused: pm.TokenEndpointRefused}
		if tr != nil {
			ec.Audit = tr.Write
		}
		if tok, err = startTokenEndpoint(cfg.TokenEndpoint, ec, log); err != nil {
			return err
		}
		defer tok.close()
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
				next, changed, err := reload(path, cfg, p, tok)
				if err != nil {
					log.Error("credflow: reload refused, keeping the running configuration", slog.String(logkey.Error, err.Error()))
					continue
				}
				cfg = next
				log.Info("credflow: configuration reloaded", slog.String(logkey.Config, path), slog.Any(logkey.Changed, changed))
				tr.Write(audit.Event{Type: audit.TypeConfig, Time: time.Now(), Changed: changed})
				if tok != nil {
					warnOpenTokenEndpoint(cfg.TokenEndpoint, log)
				}
				bundles.setPolicies(cfg.PolicyTrustDomains())
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
	// One cache of validated JWT-SVIDs for the process: a caller sends one
	// token for minutes, and its signature is verified once.
	jwts := &agent.JWTValidationCache{Validator: agent.JWTValidator{Bundles: src, Leeway: cfg.JWTLeeway}}
	pc := proxy.Config{
		SVIDs:               src,
		Bundles:             src,
		HandshakeTimeout:    cfg.HandshakeTimeout,
		DialTimeout:         cfg.DialTimeout,
		IdleTimeout:         cfg.IdleTimeout,
		MaxConnections:      cfg.MaxConnections,
		FirstByteTimeout:    cfg.FirstByteTimeout,
		ParkAfter:           cfg.ParkAfter,
		OutboundReserve:     cfg.OutboundReserve,
		MaxHandshakes:       cfg.MaxHandshakes,
		HandshakesPerSource: cfg.HandshakesPerSource,
		GlobalLimits:        cfg.GlobalLimits,
		RevalidateInterval:  cfg.Revalidate,
		MaxConnectionAge:    cfg.MaxConnectionAge,
		CloseOnPeerExpiry:   cfg.CloseOnPeerExpiry,
		KeyExchange:         cfg.KeyExchange,
		NoResumption:        cfg.NoResumption,
		QUIC: quicmux.Limits{
			MaxStreams:       cfg.QUICMaxStreams,
			HandshakeTimeout: cfg.QUICHandshakeTimeout,
			IdleTimeout:      cfg.QUICIdleTimeout,
			HandshakeRate:    cfg.QUICHandshakeRate,
		},
		Logger:      log,
		AccessLog:   log,
		Metrics:     m,
		Tokens:      src,
		ValidateJWT: jwts.Validate,
	}
	pc.Inbound, pc.Outbound = listeners(cfg, nil)
	return pc
}

// warnNonLoopback names the outbound listeners that may listen where other
// hosts can reach them (allow_non_loopback): whatever connects there is
// relayed with this workload's identity.
func warnNonLoopback(cfg *config.Config, log *slog.Logger) {
	for _, out := range cfg.Outbound {
		if out.AllowNonLoopback {
			log.Warn("credflow: outbound listener has allow_non_loopback: whoever can reach its address speaks with this workload's identity",
				slog.String(logkey.Listener, out.Name), slog.String(logkey.Listen, out.Listen))
		}
	}
}

// listeners translates the configured listeners for the proxy, with the
// egress listeners' settings built by newCredentials; without them (a
// reload, which cannot change them) an egress listener is marked as one.
func listeners(cfg *config.Config, egress map[string]*proxy.Egress) (ins []proxy.Inbound, outs []proxy.Outbound) {
	for _, in := range cfg.Inbound {
		ins = append(ins, proxy.Inbound{Name: in.Name, Listen: in.Listen, App: in.App, Allow: in.Allow,
			QUICListen: in.QUICListen, HTTP: inboundHTTP(in.HTTP), Limits: in.Limits, Unobserved: in.Unobserved,
			Unaudited: in.Unaudited, Untraced: in.Untraced})
	}
	for _, out := range cfg.Outbound {
		outs = append(outs, proxy.Outbound{Name: out.Name, Listen: out.Listen, Upstream: out.Upstream, Expect: out.Expect,
			QUICUpstream: out.QUICUpstream, QUICTarget: out.QUICTarget, HTTP: outboundHTTP(out.HTTP),
			Capture: captureDestinations(out.Capture), Callers: out.Callers})
		if out.Egress != nil {
			outs[len(outs)-1].Egress = cmp.Or(egress[out.Name], &proxy.Egress{})
		}
	}
	return ins, outs
}

// inboundHTTP translates an inbound listener's protocol: http settings.
func inboundHTTP(h *config.InboundHTTP) *proxy.InboundHTTP {
	if h == nil {
		return nil
	}
	return &proxy.InboundHTTP{
		Routes:                h.Routes,
		RequireJWT:            h.RequireJWT,
		TokenHeader:           h.TokenHeader,
		PassJWT:               h.PassJWT,
		AppH2C:                h.AppH2C,
		TxnMinters:            h.TxnMinters,
		RequireTxn:            h.RequireTxn,
		TxnLeeway:             h.TxnLeeway,
		TxnSingleUse:          h.TxnSingleUse,
		ResponseHeaderTimeout: h.ResponseHeaderTimeout,
		AppConnections:        h.AppConnections,
		MaxConcurrentStreams:  h.MaxConcurrentStreams,
	}
}

// outboundHTTP translates an outbound listener's protocol: http settings.
func outboundHTTP(h *config.OutboundHTTP) *proxy.OutboundHTTP {
	if h == nil {
		return nil
	}
	return &proxy.OutboundHTTP{JWTAudience: h.JWTAudience, TokenHeader: h.TokenHeader, Pool: h.Pool,
		Exchange: h.Exchange, KeepExternal: h.KeepExternal}
}

// captureDestinations translates a capture listener's destinations.
func captureDestinations(c *config.Capture) *capture.Capture {
	if c == nil {
		return nil
	}
	pc := &capture.Capture{}
	for _, d := range c.Destinations {
		pc.Destinations = append(pc.Destinations, capture.Destination{Prefix: d.Prefix, Port: d.Port, Host: d.Host, Expect: d.Expect, Egress: d.Egress})
	}
	return pc
}

// reload applies the configuration file at path to the running proxy p,
// whose configuration is cur, and returns the new configuration and the
// fields that changed. What a running sidecar can change (listener
// policies; routes, jwt and txn_token of HTTP inbound listeners; see
// config.Diff) is applied, each listener's settings as one. A file that is
// invalid, or that changes anything else, is refused as a whole: nothing
// is applied and the error names every field that needs a restart.
func reload(path string, cur *config.Config, p *proxy.Proxy, tok *tokenEndpoint) (*config.Config, []string, error) {
	next, _, err := loadConfig(path)
	if err != nil {
		return nil, nil, err
	}
	hot, restart := config.Diff(cur, next)
	if len(restart) > 0 {
		verb := "needs"
		if len(restart) > 1 {
			verb = "need"
		}
		return nil, nil, fmt.Errorf("%s %s a restart; nothing was applied", strings.Join(restart, ", "), verb)
	}
	if err := p.Apply(listeners(next, nil)); err != nil {
		return nil, nil, err
	}
	if tok != nil && next.TokenEndpoint != nil {
		tok.ep.SetPolicy(next.TokenEndpoint.Callers, next.TokenEndpoint.Audiences)
	}
	if hot == nil {
		hot = []string{}
	}
	return next, hot, nil
}
