package proxy

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/credflow/credflow/internal/logkey"
	"github.com/credflow/credflow/internal/peercred"
	"github.com/credflow/credflow/proxy/relay"
	"github.com/credflow/credflow/reason"
)

// callerOf returns the owner of the client socket of app, a connection an
// outbound listener accepted. server is the address the client connected
// to: its original destination for a captured connection; the zero value
// means app's local address.
func callerOf(app net.Conn, server netip.AddrPort) (peercred.Cred, error) {
	if c, ok := app.(*capturedConn); ok { // handed from a capture listener to an egress one
		app, server = c.Conn, c.dst
	}
	if !server.IsValid() {
		return peercred.Of(app)
	}
	client, ok := app.RemoteAddr().(*net.TCPAddr)
	if !ok {
		return peercred.Cred{}, peercred.ErrUnsupported
	}
	return peercred.TCPOwner(client.AddrPort(), server)
}

// checkCaller decides whether the caller cred (err: not known) may use l
// under callers. It returns the refusal reason, or "".
func checkCaller(callers *peercred.Callers, cred peercred.Cred, err error) reason.Reason {
	switch {
	case callers.Any():
		return ""
	case err != nil:
		return reason.CallerUnknown
	case !callers.Allows(cred):
		return reason.CallerNotAllowed
	}
	return ""
}

// refuseCaller closes a TCP or captured connection whose caller l does not
// allow, at accept, and reports whether it did. server is as for callerOf.
func (p *Proxy) refuseCaller(l *listener, app net.Conn, server netip.AddrPort, start time.Time) bool {
	callers := l.callers.Load()
	if callers.Any() {
		return false
	}
	cred, err := callerOf(app, server)
	why := checkCaller(callers, cred, err)
	if why == "" {
		return false
	}
	app.Close()
	p.m.refused(l.dir, why, false)
	p.access(l, start, spiffeid.ID{}, nil, "deny", why, relay.Result{}, "tcp", callerAttrs(cred, err)...)
	p.logCallerRefused(l, why, cred, err)
	return true
}

// callerAttrs are the access-log attributes naming a caller: its uid, when
// known.
func callerAttrs(cred peercred.Cred, err error) []slog.Attr {
	if err != nil {
		return nil
	}
	return []slog.Attr{slog.Uint64(logkey.UID, uint64(cred.UID))}
}

func (p *Proxy) logCallerRefused(l *listener, why reason.Reason, cred peercred.Cred, err error) {
	attrs := []any{slog.String(logkey.Listener, l.name), slog.String(logkey.Reason, string(why))}
	if err != nil {
		attrs = append(attrs, slog.String(logkey.Error, err.Error()))
	} else {
		attrs = append(attrs, slog.Uint64(logkey.UID, uint64(cred.UID)))
	}
	p.log.Debug("proxy: local caller refused", attrs...)
}

// connCaller is the owner of the app's socket of one HTTP outbound
// connection, looked up once: when the connection is accepted if the
// listener lists callers then, else at the first request that needs it
// (callers set by a reload).
type connCaller struct {
	once sync.Once
	nc   net.Conn
	cred peercred.Cred
	err  error
}

func (c *connCaller) get() (peercred.Cred, error) {
	c.once.Do(func() {
		if c.nc == nil {
			c.err = errors.New("proxy: no connection")
			return
		}
		c.cred, c.err = callerOf(c.nc, netip.AddrPort{})
		if c.err != nil {
			c.err = fmt.Errorf("proxy: caller of %v: %w", c.nc.RemoteAddr(), c.err)
		}
	})
	return c.cred, c.err
}
