package agent

import (
	"math/rand/v2"
	"time"

	"github.com/spiffe/go-spiffe/v2/workloadapi"
)

// backoffStrategy is an exponential backoff with a cap and a little jitter,
// so that watches never retry in a tight loop and many sidecars on one node
// do not retry in step. Each watch gets its own Backoff.
type backoffStrategy struct {
	initial, max time.Duration
}

var _ workloadapi.BackoffStrategy = backoffStrategy{}

func (s backoffStrategy) NewBackoff() workloadapi.Backoff {
	return &backoff{initial: s.initial, max: s.max, next: s.initial}
}

type backoff struct {
	initial, max, next time.Duration
}

// Next returns the current delay plus up to 10% jitter, then doubles the
// delay up to max.
func (b *backoff) Next() time.Duration {
	d := b.next
	b.next = min(2*b.next, b.max)
	return d + rand.N(d/10+1)
}

func (b *backoff) Reset() { b.next = b.initial }
