package anomaly

import (
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/credflow/credflow/reason"
)

var (
	t0      = time.Date(2026, 12, 6, 0, 0, 0, 0, time.UTC)
	alice   = Peer(spiffeid.RequireFromString("spiffe://example.org/alice"))
	bob     = Peer(spiffeid.RequireFromString("spiffe://example.org/bob"))
	carol   = Peer(spiffeid.RequireFromString("spiffe://example.org/carol"))
	mallory = Peer(spiffeid.RequireFromString("spiffe://example.org/mallory"))
	scanner = Source(netip.MustParseAddr("192.0.2.7"))
)

// recorder is a Sink that keeps the events.
type recorder struct {
	mu     sync.Mutex
	events []Event
}

func (r *recorder) Emit(e Event) {
	r.mu.Lock()
	r.events = append(r.events, e)
	r.mu.Unlock()
}

// take returns the events so far and forgets them.
func (r *recorder) take() []Event {
	r.mu.Lock()
	defer r.mu.Unlock()
	e := r.events
	r.events = nil
	return e
}

// newDetector returns a Detector for cfg whose events go to the returned
// recorder.
func newDetector(t testing.TB, cfg Config) (*Detector, *recorder) {
	t.Helper()
	rec := &recorder{}
	d, err := New(cfg, Options{Sinks: []Sink{rec}})
	if err != nil {
		t.Fatal(err)
	}
	return d, rec
}

// feed observes o perSecond times a second, evenly spaced, from from for
// dur, and returns when it ended.
func feed(d *Detector, o Observation, from time.Time, perSecond int, dur time.Duration) time.Time {
	step := time.Second / time.Duration(perSecond)
	end := from.Add(dur)
	for t := from; t.Before(end); t = t.Add(step) {
		o.Time = t
		d.Observe(o)
	}
	return end
}

// rules returns the detectors of events, in order.
func detectors(events []Event) []string {
	var s []string
	for _, e := range events {
		s = append(s, fmt.Sprintf("%s %s", e.Detector, e.Subject))
	}
	return s
}

// TestBurst: each burst detector stays quiet on a steady load of allowed
// requests, on refusals of other classes and on its own refusals below
// Count per Window, and fires once, at the refusal past Count, on a burst.
func TestBurst(t *testing.T) {
	burst := Burst{Count: 10, Window: time.Minute}
	for _, tc := range []struct {
		rule   Rule
		kind   Kind
		who    Subject
		why    reason.Reason
		others reason.Reason // a refusal of another class
	}{
		{RefusalBurst, Request, mallory, reason.RouteDenied, reason.BadToken},
		{RefusalBurst, Request, mallory, reason.Unauthorized, reason.RateLimited},
		{RefusalBurst, Connection, scanner, reason.Untrusted, reason.HandshakeTimeout},
		{TokenFailures, Request, mallory, reason.BadToken, reason.RouteDenied},
		{TokenFailures, Request, mallory, reason.TokenPeerMismatch, reason.AppTimeout},
		{TokenFailures, Request, mallory, reason.TxnReplayed, reason.TxnMintFailed},
		{TokenFailures, Request, mallory, reason.ExternalBadSignature, reason.Unauthorized},
	} {
		t.Run(fmt.Sprintf("%s/%s", tc.rule, tc.why), func(t *testing.T) {
			cfg := Config{RefusalBurst: burst}
			if tc.rule == TokenFailures {
				cfg = Config{TokenFailures: burst}
			}
			d, rec := newDetector(t, cfg)
			o := Observation{Subject: tc.who, Kind: tc.kind, Route: "orders"}

			// Two minutes of 50 allowed a second: 6,000, far more than
			// the burst.
			end := feed(d, o, t0, 50, 2*time.Minute)
			// Refusals of another class, as many.
			o.Reason = tc.others
			end = feed(d, o, end, 50, 2*time.Minute)
			// Its own refusals, one every 10s: 6 a minute, under 10.
			o.Reason = tc.why
			for i := range 12 {
				o.Time = end.Add(time.Duration(i) * 10 * time.Second)
				d.Observe(o)
			}
			if got := rec.take(); len(got) != 0 {
				t.Fatalf("a steady load fired %v", detectors(got))
			}

			// The attack: 50 refusals a second for 2 seconds.
			start := end.Add(5 * time.Minute) // the bucket full again
			feed(d, o, start, 50, 2*time.Second)
			got := rec.take()
			want := []Event{{
				Detector: tc.rule, Subject: tc.who, Action: ActionAlert,
				Time:     start.Add(10 * 20 * time.Millisecond), // the 11th
				Evidence: Evidence{Count: 11, Limit: 10, Since: start, Window: time.Minute, Route: "orders", Reason: tc.why},
			}}
			if diff := cmp.Diff(want, got, cmp.Comparer(func(a, b Subject) bool { return a == b })); diff != "" {
				t.Errorf("events of the burst (-want +got):\n%s", diff)
			}
		})
	}
}

// TestBurstSemantics pins the bucket's arithmetic: Count+1 refusals
// spread over the Window do not fire, while 2·Count+1 within it do.
func TestBurstSemantics(t *testing.T) {
	d, rec := newDetector(t, Config{RefusalBurst: Burst{Count: 10, Window: time.Minute}})
	o := Observation{Subject: mallory, Reason: reason.RouteDenied}
	// 11 in a minute, 6s apart: the bucket refills one every 6s.
	for i := range 11 {
		o.Time = t0.Add(time.Duration(i) * 6 * time.Second)
		d.Observe(o)
	}
	if got := rec.take(); len(got) != 0 {
		t.Fatalf("11 refusals spread over the window fired %v", detectors(got))
	}
	// 21 in 59s, from a full bucket: 10 + 59/6 = 19.8 tokens at most.
	o.Subject = scanner
	for i := range 21 {
		o.Time = t0.Add(time.Duration(i) * 59 * time.Second / 20)
		d.Observe(o)
	}
	if got := rec.take(); len(got) != 1 {
		t.Fatalf("21 refusals in 59s: %d events, want 1", len(got))
	}
}

// TestCooldown: a sustained attack is one event per cooldown, and the
// cooldown is the quarantine's length when the action quarantines.
func TestCooldown(t *testing.T) {
	for _, tc := range []struct {
		name     string
		response Response
		want     int
	}{
		{"alert", Response{}, 5}, // 5 min, 1 min cooldown
		{"quarantine", Response{Action: ActionQuarantine, For: 2 * time.Minute}, 3}, // at 0, 2, 4 min
		{"explicit", Response{Cooldown: 10 * time.Minute}, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d, rec := newDetector(t, Config{RefusalBurst: Burst{Count: 10, Response: tc.response}})
			feed(d, Observation{Subject: mallory, Reason: reason.Unauthorized}, t0, 50, 5*time.Minute)
			got := rec.take()
			if len(got) != tc.want {
				t.Fatalf("5 minutes of attack: %d events, want %d: %v", len(got), tc.want, got)
			}
			cooldown := d.Config().RefusalBurst.Cooldown
			for i := 1; i < len(got); i++ {
				if gap := got[i].Time.Sub(got[i-1].Time); gap < cooldown {
					t.Errorf("events %d and %d %v apart, within the cooldown %v", i-1, i, gap, cooldown)
				}
			}
		})
	}
}

// TestRateSpike: a steady 50 requests a second for minutes is quiet; a
// jump to 1,000 fires once; a subject that starts high, one under MinRate
// and connections are quiet.
func TestRateSpike(t *testing.T) {
	cfg := Config{RateSpike: Spike{Factor: 10}} // MinRate 10/s, half-life 1m, interval 1s, warm-up 2m
	d, rec := newDetector(t, cfg)
	o := Observation{Subject: alice, Route: "orders"}
	end := feed(d, o, t0, 50, 3*time.Minute)
	if got := rec.take(); len(got) != 0 {
		t.Fatalf("steady 50/s fired %v", detectors(got))
	}
	feed(d, o, end, 1000, 5*time.Second)
	got := rec.take()
	if len(got) != 1 {
		t.Fatalf("50/s → 1000/s: %d events, want 1", len(got))
	}
	ev := got[0].Evidence
	// After 180 intervals at 50/s the baseline is 50·(1−2^−3) = 43.75;
	// the interval fires at its 438th request (438/s > 437.5).
	if ev.Baseline < 43.7 || ev.Baseline > 43.8 || ev.Count != 438 || ev.Rate != 438 ||
		!ev.Since.Equal(end) || ev.Window != time.Second || got[0].Detector != RateSpike {
		t.Errorf("evidence %+v, want a baseline of 43.75 and 438 requests since %v", ev, end)
	}

	t.Run("StartsHigh", func(t *testing.T) {
		d, rec := newDetector(t, cfg)
		feed(d, Observation{Subject: bob}, t0, 1000, 3*time.Minute)
		if got := rec.take(); len(got) != 0 {
			t.Errorf("a subject at 1000/s from its start fired %v", detectors(got))
		}
	})
	t.Run("MinRate", func(t *testing.T) {
		d, rec := newDetector(t, cfg)
		o := Observation{Subject: bob}
		for i := range 36 { // one every 5s for 3 minutes
			o.Time = t0.Add(time.Duration(i) * 5 * time.Second)
			d.Observe(o)
		}
		end := feed(d, o, t0.Add(3*time.Minute), 8, 3*time.Second) // 40× the baseline, under MinRate
		if got := rec.take(); len(got) != 0 {
			t.Fatalf("8/s under a MinRate of 10 fired %v", detectors(got))
		}
		feed(d, o, end, 20, time.Second)
		if got := rec.take(); len(got) != 1 {
			t.Errorf("20/s, over MinRate and the baseline: %d events, want 1", len(got))
		}
	})
	t.Run("Connections", func(t *testing.T) {
		d, rec := newDetector(t, cfg)
		o := Observation{Subject: bob, Kind: Connection}
		end := feed(d, o, t0, 1, 3*time.Minute)
		feed(d, o, end, 1000, 2*time.Second)
		if got := rec.take(); len(got) != 0 {
			t.Errorf("connections fired %v: only requests count", detectors(got))
		}
	})
}

// TestNewCaller: callers seen while learning are known; after it a
// subject new to a watched route fires once; unwatched routes and
// refusals neither fire nor teach.
func TestNewCaller(t *testing.T) {
	d, rec := newDetector(t, Config{NewCaller: Novelty{Routes: []string{"orders", "admin"}, LearnFor: time.Minute}})
	call := func(s Subject, route string, why reason.Reason, at time.Duration) {
		d.Observe(Observation{Subject: s, Route: route, Reason: why, Time: t0.Add(at)})
	}
	call(alice, "orders", "", 0) // the first observation starts the learning period
	call(bob, "admin", "", 10*time.Second)
	call(carol, "orders", "", 59*time.Second)
	call(mallory, "orders", reason.RouteDenied, 30*time.Second)
	if got := rec.take(); len(got) != 0 {
		t.Fatalf("learning fired %v", detectors(got))
	}

	// Two minutes of known callers.
	for s := time.Minute; s < 3*time.Minute; s += time.Second {
		call(alice, "orders", "", s)
		call(bob, "admin", "", s)
		call(carol, "orders", "", s)
		call(mallory, "health", "", s) // not watched
	}
	if got := rec.take(); len(got) != 0 {
		t.Fatalf("known callers fired %v", detectors(got))
	}

	call(mallory, "orders", "", 3*time.Minute) // refused while learning: not known
	call(mallory, "orders", "", 3*time.Minute+time.Second)
	call(alice, "admin", "", 3*time.Minute+2*time.Second)   // known on orders, new on admin
	call(mallory, "admin", "", 3*time.Minute+3*time.Second) // new, within the cooldown
	got := rec.take()
	want := []string{"new_caller spiffe://example.org/mallory", "new_caller spiffe://example.org/alice"}
	if diff := cmp.Diff(want, detectors(got)); diff != "" {
		t.Errorf("events (-want +got):\n%s", diff)
	}
	if len(got) > 0 && got[0].Evidence.Route != "orders" {
		t.Errorf("evidence %+v, want route orders", got[0].Evidence)
	}
}

// TestActions: quarantine and revoke put the subject in quarantine for
// For and Observe says so; revoke hands the JTI to OnRevoke; alert does
// neither.
func TestActions(t *testing.T) {
	for _, action := range []Action{ActionAlert, ActionQuarantine, ActionRevoke} {
		t.Run(string(action), func(t *testing.T) {
			var revoked []string
			q := NewQuarantine(QuarantineConfig{})
			d, err := New(Config{TokenFailures: Burst{Count: 2, Response: Response{Action: action, For: time.Hour}}},
				Options{Quarantine: q, OnRevoke: func(e Event, jti string) { revoked = append(revoked, jti) }})
			if err != nil {
				t.Fatal(err)
			}
			var last Action
			for i := range 3 {
				last = d.Observe(Observation{Subject: mallory, Reason: reason.TxnReplayed, JTI: fmt.Sprint("txn-", i), Time: t0})
			}
			if last != action {
				t.Errorf("Observe returned %q, want %q", last, action)
			}
			until, ok := q.Quarantined(mallory, t0.Add(59*time.Minute))
			if wantQ := action != ActionAlert; ok != wantQ || (ok && !until.Equal(t0.Add(time.Hour))) {
				t.Errorf("quarantined %v until %v, want %v until %v", ok, until, wantQ, t0.Add(time.Hour))
			}
			var want []string
			if action == ActionRevoke {
				want = []string{"txn-2"}
			}
			if diff := cmp.Diff(want, revoked); diff != "" {
				t.Errorf("revoked (-want +got):\n%s", diff)
			}
		})
	}
}

// TestBoundedSubjects: 100,000 distinct subjects leave the state at its
// cap, and an evicted subject starts afresh.
func TestBoundedSubjects(t *testing.T) {
	d, _ := newDetector(t, Config{
		RefusalBurst: Burst{Count: 5},
		RateSpike:    Spike{Factor: 10},
		NewCaller:    Novelty{Routes: []string{"orders"}},
	})
	for i := range 100_000 {
		a := netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)})
		d.Observe(Observation{Subject: Source(a), Reason: reason.HandshakeFailed, Kind: Connection, Time: t0})
		d.Observe(Observation{Subject: Peer(spiffeid.RequireFromPath(spiffeid.RequireTrustDomainFromString("example.org"), fmt.Sprint("/w/", i))),
			Route: "orders", Time: t0})
	}
	if n := d.Tracked(); n > DefaultMaxSubjects || n < DefaultMaxSubjects/2 {
		t.Errorf("%d subjects tracked after 200,000, want at most (and about) %d", n, DefaultMaxSubjects)
	}
	known := 0
	for _, sh := range d.shards {
		known += sh.known.Len()
	}
	if known > DefaultMaxCallers {
		t.Errorf("%d known callers, want at most %d", known, DefaultMaxCallers)
	}

	// One subject per shard: mallory's bucket, nearly empty, is evicted.
	d, rec := newDetector(t, Config{RefusalBurst: Burst{Count: 10}, MaxSubjects: numShards})
	o := Observation{Subject: mallory, Reason: reason.Unauthorized, Time: t0}
	for range 10 {
		d.Observe(o)
	}
	for i := range 1000 {
		d.Observe(Observation{Subject: Source(netip.AddrFrom4([4]byte{10, 0, byte(i >> 8), byte(i)})), Reason: reason.Unauthorized, Time: t0})
	}
	d.Observe(o)
	if got := rec.take(); len(got) != 0 {
		t.Errorf("mallory's 11th refusal after eviction fired %v: the state should have restarted", detectors(got))
	}
}

// TestConfig: the zero Config is valid and detects nothing; bad values
// are refused with ErrConfig.
func TestConfig(t *testing.T) {
	d, rec := newDetector(t, Config{})
	feed(d, Observation{Subject: mallory, Reason: reason.Unauthorized}, t0, 1000, 10*time.Second)
	if got := rec.take(); len(got) != 0 {
		t.Errorf("the zero config fired %v", detectors(got))
	}
	for name, cfg := range map[string]Config{
		"action": {RefusalBurst: Burst{Count: 1, Response: Response{Action: "ban"}}},
		"factor": {RateSpike: Spike{Factor: 0.5}},
		"routes": {NewCaller: Novelty{Routes: make([]string, MaxRoutes+1)}},
		"count":  {TokenFailures: Burst{Count: -1}},
	} {
		if _, err := New(cfg, Options{}); !errors.Is(err, ErrConfig) {
			t.Errorf("%s: New returned %v, want ErrConfig", name, err)
		}
	}
}

// TestSubject: peers and addresses as keys and strings.
func TestSubject(t *testing.T) {
	mapped := Source(netip.MustParseAddr("::ffff:192.0.2.7"))
	if mapped != scanner || scanner.String() != "192.0.2.7" {
		t.Errorf("Source(::ffff:192.0.2.7) = %v, want 192.0.2.7 equal to its IPv4 form", mapped)
	}
	if alice.String() != "spiffe://example.org/alice" || alice == bob || !(Subject{}).IsZero() || Peer(spiffeid.ID{}) != (Subject{}) {
		t.Error("peer subjects are not what they should be")
	}
	if _, ok := scanner.Peer(); ok {
		t.Error("an address is a peer")
	}
	if id, ok := alice.Peer(); !ok || id.String() != alice.String() {
		t.Error("a peer has no ID")
	}
}
