// Package labelcap bounds the number of distinct values a metric label
// takes: the first values seen are kept, later new ones become "other".
// Labels such as a peer's trust domain come from outside the process, and
// without a cap each new one would add a series for good.
package labelcap

import "sync"

// Other is the value that stands for every value past the cap.
const Other = "other"

// Set remembers the label values admitted so far. Its methods are safe for
// concurrent use.
type Set struct {
	mu   sync.Mutex
	max  int
	seen map[string]struct{}
}

// New returns a Set that admits up to max distinct values.
func New(max int) *Set {
	return &Set{max: max, seen: make(map[string]struct{})}
}

// Value returns v if it was admitted before or there is room for it, and
// Other otherwise.
func (s *Set) Value(v string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.seen[v]; ok {
		return v
	}
	if len(s.seen) >= s.max {
		return Other
	}
	s.seen[v] = struct{}{}
	return v
}
