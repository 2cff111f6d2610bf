package anomaly

import (
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/credflow/credflow/reason"
)

// BenchmarkObserve is the cost of one observation on the steady path: no
// detector, or all four on with subjects calling at a steady rate,
// allowed or refused (then one event per subject and cooldown).
func BenchmarkObserve(b *testing.B) {
	all := Config{
		RefusalBurst:  Burst{Count: 10},
		TokenFailures: Burst{Count: 10},
		RateSpike:     Spike{Factor: 10},
		NewCaller:     Novelty{Routes: []string{"orders", "admin"}, LearnFor: time.Second},
	}
	for _, tc := range []struct {
		rules    string
		cfg      Config
		subjects int
		why      reason.Reason
	}{
		{"none", Config{}, 1, ""},
		{"all", all, 1, ""},
		{"all", all, 1000, ""},
		{"all", all, 1000, reason.Unauthorized},
		{"all", all, 1000, reason.BadToken},
	} {
		why := tc.why
		if why == "" {
			why = "allowed"
		}
		b.Run(fmt.Sprintf("rules=%s/subjects=%d/reason=%s", tc.rules, tc.subjects, why), func(b *testing.B) {
			d, err := New(tc.cfg, Options{})
			if err != nil {
				b.Fatal(err)
			}
			subjects := make([]Subject, tc.subjects)
			for i := range subjects {
				subjects[i] = Source(netip.AddrFrom4([4]byte{10, 0, byte(i >> 8), byte(i)}))
			}
			o := Observation{Route: "orders", Reason: tc.why, Time: t0}
			i := 0
			b.ReportAllocs()
			for b.Loop() {
				o.Subject = subjects[i%len(subjects)]
				o.Time = o.Time.Add(time.Millisecond) // 1000/s in all
				d.Observe(o)
				i++
			}
		})
	}
}

// BenchmarkQuarantined is the check the proxy makes before admitting
// anyone.
func BenchmarkQuarantined(b *testing.B) {
	for _, n := range []int{0, 1000} {
		b.Run(fmt.Sprintf("entries=%d", n), func(b *testing.B) {
			q := NewQuarantine(QuarantineConfig{})
			for i := range n {
				q.Add(Source(netip.AddrFrom4([4]byte{10, 0, byte(i >> 8), byte(i)})), t0.Add(time.Hour), RefusalBurst)
			}
			b.ReportAllocs()
			for b.Loop() {
				q.Quarantined(alice, t0)
			}
		})
	}
}
