package proxy

import "testing"

func TestBudgetFor(t *testing.T) {
	for _, c := range []struct{ limit, want int }{
		{64, 1},       // nothing left after the reserve: still one
		{256, 96},     // (256-64)/2
		{20000, 9375}, // (20000-1250)/2
		{1 << 20, 491520},
	} {
		if got := budgetFor(c.limit); got != c.want {
			t.Errorf("budgetFor(%d) = %d, want %d", c.limit, got, c.want)
		}
	}
}
