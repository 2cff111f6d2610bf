package config

import (
	"cmp"
	"errors"
	"fmt"
	"math"
	"net"
	"net/netip"
	"net/url"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"golang.org/x/net/http/httpguts"
	"gopkg.in/yaml.v3"

	"github.com/credflow/credflow/internal/peercred"
	"github.com/credflow/credflow/pqc"
	"github.com/credflow/credflow/proxy/authz"
	"github.com/credflow/credflow/proxy/defaults"
	"github.com/credflow/credflow/proxy/limit"
	"github.com/credflow/credflow/proxy/route"
	"github.com/credflow/credflow/token"
)

// validator checks a decoded file section by section. Each method owns
// the rules of one section and names the field path of every problem it
// finds; all problems are collected, none stops the others.
type validator struct {
	fail func(field, format string, args ...any)
	// names maps listener names to the field that took them; ports maps
	// listen addresses to theirs.
	names, ports map[string]string
	// credentials maps credential names to the field that took them.
	credentials map[string]string
}

// version checks the file format's version: absent or Version.
func (v *validator) version(n int) {
	if n != 0 && n != Version {
		v.fail("version", "%d is not a version this credflow reads (%d)", n, Version)
	}
}

// process checks the settings of the process: admin, log, drain, debug.
func (v *validator) process(c *Config, f *file) {
	c.WorkloadAPI = f.WorkloadAPI
	c.Admin = cmpOr(f.Admin, DefaultAdmin)
	c.LogLevel = cmpOr(f.Log.Level, DefaultLogLevel)
	c.LogFormat = cmpOr(f.Log.Format, DefaultLogFormat)
	c.DrainTimeout = f.Timeouts.Drain.or(DefaultDrainTimeout)
	c.Pprof = f.Debug.Pprof
	switch c.LogLevel {
	case "debug", "info", "warn", "error":
	default:
		v.fail("log.level", "%q is not debug, info, warn or error", c.LogLevel)
	}
	switch c.LogFormat {
	case "json", "text":
	default:
		v.fail("log.format", "%q is not json or text", c.LogFormat)
	}
	if err := checkAddr(c.Admin, true); err != nil {
		v.fail("admin", "%v", err)
	}
}

// connections checks the data plane's timeouts, connection budget and
// session resumption.
func (v *validator) connections(c *Config, f *file) {
	t, l := f.Timeouts, f.Limits
	c.HandshakeTimeout = t.Handshake.or(defaults.HandshakeTimeout)
	c.DialTimeout = t.Dial.or(defaults.DialTimeout)
	c.IdleTimeout = t.Idle.or(defaults.IdleTimeout)
	c.ParkAfter = t.Park.timeout()
	c.Revalidate = t.Revalidate.or(defaults.RevalidateInterval)
	c.MaxConnectionAge = t.MaxConnectionAge.or(0)
	c.CloseOnPeerExpiry = t.CloseOnPeerExpiry
	c.NoResumption = f.TLS.SessionResumption != nil && !*f.TLS.SessionResumption
	c.FirstByteTimeout = t.FirstByte.or(defaults.FirstByteTimeout)
	if c.FirstByteTimeout > c.HandshakeTimeout {
		v.fail("timeouts.first_byte", "%s is longer than timeouts.handshake (%s), which bounds the whole handshake", c.FirstByteTimeout, c.HandshakeTimeout)
	}
	switch c.MaxConnections = l.MaxConnections; {
	case c.MaxConnections == 0:
		c.MaxConnections = defaults.MaxConnections
	case c.MaxConnections < 0:
		v.fail("limits.max_connections", "must be positive")
	}
	c.OutboundReserve, c.MaxHandshakes, c.HandshakesPerSource = l.OutboundReserve, l.MaxHandshakes, l.HandshakesPerSource
	switch {
	case c.OutboundReserve < 0:
		v.fail("limits.outbound_reserve", "must be positive (0 or absent: a tenth of max_connections)")
	case c.OutboundReserve > 0 && c.OutboundReserve >= c.MaxConnections:
		v.fail("limits.outbound_reserve", "%d leaves no slot of max_connections (%d) for inbound connections", c.OutboundReserve, c.MaxConnections)
	}
	if c.MaxHandshakes < 0 {
		v.fail("limits.max_handshakes", "must be positive (0 or absent: %d)", defaults.MaxHandshakes)
	}
	if c.HandshakesPerSource < 0 {
		v.fail("limits.handshakes_per_source", "must be positive (0 or absent: %d)", defaults.HandshakesPerSource)
	}
	if l.Global != nil {
		c.GlobalLimits = v.globalLimits("limits.global", l.Global)
	}
}

// maxGlobalTimeout bounds limits.global.timeout: every request or
// connection counted waits for the answer.
const maxGlobalTimeout = 5 * time.Second

// globalLimits checks the global rate limit service.
func (v *validator) globalLimits(field string, f *fileGlobalLimits) *limit.GlobalConfig {
	g := &limit.GlobalConfig{Service: f.Service, Domain: f.Domain, Timeout: f.Timeout.or(limit.DefaultGlobalTimeout)}
	if err := checkAddr(f.Service, false); err != nil {
		v.fail(field+".service", "%v (the rate limit service's gRPC address, host:port)", err)
	}
	if g.Timeout <= 0 || g.Timeout > maxGlobalTimeout {
		v.fail(field+".timeout", "%s: above 0, at most %s (default %s)", g.Timeout, maxGlobalTimeout, limit.DefaultGlobalTimeout)
	}
	switch f.FailureMode {
	case "", "allow":
		g.FailureMode = limit.FailOpen
	case "deny":
		g.FailureMode = limit.FailClosed
	default:
		v.fail(field+".failure_mode", "%q is not allow or deny (default allow)", f.FailureMode)
	}
	return g
}

// globalUsed checks that every inbound listener counting against the
// global budget has a service to count on.
func (v *validator) globalUsed(c *Config) {
	if c.GlobalLimits != nil {
		return
	}
	for i, in := range c.Inbound {
		if in.Limits.Global != (limit.GlobalKinds{}) {
			v.fail(fmt.Sprintf("inbound[%d].limits.global", i), "needs the rate limit service in limits.global (top level)")
		}
	}
}

// keyExchange checks the key-exchange policy.
func (v *validator) keyExchange(c *Config, f fileKeyExch) {
	var err error
	if c.KeyExchange.Mode, err = pqc.ParseMode(f.Mode); err != nil {
		v.fail("key_exchange.mode", "%v", err)
	}
	for i, g := range f.Groups {
		id, err := pqc.ParseGroup(g)
		if err != nil {
			v.fail(fmt.Sprintf("key_exchange.groups[%d]", i), "%v", err)
			continue
		}
		c.KeyExchange.Groups = append(c.KeyExchange.Groups, id)
	}
	for name, mode := range f.TrustDomains {
		field := "key_exchange.trust_domains." + name
		td, err := spiffeid.TrustDomainFromString(name)
		if err != nil {
			v.fail(field, "%v", err)
			continue
		}
		m, err := pqc.ParseMode(mode)
		if err != nil {
			v.fail(field, "%v", err)
			continue
		}
		if c.KeyExchange.Overrides == nil {
			c.KeyExchange.Overrides = map[spiffeid.TrustDomain]pqc.Mode{}
		}
		c.KeyExchange.Overrides[td] = m
	}
}

// jwt checks the leeway every token validation uses.
func (v *validator) jwt(c *Config, f fileJWT) {
	if c.JWTLeeway = f.Leeway.or(MaxJWTLeeway); c.JWTLeeway > MaxJWTLeeway {
		v.fail("jwt.leeway", "%v is over the %v limit", c.JWTLeeway, MaxJWTLeeway)
	}
}

// quic checks the QUIC limits.
func (v *validator) quic(c *Config, f fileQUIC) {
	c.QUICMaxStreams, c.QUICHandshakeTimeout, c.QUICIdleTimeout = f.MaxStreams, f.HandshakeTimeout.or(0), f.IdleTimeout.or(0)
	if c.QUICHandshakeRate = f.HandshakeRate; c.QUICHandshakeRate < 0 {
		v.fail("quic.handshake_rate", "must be positive")
	}
	if c.QUICMaxStreams < 0 {
		v.fail("quic.max_streams", "must be positive")
	}
}

// tokenEndpoint checks the token_endpoint section.
func (v *validator) tokenEndpoint(t *tokenEndpoint, admin string, edge bool) *TokenEndpoint {
	fail := v.fail
	te := &TokenEndpoint{SocketGroup: -1, Audiences: t.Audiences}
	if path, ok := strings.CutPrefix(t.Listen, "unix://"); ok {
		te.Network, te.Address = "unix", path
		switch {
		case !strings.HasPrefix(path, "/"):
			fail("token_endpoint.listen", "%q: the socket path must be absolute (unix:///run/credflow/token.sock)", t.Listen)
		case len(path) > 107:
			fail("token_endpoint.listen", "%q: a unix socket path is at most 107 bytes", t.Listen)
		}
	} else {
		te.Network, te.Address = "tcp", t.Listen
		if err := checkAddr(t.Listen, true); err != nil {
			fail("token_endpoint.listen", "%v (or unix:///path/to.sock)", err)
		} else if clash(t.Listen, admin) {
			fail("token_endpoint.listen", "%s clashes with admin (%s)", t.Listen, admin)
		}
	}
	if t.SocketGroup != nil {
		if te.Network != "unix" {
			fail("token_endpoint.socket_group", "only applies to a unix:// listen address")
		}
		te.SocketGroup = int(v.localID("token_endpoint.socket_group", *t.SocketGroup))
	}
	te.Callers = v.callers("token_endpoint.callers", t.Callers)
	if len(te.Callers.GIDs) > 0 && te.Network != "unix" {
		fail("token_endpoint.callers.gids", "a TCP caller has no group the kernel can name; use uids, or a unix:// listen address")
	}
	for i, a := range t.Audiences {
		if a == "" {
			fail(fmt.Sprintf("token_endpoint.audiences[%d]", i), "empty")
		}
	}
	te.NewAudienceRate, te.NewAudienceBurst, te.MaxAudiences = t.NewAudienceRate, t.NewAudienceBurst, t.MaxAudiences
	if t.NewAudienceRate < 0 || math.IsNaN(t.NewAudienceRate) || math.IsInf(t.NewAudienceRate, 0) {
		fail("token_endpoint.new_audience_rate", "must be a positive number of audiences a second (or absent, for the default)")
	}
	if t.NewAudienceBurst < 0 {
		fail("token_endpoint.new_audience_burst", "must be positive (or absent, for the default)")
	}
	if t.MaxAudiences < 0 {
		fail("token_endpoint.max_audiences", "must be positive (or absent, for the default)")
	}
	if len(t.Audiences) == 0 && !edge {
		fail("token_endpoint.audiences", "required: the audiences this workload's JWT-SVIDs may be issued for "+
			"(token_endpoint: {listen: %s, audiences: [spiffe://example.org/backend]}; %q allows every audience)",
			cmpOr(t.Listen, "127.0.0.1:15080"), token.AnyAudience)
	}
	return te
}

// callers checks the uids and gids of the callers section at field.
func (v *validator) callers(field string, c callers) peercred.Callers {
	var out peercred.Callers
	for i, u := range c.UIDs {
		out.UIDs = append(out.UIDs, v.localID(fmt.Sprintf("%s.uids[%d]", field, i), u))
	}
	for i, g := range c.GIDs {
		out.GIDs = append(out.GIDs, v.localID(fmt.Sprintf("%s.gids[%d]", field, i), g))
	}
	return out
}

// localID checks a uid or gid.
func (v *validator) localID(field string, id int64) uint32 {
	if id < 0 || id >= int64(peercred.NoID) {
		v.fail(field, "%d is not a uid or gid", id)
	}
	return uint32(id)
}

// edge checks the edge section: the external issuers and the minting
// policy of transaction tokens.
func (v *validator) edge(f *fileEdge, leeway time.Duration) *Edge {
	fail := v.fail
	e := &Edge{Leeway: leeway, TxnTTL: f.TxnToken.TTL.or(0), Scopes: f.TxnToken.Scopes, KeepExternal: f.KeepExternal}
	if len(f.Issuers) == 0 {
		fail("edge.issuers", "at least one external issuer is required")
	}
	seen := map[string]bool{}
	for i, is := range f.Issuers {
		field := fmt.Sprintf("edge.issuers[%d]", i)
		switch {
		case is.Issuer == "":
			fail(field+".issuer", "required (the exact iss of its tokens)")
		case seen[is.Issuer]:
			fail(field+".issuer", "%q is configured twice", is.Issuer)
		}
		seen[is.Issuer] = true
		if len(is.Audiences) == 0 || slices.Contains(is.Audiences, "") {
			fail(field+".audiences", "at least one non-empty audience is required; the audience check is never skipped")
		}
		for j, a := range is.Algorithms {
			if err := token.CheckAlgorithm(a); err != nil {
				fail(fmt.Sprintf("%s.algorithms[%d]", field, j), "%v", err)
			}
		}
		switch {
		case (is.JWKSFile == "") == (is.JWKSURL == ""):
			fail(field, "exactly one of jwks_file and jwks_url is required")
		case is.JWKSURL != "" && !strings.HasPrefix(is.JWKSURL, "https://"):
			fail(field+".jwks_url", "%q is not an https:// URL", is.JWKSURL)
		case is.JWKSCAFile != "" && is.JWKSURL == "":
			fail(field+".jwks_ca_file", "only applies to jwks_url")
		}
		e.Issuers = append(e.Issuers, Issuer{Issuer: is.Issuer, Audiences: is.Audiences, Algorithms: is.Algorithms,
			JWKSFile: is.JWKSFile, JWKSURL: is.JWKSURL, JWKSCAFile: is.JWKSCAFile, JWKSRefresh: is.JWKSRefresh.or(0)})
	}
	if e.TxnTTL > token.MaxTxnTTL {
		fail("edge.txn_token.ttl", "%v is over the %v limit", e.TxnTTL, token.MaxTxnTTL)
	}
	if aud := f.TxnToken.Audience; aud != nil {
		if err := token.CheckTxnAudiences(aud); err != nil {
			fail("edge.txn_token.audience", "%v", err)
		}
		e.TxnAudiences = aud
	}
	return e
}

// claimAdmin reserves the admin and token endpoint addresses, which no
// listener may take.
func (v *validator) claimAdmin(c *Config) {
	if c.Admin != "" {
		v.ports[c.Admin] = "admin"
	}
	if te := c.TokenEndpoint; te != nil && te.Network == "tcp" {
		v.ports[te.Address] = "token_endpoint"
	}
}

// listener checks a listener's name (required, unique) and listen address
// (valid, clashing with no other).
func (v *validator) listener(field, name, listen string) {
	if name == "" {
		v.fail(field+".name", "required")
	} else if prev, dup := v.names[name]; dup {
		v.fail(field+".name", "%q is also the name of %s", name, prev)
	} else {
		v.names[name] = field
	}
	if err := checkAddr(listen, false); err != nil {
		v.fail(field+".listen", "%v", err)
		return
	}
	for addr, prev := range v.ports {
		if clash(addr, listen) {
			v.fail(field+".listen", "%s clashes with %s (%s)", listen, prev, addr)
		}
	}
	v.ports[listen] = field + ".listen"
}

// inbound checks an inbound listener.
func (v *validator) inbound(field string, in *fileInbound, leeway time.Duration) Inbound {
	v.listener(field, in.Name, in.Listen)
	if err := checkAddr(in.App, true); err != nil {
		v.fail(field+".app", "%v", err)
	}
	ib := Inbound{Name: in.Name, Listen: in.Listen, App: in.App, Allow: v.policy(field+".allow", in.Allow), QUICListen: in.QUIC}
	ib.Unobserved = in.Anomaly != nil && !*in.Anomaly
	ib.Unaudited = in.Audit != nil && !*in.Audit
	ib.Untraced = in.Tracing != nil && !*in.Tracing
	if in.Limits != nil {
		ib.Limits = v.limits(field+".limits", in.Limits)
		if in.Limits.Requests != nil && in.Protocol != "http" {
			v.fail(field+".limits.requests", "request limits need protocol: http; a TCP listener limits connections")
		}
		if in.Limits.Global != nil && in.Limits.Global.Requests && in.Protocol != "http" {
			v.fail(field+".limits.global.requests", "request limits need protocol: http; a TCP listener limits connections")
		}
	}
	if in.QUIC != "" {
		if err := checkAddr(in.QUIC, false); err != nil {
			v.fail(field+".quic_listen", "%v", err)
		}
	}
	switch in.Protocol {
	case "", "tcp":
		if len(in.Routes) > 0 || in.JWT.Require || in.AppProtocol != "" || in.TxnToken.Require || len(in.TxnToken.Minters) > 0 ||
			in.TxnToken.SingleUse || in.AppResponseTimeout.set || in.AppConnections != 0 || in.MaxConcurrentStreams != 0 {
			v.fail(field+".protocol", "routes, jwt, txn_token, app_protocol, app_response_timeout, app_connections and max_concurrent_streams need protocol: http")
		}
	case "http":
		ib.HTTP = v.inboundHTTP(field, in, leeway)
		ib.Limits.Routes = v.routeLimits(field, in.Routes)
	default:
		v.fail(field+".protocol", "%q is not tcp or http", in.Protocol)
	}
	return ib
}

// routeName is what a route's name may be: it goes into log lines and
// rate-limit descriptors as it is.
var routeName = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,63}$`)

// routeLimits checks the names of an HTTP inbound listener's routes (unique,
// and required for a route with a limit) and returns the limits per route.
func (v *validator) routeLimits(field string, routes []fileRoute) map[string]limit.Rate {
	var limits map[string]limit.Rate
	names := map[string]int{}
	for j, r := range routes {
		rf := fmt.Sprintf("%s.routes[%d]", field, j)
		switch prev, dup := names[r.Name]; {
		case r.Name == "":
			if r.Limit != nil {
				v.fail(rf+".name", "a route with a limit needs a name")
			}
			continue
		case !routeName.MatchString(r.Name):
			v.fail(rf+".name", "%q: letters, digits, '.', '_' and '-', at most 64", r.Name)
		case dup:
			v.fail(rf+".name", "%q is also the name of routes[%d]", r.Name, prev)
		}
		names[r.Name] = j
		if r.Limit != nil {
			if limits == nil {
				limits = map[string]limit.Rate{}
			}
			limits[r.Name] = v.rate(rf+".limit", r.Limit)
		}
	}
	return limits
}

// inboundHTTP checks the protocol: http settings of an inbound listener.
func (v *validator) inboundHTTP(field string, in *fileInbound, leeway time.Duration) *InboundHTTP {
	fail := v.fail
	h := &InboundHTTP{RequireJWT: in.JWT.Require, TokenHeader: in.JWT.Header, PassJWT: in.JWT.Pass,
		ResponseHeaderTimeout: in.AppResponseTimeout.timeout(), AppConnections: in.AppConnections,
		MaxConcurrentStreams: in.MaxConcurrentStreams, TxnLeeway: leeway}
	if in.AppConnections < 0 {
		fail(field+".app_connections", "must be positive")
	}
	switch {
	case in.MaxConcurrentStreams < 0:
		fail(field+".max_concurrent_streams", "must be positive")
	case in.MaxConcurrentStreams > math.MaxInt32:
		fail(field+".max_concurrent_streams", "at most %d", math.MaxInt32)
	}
	h.Routes.CaseInsensitive = in.CaseInsensitivePaths
	switch in.AppProtocol {
	case "", "http1":
	case "h2c":
		h.AppH2C = true
	default:
		fail(field+".app_protocol", "%q is not http1 or h2c", in.AppProtocol)
	}
	if len(in.Routes) == 0 {
		fail(field+".routes", "protocol http denies every request without a route")
	}
	for j, r := range in.Routes {
		h.Routes.Rules = append(h.Routes.Rules, v.route(fmt.Sprintf("%s.routes[%d]", field, j), r, h.AppH2C))
	}
	if len(in.TxnToken.Minters) > 0 {
		h.TxnMinters = v.policy(field+".txn_token.minters", in.TxnToken.Minters)
	} else if in.TxnToken.Require {
		fail(field+".txn_token.minters", "require: true needs the workloads allowed to mint")
	} else if in.TxnToken.SingleUse {
		fail(field+".txn_token.minters", "single_use: true needs the workloads allowed to mint")
	}
	h.RequireTxn, h.TxnSingleUse = in.TxnToken.Require, in.TxnToken.SingleUse
	if in.QUIC != "" {
		fail(field+".quic_listen", "QUIC carries protocol tcp only")
	}
	return h
}

// route checks one route of an HTTP inbound listener.
func (v *validator) route(field string, r fileRoute, h2c bool) route.Rule {
	rule := route.Rule{Name: r.Name, Peers: v.policy(field+".peers", r.Peers)}
	for _, m := range r.Methods {
		if m == "" || strings.ToUpper(m) != m || strings.ContainsAny(m, " \t/") {
			v.fail(field+".methods", "%q is not an upper-case HTTP method", m)
		}
		rule.Methods = append(rule.Methods, m)
	}
	if len(r.Paths) == 0 {
		v.fail(field+".paths", "at least one path (exact, or a prefix ending in /*) is required")
	}
	for k, ps := range r.Paths {
		pth, err := route.ParsePath(ps)
		if err != nil {
			v.fail(fmt.Sprintf("%s.paths[%d]", field, k), "%v", err)
			continue
		}
		rule.Paths = append(rule.Paths, pth)
	}
	if len(r.Upgrade) > 0 && h2c {
		v.fail(field+".upgrade", "needs app_protocol http1: an HTTP/2 connection to the app cannot switch protocols")
	}
	for k, up := range r.Upgrade {
		if err := checkUpgrade(up); err != nil {
			v.fail(fmt.Sprintf("%s.upgrade[%d]", field, k), "%v", err)
		}
		rule.Upgrade = append(rule.Upgrade, up)
	}
	return rule
}

// outbound checks an outbound listener.
func (v *validator) outbound(field string, out *fileOutbound, edge *Edge) Outbound {
	fail := v.fail
	v.listener(field, out.Name, out.Listen)
	if !out.AllowNonLoopback && checkAddr(out.Listen, false) == nil && !isLoopback(out.Listen) {
		fail(field+".listen", "%s is not a loopback address; set allow_non_loopback: true to listen there", out.Listen)
	}
	o := Outbound{Name: out.Name, Listen: out.Listen, Upstream: out.Upstream, AllowNonLoopback: out.AllowNonLoopback,
		Callers: v.callers(field+".callers", out.Callers)}
	if len(o.Callers.GIDs) > 0 {
		fail(field+".callers.gids", "a TCP caller has no group the kernel can name; use uids")
	}
	if out.Egress != nil {
		o.Egress = v.egress(field, out)
		return o
	}
	if out.Capture != nil {
		o.Capture = v.capture(field, out.Capture)
		if out.Upstream != "" {
			fail(field+".upstream", "a capture listener sends each connection to its original destination; remove upstream")
		}
		if out.Protocol != "" && out.Protocol != "tcp" || out.Transport != "" && out.Transport != "tcp" {
			fail(field+".capture", "capture carries protocol tcp over transport tcp only")
		}
		if len(out.Expect) > 0 {
			o.Expect = v.policy(field+".expect", out.Expect)
		}
		return o
	}
	if err := checkAddr(out.Upstream, false); err != nil {
		fail(field+".upstream", "%v", err)
	}
	o.Expect = v.policy(field+".expect", out.Expect)
	switch out.Transport {
	case "", "tcp":
		if out.QUIC != "" || out.Target != "" {
			fail(field+".quic_upstream", "set, but transport is not quic")
		}
	case "quic":
		o.QUICUpstream, o.QUICTarget = cmpOr(out.QUIC, out.Upstream), out.Target
		if err := checkAddr(o.QUICUpstream, false); err != nil {
			fail(field+".quic_upstream", "%v", err)
		}
		if len(o.QUICTarget) > 255 {
			fail(field+".quic_target", "longer than 255 bytes")
		}
	default:
		fail(field+".transport", "%q is not tcp or quic", out.Transport)
	}
	switch out.Protocol {
	case "", "tcp":
		if out.JWTAudience != "" || out.Pool != 0 || out.TokenHeader != "" || out.Exchange {
			fail(field+".protocol", "jwt_audience, token_header, pool and exchange need protocol: http")
		}
	case "http":
		if out.Pool < 0 {
			fail(field+".pool", "must be positive")
		}
		if o.QUICUpstream != "" {
			fail(field+".transport", "QUIC carries protocol tcp only")
		}
		o.HTTP = &OutboundHTTP{JWTAudience: out.JWTAudience, TokenHeader: out.TokenHeader, Pool: out.Pool, Exchange: out.Exchange}
		if out.Exchange {
			if edge == nil {
				fail(field+".exchange", "needs an edge section with the external issuers")
			} else {
				o.HTTP.KeepExternal = edge.KeepExternal
			}
		}
	default:
		fail(field+".protocol", "%q is not tcp or http", out.Protocol)
	}
	return o
}

// egress checks an egress listener: an external host:port, no mesh
// settings, and its injection rules.
func (v *validator) egress(field string, out *fileOutbound) *Egress {
	fail := v.fail
	f := out.Egress
	if err := checkAddr(out.Upstream, false); err != nil {
		fail(field+".upstream", "%v (the external API's host:port, such as api.example.com:443)", err)
	}
	if len(out.Expect) > 0 {
		fail(field+".expect", "an egress listener's server is outside the mesh: its certificate is verified against egress.ca_file or the system roots, not a SPIFFE ID")
	}
	if out.Capture != nil {
		fail(field+".capture", "a listener is either egress or capture")
	}
	if out.Protocol != "" && out.Protocol != "http" || out.Transport != "" && out.Transport != "tcp" || out.QUIC != "" || out.Target != "" {
		fail(field+".egress", "egress carries HTTP over TCP: remove protocol, transport and quic settings")
	}
	if out.JWTAudience != "" || out.TokenHeader != "" || out.Pool != 0 || out.Exchange {
		fail(field+".egress", "jwt_audience, token_header, pool and exchange are for listeners to sidecars")
	}
	e := &Egress{ServerName: strings.TrimSuffix(f.ServerName, "."), CAFile: f.CAFile}
	if e.ServerName != "" && (strings.ContainsAny(e.ServerName, " /:") || len(e.ServerName) > 253) {
		fail(field+".egress.server_name", "%q is not a host name", f.ServerName)
	}
	for i, in := range f.Inject {
		e.Inject = append(e.Inject, v.injection(fmt.Sprintf("%s.egress.inject[%d]", field, i), in))
	}
	return e
}

// injection checks one credential rule of an egress listener.
func (v *validator) injection(field string, in fileInject) Injection {
	fail := v.fail
	r := Injection{Credential: in.Credential, Place: cmpOr(in.As, PlaceBearer), Name: in.Name, Paths: in.Paths, Optional: in.Optional}
	if in.Credential == "" {
		fail(field+".credential", "name the credential to inject (one of credentials[].name)")
	}
	switch r.Place {
	case PlaceBearer, PlaceBasic:
		if in.Name != "" {
			fail(field+".name", "as: %s goes in Authorization; name is for as: header or query", r.Place)
		}
	case PlaceHeader:
		switch {
		case !httpguts.ValidHeaderFieldName(in.Name):
			fail(field+".name", "%q is not a header name", in.Name)
		case slices.Contains([]string{"host", "content-length", "transfer-encoding", "connection", "te", "upgrade", "trailer", "proxy-authorization"}, strings.ToLower(in.Name)):
			fail(field+".name", "%s is not a header a credential goes in", in.Name)
		}
	case PlaceQuery:
		if in.Name == "" || strings.ContainsAny(in.Name, "&=#? ") {
			fail(field+".name", "%q is not a query parameter name", in.Name)
		}
	default:
		fail(field+".as", "%q is not bearer, basic, header or query", in.As)
	}
	for j, p := range in.Paths {
		canon, err := route.Normalize(p)
		if err != nil || canon != p && canon+"/" != p {
			fail(fmt.Sprintf("%s.paths[%d]", field, j), "%q is not a canonical path prefix such as /v1/", p)
		}
	}
	switch in.AppCredential {
	case "", "strip":
	case "refuse":
		r.RefuseApp = true
	default:
		fail(field+".app_credential", "%q is not strip or refuse", in.AppCredential)
	}
	return r
}

// credential checks a credential source.
func (v *validator) credential(field string, f *fileCredential) Credential {
	fail := v.fail
	c := Credential{Name: f.Name, Refresh: f.Refresh.or(0), Timeout: f.Timeout.or(0)}
	if v.credentials == nil {
		v.credentials = map[string]string{}
	}
	switch prev, dup := v.credentials[f.Name]; {
	case f.Name == "" || strings.ContainsAny(f.Name, ", \t\n"):
		fail(field+".name", "%q is not a credential name (no spaces or commas)", f.Name)
	case dup:
		fail(field+".name", "%q is also %s's name", f.Name, prev)
	default:
		v.credentials[f.Name] = field
	}
	if f.Refresh.set && c.Refresh < time.Second {
		fail(field+".refresh", "at least 1s")
	}
	if f.Timeout.set && c.Timeout < 100*time.Millisecond {
		fail(field+".timeout", "at least 100ms")
	}
	switch {
	case (f.OAuth2 == nil) == (f.File == nil):
		fail(field, "exactly one of oauth2 and file is required")
	case f.File != nil:
		c.File = f.File.Path
		if c.File == "" {
			fail(field+".file.path", "the path of the mounted secret is required")
		}
	default:
		o := f.OAuth2
		c.OAuth2 = &OAuth2{TokenURL: o.TokenURL, Auth: cmpOr(o.Auth, AuthJWTBearer), ClientID: o.ClientID, Scopes: o.Scopes,
			Audience: o.Audience, Resource: o.Resource, AssertionAudience: o.AssertionAudience, CAFile: o.CAFile, ClientSecretFile: o.ClientSecretFile}
		if err := checkTokenURL(o.TokenURL); err != nil {
			fail(field+".oauth2.token_url", "%v", err)
		}
		switch c.OAuth2.Auth {
		case AuthJWTBearer, AuthClientAssertionSPIFFE, AuthClientSecret:
		default:
			fail(field+".oauth2.auth", "%q is not %s, %s or %s", o.Auth, AuthJWTBearer, AuthClientAssertionSPIFFE, AuthClientSecret)
		}
		if c.OAuth2.Auth == AuthClientAssertionSPIFFE && o.ClientID == "" {
			fail(field+".oauth2.client_id", "client-assertion-spiffe names the client: the workload's SPIFFE ID as the authorization server registered it")
		}
		switch {
		case c.OAuth2.Auth == AuthClientSecret && o.ClientID == "":
			fail(field+".oauth2.client_id", "client-secret names the client the provider registered")
		case c.OAuth2.Auth == AuthClientSecret && o.ClientSecretFile == "":
			fail(field+".oauth2.client_secret_file", "client-secret reads the secret from a mounted file (a secret store's); the configuration never holds it")
		case c.OAuth2.Auth != AuthClientSecret && o.ClientSecretFile != "":
			fail(field+".oauth2.client_secret_file", "only with auth: client-secret; the other methods send the workload's JWT-SVID")
		}
		for j, sc := range o.Scopes {
			if sc == "" || strings.ContainsAny(sc, " \"") {
				fail(fmt.Sprintf("%s.oauth2.scopes[%d]", field, j), "%q is not a scope", sc)
			}
		}
	}
	return c
}

// checkTokenURL checks an OAuth2 token endpoint: https, or http to a
// loopback address (a local test server); the assertion it is sent is a
// bearer credential of the workload.
func checkTokenURL(raw string) error {
	u, err := url.Parse(raw)
	switch {
	case raw == "":
		return errors.New("the authorization server's token endpoint is required")
	case err != nil || u.Host == "" || u.User != nil || u.Fragment != "":
		return fmt.Errorf("%q is not an absolute URL such as https://auth.example.com/oauth2/token", raw)
	case u.Scheme == "https":
		return nil
	case u.Scheme == "http" && isLoopback(net.JoinHostPort(u.Hostname(), "0")):
		return nil
	}
	return fmt.Errorf("%q: the assertion goes over https only (or http to a loopback address)", raw)
}

// credentialsUsed checks that every injection names a configured
// credential.
func (v *validator) credentialsUsed(c *Config) {
	for i, out := range c.Outbound {
		if out.Egress == nil {
			continue
		}
		for j, in := range out.Egress.Inject {
			if _, ok := v.credentials[in.Credential]; !ok && in.Credential != "" {
				v.fail(fmt.Sprintf("outbound[%d].egress.inject[%d].credential", i, j), "%q is not one of credentials[].name", in.Credential)
			}
		}
	}
}

// maxRate bounds a configured rate and burst: beyond it a limit is a typo.
const maxRate = 1e6

// limits checks an inbound listener's limits.
func (v *validator) limits(field string, f *fileLimitsIn) limit.Config {
	c := limit.Config{ConcurrentPerIdentity: f.ConcurrentPerIdentity, MaxIdentities: f.MaxIdentities}
	if f.Global != nil {
		c.Global = limit.GlobalKinds{Requests: f.Global.Requests, Connections: f.Global.Connections}
		if !f.Global.Requests && !f.Global.Connections {
			v.fail(field+".global", "requests: true or connections: true is required")
		}
	}
	if f.ConcurrentPerIdentity < 0 || f.ConcurrentPerIdentity > maxRate {
		v.fail(field+".concurrent_per_identity", "%d is not a number of connections (0 is no limit)", f.ConcurrentPerIdentity)
	}
	if f.MaxIdentities < 0 || f.MaxIdentities > maxRate {
		v.fail(field+".max_identities", "%d: between 1 and 1000000 (default %d)", f.MaxIdentities, limit.DefaultMaxIdentities)
	}
	set := func(name string, s *fileLimitSet) limit.Limits {
		var l limit.Limits
		if s == nil {
			return l
		}
		l.Total = v.rate(field+"."+name+".total", s.Total)
		l.PerIdentity = v.rate(field+"."+name+".per_identity", s.PerIdentity)
		for i, o := range s.Overrides {
			of := fmt.Sprintf("%s.%s.overrides[%d]", field, name, i)
			l.Overrides = append(l.Overrides, limit.Override{Peers: v.policy(of+".peers", o.Peers),
				Rate: v.rate(of, &fileRate{Rate: o.Rate, Burst: o.Burst})})
		}
		if s.Total == nil && s.PerIdentity == nil && len(s.Overrides) == 0 {
			v.fail(field+"."+name, "total, per_identity or overrides is required")
		}
		return l
	}
	c.Requests = set("requests", f.Requests)
	c.Connections = set("connections", f.Connections)
	if c.IsZero() {
		v.fail(field, "requests, connections or concurrent_per_identity is required")
	}
	return c
}

// rate checks a token bucket: a rate per second, and a burst that
// defaults to one second's worth (at least 1).
func (v *validator) rate(field string, f *fileRate) limit.Rate {
	if f == nil {
		return limit.Rate{}
	}
	if f.Rate <= 0 || f.Rate > maxRate {
		v.fail(field+".rate", "%g is not a rate per second (above 0, at most 1000000)", f.Rate)
	}
	if f.Burst < 0 || f.Burst > maxRate {
		v.fail(field+".burst", "%d is not a burst (1 to 1000000; default the rate rounded up)", f.Burst)
	}
	burst := f.Burst
	if burst == 0 {
		burst = max(1, int(math.Ceil(f.Rate)))
	}
	return limit.Rate{PerSecond: f.Rate, Burst: burst}
}

// captureEgress checks that every capture destination with egress names
// an egress listener.
func (v *validator) captureEgress(c *Config) {
	egress := map[string]bool{}
	for _, out := range c.Outbound {
		egress[out.Name] = out.Egress != nil
	}
	for i, out := range c.Outbound {
		if out.Capture == nil {
			continue
		}
		for j, d := range out.Capture.Destinations {
			if d.Egress != "" && !egress[d.Egress] {
				v.fail(fmt.Sprintf("outbound[%d].capture.destinations[%d].egress", i, j), "%q is not the name of an outbound listener with egress", d.Egress)
			}
		}
	}
}

// capture checks a capture listener's destinations.
func (v *validator) capture(field string, f *fileCapture) *Capture {
	fail := v.fail
	c := &Capture{}
	for j, d := range f.Destinations {
		df := fmt.Sprintf("%s.capture.destinations[%d]", field, j)
		var dst Destination
		if d.CIDR != "" {
			p, err := netip.ParsePrefix(d.CIDR)
			if err != nil {
				fail(df+".cidr", "%q is not a CIDR such as 10.96.0.0/12 or fd00:10:96::/112", d.CIDR)
			}
			dst.Prefix = p.Masked()
		}
		if d.Port < 0 || d.Port > 65535 {
			fail(df+".port", "%d is not a port", d.Port)
		}
		dst.Port = uint16(d.Port)
		if d.Host != "" {
			if strings.ContainsAny(d.Host, " /:") || len(d.Host) > 253 {
				fail(df+".host", "%q is not a host name", d.Host)
			}
			dst.Host = strings.TrimSuffix(d.Host, ".")
		}
		if d.CIDR == "" && d.Port == 0 && d.Host == "" {
			fail(df, "a cidr, a port, a host or a combination is required")
		}
		switch {
		case d.Egress != "" && len(d.Expect) > 0:
			fail(df, "egress and expect: a destination is an external API (egress) or a workload of the mesh (expect), not both")
		case d.Egress != "" && d.CIDR == "" && d.Host == "":
			fail(df, "an egress destination names the external API's host or cidr")
		case d.Egress != "":
			dst.Egress = d.Egress
		default:
			dst.Expect = v.policy(df+".expect", d.Expect)
		}
		c.Destinations = append(c.Destinations, dst)
	}
	return c
}

// policy parses a list of SPIFFE ID patterns, naming each bad entry.
func (v *validator) policy(field string, patterns []string) authz.Policy {
	if len(patterns) == 0 {
		v.fail(field, "at least one SPIFFE ID, trust domain or prefix is required")
		return authz.Policy{}
	}
	bad := false
	for i, s := range patterns {
		if _, err := authz.ParsePattern(s); err != nil {
			v.fail(fmt.Sprintf("%s[%d]", field, i), "%v", err)
			bad = true
		}
	}
	if bad {
		return authz.Policy{}
	}
	pol, err := authz.ParsePolicy(patterns)
	if err != nil {
		v.fail(field, "%v", err)
	}
	return pol
}

// knownKeys refuses a key of the mapping n that is not one of keys.
func knownKeys(n *yaml.Node, field string, keys ...string) error {
	if n.Kind != yaml.MappingNode {
		return nil // the decoder reports the wrong kind
	}
	for i := 0; i < len(n.Content); i += 2 {
		if k := n.Content[i]; !slices.Contains(keys, k.Value) {
			return fmt.Errorf("line %d: field %s not found in %s (known: %s)", k.Line, k.Value, field, strings.Join(keys, ", "))
		}
	}
	return nil
}

func cmpOr(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// checkUpgrade checks a protocol a route lets requests switch to: one
// protocol token as an Upgrade header carries it ("websocket", or a
// name/version pair), and never h2c, whose HTTP/2 connection to the app
// would carry requests no route has seen.
func checkUpgrade(up string) error {
	name, version, versioned := strings.Cut(up, "/")
	if !httpguts.ValidHeaderFieldName(name) || versioned && !httpguts.ValidHeaderFieldName(version) {
		return fmt.Errorf("%q is not a protocol such as websocket", up)
	}
	if strings.EqualFold(name, "h2c") {
		return errors.New("h2c is never forwarded: its HTTP/2 connection to the app would carry requests no route has seen")
	}
	return nil
}

// checkAddr checks a host:port address with a numeric port; with loopback
// set, the host must be a loopback IP or "localhost".
func checkAddr(addr string, loopback bool) error {
	if addr == "" {
		return errors.New("required")
	}
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("%q: %v", addr, err)
	}
	if n, err := strconv.Atoi(port); err != nil || n < 0 || n > 65535 {
		return fmt.Errorf("%q: port %q is not a number from 0 to 65535", addr, port)
	}
	if loopback && !isLoopback(addr) {
		return fmt.Errorf("%q: must be a loopback address (127.0.0.1, [::1] or localhost)", addr)
	}
	return nil
}

// isLoopback reports whether the host of the host:port addr is a loopback
// IP or "localhost".
func isLoopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	ip := net.ParseIP(host)
	return host == "localhost" || ip != nil && ip.IsLoopback()
}

// clash reports whether two listen addresses would collide: the same port
// (other than 0) on the same host, or on a wildcard host.
func clash(a, b string) bool {
	ha, pa, _ := net.SplitHostPort(a)
	hb, pb, _ := net.SplitHostPort(b)
	if pa != pb || pa == "0" {
		return false
	}
	wild := func(h string) bool { return h == "" || h == "0.0.0.0" || h == "::" }
	return ha == hb || wild(ha) || wild(hb)
}

// Revocation is where the deny list comes from: File, a JSON file watched
// (a mounted ConfigMap), or Redis (RedisAddr), a hash and its events
// channel. Exactly one is set.
type Revocation struct {
	File     string
	Interval time.Duration // File's periodic read; 0: the package's default

	RedisAddr string
	RedisKey  string        // "": the package's default
	Resync    time.Duration // Redis's periodic full read; 0: the package's default
}

// revocation checks the revocation section.
func (v *validator) revocation(field string, f *fileRevocation) *Revocation {
	r := &Revocation{File: f.File, Interval: f.Interval.or(0)}
	switch {
	case (f.File == "") == (f.Redis == nil):
		v.fail(field, "exactly one of file and redis is required")
	case f.File != "" && !filepath.IsAbs(f.File):
		v.fail(field+".file", "%q: an absolute path is required", f.File)
	case f.Redis != nil:
		r.RedisAddr, r.RedisKey, r.Resync = f.Redis.Address, f.Redis.Key, f.Redis.Resync.or(0)
		if err := checkAddr(f.Redis.Address, false); err != nil {
			v.fail(field+".redis.address", "%v", err)
		}
		if r.Resync < 0 || (f.Redis.Resync.set && r.Resync < time.Second) {
			v.fail(field+".redis.resync", "%s: at least 1s (default 30s)", r.Resync)
		}
		if f.Interval.set {
			v.fail(field+".interval", "is the period of file; redis has resync")
		}
	}
	if f.Interval.set && (r.Interval < 100*time.Millisecond) {
		v.fail(field+".interval", "%s: at least 100ms (default 2s)", r.Interval)
	}
	return r
}

// Anomaly is anomaly detection: the detectors (each off unless set), the
// caps of its state, and the webhook its events go to. internal/app turns
// it into a proxy/anomaly.Config.
type Anomaly struct {
	RefusalBurst, TokenFailures Burst
	RateSpike                   Spike
	NewCaller                   Novelty
	MaxSubjects, MaxCallers     int // 0: the package's defaults
	MaxQuarantined              int
	Webhook                     *Webhook
}

// Response is what a detector does: Action alert, quarantine or revoke;
// For, how long a quarantine lasts; Cooldown, the quiet time after an
// event. Zero durations take the package's defaults.
type Response struct {
	Action        string
	For, Cooldown time.Duration
}

// Burst is refusal_burst or token_failures; Count 0 is off.
type Burst struct {
	Count  int
	Window time.Duration
	Response
}

// Spike is rate_spike; Factor 0 is off.
type Spike struct {
	Factor, MinRate            float64
	HalfLife, Interval, WarmUp time.Duration
	Response
}

// Novelty is new_caller; no Routes is off.
type Novelty struct {
	Routes   []string
	LearnFor time.Duration
	Response
}

// Webhook is where anomaly events are POSTed (Alertmanager's v2 API).
type Webhook struct {
	URL     string
	Labels  map[string]string
	Timeout time.Duration
	Queue   int
}

// maxAnomalyRoutes is the most routes new_caller may watch.
const maxAnomalyRoutes = 64

// anomaly checks the anomaly section.
func (v *validator) anomaly(field string, f *fileAnomaly) *Anomaly {
	a := &Anomaly{MaxSubjects: f.MaxSubjects, MaxCallers: f.MaxCallers, MaxQuarantined: f.MaxQuarantined}
	response := func(field, action string, forD, cooldown duration) Response {
		switch action {
		case "", "alert", "quarantine", "revoke":
		default:
			v.fail(field+".action", "%q is not alert, quarantine or revoke (default alert)", action)
		}
		r := Response{Action: action, For: forD.or(0), Cooldown: cooldown.or(0)}
		if r.For < 0 || r.Cooldown < 0 {
			v.fail(field, "for and cooldown must be positive")
		}
		return r
	}
	burst := func(field string, b *fileBurst) Burst {
		if b == nil {
			return Burst{}
		}
		if b.Count <= 0 || b.Count > maxRate {
			v.fail(field+".count", "%d: the refusals allowed in a burst, 1 to 1000000", b.Count)
		}
		w := b.Window.or(0)
		if w < 0 || (b.Window.set && w < time.Second) {
			v.fail(field+".window", "%s: at least 1s (default 1m)", w)
		}
		return Burst{Count: b.Count, Window: w, Response: response(field, b.Action, b.For, b.Cooldown)}
	}
	a.RefusalBurst = burst(field+".refusal_burst", f.RefusalBurst)
	a.TokenFailures = burst(field+".token_failures", f.TokenFailures)
	if s := f.RateSpike; s != nil {
		sf := field + ".rate_spike"
		if s.Factor <= 1 || s.Factor > maxRate {
			v.fail(sf+".factor", "%g: how many times the baseline, more than 1", s.Factor)
		}
		if s.MinRate < 0 || s.MinRate > maxRate {
			v.fail(sf+".min_rate", "%g is not a rate per second (default 10)", s.MinRate)
		}
		a.RateSpike = Spike{Factor: s.Factor, MinRate: s.MinRate, HalfLife: s.HalfLife.or(0), Interval: s.Interval.or(0),
			WarmUp: s.WarmUp.or(0), Response: response(sf, s.Action, s.For, s.Cooldown)}
		if a.RateSpike.Interval < 0 || (s.Interval.set && a.RateSpike.Interval < 100*time.Millisecond) {
			v.fail(sf+".interval", "%s: at least 100ms (default 1s)", a.RateSpike.Interval)
		}
		if a.RateSpike.HalfLife < 0 || a.RateSpike.WarmUp < 0 {
			v.fail(sf, "half_life and warm_up must be positive")
		}
	}
	if n := f.NewCaller; n != nil {
		nf := field + ".new_caller"
		if len(n.Routes) == 0 || len(n.Routes) > maxAnomalyRoutes {
			v.fail(nf+".routes", "%d routes: 1 to %d route names (inbound[].routes[].name) or listener names", len(n.Routes), maxAnomalyRoutes)
		}
		a.NewCaller = Novelty{Routes: n.Routes, LearnFor: n.LearnFor.or(0), Response: response(nf, n.Action, n.For, n.Cooldown)}
		if a.NewCaller.LearnFor < 0 {
			v.fail(nf+".learn_for", "must be positive")
		}
	}
	for name, n := range map[string]int{"max_subjects": f.MaxSubjects, "max_callers": f.MaxCallers, "max_quarantined": f.MaxQuarantined} {
		if n < 0 || n > maxRate {
			v.fail(field+"."+name, "%d: 1 to 1000000 (0 or absent: 10000)", n)
		}
	}
	if a.RefusalBurst.Count == 0 && a.TokenFailures.Count == 0 && a.RateSpike.Factor == 0 && len(a.NewCaller.Routes) == 0 {
		v.fail(field, "no detector is configured (refusal_burst, token_failures, rate_spike, new_caller)")
	}
	if w := f.Webhook; w != nil {
		a.Webhook = &Webhook{URL: w.URL, Labels: w.Labels, Timeout: w.Timeout.or(0), Queue: w.Queue}
		if u, err := url.Parse(w.URL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			v.fail(field+".webhook.url", "%q is not an http(s) URL", w.URL)
		}
		if a.Webhook.Timeout < 0 || a.Webhook.Timeout > time.Minute || w.Queue < 0 || w.Queue > maxRate {
			v.fail(field+".webhook", "timeout up to 1m (default 5s), queue up to 1000000 (default 256)")
		}
	}
	return a
}

// Tracing is where spans go (an OTLP/gRPC collector, Jaeger) and how many.
type Tracing struct {
	Endpoint    string  // host:port
	Insecure    bool    // plain text to the collector (loopback, or a node-local agent)
	SampleRatio float64 // of the traces started here; a sampled parent is followed
	ServiceName string
	Queue       int           // spans waiting for export; past it, dropped
	Timeout     time.Duration // one export
	Connections bool          // a span per relayed L4 connection too
}

// Tracing defaults.
const (
	DefaultTraceSampleRatio = 0.01
	DefaultTraceServiceName = "credflow"
	DefaultTraceQueue       = 2048
	DefaultTraceTimeout     = 5 * time.Second
)

// tracing checks the tracing section.
func (v *validator) tracing(field string, f *fileTracing) *Tracing {
	t := &Tracing{Endpoint: f.Endpoint, Insecure: f.Insecure, SampleRatio: DefaultTraceSampleRatio, Connections: f.Connections,
		ServiceName: cmpOr(f.ServiceName, DefaultTraceServiceName), Queue: f.Queue, Timeout: f.Timeout.or(DefaultTraceTimeout)}
	if err := checkAddr(f.Endpoint, false); err != nil {
		v.fail(field+".endpoint", "%v (the OTLP/gRPC collector, host:port)", err)
	}
	if f.SampleRatio != nil {
		t.SampleRatio = *f.SampleRatio
	}
	if t.SampleRatio < 0 || t.SampleRatio > 1 {
		v.fail(field+".sample_ratio", "%g: between 0 and 1 (default %g)", t.SampleRatio, DefaultTraceSampleRatio)
	}
	if t.Queue == 0 {
		t.Queue = DefaultTraceQueue
	}
	if t.Queue < 0 || t.Queue > 1000000 {
		v.fail(field+".queue", "%d: 1 to 1000000 (default %d)", f.Queue, DefaultTraceQueue)
	}
	if t.Timeout <= 0 || t.Timeout > time.Minute {
		v.fail(field+".timeout", "%s: above 0, at most 1m (default %s)", t.Timeout, DefaultTraceTimeout)
	}
	return t
}

// Audit is the audit trail: the file and its rotation, how often a
// checkpoint is signed, the queue in front of the writer. Zero fields take
// package audit's defaults.
type Audit struct {
	Path               string
	MaxBytes           int64
	MaxFiles           int
	CheckpointEvery    int
	CheckpointInterval time.Duration
	Queue              int
	Export             *AuditExport // nil: the file only
}

// AuditExport sends the audit events, as they are written, to an
// OpenTelemetry collector as OTLP logs over gRPC.
type AuditExport struct {
	Endpoint    string // host:port
	Insecure    bool   // plain text to the collector
	ServiceName string
	Queue       int           // records waiting for export; past it, dropped
	Timeout     time.Duration // one export
}

// Audit export defaults.
const (
	DefaultAuditExportQueue   = 4096
	DefaultAuditExportTimeout = 5 * time.Second
)

// audit checks the audit section.
func (v *validator) audit(field string, f *fileAudit) *Audit {
	a := &Audit{Path: f.Path, MaxBytes: f.MaxBytes, MaxFiles: f.MaxFiles, CheckpointEvery: f.CheckpointEvery,
		CheckpointInterval: f.CheckpointInterval.or(0), Queue: f.Queue}
	if !filepath.IsAbs(f.Path) {
		v.fail(field+".path", "%q: an absolute path is required", f.Path)
	}
	if f.MaxBytes != 0 && (f.MaxBytes < 1<<16 || f.MaxBytes > 1<<40) {
		v.fail(field+".max_bytes", "%d: 65536 to 2^40 (default 100 MiB)", f.MaxBytes)
	}
	if f.MaxFiles < 0 || f.CheckpointEvery < 0 || f.Queue < 0 || f.Queue > 1<<24 {
		v.fail(field, "max_files, checkpoint_every and queue must be positive (0: the defaults)")
	}
	if a.CheckpointInterval < 0 || (f.CheckpointInterval.set && a.CheckpointInterval < 100*time.Millisecond) {
		v.fail(field+".checkpoint_interval", "%s: at least 100ms (default 10s)", a.CheckpointInterval)
	}
	if e := f.Export; e != nil {
		a.Export = &AuditExport{Endpoint: e.Endpoint, Insecure: e.Insecure, ServiceName: cmpOr(e.ServiceName, DefaultTraceServiceName),
			Queue: cmp.Or(e.Queue, DefaultAuditExportQueue), Timeout: e.Timeout.or(DefaultAuditExportTimeout)}
		if err := checkAddr(e.Endpoint, false); err != nil {
			v.fail(field+".export.endpoint", "%v (the OTLP/gRPC collector, host:port)", err)
		}
		if e.Queue < 0 || e.Queue > 1000000 {
			v.fail(field+".export.queue", "%d: 1 to 1000000 (default %d)", e.Queue, DefaultAuditExportQueue)
		}
		if a.Export.Timeout <= 0 || a.Export.Timeout > time.Minute {
			v.fail(field+".export.timeout", "%s: above 0, at most 1m (default %s)", a.Export.Timeout, DefaultAuditExportTimeout)
		}
	}
	return a
}
