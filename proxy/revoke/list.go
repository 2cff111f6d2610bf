package revoke

import (
	"cmp"
	"errors"
	"fmt"
	"math/big"
	"slices"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/credflow/credflow/proxy/authz"
)

// List is the current deny set. Lookups read an immutable snapshot without
// a lock; Replace swaps the snapshot. The zero List is empty and ready to
// use; a List must not be copied after first use.
type List struct {
	cur atomic.Pointer[set]
}

// set is one snapshot of a List. It is never modified once published.
type set struct {
	entries  []Entry // canonical, one per Key, sorted by Key
	ids      map[spiffeid.ID]Entry
	patterns []patternEntry
	serials  map[string]Entry // by lower-case hex without leading zeros
	jtis     map[string]Entry
	// changed is closed when this set is replaced by a different one.
	changed chan struct{}
}

type patternEntry struct {
	pattern authz.Pattern
	entry   Entry
}

// load returns the current set, installing an empty one in a zero List.
func (l *List) load() *set {
	if s := l.cur.Load(); s != nil {
		return s
	}
	l.cur.CompareAndSwap(nil, newSet(nil))
	return l.cur.Load()
}

// ID returns the live entry that denies id at now: an exact spiffe_id entry
// first, then the first pattern in Key order that matches.
func (l *List) ID(id spiffeid.ID, now time.Time) (Entry, bool) {
	s := l.load()
	if e, ok := s.ids[id]; ok && e.Live(now) {
		return e, true
	}
	for _, p := range s.patterns {
		if p.entry.Live(now) && p.pattern.Match(id) {
			return p.entry, true
		}
	}
	return Entry{}, false
}

// Serial returns the live entry that denies the certificate serial number
// n at now. A nil n matches nothing.
func (l *List) Serial(n *big.Int, now time.Time) (Entry, bool) {
	s := l.load()
	if n == nil || len(s.serials) == 0 {
		return Entry{}, false
	}
	if e, ok := s.serials[n.Text(16)]; ok && e.Live(now) {
		return e, true
	}
	return Entry{}, false
}

// JTI returns the live entry that denies the token whose jti claim is jti
// at now.
func (l *List) JTI(jti string, now time.Time) (Entry, bool) {
	if e, ok := l.load().jtis[jti]; ok && e.Live(now) {
		return e, true
	}
	return Entry{}, false
}

// Entries returns the set's entries in canonical form, sorted by Key,
// including those that have expired but were in the last Replace.
func (l *List) Entries() []Entry {
	return slices.Clone(l.load().entries)
}

// Len is the number of entries in the set.
func (l *List) Len() int { return len(l.load().entries) }

// Changed returns a channel that is closed when the set next changes.
// Take it before reading the list, then wait on it: a change made after
// Changed returned is never missed, whoever else waits. An entry that
// expires is not a change (it only stops denying).
func (l *List) Changed() <-chan struct{} { return l.load().changed }

// Replace makes entries the set. Entries with the same Key are one: the
// one with the latest expiry (none is latest) is kept. When any entry is
// not valid, the set is left as it was and the error names each bad one.
// Replace reports whether the set changed; when it did, the channel
// Changed returned before is closed. It never blocks on the readers.
func (l *List) Replace(entries []Entry) (changed bool, err error) {
	canon := make([]Entry, 0, len(entries))
	var errs []error
	for i, e := range entries {
		c, err := e.Canonical()
		if err != nil {
			errs = append(errs, fmt.Errorf("entry %d: %w", i, err))
			continue
		}
		canon = append(canon, c)
	}
	if len(errs) > 0 {
		return false, errors.Join(errs...)
	}
	next := newSet(canon)
	for {
		cur := l.load()
		if slices.EqualFunc(cur.entries, next.entries, equal) {
			return false, nil
		}
		if l.cur.CompareAndSwap(cur, next) {
			close(cur.changed)
			return true, nil
		}
	}
}

// newSet builds a set from canonical entries.
func newSet(entries []Entry) *set {
	byKey := make(map[string]Entry, len(entries))
	for _, e := range entries {
		k := e.Key()
		if prev, ok := byKey[k]; ok && !later(e.Expires, prev.Expires) {
			continue
		}
		byKey[k] = e
	}
	s := &set{
		ids:     map[spiffeid.ID]Entry{},
		serials: map[string]Entry{},
		jtis:    map[string]Entry{},
		changed: make(chan struct{}),
	}
	for _, e := range byKey {
		s.entries = append(s.entries, e)
	}
	slices.SortFunc(s.entries, func(a, b Entry) int { return cmp.Compare(a.Key(), b.Key()) })
	for _, e := range s.entries {
		switch e.Kind {
		case SPIFFEID:
			if pol, err := authz.ParsePolicy([]string{e.Value}); err == nil {
				if id, ok := pol.ExactID(); ok {
					s.ids[id] = e
					continue
				}
			}
			p, _ := authz.ParsePattern(e.Value) // canonical: parses
			s.patterns = append(s.patterns, patternEntry{pattern: p, entry: e})
		case Serial:
			s.serials[e.Value] = e
		case JTI:
			s.jtis[e.Value] = e
		}
	}
	return s
}

// later reports whether expiry a is later than b, zero being never.
func later(a, b time.Time) bool {
	switch {
	case b.IsZero():
		return false
	case a.IsZero():
		return true
	default:
		return a.After(b)
	}
}

// equal reports whether a and b are the same entry, times compared as
// instants.
func equal(a, b Entry) bool {
	return a.Kind == b.Kind && a.Value == b.Value && a.Reason == b.Reason &&
		a.Expires.Equal(b.Expires) && a.Added.Equal(b.Added)
}
