package revoke

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"slices"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/credflow/credflow/internal/logkey"
)

// Redis layout: the entries are the fields of one hash, DefaultKey unless
// set, each field an entry's Key and its value the entry's JSON. Every
// edit is published on the channel, DefaultKey+":events" unless set; the
// message is the Key of the entry changed, and a reader takes any message
// as "read the hash again".
const (
	// DefaultKey is the Redis hash of the entries.
	DefaultKey = "credflow:revocations"
	// DefaultResync is how often RedisSource reads the whole hash when
	// RedisSource.Resync is not set.
	DefaultResync = 30 * time.Second
)

// Retry delays of RedisSource after a failure, doubled from the first to
// the last, with up to 10% jitter so that many sidecars do not retry in
// step.
const (
	firstRetry = 250 * time.Millisecond
	lastRetry  = 5 * time.Second
	// subscribeTimeout bounds the wait for Redis to confirm a
	// subscription.
	subscribeTimeout = 5 * time.Second
)

// channelOf returns the events channel for a hash key.
func channelOf(key, channel string) string {
	return cmp.Or(channel, cmp.Or(key, DefaultKey)+":events")
}

// RedisSource keeps a List equal to the live entries of the Redis hash.
// It subscribes to the events channel and reads the whole hash (HGETALL)
// once subscribed, on every message and every Resync, so that a message
// missed while it was away is made up for. When Redis cannot be reached it
// logs, keeps the last good list and tries again with backoff. A field
// that is not a valid entry is logged and skipped: the others apply.
type RedisSource struct {
	// Client is the Redis client. Required.
	Client *redis.Client
	// Key is the hash of the entries; default DefaultKey.
	Key string
	// Channel is the events channel; default Key+":events".
	Channel string
	// Resync is how often the whole hash is read even without a message;
	// default DefaultResync.
	Resync time.Duration
	// List is the list kept up to date. Required.
	List *List
	// Logger receives a line when the list changes, a field is bad or
	// Redis is unreachable; nil logs nothing.
	Logger *slog.Logger
}

// Load reads the hash once into the List; call it at start to fail when
// Redis cannot be reached.
func (s *RedisSource) Load(ctx context.Context) error {
	_, err := s.sync(ctx, logger(s.Logger), nil)
	return err
}

// Run keeps the List up to date until ctx ends, then returns nil.
func (s *RedisSource) Run(ctx context.Context) error {
	log := logger(s.Logger).With(slog.String(logkey.Redis, s.Client.Options().Addr))
	r := &redisRun{s: s, log: log, bad: map[string]string{}}
	delay, failures := firstRetry, 0
	for {
		err := r.session(ctx, func() {
			if failures > 0 {
				log.Info("revocation list: Redis reachable again")
			}
			delay, failures = firstRetry, 0
		})
		if ctx.Err() != nil {
			return nil
		}
		failures++
		wait := delay + rand.N(delay/10+1)
		delay = min(2*delay, lastRetry)
		log.Warn("revocation list: Redis unavailable, keeping the last good list",
			slog.Any(logkey.Error, err), slog.Int(logkey.Failures, failures), slog.Duration(logkey.Backoff, wait))
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
	}
}

// redisRun is the state of one RedisSource.Run.
type redisRun struct {
	s   *RedisSource
	log *slog.Logger
	// bad is the error last logged for each bad field, logged again only
	// when it changes.
	bad map[string]string
}

// session subscribes, reads the hash and reads it again on every message
// and every Resync, until an error or the end of ctx. It calls up once
// subscribed and read.
func (r *redisRun) session(ctx context.Context, up func()) error {
	ps := r.s.Client.Subscribe(ctx, channelOf(r.s.Key, r.s.Channel))
	// Subscribe sends SUBSCRIBE but reports no error: the confirmation
	// does.
	if _, err := ps.ReceiveTimeout(ctx, subscribeTimeout); err != nil {
		ps.Close()
		return fmt.Errorf("revoke: subscribing: %w", err)
	}
	msgs := make(chan struct{}, 1)
	failed := make(chan error, 1)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			if _, err := ps.ReceiveMessage(ctx); err != nil {
				failed <- err
				return
			}
			select {
			case msgs <- struct{}{}:
			default: // a read is already due: it will see this change too
			}
		}
	}()
	defer func() {
		ps.Close() // ends the receiver's read
		<-done
	}()

	if _, err := r.s.sync(ctx, r.log, r.bad); err != nil {
		return err
	}
	up()
	r.log.Debug("revocation list: subscribed and read")
	t := time.NewTicker(cmp.Or(r.s.Resync, DefaultResync))
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case err := <-failed:
			return fmt.Errorf("revoke: receiving: %w", err)
		case <-msgs:
		case <-t.C:
		}
		if _, err := r.s.sync(ctx, r.log, r.bad); err != nil {
			return err
		}
	}
}

// sync reads the hash into the List. Bad fields are logged (once per
// distinct error when bad is not nil) and skipped.
func (s *RedisSource) sync(ctx context.Context, log *slog.Logger, bad map[string]string) (changed bool, err error) {
	fields, err := s.Client.HGetAll(ctx, cmp.Or(s.Key, DefaultKey)).Result()
	if err != nil {
		return false, fmt.Errorf("revoke: reading the entries: %w", err)
	}
	entries := make([]Entry, 0, len(fields))
	for field, data := range fields {
		e, err := decodeField(field, data)
		if err != nil {
			if bad == nil || bad[field] != err.Error() {
				log.Warn("revocation list: skipping a bad entry", slog.String(logkey.Entry, field), slog.Any(logkey.Error, err))
			}
			if bad != nil {
				bad[field] = err.Error()
			}
			continue
		}
		delete(bad, field)
		entries = append(entries, e)
	}
	changed, err = s.List.Replace(live(entries, time.Now()))
	if changed {
		log.Info("revocation list updated", slog.Int(logkey.Entries, s.List.Len()))
	}
	return changed, err
}

// decodeField decodes the hash field whose name is field: a valid entry
// whose Key is the field's name.
func decodeField(field, data string) (Entry, error) {
	var e Entry
	if err := json.Unmarshal([]byte(data), &e); err != nil {
		return Entry{}, fmt.Errorf("revoke: %w", err)
	}
	e, err := e.Canonical()
	if err != nil {
		return Entry{}, err
	}
	if e.Key() != field {
		return Entry{}, fmt.Errorf("%w: stored under %q, but its key is %q", ErrInvalid, field, e.Key())
	}
	return e, nil
}

// RedisStore edits the entries in Redis (see RedisSource): each edit
// changes the hash and publishes on the channel in one MULTI/EXEC
// transaction.
type RedisStore struct {
	// Client is the Redis client. Required.
	Client *redis.Client
	// Key is the hash of the entries; default DefaultKey.
	Key string
	// Channel is the events channel; default Key+":events".
	Channel string
}

var _ Store = (*RedisStore)(nil)

// Add adds e, replacing the entry with the same Key. An Added time that is
// not set is set to now.
func (s *RedisStore) Add(ctx context.Context, e Entry) error {
	e, err := prepare(e, time.Now())
	if err != nil {
		return err
	}
	data, err := json.Marshal(e)
	if err != nil {
		return fmt.Errorf("revoke: %w", err)
	}
	pipe := s.Client.TxPipeline()
	pipe.HSet(ctx, cmp.Or(s.Key, DefaultKey), e.Key(), data)
	pipe.Publish(ctx, channelOf(s.Key, s.Channel), e.Key())
	if _, err := pipe.Exec(ctx); err != nil {
		return fmt.Errorf("revoke: adding %s: %w", e.Key(), err)
	}
	return nil
}

// Remove removes the entry whose Key is key; when there is none, the error
// wraps ErrNotFound and names the key.
func (s *RedisStore) Remove(ctx context.Context, key string) error {
	pipe := s.Client.TxPipeline()
	del := pipe.HDel(ctx, cmp.Or(s.Key, DefaultKey), key)
	pipe.Publish(ctx, channelOf(s.Key, s.Channel), key)
	if _, err := pipe.Exec(ctx); err != nil {
		return fmt.Errorf("revoke: removing %s: %w", key, err)
	}
	if del.Val() == 0 {
		return fmt.Errorf("%w: %q in Redis hash %s", ErrNotFound, key, cmp.Or(s.Key, DefaultKey))
	}
	return nil
}

// List returns the entries sorted by Key, expired ones included. It fails
// on a field that is not a valid entry, naming it.
func (s *RedisStore) List(ctx context.Context) ([]Entry, error) {
	fields, err := s.Client.HGetAll(ctx, cmp.Or(s.Key, DefaultKey)).Result()
	if err != nil {
		return nil, fmt.Errorf("revoke: reading the entries: %w", err)
	}
	var (
		entries []Entry
		errs    []error
	)
	for field, data := range fields {
		e, err := decodeField(field, data)
		if err != nil {
			errs = append(errs, fmt.Errorf("field %q: %w", field, err))
			continue
		}
		entries = append(entries, e)
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	slices.SortFunc(entries, func(a, b Entry) int { return cmp.Compare(a.Key(), b.Key()) })
	return entries, nil
}
