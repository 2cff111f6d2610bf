package credential

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"time"
)

// The ways an OAuth2 source authenticates the workload: with a JWT-SVID
// the sidecar fetches for the token endpoint's audience, or, for a
// provider that knows nothing else, with a client secret from a secret
// store (never from the configuration).
const (
	// GrantJWTBearer sends the JWT-SVID as the assertion of an RFC 7523
	// JWT bearer grant.
	GrantJWTBearer = "jwt-bearer"
	// ClientAssertionSPIFFE runs the client credentials grant with the
	// JWT-SVID as client assertion of type jwt-spiffe
	// (draft-ietf-oauth-spiffe-client-auth).
	ClientAssertionSPIFFE = "client-assertion-spiffe"
	// ClientSecret runs the client credentials grant authenticated with
	// ClientID and the secret OAuth2.Secret returns (client_secret_basic,
	// RFC 6749 section 2.3.1), read again at each fetch so that a rotated
	// secret is used from the next one.
	ClientSecret = "client-secret"
)

// OAuth2 protocol names.
const (
	grantTypeJWTBearer   = "urn:ietf:params:oauth:grant-type:jwt-bearer"
	assertionTypeSPIFFE  = "urn:ietf:params:oauth:client-assertion-type:jwt-spiffe"
	maxTokenResponse     = 64 << 10 // bytes of a token endpoint's answer
	maxTokenErrorExcerpt = 200      // bytes of an error field repeated in an error
	tokenTypeBearer      = "bearer"
)

// OAuth2 is a Source of access tokens from an OAuth 2.0 authorization
// server's token endpoint, the workload authenticated by its JWT-SVID.
//
// The token request is written here rather than with golang.org/x/oauth2:
// that package has no grant that sends an assertion obtained elsewhere
// (its jwt package signs its own with a private key), and the response
// rules the sidecar needs (a size cap, expires_in required, bearer only,
// an error that never repeats the body's tokens) are a few lines.
type OAuth2 struct {
	// TokenURL is the token endpoint, https unless it is on loopback.
	TokenURL string
	// Method is GrantJWTBearer or ClientAssertionSPIFFE.
	Method string
	// ClientID, if set, is sent as client_id (some servers need one with
	// the jwt-bearer grant).
	ClientID string
	// Scopes, Audience and Resource are asked for, when set.
	Scopes   []string
	Audience string
	Resource string
	// Assertion returns a JWT-SVID for audience (the token URL unless
	// AssertionAudience is set); the JWT-SVID methods only.
	Assertion         func(ctx context.Context, audience string) (string, error)
	AssertionAudience string
	// Secret holds the client secret of ClientSecret (a mounted file, a
	// secret store).
	Secret Source
	// Client sends the request; it carries the TLS settings (roots or a
	// CA file, never verification off). Default http.DefaultClient.
	Client *http.Client
}

// tokenResponse is RFC 6749 section 5.1.
type tokenResponse struct {
	AccessToken string          `json:"access_token"`
	TokenType   string          `json:"token_type"`
	ExpiresIn   json.RawMessage `json:"expires_in"`
}

// tokenError is RFC 6749 section 5.2.
type tokenError struct {
	Error       string `json:"error"`
	Description string `json:"error_description"`
}

// Fetch asks the token endpoint for an access token.
func (o *OAuth2) Fetch(ctx context.Context) (Credential, error) {
	if err := checkTokenURL(o.TokenURL); err != nil {
		return Credential{}, err
	}
	form := url.Values{}
	var secret Secret
	switch o.Method {
	case GrantJWTBearer, ClientAssertionSPIFFE:
		aud := o.AssertionAudience
		if aud == "" {
			aud = o.TokenURL
		}
		assertion, err := o.Assertion(ctx, aud)
		if err != nil {
			return Credential{}, fmt.Errorf("JWT-SVID for %s: %w", aud, err)
		}
		if o.Method == GrantJWTBearer {
			form.Set("grant_type", grantTypeJWTBearer)
			form.Set("assertion", assertion)
		} else {
			form.Set("grant_type", "client_credentials")
			form.Set("client_assertion_type", assertionTypeSPIFFE)
			form.Set("client_assertion", assertion)
		}
		if o.ClientID != "" {
			form.Set("client_id", o.ClientID)
		}
	case ClientSecret:
		if o.ClientID == "" || o.Secret == nil {
			return Credential{}, errors.New("client-secret needs a client ID and a secret source")
		}
		cred, err := o.Secret.Fetch(ctx)
		if err != nil {
			return Credential{}, fmt.Errorf("client secret: %w", err)
		}
		secret = cred.Value
		form.Set("grant_type", "client_credentials")
	default:
		return Credential{}, fmt.Errorf("unknown method %q", o.Method)
	}
	if len(o.Scopes) > 0 {
		form.Set("scope", strings.Join(o.Scopes, " "))
	}
	if o.Audience != "" {
		form.Set("audience", o.Audience)
	}
	if o.Resource != "" {
		form.Set("resource", o.Resource)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, o.TokenURL, strings.NewReader(form.Encode()))
	if err != nil {
		return Credential{}, err
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Accept", "application/json")
	if o.Method == ClientSecret {
		// Both form-encoded first (RFC 6749 section 2.3.1).
		req.SetBasicAuth(url.QueryEscape(o.ClientID), url.QueryEscape(secret.Reveal()))
	}
	client := o.Client
	if client == nil {
		client = http.DefaultClient
	}
	start := time.Now()
	resp, err := client.Do(req)
	if err != nil {
		return Credential{}, fmt.Errorf("token endpoint: %w", scrubURLError(err))
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxTokenResponse+1))
	if err != nil {
		return Credential{}, fmt.Errorf("token endpoint: reading the answer: %w", err)
	}
	if len(body) > maxTokenResponse {
		return Credential{}, fmt.Errorf("token endpoint: answer larger than %d bytes", maxTokenResponse)
	}
	if resp.StatusCode != http.StatusOK {
		return Credential{}, fmt.Errorf("token endpoint: %s%s", resp.Status, describeTokenError(body))
	}
	if mt, _, _ := mime.ParseMediaType(resp.Header.Get("Content-Type")); mt != "application/json" {
		return Credential{}, fmt.Errorf("token endpoint: answer of type %q, want application/json", mt)
	}
	return parseToken(body, start)
}

// checkTokenURL refuses a token endpoint the assertion would reach in
// clear over a network: https, or http on a loopback address only.
func checkTokenURL(raw string) error {
	u, err := url.Parse(raw)
	if err != nil {
		return fmt.Errorf("token URL: %w", err)
	}
	switch {
	case u.Scheme == "https" && u.Host != "":
		return nil
	case u.Scheme == "http":
		if ip, err := netip.ParseAddr(u.Hostname()); err == nil && ip.IsLoopback() {
			return nil
		}
		return fmt.Errorf("token URL %s://%s: http only to a loopback address; use https", u.Scheme, u.Host)
	}
	return fmt.Errorf("token URL: scheme %q, want https", u.Scheme)
}

// parseToken reads a successful token response; the token's life counts
// from when the request was sent.
func parseToken(body []byte, sent time.Time) (Credential, error) {
	var tr tokenResponse
	if err := json.Unmarshal(body, &tr); err != nil {
		return Credential{}, errors.New("token endpoint: the answer is not a JSON token response")
	}
	if tr.AccessToken == "" {
		return Credential{}, errors.New("token endpoint: the answer has no access_token")
	}
	if !strings.EqualFold(tr.TokenType, tokenTypeBearer) {
		return Credential{}, fmt.Errorf("token endpoint: token_type %q, want Bearer", excerpt(tr.TokenType))
	}
	if len(tr.ExpiresIn) == 0 || string(tr.ExpiresIn) == "null" {
		return Credential{}, errors.New("token endpoint: the answer has no expires_in: the token's life is unknown")
	}
	var secs float64
	if err := json.Unmarshal(tr.ExpiresIn, &secs); err != nil {
		// Some servers send it as a string.
		var s string
		if json.Unmarshal(tr.ExpiresIn, &s) != nil {
			return Credential{}, errors.New("token endpoint: expires_in is not a number")
		}
		if _, err := fmt.Sscanf(s, "%g", &secs); err != nil {
			return Credential{}, errors.New("token endpoint: expires_in is not a number")
		}
	}
	if secs < 1 || secs > 366*24*3600 {
		return Credential{}, fmt.Errorf("token endpoint: expires_in %g s is out of range", secs)
	}
	v, err := NewSecret(tr.AccessToken)
	if err != nil {
		return Credential{}, fmt.Errorf("token endpoint: access_token: %w", err)
	}
	return Credential{Value: v, Expires: sent.Add(time.Duration(secs * float64(time.Second)))}, nil
}

// describeTokenError names an error answer's error code and description,
// cut short; never more of the body.
func describeTokenError(body []byte) string {
	var te tokenError
	if json.Unmarshal(body, &te) != nil || te.Error == "" {
		return ""
	}
	s := ": " + excerpt(te.Error)
	if te.Description != "" {
		s += " (" + excerpt(te.Description) + ")"
	}
	return s
}

// excerpt cuts s short and drops bytes that do not print.
func excerpt(s string) string {
	s = strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return -1
		}
		return r
	}, s)
	if len(s) > maxTokenErrorExcerpt {
		s = s[:maxTokenErrorExcerpt] + "..."
	}
	return s
}

// scrubURLError drops the URL from a *url.Error: the request's form is
// not in it, but a token URL may carry a query the operator set.
func scrubURLError(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return fmt.Errorf("%s: %w", ue.Op, ue.Err)
	}
	return err
}
