package mtls

import (
	"bytes"
	"crypto/tls"
	"encoding/binary"
	"sync"
)

// A resumed TLS 1.3 session carries the peer certificates of the full
// handshake it descends from, so VerifyConnection sees the peer's SVID of
// that time, not its current one. Once the SVIDs have moved to a new
// authority and the old one has left the bundle, such a connection is
// refused although both sides hold valid SVIDs. crypto/tls avoids this by
// re-verifying a session's chains before resuming it, which it cannot do
// here since this package verifies peers itself. Sessions are therefore
// tied to an epoch of the sources: every change they signal (a new SVID,
// a bundle update) starts a new one, the server declines tickets and the
// client drops cached sessions of earlier epochs, and the next connection
// makes a full handshake with the current SVIDs. A change during a
// handshake may still let one session of the old epoch through.

// changer is implemented by sources that signal their changes
// (agent.Source does).
type changer interface {
	// Changed returns a channel closed at the next change.
	Changed() <-chan struct{}
}

// epoch counts the changes signalled by the sources. Without sources that
// signal, it never changes and sessions resume as crypto/tls decides.
type epoch struct {
	srcs []changer

	mu  sync.Mutex
	chs []<-chan struct{}
	n   uint64
}

// epoch tracks those of c.SVIDs and c.Bundles that signal changes (one
// source in both counts each change twice, which does no harm).
func (c Config) epoch() *epoch {
	e := &epoch{}
	for _, s := range []any{c.SVIDs, c.Bundles} {
		if ch, ok := s.(changer); ok {
			e.srcs = append(e.srcs, ch)
			e.chs = append(e.chs, ch.Changed())
		}
	}
	return e
}

// current returns the epoch: the number of changes seen so far.
func (e *epoch) current() uint64 {
	e.mu.Lock()
	defer e.mu.Unlock()
	for i, src := range e.srcs {
		select {
		case <-e.chs[i]:
			e.n++
			e.chs[i] = src.Changed()
		default:
		}
	}
	return e.n
}

// epochExtra prefixes the epoch in a session's Extra data.
const epochExtra = "credflow/mtls epoch "

func stamp(n uint64) []byte { return binary.BigEndian.AppendUint64([]byte(epochExtra), n) }

// holds reports whether extra holds the current epoch's stamp.
func (e *epoch) holds(extra [][]byte) bool {
	want := stamp(e.current())
	for _, x := range extra {
		if bytes.Equal(x, want) {
			return true
		}
	}
	return false
}

// serverTickets stamps the session tickets conf issues with the epoch and
// declines tickets of an earlier one (a full handshake follows).
func (e *epoch) serverTickets(conf *tls.Config) {
	if len(e.srcs) == 0 {
		return
	}
	conf.WrapSession = func(cs tls.ConnectionState, ss *tls.SessionState) ([]byte, error) {
		ss.Extra = append(ss.Extra, stamp(e.current()))
		return conf.EncryptTicket(cs, ss)
	}
	conf.UnwrapSession = func(identity []byte, cs tls.ConnectionState) (*tls.SessionState, error) {
		ss, err := conf.DecryptTicket(identity, cs)
		if err != nil || ss == nil || !e.holds(ss.Extra) {
			return nil, nil
		}
		return ss, nil
	}
}

// clientCache wraps a client session cache so that sessions are stamped
// with the epoch when stored and dropped when fetched in a later one.
func (e *epoch) clientCache(inner tls.ClientSessionCache) tls.ClientSessionCache {
	if len(e.srcs) == 0 {
		return inner
	}
	return &epochSessions{inner: inner, e: e}
}

type epochSessions struct {
	inner tls.ClientSessionCache
	e     *epoch
}

func (s *epochSessions) Put(key string, cs *tls.ClientSessionState) {
	if cs != nil {
		ticket, state, err := cs.ResumptionState()
		if err != nil || state == nil {
			return
		}
		state.Extra = append(state.Extra, stamp(s.e.current()))
		if cs, err = tls.NewResumptionState(ticket, state); err != nil {
			return
		}
	}
	s.inner.Put(key, cs)
}

func (s *epochSessions) Get(key string) (*tls.ClientSessionState, bool) {
	cs, ok := s.inner.Get(key)
	if !ok || cs == nil {
		return cs, ok
	}
	if _, state, err := cs.ResumptionState(); err != nil || state == nil || !s.e.holds(state.Extra) {
		s.inner.Put(key, nil)
		return nil, false
	}
	return cs, true
}
