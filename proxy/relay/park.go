package relay

import (
	"errors"
	"net"
	"os"
	"sync"
	"time"
)

// Parking: an idle relay holds no goroutine and no buffer.
//
// A relay moves bytes with one goroutine per direction, each blocked in a
// Read while nothing arrives. For a connection that stays open and quiet
// (a pooled keep-alive connection, a database session), those two blocked
// goroutines are most of what it costs: their stacks, grown by TLS, are
// 8 KiB each, and each holds its read buffer. So once no byte has moved in
// either direction for Options.ParkAfter, the relay parks: it interrupts
// both reads with a read deadline in the past, each direction hands its
// source's descriptor to the process's poller (one epoll instance and one
// goroutine for all relays) and its goroutine ends, dropping its buffer.
// When the source becomes readable (data, EOF or an error), the poller
// starts a new goroutine that carries on where the old one stopped. After
// a wave of parks the process returns the freed memory to the system
// (release.go).
//
// Three properties make this safe:
//   - A read deadline is not fatal to a *tls.Conn (crypto/tls keeps a
//     partial record and the connection state across a timed-out read), and
//     a timed-out read consumed nothing the relay has not written: every
//     complete record already received was decrypted and relayed before
//     crypto/tls went back to the socket. So the socket becoming readable is
//     exactly the condition to resume on.
//   - A direction parks, is woken and is ended by a close under the
//     poller's lock, and park requests, parking and the read deadlines
//     change under the session's park lock, so a wake-up, a close, a
//     half-close and a park request cannot interleave badly. (A running
//     direction that ends by itself does so on its own goroutine.)
//   - A parked direction has no read to fail when its connection is
//     closed, so the relay never closes a connection without first taking
//     its reader out of the poller and ending it (session.closeConn).
//     Connections closed from outside the relay are not seen by a parked
//     direction: use Relay.Close, or cancel the relay's context, instead.
//
// Parking stops for good once a direction has ended (a half-close): the
// other direction's half-close bound is a read deadline, which only a
// running reader can observe.

// DefaultParkAfter is the quiet period after which a relay parks when
// Options.ParkAfter is zero. Waking costs the first exchange after a park
// about 45 µs per direction here (BenchmarkRoundTripAfterIdle), so the
// period is long enough that a connection used every second or two never
// parks, and short enough that a pool of idle connections soon costs only
// its TLS state.
const DefaultParkAfter = 5 * time.Second

// Direction states.
const (
	running int32 = iota // a goroutine copies, or is about to
	parked               // no goroutine: the source waits in the poller
	ended                // finished; counted off session.live
)

// parking is the park state of one session. It exists only for sessions
// that can park: both connections are TCP underneath, the buffered path
// carries them and this platform has a poller.
type parking struct {
	s     *session
	after time.Duration
	p     *poller

	mu      sync.Mutex
	t       *time.Timer
	armed   bool // t is armed and counted in s.wg
	stopped bool // Copy is ending: never arm again
	over    bool // a direction has ended: no more parking
	seen    int64
	since   time.Time // when seen last changed
}

// newParking returns the park state of s, or nil when s cannot park.
func newParking(s *session, ab, ba *direction, after time.Duration) *parking {
	if after <= 0 || s.spliced {
		return nil
	}
	p := thePoller()
	if p == nil {
		return nil
	}
	for _, d := range []*direction{ab, ba} {
		if d.tcp = tcpOf(s.conns[d.src]); d.tcp == nil {
			return nil
		}
	}
	return &parking{s: s, after: after, p: p}
}

// start arms the check timer as the relay starts.
func (k *parking) start() {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.since = time.Now()
	k.armed = true
	k.s.wg.Add(1)
	k.t = time.AfterFunc(k.tick(), k.check)
}

// tick is how often an active relay is checked: it parks between after
// and 1.5×after past its last byte.
func (k *parking) tick() time.Duration { return max(k.after/2, time.Millisecond) }

// arm (re)starts the check timer if it is not armed. k.mu is held.
func (k *parking) arm() {
	if k.armed || k.stopped || k.over {
		return
	}
	k.armed = true
	k.s.wg.Add(1)
	k.t.Reset(k.tick())
}

// check runs in the timer's goroutine: it asks the running directions to
// park when the relay has been quiet for k.after, and keeps checking while
// any direction still runs.
func (k *parking) check() {
	defer k.s.wg.Done()
	k.mu.Lock()
	defer k.mu.Unlock()
	k.armed = false
	if k.stopped || k.over {
		return
	}
	now := time.Now()
	if n := k.s.moved[0].Load() + k.s.moved[1].Load(); n != k.seen {
		k.seen, k.since = n, now
		k.arm()
		return
	}
	if now.Sub(k.since) < k.after {
		k.arm()
		return
	}
	asked := false
	for _, d := range k.s.dirs {
		if d.state.Load() == running {
			d.parkReq = true
			// A deadline in the past interrupts a blocked read at once; an
			// error shows up on the read.
			k.s.conns[d.src].SetReadDeadline(time.Unix(1, 0))
			asked = true
		}
	}
	if asked {
		k.arm() // to ask again if a direction read data instead
	}
}

// afterDeadline decides what a read that failed with a deadline means for
// direction d: park (the goroutine must leave at once: the poller may
// already have started its successor), read again (a park request that
// came too late), or a real deadline (the half-close bound).
func (k *parking) afterDeadline(d *direction) (parkedNow, again bool) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if !d.parkReq {
		return false, false
	}
	d.parkReq = false
	if k.over {
		// The half-close bound replaced the park deadline after the read
		// had already failed on the latter; the bound stands on the next
		// read.
		return false, true
	}
	if k.p.park(d) {
		return true, false
	}
	// The source is closed: the read after this one reports it.
	k.s.conns[d.src].SetReadDeadline(time.Time{})
	return false, true
}

// resume runs on the goroutine the poller starts for a woken direction:
// it lifts the park deadline (or restores the half-close bound) and
// copies again.
func (k *parking) resume(d *direction) {
	k.mu.Lock()
	k.s.conns[d.src].SetReadDeadline(d.deadline)
	k.arm()
	k.mu.Unlock()
	d.loop()
}

// halfClosed stops parking for good once a direction has ended, and sets
// the read deadline of d's source, the other direction's, to the
// half-close bound t (zero for none). Only a running reader observes the
// bound, so a parked d is woken; a wake-up restores t.
func (k *parking) halfClosed(d *direction, t time.Time) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.over = true
	d.deadline = t
	k.s.conns[d.src].SetReadDeadline(t) // an error shows up on the read
	k.p.wake(d)
}

// stop disarms the timer for good; a check already running is waited for
// through the session's WaitGroup.
func (k *parking) stop() {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.stopped = true
	if k.armed && k.t.Stop() {
		k.armed = false
		k.s.wg.Done()
	}
}

// tcpOf returns the TCP connection under c (through *tls.Conn and any
// wrapper with a NetConn method), or nil.
func tcpOf(c net.Conn) *net.TCPConn {
	for range 8 {
		switch x := c.(type) {
		case *net.TCPConn:
			return x
		case interface{ NetConn() net.Conn }:
			c = x.NetConn()
		default:
			return nil
		}
	}
	return nil
}

// isDeadline reports whether err is a read deadline's.
func isDeadline(err error) bool { return errors.Is(err, os.ErrDeadlineExceeded) }

// Parked returns the number of relay directions parked in this process.
func Parked() int {
	p := thePoller()
	if p == nil {
		return 0
	}
	return p.parked()
}
