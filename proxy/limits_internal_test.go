package proxy

import "testing"

func TestBudgetFor(t *testing.T) {
	for _, c := range []struct{ limit, extra, want int }{
		{64, 0, 1},       // nothing left after the reserve: still one
		{256, 0, 96},     // (256-64)/2
		{256, 64, 64},    // (256-64-64)/2
		{256, 512, 1},    // HTTP listeners' sockets take it all: still one
		{20000, 0, 9375}, // (20000-1250)/2
		{1 << 20, 0, 491520},
	} {
		if got := budgetFor(c.limit, c.extra); got != c.want {
			t.Errorf("budgetFor(%d, %d) = %d, want %d", c.limit, c.extra, got, c.want)
		}
	}
}
