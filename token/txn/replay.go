package txn

import (
	"container/heap"
	"crypto/sha256"
	"errors"
	"sync"
	"time"
)

var (
	errReplayed = errors.New("txn: token accepted before")
	errFull     = errors.New("txn: replay record full")
)

// replayCache records the tokens a SingleUse verifier accepted until they
// can no longer be accepted anyway (exp plus the leeway). Entries are
// hashes, so a long jti costs no more than a short one; it holds at most
// max of them.
type replayCache struct {
	mu    sync.Mutex
	max   int
	until map[[sha256.Size]byte]time.Time
	queue expiries // the same entries, soonest expiry first
}

func newReplayCache(max int) *replayCache {
	return &replayCache{max: max, until: map[[sha256.Size]byte]time.Time{}}
}

// add records the token iss/jti, valid until until, and returns nil; or
// errReplayed if it is recorded already, or errFull if the record holds max
// unexpired tokens.
func (c *replayCache) add(iss, jti string, until, now time.Time) error {
	h := sha256.New()
	h.Write([]byte(iss))
	h.Write([]byte{0})
	h.Write([]byte(jti))
	var key [sha256.Size]byte
	h.Sum(key[:0])

	c.mu.Lock()
	defer c.mu.Unlock()
	for len(c.queue) > 0 && !c.queue[0].until.After(now) {
		delete(c.until, heap.Pop(&c.queue).(expiry).key)
	}
	if _, ok := c.until[key]; ok {
		return errReplayed
	}
	if len(c.until) >= c.max {
		return errFull
	}
	c.until[key] = until
	heap.Push(&c.queue, expiry{key: key, until: until})
	return nil
}

type expiry struct {
	key   [sha256.Size]byte
	until time.Time
}

// expiries is a min-heap of expiries (container/heap).
type expiries []expiry

func (q expiries) Len() int           { return len(q) }
func (q expiries) Less(i, j int) bool { return q[i].until.Before(q[j].until) }
func (q expiries) Swap(i, j int)      { q[i], q[j] = q[j], q[i] }
func (q *expiries) Push(x any)        { *q = append(*q, x.(expiry)) }
func (q *expiries) Pop() any {
	old := *q
	x := old[len(old)-1]
	*q = old[:len(old)-1]
	return x
}
