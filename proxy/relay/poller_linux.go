package relay

import (
	"sync"

	"golang.org/x/sys/unix"
)

// poller waits, for every parked direction in the process, until its
// source becomes readable, with one epoll instance and one goroutine. Each
// descriptor is registered one-shot and removed when it fires, so a
// descriptor is in the set exactly while its direction is parked.
type poller struct {
	epfd int

	mu      sync.Mutex
	waiting map[int32]*direction // by source descriptor
}

// thePoller is the process's poller, started on first use; nil if epoll is
// unavailable, in which case relays do not park.
var thePoller = sync.OnceValue(func() *poller {
	fd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil
	}
	p := &poller{epfd: fd, waiting: map[int32]*direction{}}
	go p.run()
	return p
})

func (p *poller) run() {
	events := make([]unix.EpollEvent, 128)
	for {
		n, err := unix.EpollWait(p.epfd, events, -1)
		if err != nil {
			continue // EINTR; the instance itself never fails once made
		}
		p.mu.Lock()
		for _, ev := range events[:n] {
			if d := p.waiting[ev.Fd]; d != nil {
				p.resumeLocked(d)
			}
			// else: a direction already woken or ended, and the
			// descriptor closed since; its number may now be another
			// parked direction's, which then wakes for nothing and
			// parks again later.
		}
		p.mu.Unlock()
	}
}

// park moves d from running to parked and registers its source, unless
// the relay has begun to close the source (session.closeConn marks it
// closed before it calls end, and both hold p.mu here, so one of them sees
// the other). It reports whether d is parked.
func (p *poller) park(d *direction) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if d.s.closed[d.src].Load() || !d.state.CompareAndSwap(running, parked) {
		return false
	}
	rc, err := d.tcp.SyscallConn()
	if err == nil {
		cerr := rc.Control(func(fd uintptr) {
			d.fd = int32(fd)
			ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLRDHUP | unix.EPOLLONESHOT, Fd: d.fd}
			err = unix.EpollCtl(p.epfd, unix.EPOLL_CTL_ADD, int(fd), &ev)
		})
		if err == nil {
			err = cerr
		}
	}
	if err != nil {
		d.state.Store(running)
		return false
	}
	p.waiting[d.fd] = d
	return true
}

// wake starts a new goroutine for d if it is parked.
func (p *poller) wake(d *direction) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.waiting[d.fd] == d {
		p.resumeLocked(d)
	}
}

// end ends d if it is parked, and reports whether it did: the relay is
// about to close d's source, which a parked direction would never notice.
func (p *poller) end(d *direction) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.waiting[d.fd] != d {
		return false
	}
	p.removeLocked(d)
	return d.state.CompareAndSwap(parked, ended)
}

func (p *poller) resumeLocked(d *direction) {
	p.removeLocked(d)
	if d.state.CompareAndSwap(parked, running) {
		go d.s.park.resume(d)
	}
}

// removeLocked takes d's source out of the set. Its descriptor is still
// open: the relay closes it only after end.
func (p *poller) removeLocked(d *direction) {
	delete(p.waiting, d.fd)
	unix.EpollCtl(p.epfd, unix.EPOLL_CTL_DEL, int(d.fd), nil) // once fired, one-shot leaves it disabled, not removed
}

func (p *poller) parked() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.waiting)
}
