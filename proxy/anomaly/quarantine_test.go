package anomaly

import (
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

var cmpSubject = cmp.Comparer(func(a, b Subject) bool { return a == b })

// TestQuarantine: entries hold until their end, keep the later of two
// ends, can be lifted, and are listed soonest-ending first with the
// expired ones pruned.
func TestQuarantine(t *testing.T) {
	var added []Entry
	q := NewQuarantine(QuarantineConfig{OnAdd: func(e Entry) { added = append(added, e) }})
	if _, ok := q.Quarantined(mallory, t0); ok {
		t.Fatal("an empty table quarantines mallory")
	}
	q.Add(mallory, t0.Add(time.Minute), RefusalBurst)
	q.Add(scanner, t0.Add(10*time.Second), RefusalBurst)
	q.Add(bob, t0.Add(time.Hour), NewCaller)
	q.Add(mallory, t0.Add(30*time.Second), TokenFailures) // earlier: kept at a minute

	for _, tc := range []struct {
		who  Subject
		at   time.Duration
		want bool
	}{
		{mallory, 0, true}, {mallory, 59 * time.Second, true}, {mallory, time.Minute, false},
		{scanner, 9 * time.Second, true}, {scanner, 10 * time.Second, false},
		{alice, 0, false},
	} {
		until, ok := q.Quarantined(tc.who, t0.Add(tc.at))
		if ok != tc.want || (ok && until.IsZero()) {
			t.Errorf("%v at +%v: quarantined %v until %v, want %v", tc.who, tc.at, ok, until, tc.want)
		}
	}

	want := []Entry{
		{Subject: scanner, Until: t0.Add(10 * time.Second), Detector: RefusalBurst},
		{Subject: mallory, Until: t0.Add(time.Minute), Detector: RefusalBurst},
		{Subject: bob, Until: t0.Add(time.Hour), Detector: NewCaller},
	}
	if diff := cmp.Diff(want, q.List(t0), cmpSubject); diff != "" {
		t.Errorf("List (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(want[2:], q.List(t0.Add(time.Minute)), cmpSubject); diff != "" {
		t.Errorf("List a minute later (-want +got):\n%s", diff)
	}
	if q.Lift(mallory) {
		t.Error("Lift found mallory's expired entry: List did not prune it")
	}
	if !q.Lift(bob) || q.Lift(bob) {
		t.Error("Lift(bob) twice: want true then false")
	}
	if _, ok := q.Quarantined(bob, t0); ok {
		t.Error("bob quarantined after Lift")
	}
	if len(added) != 4 || added[3].Until != t0.Add(time.Minute) {
		t.Errorf("OnAdd saw %v, want 4 entries, the last mallory's standing one", added)
	}
}

// TestQuarantineFull: at its cap the table drops the entry that ends
// first.
func TestQuarantineFull(t *testing.T) {
	q := NewQuarantine(QuarantineConfig{MaxEntries: 2})
	q.Add(alice, t0.Add(time.Hour), RateSpike)
	q.Add(bob, t0.Add(time.Minute), RateSpike)
	q.Add(carol, t0.Add(2*time.Hour), RateSpike)
	want := []Entry{
		{Subject: alice, Until: t0.Add(time.Hour), Detector: RateSpike},
		{Subject: carol, Until: t0.Add(2 * time.Hour), Detector: RateSpike},
	}
	if diff := cmp.Diff(want, q.List(t0), cmpSubject); diff != "" {
		t.Errorf("List (-want +got):\n%s", diff)
	}
}
