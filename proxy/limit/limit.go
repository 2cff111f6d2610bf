// Package limit is the rate limits an inbound listener applies to its
// peers, keyed on the verified SPIFFE ID: requests per second (HTTP and
// gRPC), new connections per second, and open connections, each in total
// and per identity, with overrides for identities a pattern matches.
//
// The buckets are golang.org/x/time/rate's token buckets; the state per
// identity lives in a least-recently-used cache of bounded size
// (github.com/hashicorp/golang-lru), so that many distinct identities
// cannot grow memory without bound: an identity evicted and seen again
// starts with a full bucket and no open connections counted.
package limit

import (
	"maps"
	"sync"
	"time"

	lru "github.com/hashicorp/golang-lru/v2"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"golang.org/x/time/rate"

	"github.com/credflow/credflow/proxy/authz"
)

// DefaultMaxIdentities is the identities tracked when Config.MaxIdentities
// is not set.
const DefaultMaxIdentities = 10000

// Rate is a token bucket: PerSecond tokens added each second, up to
// Burst. The zero Rate is no limit.
type Rate struct {
	PerSecond float64
	Burst     int
}

// IsZero reports whether r sets no limit.
func (r Rate) IsZero() bool { return r.PerSecond <= 0 }

// Override gives the identities Peers matches their own per-identity
// rate.
type Override struct {
	Peers authz.Policy
	Rate  Rate
}

// Limits bound one kind of event (requests, new connections): Total
// across every peer, PerIdentity for each peer, unless the first Override
// matching the peer sets its own.
type Limits struct {
	Total       Rate
	PerIdentity Rate
	Overrides   []Override
}

func (l Limits) isZero() bool {
	return l.Total.IsZero() && l.PerIdentity.IsZero() && len(l.Overrides) == 0
}

// forPeer is the per-identity rate of peer.
func (l Limits) forPeer(peer spiffeid.ID) Rate {
	for _, o := range l.Overrides {
		if o.Peers.Allows(peer) {
			return o.Rate
		}
	}
	return l.PerIdentity
}

// Config is a listener's limits.
type Config struct {
	// Requests bounds HTTP requests (a gRPC call is one).
	Requests Limits
	// Connections bounds new connections, after their handshake.
	Connections Limits
	// ConcurrentPerIdentity bounds the open connections of one identity;
	// 0 is no bound.
	ConcurrentPerIdentity int
	// MaxIdentities caps the identities whose state is kept; default
	// DefaultMaxIdentities.
	MaxIdentities int
	// Routes bounds the requests of each identity on a named route
	// (route.Rule.Name), besides Requests.
	Routes map[string]Rate
	// Global asks the global rate limit service (GlobalConfig) about
	// each request or new connection too, once the local limits let it
	// through.
	Global GlobalKinds
}

// GlobalKinds are the hits a listener counts against the global budget.
type GlobalKinds struct {
	Requests    bool
	Connections bool
}

// LimitsConnections reports whether c bounds a peer's connections, open
// or new.
func (c Config) LimitsConnections() bool {
	return !c.Connections.isZero() || c.ConcurrentPerIdentity > 0 || c.Global.Connections
}

// IsZero reports whether c limits nothing.
func (c Config) IsZero() bool {
	return c.Requests.isZero() && c.Connections.isZero() && c.ConcurrentPerIdentity <= 0 &&
		len(c.Routes) == 0 && c.Global == (GlobalKinds{})
}

// A Limiter applies a Config. It is safe for concurrent use.
type Limiter struct {
	cfg                   Config
	totalReqs, totalConns *rate.Limiter // nil: no total limit
	peers                 *lru.Cache[spiffeid.ID, *peer]
}

// peer is the state of one identity.
type peer struct {
	reqs, conns *rate.Limiter // nil: no limit

	mu     sync.Mutex
	open   int
	routes map[string]*rate.Limiter // per named route with a limit, made on first use
}

// WithDefaults returns c with its defaults applied.
func (c Config) WithDefaults() Config {
	if c.MaxIdentities <= 0 {
		c.MaxIdentities = DefaultMaxIdentities
	}
	return c
}

// New returns a Limiter for cfg.
func New(cfg Config) *Limiter {
	cfg = cfg.WithDefaults()
	// The caller's map may change under a running limiter.
	cfg.Routes = maps.Clone(cfg.Routes)
	peers, _ := lru.New[spiffeid.ID, *peer](cfg.MaxIdentities) // errors only on a size <= 0
	return &Limiter{cfg: cfg, totalReqs: bucket(cfg.Requests.Total), totalConns: bucket(cfg.Connections.Total), peers: peers}
}

// Config returns the limiter's configuration, defaults applied.
func (l *Limiter) Config() Config { return l.cfg }

// Tracked is the number of identities whose state is kept.
func (l *Limiter) Tracked() int { return l.peers.Len() }

func bucket(r Rate) *rate.Limiter {
	if r.IsZero() {
		return nil
	}
	return rate.NewLimiter(rate.Limit(r.PerSecond), max(r.Burst, 1))
}

// state returns peer's state, made on first use.
func (l *Limiter) state(id spiffeid.ID) *peer {
	if p, ok := l.peers.Get(id); ok {
		return p
	}
	p := &peer{reqs: bucket(l.cfg.Requests.forPeer(id)), conns: bucket(l.cfg.Connections.forPeer(id))}
	if prev, ok, _ := l.peers.PeekOrAdd(id, p); ok {
		return prev
	}
	return p
}

// take takes a token from each of the buckets at now, or from none: ok is
// false when one of them has none left, and retry says when it will.
func take(now time.Time, buckets ...*rate.Limiter) (retry time.Duration, ok bool) {
	var taken []*rate.Reservation
	for _, b := range buckets {
		if b == nil {
			continue
		}
		r := b.ReserveN(now, 1)
		if d := r.DelayFrom(now); !r.OK() || d > 0 {
			r.CancelAt(now)
			for _, t := range taken {
				t.CancelAt(now)
			}
			if !r.OK() {
				d = time.Second
			}
			return d, false
		}
		taken = append(taken, r)
	}
	return 0, true
}

// Request admits a request of peer at now; when it does not, retry is
// when a request could next be admitted.
func (l *Limiter) Request(id spiffeid.ID, now time.Time) (retry time.Duration, ok bool) {
	if l.cfg.Requests.isZero() {
		return 0, true
	}
	return take(now, l.state(id).reqs, l.totalReqs)
}

// RouteRequest admits a request of peer on the named route at now, when
// the route has a limit of its own; when it does not, retry is when a
// request could next be admitted. Request is still asked first.
func (l *Limiter) RouteRequest(id spiffeid.ID, route string, now time.Time) (retry time.Duration, ok bool) {
	r, limited := l.cfg.Routes[route]
	if !limited || r.IsZero() {
		return 0, true
	}
	p := l.state(id)
	p.mu.Lock()
	b := p.routes[route]
	if b == nil {
		if p.routes == nil {
			p.routes = make(map[string]*rate.Limiter, 1)
		}
		b = bucket(r)
		p.routes[route] = b
	}
	p.mu.Unlock()
	return take(now, b)
}

// Connect admits a new connection of peer at now. When it does, release
// must be called once the connection is closed; when it does not, retry
// is when one could next be admitted (0 when the identity has too many
// open).
func (l *Limiter) Connect(id spiffeid.ID, now time.Time) (release func(), retry time.Duration, ok bool) {
	if l.cfg.Connections.isZero() && l.cfg.ConcurrentPerIdentity <= 0 {
		return func() {}, 0, true
	}
	p := l.state(id)
	if most := l.cfg.ConcurrentPerIdentity; most > 0 {
		p.mu.Lock()
		if p.open >= most {
			p.mu.Unlock()
			return nil, 0, false
		}
		p.open++
		p.mu.Unlock()
	}
	if retry, ok := take(now, p.conns, l.totalConns); !ok {
		p.closed(l.cfg.ConcurrentPerIdentity)
		return nil, retry, false
	}
	var once sync.Once
	return func() { once.Do(func() { p.closed(l.cfg.ConcurrentPerIdentity) }) }, 0, true
}

func (p *peer) closed(most int) {
	if most <= 0 {
		return
	}
	p.mu.Lock()
	p.open--
	p.mu.Unlock()
}
