// Package exchange serves the sidecar's loopback token endpoint, in the
// shape of OAuth 2.0 Token Exchange (RFC 8693): a workload asks its own
// sidecar for a JWT-SVID for an audience, and gets one from the agent's
// per-audience cache.
//
//	POST /token
//	Content-Type: application/x-www-form-urlencoded
//
//	grant_type=urn:ietf:params:oauth:grant-type:token-exchange&audience=spiffe://example.org/backend
//
// A success is RFC 8693 §2.2.1 JSON (access_token, issued_token_type
// urn:ietf:params:oauth:token-type:jwt, token_type N_A, expires_in); an
// error is RFC 6749 §5.2 JSON (error, error_description), with the stable
// refusal reason in the X-Credflow-Reason header.
//
// A JWT-SVID lets its holder act as this workload towards its audience, so
// the endpoint only serves the callers and audiences it is configured for:
//
//   - the caller is who the kernel says connected (ConnContext: the uid of
//     a loopback TCP client socket, or SO_PEERCRED on a unix socket), never
//     something the request claims; a caller outside Config.Callers is
//     refused (caller_not_allowed), and one the kernel cannot name
//     (caller_unknown);
//   - the Host header must name loopback (bad_host), so a web page that
//     rebinds its DNS name to 127.0.0.1 cannot read a token;
//   - the audience must be one of Config.Audiences (audience_not_allowed,
//     error invalid_target of RFC 8693 §2.2.2);
//   - each audience the agent has not cached costs the SPIRE server a
//     signature, so each caller (uid) may ask for such new audiences at
//     Config.NewAudienceRate a second (bursts of Config.NewAudienceBurst),
//     and hold tokens for at most Config.MaxAudiences audiences at once;
//     past either, the request is refused with 429 Too Many Requests and a
//     Retry-After header (token_rate_limited). Audiences the agent has
//     cached, and those the caller already holds a token for, are served
//     whatever the limits.
//
// Each request is logged once with the caller's uid, gid and pid, the
// audience, the decision and the reason; never a token. A caller past its
// issuance limits can ask thousands of times a second: those refusals are
// all counted, but logged at most 10 a second (after a burst of 50).
//
// When the sidecar has an edge configuration, a subject_token (an external
// JWT, subject_token_type urn:ietf:params:oauth:token-type:jwt or
// access_token) is exchanged for a transaction token instead:
//
//	grant_type=urn:ietf:params:oauth:grant-type:token-exchange
//	&subject_token=eyJ...&subject_token_type=urn:ietf:params:oauth:token-type:jwt
//
// returns issued_token_type urn:ietf:params:oauth:token-type:txn_token. An
// invalid subject token is invalid_request, with the reason in
// error_description (never the token).
package exchange

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"mime"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"golang.org/x/time/rate"

	"github.com/credflow/credflow/audit"
	"github.com/credflow/credflow/internal/logkey"
	"github.com/credflow/credflow/internal/peercred"
	"github.com/credflow/credflow/reason"
	"github.com/credflow/credflow/token"
	"github.com/credflow/credflow/token/edge"
	"github.com/credflow/credflow/token/txn"
)

// Grant and token types of RFC 8693 and the Transaction Tokens draft.
const (
	GrantType       = "urn:ietf:params:oauth:grant-type:token-exchange"
	TokenType       = "urn:ietf:params:oauth:token-type:jwt"
	AccessTokenType = "urn:ietf:params:oauth:token-type:access_token"
	TxnTokenType    = "urn:ietf:params:oauth:token-type:txn_token"
)

// maxBody bounds a request body.
const maxBody = 16 << 10

// Tokens mints JWT-SVIDs of this workload for an audience.
type Tokens interface {
	FetchJWTSVID(ctx context.Context, audience string) (*jwtsvid.SVID, error)
}

// Exchanger exchanges an external token for a transaction token
// (edge.Exchanger does).
type Exchanger interface {
	Exchange(ctx context.Context, external string) (string, *txn.Claims, error)
}

// AnyAudience in Config.Audiences allows every audience.
const AnyAudience = token.AnyAudience

// maxLoggedAudience bounds the audience written to the log.
const maxLoggedAudience = 256

// Response is a successful token response.
type Response struct {
	AccessToken     string `json:"access_token"`
	IssuedTokenType string `json:"issued_token_type"`
	TokenType       string `json:"token_type"`
	ExpiresIn       int64  `json:"expires_in"`
}

// Error is an RFC 6749 §5.2 error response.
type Error struct {
	Code        string `json:"error"`
	Description string `json:"error_description,omitempty"`
}

// Config configures the token endpoint.
type Config struct {
	// Tokens mints this workload's JWT-SVIDs. Required.
	Tokens Tokens
	// Subjects, if not nil, exchanges subject tokens for transaction
	// tokens; nil refuses subject_token requests.
	Subjects Exchanger
	// Audiences are the audiences a JWT-SVID is issued for, compared
	// exactly; AnyAudience allows every one. Empty: no JWT-SVID is issued.
	Audiences []string
	// Callers are the local users that may call. The zero value allows
	// every local process.
	Callers peercred.Callers
	// Log gets one line per request; nil discards them.
	Log *slog.Logger
	// Refused, if not nil, is called with the reason of each refusal
	// (credflow_refusals_total).
	Refused func(reason.Reason)
	// Audit, if not nil, receives an event for each request: a decision
	// for a refusal, a token_issued for an issuance (its audience and
	// type, never the token). It must not block.
	Audit func(audit.Event)

	// NewAudienceRate is how many audiences the agent has not cached (see
	// Cache) one caller may ask for per second, in bursts of up to
	// NewAudienceBurst. Defaults 5 and 20.
	NewAudienceRate  float64
	NewAudienceBurst int
	// MaxAudiences bounds the audiences one caller holds unexpired tokens
	// for that it did not find cached. Default 256.
	MaxAudiences int
}

// Endpoint is the token endpoint, an http.Handler for /token. Serve it with
// ConnContext as the http.Server's ConnContext: a request on a connection
// that did not pass through it is refused (caller_unknown).
type Endpoint struct {
	tokens   Tokens
	subjects Exchanger
	log      *slog.Logger
	refused  func(reason.Reason)
	audit    func(audit.Event)
	policy   atomic.Pointer[policy]
	mux      *http.ServeMux
	limits   *issuance
	// limitedLog bounds the log lines of token_rate_limited refusals.
	limitedLog *rate.Limiter
}

type policy struct {
	callers   peercred.Callers
	audiences []string
}

// New returns the endpoint for c.
func New(c Config) *Endpoint {
	e := &Endpoint{tokens: c.Tokens, subjects: c.Subjects, log: c.Log, refused: c.Refused, audit: c.Audit, mux: http.NewServeMux(),
		limits: newIssuance(c), limitedLog: rate.NewLimiter(10, 50)}
	if e.log == nil {
		e.log = slog.New(slog.DiscardHandler)
	}
	e.SetPolicy(c.Callers, c.Audiences)
	e.mux.HandleFunc("/token", e.serveToken)
	return e
}

// SetPolicy replaces the allowed callers and audiences (a configuration
// reload); requests already past the checks are not affected.
func (e *Endpoint) SetPolicy(callers peercred.Callers, audiences []string) {
	e.policy.Store(&policy{callers: callers, audiences: slices.Clone(audiences)})
}

type callerKey struct{}

type caller struct {
	cred peercred.Cred
	err  error
}

// ConnContext returns ctx carrying the credentials of the process at the
// other end of c, as the kernel reports them (peercred.Of). A TCP peer
// that is not on loopback has none.
func (e *Endpoint) ConnContext(ctx context.Context, c net.Conn) context.Context {
	var cl caller
	if a, ok := c.RemoteAddr().(*net.TCPAddr); ok && !a.IP.IsLoopback() {
		cl.err = fmt.Errorf("exchange: %v is not a loopback address", a)
	} else {
		cl.cred, cl.err = peercred.Of(c)
	}
	return context.WithValue(ctx, callerKey{}, cl)
}

// ServeHTTP serves /token.
func (e *Endpoint) ServeHTTP(w http.ResponseWriter, r *http.Request) { e.mux.ServeHTTP(w, r) }

// request is one request being answered, for its log line.
type request struct {
	e        *Endpoint
	w        http.ResponseWriter
	cred     *peercred.Cred
	audience string
}

// refuse answers with an RFC 6749 error, the reason in X-Credflow-Reason,
// and logs and counts the refusal.
func (q *request) refuse(status int, code string, why reason.Reason, desc string) {
	q.w.Header().Set("X-Credflow-Reason", string(why))
	writeJSON(q.w, status, Error{code, desc})
	if q.e.refused != nil {
		q.e.refused(why)
	}
	if why == reason.TokenRateLimited && !q.e.limitedLog.Allow() {
		return
	}
	q.logLine("refused", why, "")
}

// issue answers with a token and logs the issuance (not the token).
func (q *request) issue(resp Response) {
	writeJSON(q.w, http.StatusOK, resp)
	q.logLine("issued", "", resp.IssuedTokenType)
}

func (q *request) logLine(decision string, why reason.Reason, tokenType string) {
	attrs := []slog.Attr{slog.String(logkey.Listener, "token_endpoint"), slog.String(logkey.Decision, decision)}
	if q.cred != nil {
		attrs = append(attrs, slog.Uint64(logkey.UID, uint64(q.cred.UID)))
		if q.cred.GID != peercred.NoID {
			attrs = append(attrs, slog.Uint64(logkey.GID, uint64(q.cred.GID)))
		}
		if q.cred.PID != 0 {
			attrs = append(attrs, slog.Int64(logkey.PID, int64(q.cred.PID)))
		}
	}
	if q.audience != "" {
		attrs = append(attrs, slog.String(logkey.Audience, q.audience))
	}
	if why != "" {
		attrs = append(attrs, slog.String(logkey.Reason, string(why)))
	}
	if tokenType != "" {
		attrs = append(attrs, slog.String(logkey.TokenType, tokenType))
	}
	q.e.log.LogAttrs(context.Background(), slog.LevelInfo, "token", attrs...)
	if q.e.audit != nil {
		e := audit.Event{Type: audit.TypeDecision, Time: time.Now(), Listener: "token_endpoint", Decision: audit.Deny,
			Reason: string(why), Audience: q.audience}
		if decision == "issued" {
			e = audit.Event{Type: audit.TypeCredential, Kind: audit.KindTokenIssued, Time: e.Time, Listener: e.Listener,
				Audience: q.audience}
		}
		if q.cred != nil {
			e.Subject = fmt.Sprintf("uid:%d", q.cred.UID)
		}
		q.e.audit(e)
	}
}

func (e *Endpoint) serveToken(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Cache-Control", "no-store")
	q := &request{e: e, w: w}
	cl, ok := r.Context().Value(callerKey{}).(caller)
	if !ok || cl.err != nil {
		q.refuse(http.StatusForbidden, "access_denied", reason.CallerUnknown, "the token endpoint serves local processes whose user the kernel can name")
		return
	}
	q.cred = &cl.cred
	// The form is read first, for the log line of any refusal, but the
	// caller and the Host are checked before what it says.
	formOK, formErr := r.Method == http.MethodPost, "use POST"
	if mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type")); formOK && (err != nil || mt != "application/x-www-form-urlencoded") {
		formOK, formErr = false, "the body must be application/x-www-form-urlencoded"
	}
	if formOK {
		r.Body = http.MaxBytesReader(w, r.Body, maxBody)
		if err := r.ParseForm(); err != nil {
			formOK, formErr = false, "the form does not parse"
		}
	}
	form := r.PostForm
	if aud := strings.Join(form["audience"], " "); len(aud) > maxLoggedAudience {
		q.audience = aud[:maxLoggedAudience] + "..."
	} else {
		q.audience = aud
	}
	pol := e.policy.Load()
	if !pol.callers.Allows(cl.cred) {
		q.refuse(http.StatusForbidden, "access_denied", reason.CallerNotAllowed, fmt.Sprintf("caller %v is not one of token_endpoint.callers", cl.cred))
		return
	}
	if !LoopbackHost(r.Host) {
		q.refuse(http.StatusBadRequest, "invalid_request", reason.BadHost, "the Host header must be localhost, 127.0.0.1 or [::1], with or without a port")
		return
	}
	if !formOK {
		status := http.StatusBadRequest
		if r.Method != http.MethodPost {
			w.Header().Set("Allow", http.MethodPost)
			status = http.StatusMethodNotAllowed
		}
		q.refuse(status, "invalid_request", reason.InvalidRequest, formErr)
		return
	}
	switch {
	case len(form["grant_type"]) != 1:
		q.refuse(http.StatusBadRequest, "invalid_request", reason.InvalidRequest, "exactly one grant_type is required")
		return
	case form.Get("grant_type") != GrantType:
		q.refuse(http.StatusBadRequest, "unsupported_grant_type", reason.UnsupportedGrant, "only "+GrantType)
		return
	case form.Has("subject_token") || form.Has("actor_token"):
		e.exchangeSubject(q, r)
		return
	case len(form["audience"]) != 1 || form.Get("audience") == "":
		q.refuse(http.StatusBadRequest, "invalid_request", reason.InvalidRequest, "exactly one non-empty audience is required")
		return
	case form.Has("requested_token_type") && form.Get("requested_token_type") != TokenType:
		q.refuse(http.StatusBadRequest, "invalid_request", reason.InvalidRequest, "only "+TokenType+" can be issued")
		return
	}
	aud := form.Get("audience")
	if !slices.Contains(pol.audiences, aud) && !slices.Contains(pol.audiences, AnyAudience) {
		q.refuse(http.StatusBadRequest, "invalid_target", reason.AudienceNotAllowed, "the audience is not one of token_endpoint.audiences")
		return
	}
	cache, ok := e.tokens.(Cache)
	cached := ok && cache.CachedJWTSVID(aud)
	if retry, ok := e.limits.admit(cl.cred.UID, aud, cached, time.Now()); !ok {
		w.Header().Set("Retry-After", strconv.Itoa(max(1, int(math.Ceil(retry.Seconds())))))
		q.refuse(http.StatusTooManyRequests, "temporarily_unavailable", reason.TokenRateLimited,
			"too many audiences not yet issued: see token_endpoint.new_audience_rate and max_audiences")
		return
	}
	svid, err := e.tokens.FetchJWTSVID(r.Context(), aud)
	if err != nil {
		e.limits.failed(cl.cred.UID, aud)
		q.refuse(http.StatusServiceUnavailable, "temporarily_unavailable", reason.NoToken, "no JWT-SVID from the Workload API")
		return
	}
	e.limits.issued(cl.cred.UID, aud, svid.Expiry)
	q.issue(Response{
		AccessToken:     svid.Marshal(),
		IssuedTokenType: TokenType,
		TokenType:       "N_A",
		ExpiresIn:       int64(time.Until(svid.Expiry).Seconds()),
	})
}

// exchangeSubject answers a request with a subject_token.
func (e *Endpoint) exchangeSubject(q *request, r *http.Request) {
	form := r.PostForm
	switch {
	case e.subjects == nil:
		q.refuse(http.StatusBadRequest, "invalid_request", reason.InvalidRequest, "subject_token exchange is not configured (no edge section)")
		return
	case form.Has("actor_token"):
		q.refuse(http.StatusBadRequest, "invalid_request", reason.InvalidRequest, "actor_token is not supported: the actor is this workload")
		return
	case len(form["subject_token"]) != 1 || form.Get("subject_token") == "":
		q.refuse(http.StatusBadRequest, "invalid_request", reason.InvalidRequest, "exactly one non-empty subject_token is required")
		return
	case form.Get("subject_token_type") != TokenType && form.Get("subject_token_type") != AccessTokenType:
		q.refuse(http.StatusBadRequest, "invalid_request", reason.InvalidRequest, "subject_token_type must be "+TokenType+" or "+AccessTokenType)
		return
	case form.Has("requested_token_type") && form.Get("requested_token_type") != TxnTokenType:
		q.refuse(http.StatusBadRequest, "invalid_request", reason.InvalidRequest, "a subject_token is exchanged for "+TxnTokenType+" only")
		return
	}
	tok, c, err := e.subjects.Exchange(r.Context(), form.Get("subject_token"))
	if err != nil {
		var refusal *edge.Error
		if errors.As(err, &refusal) {
			q.refuse(http.StatusBadRequest, "invalid_request", refusal.Reason, "subject_token refused: "+string(refusal.Reason))
			return
		}
		q.refuse(http.StatusServiceUnavailable, "temporarily_unavailable", reason.NoToken, "no transaction token could be minted")
		return
	}
	q.issue(Response{
		AccessToken:     tok,
		IssuedTokenType: TxnTokenType,
		TokenType:       "N_A",
		ExpiresIn:       int64(time.Until(c.Expiry.Time()).Seconds()),
	})
}

// LoopbackHost reports whether host, a Host header, names loopback:
// localhost, an address of 127.0.0.0/8 or ::1, with or without a port.
// Names that only resolve to loopback (a rebound DNS name) do not count.
func LoopbackHost(host string) bool {
	h := host
	if strings.HasPrefix(h, "[") {
		// [::1] or [::1]:port; a bracketed host must be IPv6.
		end := strings.IndexByte(h, ']')
		if end < 0 || (end+1 < len(h) && !validPort(h[end+1:])) {
			return false
		}
		ip := net.ParseIP(h[1:end])
		return ip != nil && ip.To4() == nil && ip.IsLoopback()
	}
	if i := strings.LastIndexByte(h, ':'); i >= 0 {
		if !validPort(h[i:]) {
			return false
		}
		h = h[:i]
	}
	if strings.EqualFold(h, "localhost") || strings.EqualFold(h, "localhost.") {
		return true
	}
	ip := net.ParseIP(h)
	return ip != nil && ip.To4() != nil && ip.IsLoopback() && !strings.Contains(h, ":")
}

// validPort reports whether s is ":" and a decimal port.
func validPort(s string) bool {
	if len(s) < 2 || len(s) > 6 || s[0] != ':' {
		return false
	}
	n := 0
	for _, c := range s[1:] {
		if c < '0' || c > '9' {
			return false
		}
		n = n*10 + int(c-'0')
	}
	return n <= 65535
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}
