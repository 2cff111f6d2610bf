package revoke_test

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/redis/go-redis/v9"

	"github.com/credflow/credflow/internal/redistest"
	"github.com/credflow/credflow/proxy/revoke"
)

// deliveryTimeout is the bound on a revocation reaching every
// sidecar.
const deliveryTimeout = 5 * time.Second

func newClient(t *testing.T, addr string) *redis.Client {
	c := redis.NewClient(&redis.Options{Addr: addr, DialTimeout: time.Second, ReadTimeout: time.Second, WriteTimeout: time.Second})
	t.Cleanup(func() { c.Close() })
	return c
}

// within polls cond until it holds, failing t after d.
func within(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("after %v: %s", d, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestRedisStore: entries round-trip through the hash under their Key,
// Remove names a missing key, and a bad field is named by List.
func TestRedisStore(t *testing.T) {
	srv := redistest.Start(t)
	ctx := context.Background()
	c := newClient(t, srv.Addr)
	s := &revoke.RedisStore{Client: c, Key: "test:revocations"}
	exp := time.Now().Add(time.Hour).Truncate(time.Second).UTC()
	for _, e := range []revoke.Entry{
		{Kind: revoke.SPIFFEID, Value: "spiffe://example.org/ns/dev/*", Expires: exp, Reason: "incident 42"},
		{Kind: revoke.Serial, Value: "00:3A"},
		{Kind: revoke.Serial, Value: "3a", Reason: "again"},
	} {
		if err := s.Add(ctx, e); err != nil {
			t.Fatal(err)
		}
	}
	got, err := s.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	want := []revoke.Entry{
		{Kind: revoke.Serial, Value: "3a", Reason: "again"},
		{Kind: revoke.SPIFFEID, Value: "spiffe://example.org/ns/dev/*", Expires: exp, Reason: "incident 42"},
	}
	if d := cmp.Diff(want, got, cmpIgnoreAdded); d != "" {
		t.Errorf("entries (-want +got):\n%s", d)
	}
	fields, _ := c.HKeys(ctx, "test:revocations").Result()
	if d := cmp.Diff([]string{"serial:3a", "spiffe_id:spiffe://example.org/ns/dev/*"}, slices.Sorted(slices.Values(fields))); d != "" {
		t.Errorf("hash fields (-want +got):\n%s", d)
	}
	if err := s.Remove(ctx, "jti:nope"); !errors.Is(err, revoke.ErrNotFound) || !strings.Contains(err.Error(), `"jti:nope"`) {
		t.Errorf("Remove of a missing key: %v", err)
	}
	if err := s.Remove(ctx, "serial:3a"); err != nil {
		t.Fatal(err)
	}
	c.HSet(ctx, "test:revocations", "jti:x", `{"kind": "jti", "value": "y"}`)
	if _, err := s.List(ctx); err == nil || !strings.Contains(err.Error(), `field "jti:x"`) || !strings.Contains(err.Error(), `"jti:y"`) {
		t.Errorf("List with an entry under another key: %v", err)
	}
}

// TestRedisSourcePubSub: an Add made through another client reaches the
// source within the five seconds with the periodic read an hour
// away, so through pub/sub; so does a Remove; a bad field is skipped and
// the others apply.
func TestRedisSourcePubSub(t *testing.T) {
	srv := redistest.Start(t)
	store := &revoke.RedisStore{Client: newClient(t, srv.Addr)}
	var (
		list revoke.List
		logs logBuffer
	)
	src := &revoke.RedisSource{Client: newClient(t, srv.Addr), Resync: time.Hour, List: &list, Logger: logs.logger()}
	if err := src.Load(context.Background()); err != nil {
		t.Fatal(err)
	}
	runSource(t, src.Run)
	within(t, waitTimeout, "the source does not subscribe", func() bool { return logs.count("subscribed and read") > 0 })
	if n, _ := store.Client.PubSubNumSub(context.Background(), revoke.DefaultKey+":events").Result(); n[revoke.DefaultKey+":events"] != 1 {
		t.Fatalf("subscribers: %v", n)
	}

	ctx := context.Background()
	if err := store.Add(ctx, revoke.Entry{Kind: revoke.JTI, Value: "one"}); err != nil {
		t.Fatal(err)
	}
	within(t, deliveryTimeout, "the Add is not delivered", denies(&list, "one"))

	store.Client.HSet(ctx, revoke.DefaultKey, "jti:bad", `{"kind": "jti"}`)
	if err := store.Add(ctx, revoke.Entry{Kind: revoke.JTI, Value: "two"}); err != nil {
		t.Fatal(err)
	}
	within(t, deliveryTimeout, "an Add beside a bad field is not delivered", denies(&list, "two"))
	if !strings.Contains(logs.String(), "entry=jti:bad") {
		t.Errorf("the bad field is not logged:\n%s", logs.String())
	}
	if err := store.Remove(ctx, "jti:one"); err != nil {
		t.Fatal(err)
	}
	within(t, deliveryTimeout, "the Remove is not delivered", func() bool { return !denies(&list, "one")() })
	if !denies(&list, "two")() {
		t.Fatal("the Remove lifted another entry")
	}
}

// TestRedisSourceResync: a change written with HSET and no PUBLISH, as a
// missed message would leave it, is read at the next resync.
func TestRedisSourceResync(t *testing.T) {
	srv := redistest.Start(t)
	c := newClient(t, srv.Addr)
	var list revoke.List
	src := &revoke.RedisSource{Client: newClient(t, srv.Addr), Key: "k", Resync: 200 * time.Millisecond, List: &list}
	runSource(t, src.Run)
	if err := c.HSet(context.Background(), "k", "jti:quiet", `{"kind": "jti", "value": "quiet"}`).Err(); err != nil {
		t.Fatal(err)
	}
	within(t, waitTimeout, "the unpublished change is not read", denies(&list, "quiet"))
}

// TestRedisSourceOutage: with Redis gone the source keeps its last good
// list (and Load fails rather than report an empty one); a new server on
// the same port is found again, and edits made there are delivered.
func TestRedisSourceOutage(t *testing.T) {
	srv := redistest.Start(t)
	store := &revoke.RedisStore{Client: newClient(t, srv.Addr)}
	ctx := context.Background()
	if err := store.Add(ctx, revoke.Entry{Kind: revoke.JTI, Value: "before"}); err != nil {
		t.Fatal(err)
	}
	var (
		list revoke.List
		logs logBuffer
	)
	src := &revoke.RedisSource{Client: newClient(t, srv.Addr), Resync: 100 * time.Millisecond, List: &list, Logger: logs.logger()}
	runSource(t, src.Run)
	within(t, waitTimeout, "the first read", denies(&list, "before"))

	srv.Kill()
	within(t, waitTimeout, "the outage is not reported", func() bool { return logs.count("Redis unavailable") >= 2 })
	if !denies(&list, "before")() {
		t.Fatal("the outage lifted the last good list")
	}
	if err := (&revoke.RedisSource{Client: store.Client, List: new(revoke.List)}).Load(ctx); err == nil {
		t.Fatal("Load with Redis down succeeded")
	}

	srv.Restart() // empty: --save ""
	if err := store.Add(ctx, revoke.Entry{Kind: revoke.JTI, Value: "after"}); err != nil {
		t.Fatal(err)
	}
	within(t, waitTimeout, "sync does not resume", func() bool {
		return denies(&list, "after")() && !denies(&list, "before")()
	})
	if logs.count("Redis reachable again") != 1 {
		t.Errorf("the recovery is not logged once:\n%s", logs.String())
	}
}
