package hydratest

import (
	"encoding/pem"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"time"
)

// API is an external HTTPS API outside the mesh, as a payment provider
// runs one: it accepts a request when its bearer token introspects active
// at Hydra for the expected subject (each token is introspected once, then
// held to its exp) and its X-Api-Key is one of the keys it honours now.
// It answers {"charge":"ch_1","path":...}, 401 for a bad token and 403 for
// an unknown key.
type API struct {
	srv     *httptest.Server
	hydra   *Hydra
	subject string

	mu     sync.Mutex
	tokens map[string]int64 // introspected active tokens: their exp
	keys   map[string]bool  // the API keys honoured
	seen   []string         // the X-Api-Key of each accepted request, in order
	sent   map[string]bool  // every token and key the API was sent
}

// StartAPI starts an API over TLS (HTTP/2 and HTTP/1.1, a certificate for
// example.com from CAPEM) honouring keys. Close stops it.
func StartAPI(h *Hydra, subject string, keys ...string) *API {
	a := &API{hydra: h, subject: subject, tokens: map[string]int64{}, keys: map[string]bool{}, sent: map[string]bool{}}
	for _, k := range keys {
		a.keys[k] = true
	}
	a.srv = httptest.NewUnstartedServer(http.HandlerFunc(a.serve))
	a.srv.EnableHTTP2 = true
	a.srv.StartTLS()
	return a
}

// Addr is the API's host:port.
func (a *API) Addr() string { return a.srv.Listener.Addr().String() }

// CAPEM is the PEM certificate the API's certificate verifies against; its
// name is example.com.
func (a *API) CAPEM() []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: a.srv.Certificate().Raw})
}

// Close stops the API.
func (a *API) Close() { a.srv.Close() }

// Honour makes the API accept key; Retire makes it refuse key again.
func (a *API) Honour(key string) { a.setKey(key, true) }

// Retire makes the API refuse key.
func (a *API) Retire(key string) { a.setKey(key, false) }

func (a *API) setKey(key string, ok bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if ok {
		a.keys[key] = true
	} else {
		delete(a.keys, key)
	}
}

// LastKey is the API key of the last request accepted ("" before any).
func (a *API) LastKey() string {
	a.mu.Lock()
	defer a.mu.Unlock()
	if len(a.seen) == 0 {
		return ""
	}
	return a.seen[len(a.seen)-1]
}

// Tokens is the number of distinct active tokens the API was sent.
func (a *API) Tokens() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.tokens)
}

// Sent reports every token and API key the API was sent.
func (a *API) Sent() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	var out []string
	for v := range a.sent {
		if v != "" {
			out = append(out, v)
		}
	}
	return out
}

func (a *API) serve(w http.ResponseWriter, r *http.Request) {
	tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	key := r.Header.Get("X-Api-Key")
	a.mu.Lock()
	a.sent[tok], a.sent[key] = true, true
	exp, known := a.tokens[tok]
	a.mu.Unlock()
	if !ok || tok == "" {
		http.Error(w, "no bearer token", http.StatusUnauthorized)
		return
	}
	if !known {
		in, err := a.hydra.Introspect(r.Context(), tok)
		if err != nil || !in.Active || in.Subject != a.subject {
			http.Error(w, fmt.Sprintf("token not active for %s (active %v, sub %q, error %v)", a.subject, in.Active, in.Subject, err), http.StatusUnauthorized)
			return
		}
		exp = in.Exp
		a.mu.Lock()
		a.tokens[tok] = exp
		a.mu.Unlock()
	}
	if time.Now().Unix() >= exp {
		http.Error(w, "token expired", http.StatusUnauthorized)
		return
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if !a.keys[key] {
		http.Error(w, "unknown API key", http.StatusForbidden)
		return
	}
	a.seen = append(a.seen, key)
	fmt.Fprintf(w, `{"charge":"ch_1","path":%q}`, r.URL.Path)
}
