package anomaly

import (
	"cmp"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// DefaultMaxQuarantined is the entries a Quarantine holds when
// QuarantineConfig.MaxEntries is not set.
const DefaultMaxQuarantined = 10000

// Entry is a quarantined subject.
type Entry struct {
	// Subject is who is refused.
	Subject Subject
	// Until is when the quarantine ends.
	Until time.Time
	// Detector is the detector that put the subject there (or whatever
	// name the caller of Add gave).
	Detector Rule
}

// QuarantineConfig configures a Quarantine. The zero value is valid.
type QuarantineConfig struct {
	// MaxEntries caps the entries held; default DefaultMaxQuarantined.
	// When it is reached, Add drops the entry that ends first, expired
	// ones before any other.
	MaxEntries int
	// OnAdd, if set, is called after each Add, with the entry as it now
	// stands, so that the proxy can close the subject's established
	// connections. It runs on the goroutine that called Add (for
	// detections, the one that called Observe), outside the table's lock,
	// and must not block.
	OnAdd func(Entry)
}

// Quarantine is a table of subjects refused until a time. Entries expire
// by themselves: a subject is quarantined while now is before its Until;
// expired entries are pruned by List and by Add when the table is full.
// It is safe for concurrent use; Quarantined, which the proxy calls on
// every connection and request, takes no lock while the table is empty
// and a read lock otherwise.
type Quarantine struct {
	cfg QuarantineConfig
	n   atomic.Int64 // len(m), read without the lock

	mu sync.RWMutex
	m  map[Subject]Entry
}

// NewQuarantine returns an empty Quarantine.
func NewQuarantine(cfg QuarantineConfig) *Quarantine {
	if cfg.MaxEntries <= 0 {
		cfg.MaxEntries = DefaultMaxQuarantined
	}
	return &Quarantine{cfg: cfg, m: make(map[Subject]Entry)}
}

// Quarantined reports whether s is quarantined at now, and until when.
func (q *Quarantine) Quarantined(s Subject, now time.Time) (until time.Time, ok bool) {
	if q == nil || q.n.Load() == 0 {
		return time.Time{}, false
	}
	q.mu.RLock()
	e, ok := q.m[s]
	q.mu.RUnlock()
	if !ok || !now.Before(e.Until) {
		return time.Time{}, false
	}
	return e.Until, true
}

// Add quarantines s until until, for the reason by. A subject already
// quarantined keeps the later of its two ends (and the detector that set
// it).
func (q *Quarantine) Add(s Subject, until time.Time, by Rule) {
	if s.IsZero() {
		return
	}
	q.mu.Lock()
	e, ok := q.m[s]
	if !ok || until.After(e.Until) {
		e = Entry{Subject: s, Until: until, Detector: by}
	}
	if !ok && len(q.m) >= q.cfg.MaxEntries {
		q.dropFirstEnding()
	}
	q.m[s] = e
	q.n.Store(int64(len(q.m)))
	q.mu.Unlock()
	if q.cfg.OnAdd != nil {
		q.cfg.OnAdd(e)
	}
}

// dropFirstEnding removes the entry that ends first. The lock is held.
func (q *Quarantine) dropFirstEnding() {
	var first Entry
	for _, e := range q.m {
		if first.Subject.IsZero() || e.Until.Before(first.Until) {
			first = e
		}
	}
	delete(q.m, first.Subject)
}

// Lift ends s's quarantine and reports whether it was quarantined (an
// expired entry not yet pruned counts).
func (q *Quarantine) Lift(s Subject) bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	_, ok := q.m[s]
	delete(q.m, s)
	q.n.Store(int64(len(q.m)))
	return ok
}

// List returns the subjects quarantined at now, the soonest to end first,
// and prunes the expired entries.
func (q *Quarantine) List(now time.Time) []Entry {
	q.mu.Lock()
	var list []Entry
	for s, e := range q.m {
		if now.Before(e.Until) {
			list = append(list, e)
		} else {
			delete(q.m, s)
		}
	}
	q.n.Store(int64(len(q.m)))
	q.mu.Unlock()
	slices.SortFunc(list, func(a, b Entry) int {
		if c := a.Until.Compare(b.Until); c != 0 {
			return c
		}
		return cmp.Compare(a.Subject.String(), b.Subject.String())
	})
	return list
}
