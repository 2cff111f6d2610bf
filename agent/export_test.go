package agent

import "time"

// SetClock makes c read the time from now when it checks a kept token.
func (c *JWTValidationCache) SetClock(now func() time.Time) { c.now = now }

// Verified is how many times c validated a token in full, verifying its
// signature.
func (c *JWTValidationCache) Verified() int64 { return c.verified.Load() }

// Len is how many tokens c keeps.
func (c *JWTValidationCache) Len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.entries)
}
