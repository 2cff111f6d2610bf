// Package proxy is CredentialFlow's data plane: inbound listeners that
// terminate mutual TLS with the workload's SVID, authorize the peer by
// SPIFFE ID and relay to the app on loopback, and outbound listeners that
// take the app's plain TCP connections and originate mutual TLS to an
// upstream sidecar whose SPIFFE ID is checked.
//
// The identity comes in through go-spiffe's x509svid.Source and
// x509bundle.Source, so the TLS configurations are built once and every
// handshake presents the current SVID. Peer policies, and the routes and
// token settings of HTTP inbound listeners, can be replaced while running
// (SetPolicy, SetHTTP, Apply). Established connections are checked again
// when the policy or the bundles change, and every
// Config.RevalidateInterval: those whose peer the policy no longer allows
// are closed ("policy_revoked"), and so are those whose peer's chain no
// longer verifies against the bundle of its trust domain ("untrusted"). A
// connection outlives its peer's certificate (rotation does not cut it)
// unless Config.CloseOnPeerExpiry is set; Config.MaxConnectionAge bounds
// its life.
package proxy

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/netip"
	"reflect"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"go.opentelemetry.io/otel/trace"
	"golang.org/x/time/rate"

	"github.com/credflow/credflow/audit"
	"github.com/credflow/credflow/internal/logkey"
	"github.com/credflow/credflow/internal/peercred"
	"github.com/credflow/credflow/pqc"
	"github.com/credflow/credflow/proxy/anomaly"
	"github.com/credflow/credflow/proxy/authz"
	"github.com/credflow/credflow/proxy/capture"
	"github.com/credflow/credflow/proxy/defaults"
	"github.com/credflow/credflow/proxy/limit"
	"github.com/credflow/credflow/proxy/limit/rls"
	"github.com/credflow/credflow/proxy/mtls"
	"github.com/credflow/credflow/proxy/quicmux"
	"github.com/credflow/credflow/proxy/rawio"
	"github.com/credflow/credflow/proxy/relay"
	"github.com/credflow/credflow/proxy/revoke"
	"github.com/credflow/credflow/reason"
)

// refusalLogRate and refusalLogBurst bound the access-log lines of
// connections refused at accept (see refuseAtAccept).
const (
	refusalLogRate  = 10
	refusalLogBurst = 50
)

// withBudgetDefaults fills in the connection budget's defaults, and keeps
// its parts within MaxConnections.
func withBudgetDefaults(cfg Config) Config {
	switch {
	case len(cfg.Outbound) == 0:
		cfg.OutboundReserve = 0 // nothing to keep it for
	case cfg.OutboundReserve <= 0 || cfg.OutboundReserve >= cfg.MaxConnections:
		cfg.OutboundReserve = cfg.MaxConnections / 10
	}
	if cfg.MaxHandshakes <= 0 {
		cfg.MaxHandshakes = defaults.MaxHandshakes
	}
	cfg.MaxHandshakes = min(cfg.MaxHandshakes, cfg.MaxConnections-cfg.OutboundReserve)
	if cfg.HandshakesPerSource <= 0 {
		cfg.HandshakesPerSource = defaults.HandshakesPerSource
	}
	cfg.HandshakesPerSource = min(cfg.HandshakesPerSource, cfg.MaxHandshakes)
	return cfg
}

// MaxAgeGrace is how long an HTTP connection past Config.MaxConnectionAge
// may take to finish its requests before it is closed.
const MaxAgeGrace = 30 * time.Second

// Inbound is a listener that accepts mTLS from peer sidecars and relays to
// the app.
type Inbound struct {
	Name   string       // unique among listeners; used in logs
	Listen string       // address to listen on, e.g. ":15006"
	App    string       // the app's address, e.g. "127.0.0.1:8080"
	Allow  authz.Policy // the peers allowed in
	// QUICListen, if set, is a UDP address on which the listener also
	// accepts QUIC from peer sidecars (package quicmux has the protocol).
	QUICListen string
	// HTTP, if set, makes the listener HTTP-aware (routes, tokens).
	HTTP *InboundHTTP
	// Limits bound the peers' requests and connections, per identity and
	// in total; a connection past them is closed after its handshake, a
	// request answered 429 (gRPC RESOURCE_EXHAUSTED) with Retry-After,
	// both with the reason rate_limited.
	Limits limit.Config
	// Unobserved keeps the listener's outcomes from anomaly detection
	// (Config.Anomaly); the quarantine still bars its peers.
	Unobserved bool
	// Unaudited keeps the listener's decisions from the audit trail
	// (Config.Audit), and Untraced its requests from tracing
	// (Config.Tracer). Fixed for the listener's life.
	Unaudited, Untraced bool
}

// Outbound is a listener that accepts the app's plain TCP and relays it
// over mTLS to an upstream sidecar.
type Outbound struct {
	Name     string       // unique among listeners; used in logs
	Listen   string       // address to listen on, normally on loopback
	Upstream string       // the upstream sidecar's inbound address
	Expect   authz.Policy // the server identities accepted
	// QUICUpstream, if set, carries this listener's connections as streams
	// of one QUIC connection to this UDP address, falling back to TCP when
	// the QUIC handshake fails or times out.
	QUICUpstream string
	// QUICTarget names the inbound listener to reach at the upstream; empty
	// means the one whose QUIC address this is.
	QUICTarget string
	// HTTP, if set, makes the listener HTTP-aware (pooled HTTP/2 to the
	// upstream, JWT-SVIDs attached).
	HTTP *OutboundHTTP
	// Capture, if set, makes the listener transparent: Upstream is ignored
	// and each connection goes to its original destination.
	Capture *capture.Capture
	// Egress, if set, makes the listener the app's way to an external
	// HTTPS API at Upstream (host:port), a server outside the mesh: Expect
	// is not used, the server's certificate is verified as a web client
	// verifies it.
	Egress *Egress
	// Callers are the local users whose connections the listener takes,
	// by the uid that owns the app's socket as the kernel reports it
	// (peercred; for a captured connection, the socket connected to its
	// original destination). A TCP or captured connection of any other
	// caller is closed at accept; on an HTTP listener each request on it
	// is answered 403 (X-Credflow-Reason: caller_not_allowed). A caller
	// the kernel cannot name is refused as caller_unknown. The zero value
	// takes every caller: any process that can reach the address.
	Callers peercred.Callers
}

// Config configures a Proxy. SVIDs and Bundles are required; every zero
// duration or limit selects the documented default.
type Config struct {
	SVIDs   x509svid.Source
	Bundles x509bundle.Source

	Inbound  []Inbound
	Outbound []Outbound

	// KeyExchange is the key-exchange policy; the zero value is
	// hybrid-preferred everywhere.
	KeyExchange pqc.Policy

	// NoResumption turns TLS session resumption off between sidecars:
	// every connection pays a full handshake (certificates sent and
	// verified). By default outbound listeners keep a session cache and
	// inbound ones issue tickets; a resumed session is still checked
	// against the current policy and bundles.
	NoResumption bool

	// QUIC sets the limits of QUIC connections.
	QUIC quicmux.Limits

	// Tokens mints JWT-SVIDs for HTTP outbound listeners; ValidateJWT
	// validates them on HTTP inbound listeners that require them.
	Tokens      TokenSource
	ValidateJWT TokenValidator
	// Exchanger mints transaction tokens on HTTP outbound listeners with
	// Exchange set.
	Exchanger Exchanger

	// HandshakeTimeout bounds an mTLS handshake. Default 10s.
	HandshakeTimeout time.Duration
	// FirstByteTimeout closes an inbound connection that has sent nothing
	// (not the start of a ClientHello) this long after it was accepted,
	// with the reason "first_byte_timeout"; once its first byte comes, the
	// rest of the handshake has what is left of HandshakeTimeout. Default
	// 2s, and at most HandshakeTimeout.
	FirstByteTimeout time.Duration
	// DialTimeout bounds a TCP connect to the app or an upstream. Default 5s.
	DialTimeout time.Duration
	// IdleTimeout closes a relayed connection with no traffic either way
	// for this long. Default 1h.
	IdleTimeout time.Duration
	// ParkAfter parks a relayed connection with no traffic either way for
	// this long: it holds no goroutine and no buffer until a byte arrives
	// (relay.Options.ParkAfter). Zero means relay.DefaultParkAfter (5s);
	// negative never parks.
	ParkAfter time.Duration
	// MaxConnections bounds the connections open at once, both directions
	// together, inbound ones to all but OutboundReserve of them; further
	// ones are closed at accept with the reason "limit".
	// Default 10000, lowered to what the file-descriptor limit allows (two
	// per connection, with a reserve of a sixteenth, at least 64, and the
	// sockets HTTP listeners share: each inbound's AppConnections, twice
	// each outbound's Pool and its 64 HTTP/1.1 upstream connections), so
	// that the admin endpoints keep answering. A connection that still
	// finds no descriptor is closed at accept with the reason "fd_limit".
	MaxConnections int
	// GlobalLimits, if set, is the rate limit service the inbound
	// listeners whose Limits.Global asks for it count their requests or
	// connections against: a budget shared by every sidecar asking it.
	// Fixed for the proxy's life.
	GlobalLimits *limit.GlobalConfig
	// Revoked, if set, is the deny list: peers whose SPIFFE ID, or the
	// serial of a certificate in whose chain, it holds are refused at the
	// handshake (both directions, reason revoked), their inbound HTTP
	// requests refused, and their established connections closed as soon
	// as the list changes; transaction tokens whose jti it holds are
	// refused (txn_revoked).
	Revoked *revoke.List
	// Anomaly, if set, watches the outcome of every inbound connection
	// and request, and its quarantine bars peers (reason quarantined): by
	// source address at accept, by SPIFFE ID at the handshake and per
	// request. Its Quarantine's OnAdd should call Revalidate, to close the
	// established connections of a peer put there; its OnRevoke,
	// RevokeJTI.
	Anomaly *anomaly.Detector
	// Audit, if set, receives an event for every access decision (each
	// connection and each HTTP request, allowed or refused) and each
	// transaction token verified. Write must not block.
	Audit Auditor
	// Tracer, if set, traces the requests of the HTTP modes: a server and
	// a client span per sidecar, the W3C trace context continued or
	// started (tracing.go). Nil: no tracing, at no cost.
	Tracer trace.TracerProvider
	// TraceConnections, with Tracer, also gives each relayed L4
	// connection (TCP, or a QUIC stream) a span of its own, from accept
	// to close: a root span, as an L4 connection carries no trace
	// context.
	TraceConnections bool
	// TraceFollowOnly, with Tracer, traces only the requests that arrive
	// with a sampled W3C trace context (a sample ratio of 0): the others
	// pass untouched, their trace headers, if any, sent on as they came,
	// and no tracing code runs for them.
	TraceFollowOnly bool
	// OutboundReserve is how many of MaxConnections only outbound
	// connections (the app's) may take: inbound connections and QUIC
	// streams share the other MaxConnections - OutboundReserve, so that
	// whoever reaches an inbound port cannot keep the app from calling
	// out. Default a tenth of MaxConnections (1000 of 10000); a value not
	// below MaxConnections (once fitted to the descriptors) is replaced by
	// that default. Without outbound listeners there is no reserve.
	OutboundReserve int
	// MaxHandshakes bounds the inbound connections accepted whose mTLS
	// handshake has not finished: each holds one of these besides its
	// connection slot, and further ones are closed at accept with the
	// reason "handshake_limit". Default 256, and at most the inbound share
	// of MaxConnections.
	MaxHandshakes int
	// HandshakesPerSource bounds those connections per source IP address;
	// further ones from that address are closed at accept with the reason
	// "source_limit". Default 32, and at most MaxHandshakes.
	HandshakesPerSource int
	// RevalidateInterval is how often established connections are checked
	// against the current policy and bundles (and their age and peer's
	// expiry, when those close them); a policy change (SetPolicy) or a
	// bundle change signalled by the Bundles source (a Changed() <-chan
	// struct{} method, as agent.Source has) checks them at once. Default 5s.
	RevalidateInterval time.Duration
	// CloseOnPeerExpiry closes an established connection once its peer's
	// certificate expires ("peer_expired"), inbound and outbound. By
	// default a connection outlives the certificate it was opened with:
	// its keys were agreed at the handshake, the peer has rotated its SVID
	// long before, and cutting it would break every long-lived connection
	// (database pools, streams) once per SVID lifetime. Trust and policy
	// changes still close it.
	CloseOnPeerExpiry bool
	// MaxConnectionAge, if positive, bounds the life of every established
	// connection between sidecars ("max_age"): relayed TCP connections,
	// QUIC streams and inbound QUIC connections are closed at that age;
	// HTTP connections are wound down first (inbound: responses carry
	// Connection: close, which becomes a GOAWAY in HTTP/2; outbound pooled
	// connections take no new requests) and closed MaxAgeGrace later if
	// still open. Default 0: no limit.
	MaxConnectionAge time.Duration

	// Logger receives errors and events; nil discards them.
	Logger *slog.Logger
	// AccessLog receives one line per connection; nil discards them.
	AccessLog *slog.Logger
	// Metrics records data-plane metrics; nil records nothing.
	Metrics *Metrics
}

type direction string

const (
	dirInbound  direction = "inbound"
	dirOutbound direction = "outbound"
)

// Proxy runs the listeners of a Config.
type Proxy struct {
	cfg Config
	log *slog.Logger
	acc *slog.Logger
	m   *Metrics

	listeners []*listener
	slots     *budget  // connection and handshake slots
	spare     *spareFD // shed connections when out of descriptors
	revalNow  chan struct{}

	refusalLog  *rate.Limiter   // access-log lines of refusals at accept
	refusalWarn *rate.Sometimes // the log's warning about them
	global      *rls.Client     // the global rate limit service; nil when none is configured
	tracer      trace.Tracer    // nil without Config.Tracer
	localMu     sync.Mutex      // serializes RevokeJTI
	localDeny   revoke.List     // jtis anomaly detection revoked on this sidecar
	globalWarn  *rate.Sometimes // the log's warning that it gave no answer

	mu       sync.Mutex
	conns    map[*conn]struct{}
	draining bool
	groups   map[string]int64 // established connections by key-exchange group
	wg       sync.WaitGroup   // connection goroutines
}

type listener struct {
	name   string
	dir    direction
	addr   string
	target string // app (inbound) or upstream (outbound)
	policy atomic.Pointer[authz.Policy]
	tls    *tls.Config
	kex    pqc.Mode // outbound: the key-exchange mode towards the upstream
	ln     net.Listener
	conns  sync.WaitGroup
	mode   mode // what the listener does with its socket (modes.go)

	callers  atomic.Pointer[peercred.Callers] // outbound: the local users allowed
	limiter  atomic.Pointer[limit.Limiter]    // inbound: nil when no limits are set
	observed atomic.Bool                      // inbound: outcomes go to anomaly detection

	unaudited, untraced bool   // inbound: kept from the audit trail, from tracing
	spanName            string // of the server spans of its requests
}

// conn is an established connection between sidecars, tracked so that it
// can be checked again against the policy and the bundles.
type conn struct {
	l        *listener
	peer     spiffeid.ID
	chain    []*x509.Certificate // the peer's certificates, verified at the handshake
	eku      x509.ExtKeyUsage    // the key usage the peer's leaf was verified for
	notAfter time.Time
	started  time.Time
	close    func()
	closedBy atomic.Value  // reason.Reason: why the sidecar closed it
	expect   *authz.Policy // captured connections: the destination's policy

	// bundle is the bundle the chain last verified against; only the
	// revalidation goroutine uses it.
	bundle *x509bundle.Bundle
	// retire, if set, winds the connection down at MaxConnectionAge; it is
	// closed MaxAgeGrace later. Without it, it is closed at that age.
	retire   func()
	retiring atomic.Bool // past MaxConnectionAge
}

// newConn describes a connection whose handshake cs verified; close closes
// it.
func (p *Proxy) newConn(l *listener, cs *tls.ConnectionState, close func()) *conn {
	peer, notAfter := peerOf(cs)
	eku := x509.ExtKeyUsageClientAuth
	if l.dir == dirOutbound {
		eku = x509.ExtKeyUsageServerAuth
	}
	return &conn{l: l, peer: peer, chain: cs.PeerCertificates, eku: eku, notAfter: notAfter, started: time.Now(), close: close}
}

// track and untrack add and remove c from the connections revalidated.
func (p *Proxy) track(c *conn) {
	p.mu.Lock()
	p.conns[c] = struct{}{}
	p.mu.Unlock()
}

func (p *Proxy) untrack(c *conn) {
	p.mu.Lock()
	delete(p.conns, c)
	p.mu.Unlock()
}

// allowed reports whether the connection's peer is still allowed: by its
// destination's policy when captured, else by its listener's.
func (c *conn) allowed() bool {
	if c.expect != nil {
		return c.expect.Allows(c.peer)
	}
	return c.l.allows(c.peer)
}

// expectKey carries a captured connection's policy from handleOutbound to
// relay.
type expectKey struct{}

// New checks cfg and builds the TLS configurations. It does not listen.
func New(cfg Config) (*Proxy, error) {
	if cfg.SVIDs == nil || cfg.Bundles == nil {
		return nil, errors.New("proxy: SVIDs and Bundles sources are required")
	}
	cfg.HandshakeTimeout = orDefault(cfg.HandshakeTimeout, defaults.HandshakeTimeout)
	cfg.DialTimeout = orDefault(cfg.DialTimeout, defaults.DialTimeout)
	cfg.IdleTimeout = orDefault(cfg.IdleTimeout, defaults.IdleTimeout)
	cfg.RevalidateInterval = orDefault(cfg.RevalidateInterval, defaults.RevalidateInterval)
	cfg.FirstByteTimeout = min(orDefault(cfg.FirstByteTimeout, defaults.FirstByteTimeout), cfg.HandshakeTimeout)
	if cfg.MaxConnections <= 0 {
		cfg.MaxConnections = defaults.MaxConnections
	}
	discard := slog.New(slog.DiscardHandler)
	log := cmpOr(cfg.Logger, discard)
	shared := sharedSockets(cfg)
	if budget := fdBudget(shared); budget > 0 && cfg.MaxConnections > budget {
		log.Warn("proxy: max_connections lowered to what the file-descriptor limit allows",
			slog.Int("configured", cfg.MaxConnections), slog.Int("max_connections", budget), slog.Int("http_shared_sockets", shared))
		cfg.MaxConnections = budget
	}
	cfg = withBudgetDefaults(cfg)
	p := &Proxy{
		cfg:      cfg,
		log:      log,
		spare:    newSpareFD(),
		acc:      cmpOr(cfg.AccessLog, discard),
		m:        cfg.Metrics,
		slots:    newBudget(cfg),
		revalNow: make(chan struct{}, 1),

		refusalLog:  rate.NewLimiter(refusalLogRate, refusalLogBurst),
		refusalWarn: &rate.Sometimes{First: 1, Interval: 10 * time.Second},
		globalWarn:  &rate.Sometimes{First: 1, Interval: 10 * time.Second},
		conns:       make(map[*conn]struct{}),
		groups:      make(map[string]int64),
	}
	if cfg.Tracer != nil {
		p.tracer = cfg.Tracer.Tracer("github.com/credflow/credflow/proxy")
	}
	if cfg.GlobalLimits != nil {
		g, err := rls.Dial(*cfg.GlobalLimits)
		if err != nil {
			return nil, err
		}
		p.global = g
	}
	names := map[string]bool{}
	add := func(name, addr, target string, dir direction, pol authz.Policy) (*listener, error) {
		if name == "" || names[name] {
			return nil, fmt.Errorf("proxy: listener name %q is empty or used twice", name)
		}
		names[name] = true
		l := &listener{name: name, dir: dir, addr: addr, target: target, spanName: "credflow " + string(dir) + " " + name}
		l.policy.Store(&pol)
		l.callers.Store(&peercred.Callers{})
		p.listeners = append(p.listeners, l)
		return l, nil
	}
	kex := cfg.KeyExchange
	for _, in := range cfg.Inbound {
		l, err := add(in.Name, in.Listen, in.App, dirInbound, in.Allow)
		if err != nil {
			return nil, err
		}
		l.setLimits(in.Limits)
		l.observed.Store(!in.Unobserved)
		l.unaudited, l.untraced = in.Unaudited, in.Untraced
		l.tls = mtls.Config{SVIDs: cfg.SVIDs, Bundles: cfg.Bundles, Authorize: l.allows, VerifyConnection: p.verifyInbound}.Server()
		l.tls.SessionTicketsDisabled = cfg.NoResumption
		l.tls.CurvePreferences = kex.ServerGroups()
		l.mode = &tcpInbound{quicAddr: in.QUICListen}
		if in.HTTP != nil {
			if in.QUICListen != "" {
				return nil, fmt.Errorf("proxy: listener %q: HTTP over QUIC is not supported", in.Name)
			}
			l.tls.NextProtos = []string{"h2", "http/1.1"}
			l.mode = p.newHTTPInbound(l, *in.HTTP)
		}
	}
	for _, out := range cfg.Outbound {
		l, err := add(out.Name, out.Listen, out.Upstream, dirOutbound, out.Expect)
		if err != nil {
			return nil, err
		}
		l.callers.Store(&out.Callers)
		authorize := l.allows
		if out.Capture != nil {
			// The identity expected depends on the destination: the
			// handshake verifies the chain, handleOutbound the identity.
			if out.QUICUpstream != "" || out.HTTP != nil || out.Egress != nil {
				return nil, fmt.Errorf("proxy: listener %q: capture carries plain TCP over TCP only", out.Name)
			}
			authorize = func(spiffeid.ID) bool { return true }
		}
		l.tls = mtls.Config{SVIDs: cfg.SVIDs, Bundles: cfg.Bundles, Authorize: authorize, VerifyConnection: p.verifyOutbound}.Client()
		if cfg.NoResumption {
			l.tls.ClientSessionCache = nil
		}
		td := upstreamTrustDomain(out.Expect)
		l.tls.CurvePreferences = kex.ClientGroups(td)
		l.kex = kex.ModeFor(td)
		switch {
		case out.Capture != nil:
			l.mode = &captureOutbound{capture: out.Capture}
		case out.Egress != nil:
			if out.QUICUpstream != "" || out.HTTP != nil {
				return nil, fmt.Errorf("proxy: listener %q: egress is HTTP over TCP to an external server; it takes no HTTP or QUIC settings", out.Name)
			}
			if l.mode, err = p.newHTTPEgress(l, *out.Egress); err != nil {
				return nil, err
			}
		case out.HTTP != nil:
			if out.QUICUpstream != "" {
				return nil, fmt.Errorf("proxy: listener %q: HTTP over QUIC is not supported", out.Name)
			}
			exact, _ := out.Expect.ExactID()
			l.mode = p.newHTTPOutbound(l, *out.HTTP, exact)
		default:
			l.mode = &tcpOutbound{quicUpstream: out.QUICUpstream, quicTarget: out.QUICTarget}
		}
	}
	if err := p.linkCaptureEgress(); err != nil {
		return nil, err
	}
	return p, nil
}

// linkCaptureEgress gives each capture listener the egress listeners its
// destinations name.
func (p *Proxy) linkCaptureEgress() error {
	egress := map[string]*httpEgress{}
	for _, l := range p.listeners {
		if e, ok := l.mode.(*httpEgress); ok {
			egress[l.name] = e
		}
	}
	for _, l := range p.listeners {
		m, ok := l.mode.(*captureOutbound)
		if !ok {
			continue
		}
		m.egress = map[string]*httpEgress{}
		for _, d := range m.capture.Destinations {
			if d.Egress == "" {
				continue
			}
			if m.egress[d.Egress] = egress[d.Egress]; m.egress[d.Egress] == nil {
				return fmt.Errorf("proxy: listener %q: a capture destination names %q, which is not an egress listener", l.name, d.Egress)
			}
		}
	}
	return nil
}

// upstreamTrustDomain is the trust domain an outbound listener expects its
// server in, when its policy names exactly one; else the zero value, which
// selects the default key-exchange mode.
func upstreamTrustDomain(expect authz.Policy) spiffeid.TrustDomain {
	if tds := expect.TrustDomains(); len(tds) == 1 {
		return tds[0]
	}
	return spiffeid.TrustDomain{}
}

// checkKeyExchange applies the key-exchange policy to a verified peer, by
// its trust domain.
func (p *Proxy) checkKeyExchange(cs tls.ConnectionState, peer spiffeid.ID) error {
	if err := p.cfg.KeyExchange.Check(cs.CurveID, peer.TrustDomain()); err != nil {
		return &mtls.Refusal{Reason: reason.PQRequired, Peer: peer, Err: err}
	}
	return nil
}

func orDefault(d, def time.Duration) time.Duration {
	if d <= 0 {
		return def
	}
	return d
}

func cmpOr(l, def *slog.Logger) *slog.Logger {
	if l == nil {
		return def
	}
	return l
}

func (l *listener) allows(id spiffeid.ID) bool { return l.policy.Load().Allows(id) }

// setLimits makes cfg the listener's limits. The running limiter, and the
// state it holds, is kept when cfg is the same.
func (l *listener) setLimits(cfg limit.Config) {
	cur := l.limiter.Load()
	switch {
	case cfg.IsZero():
		l.limiter.Store(nil)
	case cur == nil || !reflect.DeepEqual(cur.Config(), cfg.WithDefaults()):
		l.limiter.Store(limit.New(cfg))
	}
}

// Listen binds every listener. On error, those already bound are closed and
// the error names the listener.
func (p *Proxy) Listen() (err error) {
	defer func() {
		if err != nil {
			p.closeListeners()
		}
	}()
	for _, l := range p.listeners {
		if err := l.mode.bind(p, l); err != nil {
			return fmt.Errorf("proxy: listener %q: %w", l.name, err)
		}
	}
	return nil
}

// closeListeners closes every bound listener, TCP and QUIC.
func (p *Proxy) closeListeners() {
	p.spare.close()
	for _, l := range p.listeners {
		if l.ln != nil {
			l.ln.Close()
		}
		l.mode.close()
	}
}

// QUICAddr returns the bound UDP address of the named inbound listener's
// QUIC side, or nil.
func (p *Proxy) QUICAddr(name string) net.Addr {
	for _, l := range p.listeners {
		if m, ok := l.mode.(*tcpInbound); ok && l.name == name && m.quic != nil {
			return m.quic.Addr()
		}
	}
	return nil
}

// Addr returns the bound address of the named listener, or nil.
func (p *Proxy) Addr(name string) net.Addr {
	for _, l := range p.listeners {
		if l.name == name && l.ln != nil {
			return l.ln.Addr()
		}
	}
	return nil
}

// SetPolicy replaces the policy of the named listener: the peers allowed
// in (inbound) or the server identities expected (outbound). New
// handshakes, resumed ones included, use it at once; established
// connections it no longer allows, pooled HTTP/2 and QUIC connections to an
// upstream included, are closed right away ("policy_revoked").
func (p *Proxy) SetPolicy(name string, pol authz.Policy) error {
	for _, l := range p.listeners {
		if l.name == name {
			l.policy.Store(&pol)
			select {
			case p.revalNow <- struct{}{}:
			default:
			}
			return nil
		}
	}
	return fmt.Errorf("proxy: no listener %q", name)
}

// SetHTTP replaces the request policy of the named HTTP inbound listener:
// its routes and its JWT-SVID and transaction-token settings. Each request
// reads them once, so it is decided wholly by the old settings or wholly
// by the new; requests arriving after SetHTTP returns, on new connections
// and open ones, get the new. AppH2C and ResponseHeaderTimeout shape the
// connections to the app and are fixed by New: a cfg that changes them is
// refused.
func (p *Proxy) SetHTTP(name string, cfg InboundHTTP) error {
	l := p.listener(name)
	if l == nil {
		return fmt.Errorf("proxy: no listener %q", name)
	}
	if err := checkHTTP(l, cfg); err != nil {
		return err
	}
	h := l.httpIn()
	h.settings.Store(p.newHTTPSettings(l, cfg, h.settings.Load()))
	return nil
}

// Apply brings the running listeners to in and out as far as that needs no
// restart: every listener's policy (as SetPolicy), every HTTP inbound
// listener's request policy (as SetHTTP) and every outbound listener's
// Callers (checked on the connections accepted from then on, and on every
// later request of an HTTP listener's open connections; a TCP connection
// already relayed is not cut). in and out must describe the
// running listeners, in any order: the same names, directions, addresses,
// modes (HTTP, capture) and the InboundHTTP settings fixed by New.
// Otherwise Apply changes nothing and returns an error naming every
// difference. OutboundHTTP settings and capture destinations are fixed by
// New and not compared.
func (p *Proxy) Apply(in []Inbound, out []Outbound) error {
	var errs []error
	seen := map[*listener]bool{}
	find := func(name string, dir direction) *listener {
		l := p.listener(name)
		switch {
		case l == nil:
			errs = append(errs, fmt.Errorf("proxy: no listener %q", name))
		case l.dir != dir:
			errs = append(errs, fmt.Errorf("proxy: listener %q is %s", name, l.dir))
		case seen[l]:
			errs = append(errs, fmt.Errorf("proxy: listener %q given twice", name))
		default:
			seen[l] = true
			return l
		}
		return nil
	}
	differ := func(l *listener, field, running, given string) {
		if running != given {
			errs = append(errs, fmt.Errorf("proxy: listener %q: %s is %q, not %q (a restart changes it)", l.name, field, running, given))
		}
	}
	for _, in := range in {
		l := find(in.Name, dirInbound)
		if l == nil {
			continue
		}
		differ(l, "Listen", l.addr, in.Listen)
		differ(l, "App", l.target, in.App)
		differ(l, "QUICListen", l.quicListen(), in.QUICListen)
		differ(l, "HTTP", fmt.Sprint(l.httpIn() != nil), fmt.Sprint(in.HTTP != nil))
		if l.httpIn() != nil && in.HTTP != nil {
			if err := checkHTTP(l, *in.HTTP); err != nil {
				errs = append(errs, err)
			}
		}
	}
	for _, out := range out {
		l := find(out.Name, dirOutbound)
		if l == nil {
			continue
		}
		differ(l, "Listen", l.addr, out.Listen)
		differ(l, "Upstream", l.target, out.Upstream)
		quicUpstream, quicTarget := l.quicUpstream()
		differ(l, "QUICUpstream", quicUpstream, out.QUICUpstream)
		differ(l, "QUICTarget", quicTarget, out.QUICTarget)
		differ(l, "HTTP", fmt.Sprint(l.httpOut() != nil), fmt.Sprint(out.HTTP != nil))
		differ(l, "Capture", fmt.Sprint(l.captures()), fmt.Sprint(out.Capture != nil))
		differ(l, "Egress", fmt.Sprint(l.egress()), fmt.Sprint(out.Egress != nil))
		// What New derived from Expect: the key-exchange mode towards the
		// upstream's trust domain, and the audience of the JWT-SVIDs sent.
		differ(l, "the key-exchange mode Expect selects", string(l.kex), string(p.cfg.KeyExchange.ModeFor(upstreamTrustDomain(out.Expect))))
		if h := l.httpOut(); h != nil && h.cfg.JWTAudience == "" {
			aud := ""
			if id, ok := out.Expect.ExactID(); ok {
				aud = id.String()
			}
			differ(l, "the JWT-SVID audience Expect selects", h.audience, aud)
		}
	}
	for _, l := range p.listeners {
		if !seen[l] {
			errs = append(errs, fmt.Errorf("proxy: listener %q is missing", l.name))
		}
	}
	if len(errs) > 0 {
		return errors.Join(errs...)
	}
	for _, in := range in {
		l := p.listener(in.Name)
		l.policy.Store(&in.Allow)
		l.setLimits(in.Limits)
		l.observed.Store(!in.Unobserved)
		if h := l.httpIn(); in.HTTP != nil {
			h.settings.Store(p.newHTTPSettings(l, *in.HTTP, h.settings.Load()))
		}
	}
	for _, out := range out {
		l := p.listener(out.Name)
		l.policy.Store(&out.Expect)
		l.callers.Store(&out.Callers)
	}
	select {
	case p.revalNow <- struct{}{}:
	default:
	}
	return nil
}

// listener returns the named listener, or nil.
func (p *Proxy) listener(name string) *listener {
	for _, l := range p.listeners {
		if l.name == name {
			return l
		}
	}
	return nil
}

// checkHTTP checks that cfg can replace the request policy of l.
func checkHTTP(l *listener, cfg InboundHTTP) error {
	if l.httpIn() == nil {
		return fmt.Errorf("proxy: listener %q is not an HTTP inbound listener", l.name)
	}
	cfg = cfg.withDefaults()
	cur := l.httpIn().settings.Load().cfg
	switch {
	case cfg.AppH2C != cur.AppH2C:
		return fmt.Errorf("proxy: listener %q: AppH2C is fixed at start", l.name)
	case cfg.ResponseHeaderTimeout != cur.ResponseHeaderTimeout:
		return fmt.Errorf("proxy: listener %q: ResponseHeaderTimeout is fixed at start", l.name)
	case cfg.AppConnections != cur.AppConnections:
		return fmt.Errorf("proxy: listener %q: AppConnections is fixed at start", l.name)
	case cfg.MaxConcurrentStreams != cur.MaxConcurrentStreams:
		return fmt.Errorf("proxy: listener %q: MaxConcurrentStreams is fixed at start", l.name)
	}
	return nil
}

// Serve accepts on every bound listener until ctx ends, then closes the
// listeners and every connection and returns once all goroutines have
// finished. Call Listen first.
func (p *Proxy) Serve(ctx context.Context) error {
	for _, l := range p.listeners {
		if l.ln == nil {
			return errNotBound(l)
		}
	}
	var wg sync.WaitGroup
	for _, l := range p.listeners {
		l.mode.serve(ctx, p, l, &wg)
	}
	wg.Go(func() { p.revalidate(ctx) })
	<-ctx.Done()
	p.closeAll()
	p.closeListeners()
	wg.Wait()
	p.wg.Wait()
	if p.global != nil {
		p.global.Close()
	}
	return nil
}

// Drain stops accepting inbound connections and waits until the inbound
// connections in flight have finished or ctx ends. Outbound listeners keep
// working, so the app can still call out while it drains; they stop when
// Serve's context ends.
func (p *Proxy) Drain(ctx context.Context) error {
	p.mu.Lock()
	p.draining = true
	p.mu.Unlock()
	var wg sync.WaitGroup
	for _, l := range p.listeners {
		if l.dir == dirInbound {
			l.ln.Close()
			l.mode.drain(ctx, &wg)
			wg.Go(l.conns.Wait)
		}
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("proxy: drain: %w", ctx.Err())
	}
}

// accept takes l's connections from ln (l.ln, or l.twin).
func (p *Proxy) accept(ctx context.Context, l *listener, ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return
			}
			// Out of file descriptors: close the waiting connection with
			// the spare descriptor, so its client learns at once.
			if isFDExhausted(err) && p.spare.shed(ln) {
				p.m.refused(l.dir, reason.FDLimit, true)
				p.access(l, time.Now(), spiffeid.ID{}, nil, "deny", reason.FDLimit, relay.Result{}, "tcp")
				p.log.Warn("proxy: out of file descriptors; connection closed at accept", slog.String(logkey.Listener, l.name))
				continue
			}
			// Anything else, or no spare: back off briefly rather than
			// spin.
			p.log.Warn("proxy: accept failed", slog.String(logkey.Listener, l.name), slog.String(logkey.Error, err.Error()))
			select {
			case <-time.After(50 * time.Millisecond):
				continue
			case <-ctx.Done():
				return
			}
		}
		if !p.slots.take(l.dir) {
			c.Close()
			p.refuseAtAccept(l, reason.Limit)
			continue
		}
		var src netip.Addr
		if l.dir == dirInbound {
			src = sourceOf(c)
			if p.quarantined(anomaly.Source(src), time.Now()) {
				c.Close()
				p.slots.release(l.dir)
				p.refuseAtAccept(l, reason.Quarantined)
				continue
			}
			if why := p.slots.startHandshake(src); why != "" {
				c.Close()
				p.slots.release(l.dir)
				p.refuseAtAccept(l, why)
				continue
			}
			p.m.handshakeStarted()
		}
		l.conns.Add(1)
		h := &handoff{}
		h.add(func() { p.slots.release(l.dir); l.conns.Done() })
		p.wg.Go(func() {
			defer h.run()
			ctx := context.WithValue(ctx, handoffKey{}, h)
			switch m := l.mode.(type) {
			case inboundMode:
				p.handleInbound(ctx, l, m, c, func() {
					p.slots.endHandshake(src)
					p.m.handshakeEnded()
				})
			case outboundMode:
				m.serveApp(ctx, p, l, c, time.Now())
			}
		})
	}
}

// handleInbound serves an inbound connection; handshaken is called once
// its handshake has ended, well or not.
func (p *Proxy) handleInbound(ctx context.Context, l *listener, m inboundMode, raw net.Conn, handshaken func()) {
	start := time.Now()
	fb := &firstByteConn{Conn: rawio.Wrap(raw)}
	raw.SetReadDeadline(start.Add(p.cfg.FirstByteTimeout))
	tc := tls.Server(relay.Batching(fb), l.tls)
	cs, err := p.handshake(ctx, l, tc)
	handshaken()
	if err != nil {
		tc.Close()
		if !fb.got.Load() && isTimeout(err) {
			p.refuseAtAccept(l, reason.FirstByteTimeout)
			return
		}
		why, peer := p.refuse(l, start, err, reason.HandshakeFailed, "tcp")
		p.observe(l, anomaly.Observation{Subject: subjectOf(peer, sourceOf(raw)), Time: start, Kind: anomaly.Connection, Route: l.name, Reason: why})
		return
	}
	peer, _ := peerOf(cs)
	if lim := l.limiter.Load(); lim != nil {
		release, _, ok := lim.Connect(peer, time.Now())
		why := reason.Reason("")
		switch {
		case !ok:
			why = reason.RateLimited
		case lim.Config().Global.Connections:
			why, _ = p.checkGlobal(ctx, limit.Hit{Listener: l.name, Kind: limit.KindConnection, Peer: peer})
		}
		if why != "" {
			if ok {
				release()
			}
			tc.Close()
			p.m.refused(l.dir, why, false)
			p.access(l, start, peer, cs, "deny", why, relay.Result{}, "tcp")
			p.observe(l, anomaly.Observation{Subject: anomaly.Peer(peer), Time: start, Kind: anomaly.Connection, Route: l.name, Reason: why})
			return
		}
		if h := handoffOf(ctx); h != nil {
			h.add(release) // at the connection's end, whoever ends it
		} else {
			defer release()
		}
	}
	p.observe(l, anomaly.Observation{Subject: anomaly.Peer(peer), Time: start, Kind: anomaly.Connection, Route: l.name})
	m.serveConn(ctx, p, l, tc, cs, start)
}

func (p *Proxy) handshake(ctx context.Context, l *listener, tc *tls.Conn) (*tls.ConnectionState, error) {
	hctx, cancel := context.WithTimeout(ctx, p.cfg.HandshakeTimeout)
	defer cancel()
	start := time.Now()
	err := tc.HandshakeContext(hctx)
	p.m.handshakeDone(l.dir, time.Since(start).Seconds())
	if err != nil {
		return nil, err
	}
	cs := tc.ConnectionState()
	return &cs, nil
}

// refuse records a failed handshake. Our own refusals carry an mtls
// reason; anything else (the peer refused us, a timeout, garbage) gets
// fallback.
//
// It returns the reason, and the peer's SPIFFE ID when its chain verified
// (and it was refused on other grounds).
func (p *Proxy) refuse(l *listener, start time.Time, err error, fallback reason.Reason, transport string) (reason.Reason, spiffeid.ID) {
	why := reason.Of(err)
	var peer spiffeid.ID
	var extra []slog.Attr
	var r *mtls.Refusal
	if errors.As(err, &r) {
		// Only a verified ID is the peer's; an unverified one is what the
		// certificate claims.
		peer = r.Peer
		if !r.Claimed.IsZero() {
			extra = append(extra, slog.String(logkey.ClaimedID, r.Claimed.String()))
		}
	}
	switch {
	case why != "":
	case errors.Is(err, context.DeadlineExceeded) || isTimeout(err):
		why = reason.HandshakeTimeout
	default:
		why = fallback
	}
	p.m.refused(l.dir, why, false)
	p.access(l, start, peer, nil, "deny", why, relay.Result{}, transport, extra...)
	p.log.Debug("proxy: handshake refused", slog.String(logkey.Listener, l.name),
		slog.String(logkey.Reason, string(why)), slog.String(logkey.Error, err.Error()))
	return why, peer
}

// refuseAtAccept records an inbound connection closed before its
// handshake for want of a slot, or of a first byte. These can come by
// thousands a second from anyone who reaches an inbound port, so they are
// counted in full but their access-log lines are rate-limited
// (Config.AccessLog gets at most refusalLogBurst at once, then
// refusalLogRate a second) and the log says only now and then that
// connections are being refused.
func (p *Proxy) refuseAtAccept(l *listener, why reason.Reason) {
	p.m.refused(l.dir, why, false)
	if p.refusalLog.Allow() {
		p.access(l, time.Now(), spiffeid.ID{}, nil, "deny", why, relay.Result{}, "tcp")
	} else if p.cfg.Audit != nil && !l.unaudited {
		// Not logged past the rate, but audited: the audit's queue bounds
		// what a flood costs, and counts what it drops.
		p.cfg.Audit.Write(audit.Event{Type: audit.TypeDecision, Time: time.Now(), Listener: l.name, Direction: string(l.dir),
			Transport: "tcp", Decision: audit.Deny, Reason: string(why)})
	}
	p.refusalWarn.Do(func() {
		p.log.Warn("proxy: connections refused before their handshake; credflow_refusals_total counts them by reason",
			slog.String(logkey.Listener, l.name), slog.String(logkey.Reason, string(why)))
	})
}

// handoff holds the clean-ups of an accepted connection (its connection
// slot, its listener's count, a rate limiter's hold) for whoever ends the
// connection: the goroutine that accepted it, or the relay it hands them to
// (Proxy.relay). Only that goroutine touches it until the hand-over.
type handoff struct {
	fns   []func()
	taken bool
}

type handoffKey struct{}

// handoffOf returns the hand-off of the accepted connection ctx serves, or
// nil.
func handoffOf(ctx context.Context) *handoff {
	h, _ := ctx.Value(handoffKey{}).(*handoff)
	return h
}

// add registers f to run when the connection ends, before those added
// earlier.
func (h *handoff) add(f func()) { h.fns = append(h.fns, f) }

// take hands the clean-ups over: run no longer runs them, the function
// returned does.
func (h *handoff) take() func() {
	h.taken = true
	fns := h.fns
	return func() {
		for i := len(fns) - 1; i >= 0; i-- {
			fns[i]()
		}
	}
}

// run runs the clean-ups unless they were handed over.
func (h *handoff) run() {
	if !h.taken {
		h.take()()
	}
}

// errClosedBySidecar is the cause of a relay the sidecar closed (a
// revalidation, a shutdown); the access log has the reason.
var errClosedBySidecar = errors.New("closed by the sidecar")

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// relay copies between a and b, tracking the connection for revalidation.
// For inbound listeners a is the peer and b the app; for outbound ones a is
// the app and b the peer.
//
// For a connection the proxy accepted, relay returns at once: the relay
// runs on its own goroutines and ends the connection (the access log, the
// metrics, the accepted connection's clean-ups) when it finishes, so the
// goroutine that accepted and handshook, and grew its stack doing so, is
// gone while the connection lives, and an idle connection holds no
// goroutine at all once its relay parks. Otherwise (a QUIC stream) relay
// returns when the relay ends.
func (p *Proxy) relay(ctx context.Context, l *listener, start time.Time, peer spiffeid.ID,
	cs *tls.ConnectionState, a, b net.Conn, transport string) {
	// The sidecar closes the relay, not its connections: an idle relay
	// parks (relay.Options.ParkAfter) and would not notice its
	// connections closed from outside.
	r := relay.New(a, b, relay.Options{IdleTimeout: p.cfg.IdleTimeout, ParkAfter: p.cfg.ParkAfter})
	c := p.newConn(l, cs, func() { r.Close(errClosedBySidecar) })
	c.expect, _ = ctx.Value(expectKey{}).(*authz.Policy)
	p.mu.Lock()
	p.conns[c] = struct{}{}
	p.groups[GroupName(cs.CurveID)]++
	p.mu.Unlock()
	p.m.started(l.dir)
	if l.dir == dirInbound {
		p.m.established(l.dir, cs) // the peer passed our checks
	}
	if p.cfg.KeyExchange.Classical(cs.CurveID, peer.TrustDomain()) {
		p.m.classicalAccepted(l.dir, peer.TrustDomain().Name())
	}

	span := p.connSpan(ctx, l, start, peer, cs, transport)
	h := handoffOf(ctx)
	if h == nil {
		res := make(chan relay.Result, 1)
		r.Start(ctx, func(x relay.Result) { res <- x })
		p.relayEnded(l, start, peer, cs, c, span, <-res, transport)
		return
	}
	cleanups := h.take()
	p.wg.Add(1) // the accepting goroutine's count is still held
	r.Start(ctx, func(res relay.Result) {
		defer p.wg.Done()
		p.relayEnded(l, start, peer, cs, c, span, res, transport)
		cleanups()
	})
}

// relayEnded accounts for a relay that has ended.
func (p *Proxy) relayEnded(l *listener, start time.Time, peer spiffeid.ID, cs *tls.ConnectionState,
	c *conn, span trace.Span, res relay.Result, transport string) {
	p.mu.Lock()
	delete(p.conns, c)
	p.mu.Unlock()
	fromApp, toApp := appBytes(l.dir, res)
	p.m.finished(l.dir, fromApp, toApp)
	if l.dir == dirOutbound && toApp == 0 && refusedByPeer(res.Err) {
		// In TLS 1.3 the client's handshake completes before the server
		// has checked the client certificate; a server that refuses us
		// says so with an alert on our first read.
		p.m.refused(l.dir, reason.PeerRefused, false)
		p.access(l, start, peer, cs, "deny", reason.PeerRefused, res, transport)
		endConnSpan(span, reason.PeerRefused, fromApp, toApp)
		return
	}
	if l.dir == dirOutbound {
		p.m.established(l.dir, cs) // the peer did not refuse us
	}
	why, _ := c.closedBy.Load().(reason.Reason)
	p.access(l, start, peer, cs, "allow", why, res, transport)
	endConnSpan(span, why, fromApp, toApp)
}

// refusedByPeer reports whether a relay that delivered nothing to the app
// ended because the peer refused the connection: a TLS alert from the peer
// (crypto/tls reports it as a *net.OpError whose Op is "remote error"; QUIC
// as a remote crypto error closing the connection), or,
// when our write raced the peer's close, a reset or broken pipe.
func refusedByPeer(err error) bool {
	var oe *net.OpError
	var te *quic.TransportError
	return errors.As(err, &oe) && oe.Op == "remote error" ||
		errors.As(err, &te) && te.Remote && te.ErrorCode.IsCryptoError() ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}

// peerOf returns the verified peer's ID and certificate expiry.
func peerOf(cs *tls.ConnectionState) (spiffeid.ID, time.Time) {
	leaf := cs.PeerCertificates[0]
	id, _ := x509svid.IDFromCert(leaf) // verified in VerifyConnection
	return id, leaf.NotAfter
}

// revalidate checks the established connections every RevalidateInterval,
// at once after SetPolicy, and at once when the bundles change.
func (p *Proxy) revalidate(ctx context.Context) {
	t := time.NewTicker(p.cfg.RevalidateInterval)
	defer t.Stop()
	changed := changes(p.cfg.Bundles)
	revoked := p.revokedChanged()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-p.revalNow:
		case <-changed:
			changed = changes(p.cfg.Bundles)
		case <-revoked:
			revoked = p.revokedChanged()
		}
		p.revalidateAll(time.Now())
		for _, l := range p.listeners {
			l.mode.swept()
		}
	}
}

// changes returns a channel closed at src's next change, or nil (which
// never fires) if src does not signal its changes.
func changes(src any) <-chan struct{} {
	if c, ok := src.(interface{ Changed() <-chan struct{} }); ok {
		return c.Changed()
	}
	return nil
}

// revalidateAll closes the connections that recheck condemns. Chains are
// verified outside p.mu: a bundle change re-verifies every connection.
func (p *Proxy) revalidateAll(now time.Time) {
	p.mu.Lock()
	conns := slices.Collect(maps.Keys(p.conns))
	p.mu.Unlock()
	for _, c := range conns {
		why := p.recheck(c, now)
		if why == "" || !c.closedBy.CompareAndSwap(nil, why) {
			continue // still good, or already closed
		}
		p.m.closedBySidecar(c.l.dir, why)
		p.log.Info("proxy: closing connection", slog.String(logkey.Listener, c.l.name),
			slog.String(logkey.PeerID, c.peer.String()), slog.String(logkey.Reason, string(why)))
		c.close()
	}
}

// recheck returns why c must be closed now, or "". It retires c when it
// reaches MaxConnectionAge and can be wound down.
func (p *Proxy) recheck(c *conn, now time.Time) reason.Reason {
	if !c.allowed() {
		return reason.PolicyRevoked
	}
	if why := p.barred(c.l.dir, c.peer, c.chain, now); why != "" {
		return why
	}
	if c.chain != nil {
		b, err := p.cfg.Bundles.GetX509BundleForTrustDomain(c.peer.TrustDomain())
		if err != nil || b != c.bundle {
			// The bundle changed (a Source hands out a new one on every
			// update) or is gone: verify the chain again, expiry aside.
			if _, err := mtls.Reverify(c.chain, p.cfg.Bundles, c.eku, now); err != nil {
				return reason.Untrusted
			}
			c.bundle = b
		}
	}
	if p.cfg.CloseOnPeerExpiry && !now.Before(c.notAfter) {
		return reason.PeerExpired
	}
	if maxAge := p.cfg.MaxConnectionAge; maxAge > 0 {
		age := now.Sub(c.started)
		switch {
		case age >= maxAge+MaxAgeGrace, age >= maxAge && c.retire == nil:
			return reason.MaxAge
		case age >= maxAge && c.retiring.CompareAndSwap(false, true):
			c.retire()
		}
	}
	return ""
}

func (p *Proxy) closeAll() {
	p.mu.Lock()
	conns := slices.Collect(maps.Keys(p.conns))
	p.mu.Unlock()
	for _, c := range conns {
		c.close() // outside p.mu: closing may untrack
	}
}

// Draining reports whether Drain has been called.
func (p *Proxy) Draining() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.draining
}

// NegotiatedGroups counts the relayed connections, and the HTTP
// connections between sidecars (pooled outbound ones included), by the
// key-exchange group they negotiated, since start.
func (p *Proxy) NegotiatedGroups() map[string]int64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	return maps.Clone(p.groups)
}

// KeyExchange returns the key-exchange policy.
func (p *Proxy) KeyExchange() pqc.Policy { return p.cfg.KeyExchange }

// Policies returns each listener's current policy patterns, by name.
func (p *Proxy) Policies() map[string][]string {
	out := map[string][]string{}
	for _, l := range p.listeners {
		out[l.name] = l.policy.Load().Patterns()
	}
	return out
}

// access writes the connection's access-log line, with extra attributes
// after the peer's.
func (p *Proxy) access(l *listener, start time.Time, peer spiffeid.ID, cs *tls.ConnectionState, decision string, why reason.Reason, res relay.Result, transport string, extra ...slog.Attr) {
	attrs := []slog.Attr{
		slog.String(logkey.Direction, string(l.dir)),
		slog.String(logkey.Listener, l.name),
		slog.String(logkey.Decision, decision),
	}
	if transport != "" {
		attrs = append(attrs, slog.String(logkey.Transport, transport))
	}
	if !peer.IsZero() {
		attrs = append(attrs, slog.String(logkey.PeerID, peer.String()))
	}
	attrs = append(attrs, extra...)
	if why != "" {
		attrs = append(attrs, slog.String(logkey.Reason, string(why)))
	}
	if cs != nil {
		attrs = append(attrs,
			slog.String(logkey.Group, GroupName(cs.CurveID)),
			slog.String(logkey.TLSVersion, tls.VersionName(cs.Version)),
			slog.Bool(logkey.Resumed, cs.DidResume))
	}
	fromApp, toApp := appBytes(l.dir, res)
	attrs = append(attrs,
		slog.Int64(logkey.BytesFromApp, fromApp),
		slog.Int64(logkey.BytesToApp, toApp),
		slog.Float64(logkey.DurationMS, float64(time.Since(start).Microseconds())/1000))
	if res.Err != nil {
		attrs = append(attrs, slog.String(logkey.Error, res.Err.Error()))
	}
	p.acc.LogAttrs(context.Background(), slog.LevelInfo, "access", attrs...)
	if p.cfg.Audit != nil && !l.unaudited {
		e := audit.Event{Type: audit.TypeDecision, Time: start, Listener: l.name, Direction: string(l.dir),
			Transport: transport, Decision: decision, Reason: string(why)}
		if !peer.IsZero() {
			e.PeerID = peer.String()
		}
		if cs != nil {
			e.Group = GroupName(cs.CurveID)
		}
		p.cfg.Audit.Write(e)
	}
}

// Auditor receives audit events (package audit's Writer is one).
type Auditor interface{ Write(audit.Event) }

// appBytes returns the bytes relayed from and to the app: inbound relays
// have the peer as a and the app as b, outbound ones the reverse.
func appBytes(dir direction, res relay.Result) (fromApp, toApp int64) {
	if dir == dirOutbound {
		return res.AToB, res.BToA
	}
	return res.BToA, res.AToB
}
