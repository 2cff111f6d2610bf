package relay

import (
	"crypto/tls"
	"net"
	"sync"
)

// Batching wraps the connection under a TLS connection so that the records
// of one relayed write leave in one write(2) rather than one per record.
// crypto/tls writes each record to its connection as soon as it is sealed,
// so a 64 KiB write from the copy path costs four system calls, and on these
// machines the system call, not the cipher, is the larger cost. Copy holds
// the records of each write to a *tls.Conn built on a Batching connection
// and sends them together; everything else (the handshake, alerts, HTTP
// mode) writes through at once.
//
// The batch buffer is pooled and held only while a write is in progress, so
// an idle connection keeps none.
func Batching(c net.Conn) net.Conn {
	return &batchConn{Conn: c}
}

type batchConn struct {
	net.Conn

	mu   sync.Mutex
	hold bool
	buf  *[]byte // pooled; nil when nothing is held
}

var batchPool = sync.Pool{New: func() any { b := make([]byte, 0, 2*(largeSize+256)); return &b }}

func (c *batchConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	if c.hold {
		if c.buf == nil {
			c.buf = batchPool.Get().(*[]byte)
		}
		*c.buf = append(*c.buf, p...)
		c.mu.Unlock()
		return len(p), nil
	}
	c.mu.Unlock()
	return c.Conn.Write(p)
}

// start holds the writes that follow until flush.
func (c *batchConn) start() {
	c.mu.Lock()
	c.hold = true
	c.mu.Unlock()
}

// flush sends what was held in one write and stops holding.
func (c *batchConn) flush() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.hold = false
	if c.buf == nil {
		return nil
	}
	_, err := c.Conn.Write(*c.buf)
	*c.buf = (*c.buf)[:0]
	if cap(*c.buf) <= 4*(largeSize+256) {
		batchPool.Put(c.buf)
	}
	c.buf = nil
	return err
}

// CloseWrite half-closes the underlying connection, for the FIN that
// follows close_notify; it does nothing on one that cannot.
func (c *batchConn) CloseWrite() error {
	if cw, ok := c.Conn.(closeWriter); ok {
		return cw.CloseWrite()
	}
	return nil
}

// NetConn returns the connection underneath, for Copy to find the TCP
// connection of a relay it may park.
func (c *batchConn) NetConn() net.Conn { return c.Conn }

// batchOf returns the Batching connection under c, if any.
func batchOf(c net.Conn) *batchConn {
	if tc, ok := c.(*tls.Conn); ok {
		b, _ := tc.NetConn().(*batchConn)
		return b
	}
	return nil
}
