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
// error is RFC 6749 §5.2 JSON (error, error_description). Requests from
// anywhere but loopback are refused.
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
	"mime"
	"net"
	"net/http"
	"time"

	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"

	"github.com/credflow/credflow/proxy/edge"
	"github.com/credflow/credflow/proxy/txn"
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

// Handler serves the token endpoint at /token: JWT-SVIDs from tokens, and,
// if subjects is not nil, transaction tokens for subject tokens.
func Handler(tokens Tokens, subjects Exchanger) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/token", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "no-store")
		if !fromLoopback(r) {
			writeJSON(w, http.StatusForbidden, Error{"access_denied", "the token endpoint serves loopback only"})
			return
		}
		if r.Method != http.MethodPost {
			w.Header().Set("Allow", http.MethodPost)
			writeJSON(w, http.StatusMethodNotAllowed, Error{"invalid_request", "use POST"})
			return
		}
		if mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type")); err != nil || mt != "application/x-www-form-urlencoded" {
			writeJSON(w, http.StatusBadRequest, Error{"invalid_request", "the body must be application/x-www-form-urlencoded"})
			return
		}
		r.Body = http.MaxBytesReader(w, r.Body, maxBody)
		if err := r.ParseForm(); err != nil {
			writeJSON(w, http.StatusBadRequest, Error{"invalid_request", "the form does not parse"})
			return
		}
		form := r.PostForm
		switch {
		case len(form["grant_type"]) != 1:
			writeJSON(w, http.StatusBadRequest, Error{"invalid_request", "exactly one grant_type is required"})
			return
		case form.Get("grant_type") != GrantType:
			writeJSON(w, http.StatusBadRequest, Error{"unsupported_grant_type", "only " + GrantType})
			return
		case form.Has("subject_token") || form.Has("actor_token"):
			exchangeSubject(w, r, subjects)
			return
		case len(form["audience"]) != 1 || form.Get("audience") == "":
			writeJSON(w, http.StatusBadRequest, Error{"invalid_request", "exactly one non-empty audience is required"})
			return
		case form.Has("requested_token_type") && form.Get("requested_token_type") != TokenType:
			writeJSON(w, http.StatusBadRequest, Error{"invalid_request", "only " + TokenType + " can be issued"})
			return
		}
		svid, err := tokens.FetchJWTSVID(r.Context(), form.Get("audience"))
		if err != nil {
			writeJSON(w, http.StatusServiceUnavailable, Error{"temporarily_unavailable", "no JWT-SVID from the Workload API"})
			return
		}
		writeJSON(w, http.StatusOK, Response{
			AccessToken:     svid.Marshal(),
			IssuedTokenType: TokenType,
			TokenType:       "N_A",
			ExpiresIn:       int64(time.Until(svid.Expiry).Seconds()),
		})
	})
	return mux
}

// exchangeSubject answers a request with a subject_token.
func exchangeSubject(w http.ResponseWriter, r *http.Request, subjects Exchanger) {
	form := r.PostForm
	switch {
	case subjects == nil:
		writeJSON(w, http.StatusBadRequest, Error{"invalid_request", "subject_token exchange is not configured (no edge section)"})
		return
	case form.Has("actor_token"):
		writeJSON(w, http.StatusBadRequest, Error{"invalid_request", "actor_token is not supported: the actor is this workload"})
		return
	case len(form["subject_token"]) != 1 || form.Get("subject_token") == "":
		writeJSON(w, http.StatusBadRequest, Error{"invalid_request", "exactly one non-empty subject_token is required"})
		return
	case form.Get("subject_token_type") != TokenType && form.Get("subject_token_type") != AccessTokenType:
		writeJSON(w, http.StatusBadRequest, Error{"invalid_request", "subject_token_type must be " + TokenType + " or " + AccessTokenType})
		return
	case form.Has("requested_token_type") && form.Get("requested_token_type") != TxnTokenType:
		writeJSON(w, http.StatusBadRequest, Error{"invalid_request", "a subject_token is exchanged for " + TxnTokenType + " only"})
		return
	}
	tok, c, err := subjects.Exchange(r.Context(), form.Get("subject_token"))
	if err != nil {
		var refusal *edge.Error
		if errors.As(err, &refusal) {
			writeJSON(w, http.StatusBadRequest, Error{"invalid_request", "subject_token refused: " + string(refusal.Reason)})
			return
		}
		writeJSON(w, http.StatusServiceUnavailable, Error{"temporarily_unavailable", "no transaction token could be minted"})
		return
	}
	writeJSON(w, http.StatusOK, Response{
		AccessToken:     tok,
		IssuedTokenType: TxnTokenType,
		TokenType:       "N_A",
		ExpiresIn:       int64(time.Until(c.Expiry.Time()).Seconds()),
	})
}

func fromLoopback(r *http.Request) bool {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	ip := net.ParseIP(host)
	return err == nil && ip != nil && ip.IsLoopback()
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}
