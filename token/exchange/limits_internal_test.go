package exchange

import (
	"fmt"
	"testing"
	"time"
)

// TestIssuanceLimitsPerCaller: one caller spending its bucket of new
// audiences and its audience cap leaves another's untouched; expired
// tokens free the cap; a failed fetch gives the audience back.
func TestIssuanceLimitsPerCaller(t *testing.T) {
	s := newIssuance(Config{NewAudienceRate: 1, NewAudienceBurst: 2, MaxAudiences: 3})
	now := time.Unix(1_000_000, 0)
	admit := func(uid uint32, aud string, cached bool) bool {
		_, ok := s.admit(uid, aud, cached, now)
		if ok && !cached {
			s.issued(uid, aud, now.Add(time.Minute))
		}
		return ok
	}
	if !admit(1, "a", false) || !admit(1, "b", false) {
		t.Fatal("the burst was refused")
	}
	if retry, ok := s.admit(1, "c", false, now); ok || retry != time.Second {
		t.Fatalf("past the burst: admitted %v, retry %v; want refused, 1s", ok, retry)
	}
	if !admit(1, "a", false) || !admit(1, "cached", true) {
		t.Fatal("an audience held, or cached, was refused past the burst")
	}
	if !admit(2, "c", false) || !admit(2, "d", false) {
		t.Fatal("another caller was refused")
	}
	now = now.Add(time.Second)
	if !admit(1, "c", false) {
		t.Fatal("refused a second later")
	}
	now = now.Add(time.Second)
	if retry, ok := s.admit(1, "d", false, now); ok || retry != time.Minute-2*time.Second {
		t.Fatalf("past the cap: admitted %v, retry %v; want refused until the first token expires (58s)", ok, retry)
	}
	now = now.Add(time.Minute)
	if !admit(1, "d", false) {
		t.Fatal("refused once the tokens expired")
	}
	now = now.Add(time.Second)
	if _, ok := s.admit(1, "e", false, now); !ok {
		t.Fatal("refused")
	}
	s.failed(1, "e")
	if got := len(s.callers[1].audiences); got != 1 {
		t.Errorf("%d audiences held after a failed fetch, want 1", got)
	}
}

// TestIssuanceForgetsIdleCallers: the per-caller state stays bounded.
func TestIssuanceForgetsIdleCallers(t *testing.T) {
	s := newIssuance(Config{})
	now := time.Unix(1_000_000, 0)
	for uid := range uint32(5 * maxIdleCallers) {
		s.admit(uid, "cached", true, now)
	}
	if len(s.callers) > maxIdleCallers {
		t.Fatalf("%d callers kept", len(s.callers))
	}
	for uid := range uint32(maxIdleCallers) {
		s.admit(uid, fmt.Sprint("aud-", uid), false, now)
	}
	s.admit(99999, "cached", true, now)
	if _, ok := s.callers[0]; !ok {
		t.Fatal("a caller holding an audience was forgotten")
	}
}
