package proxy

import (
	"errors"
	"log/slog"
	"net/http"
	"net/textproto"
	"slices"
	"strings"
	"time"

	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/credflow/credflow/audit"
	"github.com/credflow/credflow/internal/logkey"
	"github.com/credflow/credflow/proxy/limit"
	"github.com/credflow/credflow/proxy/route"
	"github.com/credflow/credflow/reason"
	"github.com/credflow/credflow/token/edge"
	"github.com/credflow/credflow/token/txn"
)

// Request is one HTTP request on its way through a listener's filters,
// with what the sidecar knows of it.
type Request struct {
	// HTTP is the request; filters may change its headers and URL.
	HTTP *http.Request
	// Listener is the listener's name.
	Listener string
	// Peer, on an inbound listener, is the mTLS peer's SPIFFE ID, read from
	// its certificate once, at the handshake that verified it.
	Peer spiffeid.ID
	// Path, on an inbound listener, is the canonical path, once the
	// normalizing filter has run; the routes authorize it, and it is the
	// path forwarded to the app.
	Path string
	// Route, on an inbound listener, is the name of the route that
	// allowed the request, once the route filter has run ("" for a route
	// without a name).
	Route string
	// Attrs are attributes a filter adds to the request's access-log line
	// (the local caller it refused, say).
	Attrs []slog.Attr
	// JTI is the ID of the request's transaction token, once verified:
	// what an anomaly detector's revoke action revokes. Never logged.
	JTI string
	// RetryAfter, set by a filter that refuses a request for now
	// (rate_limited), is sent as the answer's Retry-After.
	RetryAfter time.Duration

	responded []func(*http.Response)
}

// OnResponse asks, on an outbound or egress listener, that f see the
// upstream's response to the request before it goes to the app (a
// credential filter learns of a 401 so). f must not read the body.
func (r *Request) OnResponse(f func(*http.Response)) {
	r.responded = append(r.responded, f)
}

// A Filter is one step of a listener's request pipeline, with one job: it
// inspects the request, may change it, and refuses it by returning a
// reason (the empty reason lets it go on). Filters run in order, the first
// refusal ends the pipeline, and the refusal is answered with the reason's
// HTTP status or gRPC code (package reason). A Filter is called from many
// requests at once.
type Filter interface {
	Filter(*Request) reason.Reason
}

// FilterFunc is a function as a Filter.
type FilterFunc func(*Request) reason.Reason

// Filter calls f.
func (f FilterFunc) Filter(r *Request) reason.Reason { return f(r) }

// pipeline is a listener's ordered filters.
type pipeline []Filter

// run runs the filters in order, up to the first refusal.
func (pl pipeline) run(r *Request) reason.Reason {
	for _, f := range pl {
		if why := f.Filter(r); why != "" {
			return why
		}
	}
	return ""
}

// limitFilter refuses a request past its peer's rate limit, or the
// listener's total (rate_limited, with the wait until the next).
type limitFilter struct{ l *listener }

func (f limitFilter) Filter(r *Request) reason.Reason {
	lim := f.l.limiter.Load()
	if lim == nil {
		return ""
	}
	if retry, ok := lim.Request(r.Peer, time.Now()); !ok {
		r.RetryAfter = retry
		return reason.RateLimited
	}
	return ""
}

// routeLimitFilter, once the request is routed, refuses it past its
// peer's limit on that route, then, when the listener asks, past the
// global budget: the one check that costs a round trip comes after every
// local refusal.
type routeLimitFilter struct {
	p *Proxy
	l *listener
}

func (f routeLimitFilter) Filter(r *Request) reason.Reason {
	lim := f.l.limiter.Load()
	if lim == nil {
		return ""
	}
	if r.Route != "" {
		if retry, ok := lim.RouteRequest(r.Peer, r.Route, time.Now()); !ok {
			r.RetryAfter = retry
			return reason.RateLimited
		}
	}
	if lim.Config().Global.Requests {
		why, retry := f.p.checkGlobal(r.HTTP.Context(), limit.Hit{Listener: f.l.name, Kind: limit.KindRequest, Route: r.Route, Peer: r.Peer})
		r.RetryAfter = retry
		return why
	}
	return ""
}

// inboundPipeline builds the filters of an HTTP inbound listener's
// settings: the deny list, the rate limit (the cheapest refusals), the request's shape,
// its route and the route's limits (then the global one), the tokens,
// then the configured extra filters.
func (p *Proxy) inboundPipeline(l *listener, s *httpSettings) pipeline {
	managed := managedHeaders{tokenHeader: s.cfg.TokenHeader}
	pl := pipeline{
		guardFilter{p: p},
		limitFilter{l: l},
		FilterFunc(checkHost),
		FilterFunc(managed.checkConnection),
		FilterFunc(normalizePath),
		routeFilter{routes: &s.cfg.Routes},
		routeLimitFilter{p: p, l: l},
		FilterFunc(managed.stripLookalikes),
		jwtFilter{p: p, header: s.cfg.TokenHeader, require: s.cfg.RequireJWT, pass: s.cfg.PassJWT},
		txnFilter{p: p, l: l, verifier: s.txn, require: s.cfg.RequireTxn},
	}
	pl = append(pl, s.cfg.Filters...)
	return append(pl, FilterFunc(forwardAsAuthorized))
}

// outboundPipeline builds the filters of an HTTP outbound listener: the
// local caller, the edge exchange, the JWT-SVID, then the configured extra
// filters.
func (p *Proxy) outboundPipeline(l *listener, h *httpOutbound) pipeline {
	pl := pipeline{callerFilter{p: p, l: l}}
	if h.cfg.Exchange {
		pl = append(pl, exchangeFilter{p: p, keepExternal: h.cfg.KeepExternal})
	}
	if h.audience != "" {
		pl = append(pl, attachFilter{p: p, audience: h.audience, header: h.cfg.TokenHeader})
	}
	return append(pl, h.cfg.Filters...)
}

// checkHost refuses an HTTP/2 request whose Host header names another
// authority than its :authority: the app could route by either.
func checkHost(r *Request) reason.Reason {
	hr := r.HTTP
	if hr.ProtoMajor == 2 && hr.Header.Get("Host") != "" && !strings.EqualFold(hr.Header.Get("Host"), hr.Host) {
		return reason.HostMismatch
	}
	return ""
}

// normalizePath sets the request's canonical path, or refuses a path that
// has none.
func normalizePath(r *Request) reason.Reason {
	path, err := route.Normalize(r.HTTP.URL.EscapedPath())
	if err != nil {
		return reason.BadPath
	}
	r.Path = path
	return ""
}

// routeFilter authorizes a request by its peer, method and canonical path,
// and a protocol switch by the protocol asked for.
type routeFilter struct{ routes *route.Table }

func (f routeFilter) Filter(r *Request) reason.Reason {
	rule, ok := f.routes.Match(r.Peer, r.HTTP.Method, r.Path)
	if !ok {
		return reason.RouteDenied
	}
	if rule.Name != "" {
		r.Route = rule.Name
		r.Attrs = append(r.Attrs, slog.String(logkey.Route, rule.Name))
	}
	if up, ok := upgradeOf(r.HTTP.Header); ok && (up == "" || !f.routes.AllowsUpgrade(r.Peer, r.HTTP.Method, r.Path, up)) {
		return reason.UpgradeDenied
	}
	return ""
}

// forwardAsAuthorized prepares an authorized request for the app: the
// headers that speak for the peer's identity are removed (the reverse
// proxy sets PeerHeader), and the path forwarded is the canonical one that
// was authorized. With RawPath empty it goes out escaped one way only
// (url.URL's), which the app decodes back to exactly that path.
func forwardAsAuthorized(r *Request) reason.Reason {
	r.HTTP.Header.Del(xfcc)
	r.HTTP.Header.Del(PeerHeader)
	r.HTTP.URL.Path, r.HTTP.URL.RawPath = r.Path, ""
	return ""
}

// managedHeaders are the headers an inbound listener sets, verifies or
// strips: the X-Credflow- namespace (the peer header, the token header
// outbound sidecars use), Authorization, Txn-Token,
// X-Forwarded-Client-Cert and the configured token header.
type managedHeaders struct{ tokenHeader string }

// foldHeader folds a header name as CGI, WSGI, Rack and PHP do when they
// turn it into HTTP_<NAME>: without case, "_" read as "-". Names that fold
// alike are one header to such an app, though two to net/http.
func foldHeader(name string) string {
	return strings.ReplaceAll(strings.ToLower(name), "_", "-")
}

// managed reports whether the folded name is a managed header's.
func (m managedHeaders) managed(folded string) bool {
	switch folded {
	case "authorization", "txn-token", "x-forwarded-client-cert", foldHeader(m.tokenHeader):
		return true
	}
	return strings.HasPrefix(folded, "x-credflow-")
}

// checkConnection refuses a request whose Connection header names a
// managed header, rather than cleaning it: the headers Connection names
// are removed on the way to the app, so it asks the sidecar to drop a
// header it verified (a token) or to forward unverified what it would have
// stripped; no client has a reason to.
func (m managedHeaders) checkConnection(r *Request) reason.Reason {
	for _, v := range r.HTTP.Header["Connection"] {
		for name := range strings.SplitSeq(v, ",") {
			if m.managed(foldHeader(textproto.TrimString(name))) {
				return reason.BadConnectionHeader
			}
		}
	}
	return ""
}

// stripLookalikes deletes the headers that fold to a managed name but are
// not the one spelling the listener verifies, and every other header of
// the X-Credflow- namespace: an app behind CGI, WSGI, Rack or PHP reads
// X_Credflow_Peer_Id or Txn_Token as the managed header. They are stripped
// rather than refused, as a spoofed X-Credflow-Peer-Id is replaced, and as
// proxies that drop underscored names do (nginx): nothing of them reaches
// the app, and clients that send stray headers keep working.
// Authorization, Txn-Token and the token header, spelled as net/http
// spells them, are verified or stripped by the filters after it.
func (m managedHeaders) stripLookalikes(r *Request) reason.Reason {
	keep := func(name string) bool {
		return name == "Authorization" || name == txn.Header || name == http.CanonicalHeaderKey(m.tokenHeader)
	}
	for name := range r.HTTP.Header {
		if m.managed(foldHeader(name)) && !keep(name) {
			delete(r.HTTP.Header, name)
		}
	}
	return ""
}

// upgradeOf returns the protocol a request asks to switch to (Upgrade, or
// an HTTP/2 extended CONNECT's :protocol) and whether it asks for any. A
// list of protocols, or several headers, gives "": the app would choose,
// so it is refused like a protocol no route allows. h2c is never allowed:
// the HTTP/2 connection it opens to the app would carry requests that no
// route has seen.
func upgradeOf(hdr http.Header) (string, bool) {
	vals := slices.Concat(hdr.Values("Upgrade"), hdr.Values(":protocol"))
	if len(vals) == 0 {
		return "", false
	}
	up := textproto.TrimString(vals[0])
	name, _, _ := strings.Cut(up, "/")
	if len(vals) > 1 || strings.Contains(up, ",") || strings.EqualFold(textproto.TrimString(name), "h2c") {
		return "", true
	}
	return up, true
}

// jwtFilter validates the request's JWT-SVID when required (audience this
// workload, subject the mTLS peer), and strips the token header unless
// the listener passes it on: the caller's JWT-SVID is a bearer credential
// for this workload.
type jwtFilter struct {
	p             *Proxy
	header        string
	require, pass bool
}

func (f jwtFilter) Filter(r *Request) reason.Reason {
	if f.require {
		if why := f.check(r); why != "" {
			return why
		}
	}
	if !f.pass {
		r.HTTP.Header.Del(f.header)
	}
	return ""
}

func (f jwtFilter) check(r *Request) reason.Reason {
	vals := r.HTTP.Header.Values(f.header)
	if len(vals) == 0 {
		return reason.MissingToken
	}
	if len(vals) > 1 {
		return reason.BadToken // one token, not a choice of several
	}
	tok := vals[0]
	if strings.EqualFold(f.header, "Authorization") {
		var ok bool
		if tok, ok = cutPrefixFold(tok, "Bearer "); !ok {
			return reason.MissingToken
		}
	}
	if len(tok) > maxTokenSize {
		return reason.BadToken
	}
	p := f.p
	self, err := p.cfg.SVIDs.GetX509SVID()
	if err != nil || p.cfg.ValidateJWT == nil {
		return reason.NoIdentity
	}
	svid, err := p.cfg.ValidateJWT(tok, self.ID.String())
	switch {
	case errors.Is(err, jwt.ErrExpired):
		return reason.TokenExpired
	case errors.Is(err, jwt.ErrNotValidYet) || errors.Is(err, jwt.ErrIssuedInTheFuture):
		return reason.TokenNotYetValid
	case err != nil:
		return reason.BadToken
	}
	if svid.ID != r.Peer {
		return reason.TokenPeerMismatch
	}
	p.m.token("validated")
	return ""
}

// txnFilter verifies the request's transaction token, if any, and
// requires one if so configured. Without a verifier (no minters
// configured) a Txn-Token header is stripped: the app never sees one its
// sidecar has not verified.
type txnFilter struct {
	p        *Proxy
	l        *listener
	verifier *txn.Verifier
	require  bool
}

func (f txnFilter) Filter(r *Request) reason.Reason {
	if f.verifier == nil {
		r.HTTP.Header.Del(txn.Header)
		return ""
	}
	vals := r.HTTP.Header.Values(txn.Header)
	switch {
	case len(vals) == 0 && f.require:
		return reason.TxnMissing
	case len(vals) == 0:
		return ""
	case len(vals) > 1:
		return reason.TxnMalformed
	}
	self, err := f.p.cfg.SVIDs.GetX509SVID()
	if err != nil {
		return reason.NoIdentity
	}
	claims, _, err := f.verifier.Verify(vals[0], self.ID)
	if err != nil {
		return txn.ReasonOf(err)
	}
	r.JTI = claims.ID
	if f.p.revokedJTI(claims.ID, time.Now()) {
		return reason.TxnRevoked
	}
	f.p.m.token("txn_verified")
	if a := f.p.cfg.Audit; a != nil && !f.l.unaudited {
		a.Write(audit.Event{Type: audit.TypeCredential, Kind: audit.KindTxnVerified, Time: time.Now(), Listener: r.Listener,
			PeerID: r.Peer.String(), JTI: claims.ID, Subject: claims.Subject})
	}
	return ""
}

// callerFilter refuses a request on an HTTP outbound listener whose
// connection's local caller the listener does not allow, and names the
// refused caller in the access log.
type callerFilter struct {
	p *Proxy
	l *listener
}

func (f callerFilter) Filter(r *Request) reason.Reason {
	why, attrs := f.p.checkHTTPCaller(f.l, r.HTTP)
	if why != "" {
		r.Attrs = append(r.Attrs, attrs...)
	}
	return why
}

// exchangeFilter makes the listener the edge of the mesh: the app's
// external bearer token is exchanged for a transaction token (Txn-Token),
// and dropped unless keepExternal.
type exchangeFilter struct {
	p            *Proxy
	keepExternal bool
}

func (f exchangeFilter) Filter(r *Request) reason.Reason {
	p := f.p
	if p.cfg.Exchanger == nil {
		return reason.NoExchanger
	}
	vals := r.HTTP.Header.Values("Authorization")
	if len(vals) > 1 {
		return reason.ExternalMalformed
	}
	external, ok := "", false
	if len(vals) == 1 {
		external, ok = cutPrefixFold(vals[0], "Bearer ")
	}
	if !ok || external == "" {
		return reason.ExternalMissing
	}
	tok, c, err := p.cfg.Exchanger.Exchange(r.HTTP.Context(), external)
	if err != nil {
		var refusal *edge.Error
		if errors.As(err, &refusal) {
			return refusal.Reason
		}
		p.log.Warn("proxy: minting a transaction token failed", slog.String(logkey.Error, err.Error()))
		return reason.TxnMintFailed
	}
	if !f.keepExternal {
		r.HTTP.Header.Del("Authorization")
	}
	r.HTTP.Header.Set(txn.Header, tok)
	p.m.token("minted")
	p.log.Debug("proxy: transaction token minted", slog.String(logkey.Txn, c.Txn), slog.String(logkey.TokenID, c.ID))
	if a := p.cfg.Audit; a != nil {
		now := time.Now()
		// The external token is named by its fingerprint, never shown.
		a.Write(audit.Event{Type: audit.TypeCredential, Kind: audit.KindEdgeExchange, Time: now, Listener: r.Listener,
			Issuer: c.SubjectIs, Subject: c.Subject, Fingerprint: audit.Fingerprint([]byte(external)), JTI: c.ID})
		a.Write(audit.Event{Type: audit.TypeCredential, Kind: audit.KindTxnMinted, Time: now, Listener: r.Listener,
			Subject: c.Subject, JTI: c.ID, Audience: strings.Join(c.Audience, " ")})
	}
	return ""
}

// attachFilter adds this workload's JWT-SVID for the upstream's audience:
// in Authorization when the app set none, else in header.
type attachFilter struct {
	p                *Proxy
	audience, header string
}

func (f attachFilter) Filter(r *Request) reason.Reason {
	p := f.p
	if p.cfg.Tokens == nil {
		return reason.NoToken
	}
	svid, err := p.cfg.Tokens.FetchJWTSVID(r.HTTP.Context(), f.audience)
	if err != nil {
		return reason.NoToken
	}
	if r.HTTP.Header.Get("Authorization") == "" {
		r.HTTP.Header.Set("Authorization", "Bearer "+svid.Marshal())
	} else {
		r.HTTP.Header.Set(f.header, svid.Marshal())
	}
	p.m.token("attached")
	return ""
}

// requestPeer is the peer of an inbound request: the ID read from its
// connection's certificate once, at the handshake that verified it.
func requestPeer(hc *httpConn, r *http.Request) (spiffeid.ID, error) {
	if hc != nil && hc.c != nil && !hc.c.peer.IsZero() {
		return hc.c.peer, nil
	}
	return x509svid.IDFromCert(r.TLS.PeerCertificates[0]) // verified in VerifyConnection
}

// maxTokenSize bounds the JWT-SVIDs the sidecar parses.
const maxTokenSize = 16 << 10

func cutPrefixFold(s, prefix string) (string, bool) {
	if len(s) >= len(prefix) && strings.EqualFold(s[:len(prefix)], prefix) {
		return s[len(prefix):], true
	}
	return s, false
}
