package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/grpc"
	grpcbackoff "google.golang.org/grpc/backoff"

	"github.com/credflow/credflow/internal/logkey"
	"github.com/credflow/credflow/reason"
)

// Defaults of Config.
const (
	DefaultMinBackoff      = 500 * time.Millisecond
	DefaultMaxBackoff      = 5 * time.Second
	DefaultJWTCacheSize    = 256
	DefaultJWTMinRemaining = 5 * time.Second
	DefaultFetchTimeout    = 10 * time.Second
	DefaultJWTRecheck      = 10 * time.Second
)

// Config configures a Source. Only Addr is required; every other zero value
// selects the documented default.
type Config struct {
	// Addr is the Workload API address, for example
	// "unix:///run/spire/agent/public/api.sock". Required: the process
	// wiring reads SPIFFE_ENDPOINT_SOCKET, never this package.
	Addr string

	// Logger receives identity events (SVID received or rotated, bundle
	// changes, a change of not-ready reason). Nil discards them.
	Logger *slog.Logger

	// Metrics records identity metrics. Nil records nothing.
	Metrics *Metrics

	// JWTFetched, if set, is told of each JWT-SVID fetched from the agent
	// (not those served from the cache): its audience and expiry, never
	// the token. It must not block.
	JWTFetched func(audience string, expires time.Time)

	// MinBackoff is a watch's first reconnection delay after an error.
	// Default DefaultMinBackoff (500ms).
	MinBackoff time.Duration

	// MaxBackoff caps a watch's reconnection delay (it doubles from
	// MinBackoff). It also caps gRPC's own reconnection backoff, so a
	// returning agent is seen within about MaxBackoff.
	// Default DefaultMaxBackoff (5s).
	MaxBackoff time.Duration

	// JWTCacheSize bounds the number of audiences whose JWT-SVIDs are
	// cached; the least recently used audience is evicted first.
	// Default DefaultJWTCacheSize (256).
	JWTCacheSize int

	// JWTMinRemaining is the floor of lifetime left on every JWT-SVID
	// returned by FetchJWTSVID. Default DefaultJWTMinRemaining (5s).
	JWTMinRemaining time.Duration

	// FetchTimeout bounds one JWT-SVID fetch from the Workload API.
	// Default DefaultFetchTimeout (10s).
	FetchTimeout time.Duration

	// JWTRecheck is how often a cached JWT-SVID in use is fetched again
	// in the background before its refresh point, so that a token the
	// agent replaced early (SPIRE does when its signing key is tainted)
	// is picked up within this interval, not at half the token's
	// lifetime. The agent answers from its own cache otherwise.
	// Default DefaultJWTRecheck (10s).
	JWTRecheck time.Duration
}

func (c Config) withDefaults() Config {
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.MinBackoff <= 0 {
		c.MinBackoff = DefaultMinBackoff
	}
	if c.MaxBackoff <= 0 {
		c.MaxBackoff = DefaultMaxBackoff
	}
	c.MaxBackoff = max(c.MaxBackoff, c.MinBackoff)
	if c.JWTCacheSize <= 0 {
		c.JWTCacheSize = DefaultJWTCacheSize
	}
	if c.JWTMinRemaining <= 0 {
		c.JWTMinRemaining = DefaultJWTMinRemaining
	}
	if c.FetchTimeout <= 0 {
		c.FetchTimeout = DefaultFetchTimeout
	}
	if c.JWTRecheck <= 0 {
		c.JWTRecheck = DefaultJWTRecheck
	}
	return c
}

// Source holds the workload's current identity as served by the Workload
// API. Create it with New and start it with Run; all other methods are safe
// for concurrent use.
type Source struct {
	cfg    Config
	log    *slog.Logger
	client *workloadapi.Client

	// life ends when Run returns; background JWT fetches use it.
	life context.Context
	stop context.CancelFunc
	bg   sync.WaitGroup // background JWT fetches

	mu         sync.RWMutex
	svid       *x509svid.SVID
	x509       *x509bundle.Set
	jwt        *jwtbundle.Set
	lastErr    error         // last X.509 watch error since the last update
	lastReason reason.Reason // reason last logged, to log once per change
	changed    chan struct{}
	running    bool
	closed     bool

	jwtCache jwtCache
}

// Compile-time checks: the data plane consumes a Source through these.
var (
	_ x509svid.Source   = (*Source)(nil)
	_ x509bundle.Source = (*Source)(nil)
	_ jwtbundle.Source  = (*Source)(nil)
)

// New returns a Source for the Workload API at cfg.Addr. It does not
// connect: Run does, and keeps reconnecting until its context ends.
func New(cfg Config) (*Source, error) {
	if cfg.Addr == "" {
		return nil, errors.New("agent: no Workload API address")
	}
	if err := workloadapi.ValidateAddress(cfg.Addr); err != nil {
		return nil, fmt.Errorf("agent: Workload API address %q: %w", cfg.Addr, err)
	}
	cfg = cfg.withDefaults()
	client, err := workloadapi.New(context.Background(),
		workloadapi.WithAddr(cfg.Addr),
		workloadapi.WithLogger(spiffeLogger{cfg.Logger}),
		workloadapi.WithBackoffStrategy(backoffStrategy{initial: cfg.MinBackoff, max: cfg.MaxBackoff}),
		workloadapi.WithDialOptions(grpc.WithConnectParams(grpc.ConnectParams{
			Backoff: grpcbackoff.Config{
				BaseDelay:  cfg.MinBackoff,
				Multiplier: 2,
				Jitter:     0.1,
				MaxDelay:   cfg.MaxBackoff,
			},
			MinConnectTimeout: cfg.MaxBackoff,
		})),
	)
	if err != nil {
		return nil, fmt.Errorf("agent: Workload API client: %w", err)
	}
	s := &Source{
		cfg:     cfg,
		log:     cfg.Logger,
		client:  client,
		changed: make(chan struct{}),
	}
	s.life, s.stop = context.WithCancel(context.Background())
	s.jwtCache.init(cfg.JWTCacheSize, cfg.JWTRecheck)
	return s, nil
}

// Run watches the Workload API for X.509 contexts and JWT bundles and keeps
// the JWT-SVID cache fresh, until ctx ends. It returns nil when ctx ends,
// or an error if the Workload API refuses a watch for good. Run may be
// called once; when it returns, the Source is closed: it hands out nothing
// and Ready reports reason.Closed.
func (s *Source) Run(ctx context.Context) error {
	s.mu.Lock()
	if s.running || s.closed {
		s.mu.Unlock()
		return errors.New("agent: Source.Run called twice")
	}
	s.running = true
	s.mu.Unlock()

	defer context.AfterFunc(ctx, s.stop)()
	var (
		wg       sync.WaitGroup
		errOnce  sync.Once
		fatalErr error
	)
	fatal := func(watch string, err error) {
		if err == nil || s.life.Err() != nil {
			return
		}
		errOnce.Do(func() { fatalErr = fmt.Errorf("agent: %s watch stopped: %w", watch, err) })
		s.stop()
	}
	wg.Go(func() { fatal("x509", s.client.WatchX509Context(s.life, x509Watcher{s})) })
	wg.Go(func() { fatal("jwt_bundles", s.client.WatchJWTBundles(s.life, jwtBundleWatcher{s})) })
	wg.Go(func() { s.refreshJWTSVIDs(s.life) })
	<-s.life.Done()
	wg.Wait()
	s.bg.Wait()

	s.mu.Lock()
	s.closed = true
	s.svid, s.x509, s.jwt = nil, nil, nil
	close(s.changed)
	s.changed = make(chan struct{})
	s.mu.Unlock()
	if err := s.client.Close(); err != nil && fatalErr == nil {
		return fmt.Errorf("agent: closing Workload API client: %w", err)
	}
	return fatalErr
}

// GetX509SVID returns the current X.509-SVID. It returns a *NotReadyError
// when none has been received or the one held has expired: an expired SVID
// is never handed out.
func (s *Source) GetX509SVID() (*x509svid.SVID, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if err := s.readyLocked(time.Now()); err != nil {
		return nil, err
	}
	return s.svid, nil
}

// GetX509BundleForTrustDomain returns the X.509 bundle of td, the
// workload's own trust domain or a federated one.
func (s *Source) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.x509 != nil {
		if b, ok := s.x509.Get(td); ok {
			return b, nil
		}
	}
	return nil, fmt.Errorf("agent: no X.509 bundle for trust domain %q", td)
}

// GetJWTBundleForTrustDomain returns the JWT bundle of td.
func (s *Source) GetJWTBundleForTrustDomain(td spiffeid.TrustDomain) (*jwtbundle.Bundle, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.jwt != nil {
		if b, ok := s.jwt.Get(td); ok {
			return b, nil
		}
	}
	return nil, fmt.Errorf("agent: no JWT bundle for trust domain %q", td)
}

// TrustDomains returns the trust domains for which an X.509 bundle is held,
// sorted.
func (s *Source) TrustDomains() []spiffeid.TrustDomain {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.x509 == nil {
		return nil
	}
	var tds []spiffeid.TrustDomain
	for _, b := range s.x509.Bundles() {
		tds = append(tds, b.TrustDomain())
	}
	sort.Slice(tds, func(i, j int) bool { return tds[i].Compare(tds[j]) < 0 })
	return tds
}

// Ready returns nil when the Source holds an unexpired X.509-SVID and has
// received the JWT bundles (so that it can validate JWT-SVIDs), and a
// *NotReadyError with a stable reason.Reason otherwise.
func (s *Source) Ready() error {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if err := s.readyLocked(time.Now()); err != nil {
		return err
	}
	if s.jwt == nil {
		return &NotReadyError{Reason: reason.Starting, Err: errors.New("agent: JWT bundles not received yet")}
	}
	return nil
}

func (s *Source) readyLocked(now time.Time) error {
	switch {
	case s.closed:
		return &NotReadyError{Reason: reason.Closed}
	case s.svid == nil && s.lastErr != nil:
		return &NotReadyError{Reason: ReasonOf(s.lastErr), Err: s.lastErr}
	case s.svid == nil:
		return &NotReadyError{Reason: reason.Starting}
	case !now.Before(s.svid.Certificates[0].NotAfter):
		return &NotReadyError{Reason: reason.SVIDExpired, Err: s.lastErr}
	}
	return nil
}

// Changed returns a channel that is closed at the next change of the X.509
// SVID or of any trust bundle (and when the Source closes). Call it again
// after each close to wait for the following change:
//
//	for {
//		ch := src.Changed()
//		rebuildWhatDependsOnTheSVID()
//		<-ch
//	}
func (s *Source) Changed() <-chan struct{} {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.changed
}

// notifyLocked wakes every waiter on Changed. s.mu must be held for writing.
func (s *Source) notifyLocked() {
	close(s.changed)
	s.changed = make(chan struct{})
}

type x509Watcher struct{ s *Source }

func (w x509Watcher) OnX509ContextUpdate(c *workloadapi.X509Context) { w.s.x509Update(c) }
func (w x509Watcher) OnX509ContextWatchError(err error)              { w.s.watchError("x509", err) }

type jwtBundleWatcher struct{ s *Source }

func (w jwtBundleWatcher) OnJWTBundlesUpdate(set *jwtbundle.Set) { w.s.jwtBundlesUpdate(set) }
func (w jwtBundleWatcher) OnJWTBundlesWatchError(err error)      { w.s.watchError("jwt_bundles", err) }

func (s *Source) x509Update(c *workloadapi.X509Context) {
	if len(c.SVIDs) == 0 || len(c.SVIDs[0].Certificates) == 0 {
		s.watchError("x509", errors.New("agent: Workload API sent no X.509-SVID"))
		return
	}
	svid := c.DefaultSVID()
	leaf := svid.Certificates[0]

	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return
	}
	prev := s.svid
	changedTDs := changedTrustDomains(x509Bundles(s.x509), x509Bundles(c.Bundles))
	s.svid, s.x509, s.lastErr, s.lastReason = svid, c.Bundles, nil, ""
	s.notifyLocked()
	s.mu.Unlock()

	m := s.cfg.Metrics
	m.setExpiry(float64(leaf.NotAfter.Unix()))
	for _, td := range changedTDs {
		m.bundleUpdated("x509", td)
	}
	attrs := []any{
		slog.String(logkey.SPIFFEID, svid.ID.String()),
		slog.String(logkey.Serial, leaf.SerialNumber.Text(16)),
		slog.Time(logkey.Expiry, leaf.NotAfter),
	}
	switch {
	case prev == nil:
		s.log.Info("agent: X.509-SVID received", attrs...)
	case !leaf.Equal(prev.Certificates[0]):
		m.rotated()
		s.log.Info("agent: X.509-SVID rotated", attrs...)
	}
	if len(changedTDs) > 0 {
		s.log.Info("agent: X.509 bundles updated", slog.Any(logkey.TrustDomains, changedTDs))
	}
}

func (s *Source) jwtBundlesUpdate(set *jwtbundle.Set) {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return
	}
	changedTDs := changedTrustDomains(jwtBundles(s.jwt), jwtBundles(set))
	s.jwt = set
	s.notifyLocked()
	s.mu.Unlock()
	for _, td := range changedTDs {
		s.cfg.Metrics.bundleUpdated("jwt", td)
	}
	if len(changedTDs) > 0 {
		s.log.Info("agent: JWT bundles updated", slog.Any(logkey.TrustDomains, changedTDs))
	}
}

// watchError records a Workload API error. It is logged at warning level
// once per change of reason and at debug level otherwise, so an agent that
// is down for minutes does not flood the log.
func (s *Source) watchError(watch string, err error) {
	if s.life.Err() != nil {
		return // shutting down
	}
	why := ReasonOf(err)
	s.cfg.Metrics.apiError(watch, why)
	level := slog.LevelDebug
	s.mu.Lock()
	if watch == "x509" {
		s.lastErr = err
	}
	if why != s.lastReason {
		s.lastReason = why
		level = slog.LevelWarn
	}
	s.mu.Unlock()
	s.log.Log(context.Background(), level, "agent: Workload API error",
		slog.String(logkey.Watch, watch),
		slog.String(logkey.Reason, string(why)),
		slog.String(logkey.Error, err.Error()))
}

// bundle is what x509bundle.Bundle and jwtbundle.Bundle have in common.
type bundle[B any] interface {
	TrustDomain() spiffeid.TrustDomain
	Equal(B) bool
}

// changedTrustDomains lists, sorted, the trust domains whose bundle differs
// between two bundle lists: added, removed or changed.
func changedTrustDomains[B bundle[B]](old, cur []B) []string {
	prev := make(map[spiffeid.TrustDomain]B, len(old))
	for _, b := range old {
		prev[b.TrustDomain()] = b
	}
	var out []string
	for _, b := range cur {
		td := b.TrustDomain()
		if ob, ok := prev[td]; !ok || !ob.Equal(b) {
			out = append(out, td.Name())
		}
		delete(prev, td)
	}
	for td := range prev {
		out = append(out, td.Name())
	}
	sort.Strings(out)
	return out
}

// x509Bundles and jwtBundles list the bundles of a possibly nil set.
func x509Bundles(s *x509bundle.Set) []*x509bundle.Bundle {
	if s == nil {
		return nil
	}
	return s.Bundles()
}

func jwtBundles(s *jwtbundle.Set) []*jwtbundle.Bundle {
	if s == nil {
		return nil
	}
	return s.Bundles()
}
