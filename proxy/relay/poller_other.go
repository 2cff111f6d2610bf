//go:build !linux

package relay

// poller is absent outside Linux: relays there do not park.
type poller struct{}

func thePoller() *poller { return nil }

func (p *poller) park(d *direction) bool { return false }
func (p *poller) wake(d *direction)      {}
func (p *poller) end(d *direction) bool  { return false }
func (p *poller) parked() int            { return 0 }
