package bench

import "testing"

// TestLimiterHeap: the memory figure's Limiter keeps at most its cap of
// identities, and holds less than one without a cap below their number.
func TestLimiterHeap(t *testing.T) {
	tracked, capped := limiterHeap(20000, 1000)
	all, uncapped := limiterHeap(20000, 20001)
	if tracked != 1000 || all != 20000 {
		t.Errorf("tracked %d with a cap of 1000, %d without, want 1000 and 20000", tracked, all)
	}
	if capped >= uncapped {
		t.Errorf("heap %d bytes with the cap, %d without", capped, uncapped)
	}
}
