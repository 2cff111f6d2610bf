package revoke_test

import (
	"errors"
	"fmt"
	"math/big"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/credflow/credflow/proxy/revoke"
)

// TestCanonical: values are brought to one form (so that one revocation
// has one Key whatever its spelling), and a bad entry's error names what
// is wrong with it.
func TestCanonical(t *testing.T) {
	for _, tc := range []struct {
		name    string
		in      revoke.Entry
		wantKey string
		wantErr string // a part of the error; "" for none
	}{
		{"id", revoke.Entry{Kind: revoke.SPIFFEID, Value: "spiffe://example.org/ns/a"}, "spiffe_id:spiffe://example.org/ns/a", ""},
		{"prefix", revoke.Entry{Kind: revoke.SPIFFEID, Value: "spiffe://example.org/ns/prod/*"}, "spiffe_id:spiffe://example.org/ns/prod/*", ""},
		{"trust domain", revoke.Entry{Kind: revoke.SPIFFEID, Value: "spiffe://example.org"}, "spiffe_id:spiffe://example.org", ""},
		{"serial openssl -serial", revoke.Entry{Kind: revoke.Serial, Value: "003A8F01"}, "serial:3a8f01", ""},
		{"serial openssl -text", revoke.Entry{Kind: revoke.Serial, Value: "00:3a:8f:01"}, "serial:3a8f01", ""},
		{"serial zero", revoke.Entry{Kind: revoke.Serial, Value: "00"}, "serial:0", ""},
		{"jti", revoke.Entry{Kind: revoke.JTI, Value: "Tok-1"}, "jti:Tok-1", ""},
		{"reason", revoke.Entry{Kind: revoke.JTI, Value: "t", Reason: "incident 42: key leaked"}, "jti:t", ""},

		{"no kind", revoke.Entry{Value: "x"}, "", "no kind"},
		{"unknown kind", revoke.Entry{Kind: "ip", Value: "x"}, "", `unknown kind "ip"`},
		{"empty value", revoke.Entry{Kind: revoke.JTI}, "", "empty value"},
		{"long value", revoke.Entry{Kind: revoke.JTI, Value: strings.Repeat("a", 1025)}, "", "longer than 1024"},
		{"star inside", revoke.Entry{Kind: revoke.SPIFFEID, Value: "spiffe://example.org/ns/a*"}, "", "only allowed as a final path segment"},
		{"upper-case trust domain", revoke.Entry{Kind: revoke.SPIFFEID, Value: "spiffe://Example.org/a"}, "", "trust domain characters"},
		{"not spiffe", revoke.Entry{Kind: revoke.SPIFFEID, Value: "https://example.org/a"}, "", "spiffe_id"},
		{"serial not hex", revoke.Entry{Kind: revoke.Serial, Value: "3A:8G"}, "", `'G' is not a hex digit`},
		{"serial colons only", revoke.Entry{Kind: revoke.Serial, Value: ":"}, "", "no hex digits"},
		{"serial negative", revoke.Entry{Kind: revoke.Serial, Value: "-1"}, "", `'-' is not a hex digit`},
		{"jti control", revoke.Entry{Kind: revoke.JTI, Value: "a\nb"}, "", "control character"},
		{"reason control", revoke.Entry{Kind: revoke.JTI, Value: "t", Reason: "a\x1b[31m"}, "", "reason holds a control character"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := tc.in.Canonical()
			if tc.wantErr != "" {
				if err == nil || !errors.Is(err, revoke.ErrInvalid) || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error %v, want one wrapping ErrInvalid with %q", err, tc.wantErr)
				}
				if tc.in.Validate() == nil {
					t.Fatal("Validate accepts what Canonical refuses")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got.Key() != tc.wantKey || tc.in.Key() != tc.wantKey {
				t.Errorf("keys %q (canonical) and %q (as given), want %q", got.Key(), tc.in.Key(), tc.wantKey)
			}
		})
	}
}

func id(s string) spiffeid.ID { return spiffeid.RequireFromString(s) }

func serial(s string) *big.Int {
	n, ok := new(big.Int).SetString(s, 16)
	if !ok {
		panic(s)
	}
	return n
}

// TestLookups: each kind matches what it names and nothing else: exact IDs
// and patterns at a '/' boundary and only in their trust domain, serials
// as numbers, jtis exactly.
func TestLookups(t *testing.T) {
	var l revoke.List
	now := time.Now()
	if _, ok := l.ID(id("spiffe://example.org/a"), now); ok {
		t.Fatal("the zero List denies")
	}
	if _, err := l.Replace([]revoke.Entry{
		{Kind: revoke.SPIFFEID, Value: "spiffe://example.org/ns/prod/sa/api", Reason: "exact"},
		{Kind: revoke.SPIFFEID, Value: "spiffe://example.org/ns/dev/*", Reason: "prefix"},
		{Kind: revoke.SPIFFEID, Value: "spiffe://evil.example", Reason: "domain"},
		{Kind: revoke.Serial, Value: "00:3A:8F:01"},
		{Kind: revoke.JTI, Value: "tok-1"},
	}); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		id     string
		reason string // "": not denied
	}{
		{"spiffe://example.org/ns/prod/sa/api", "exact"},
		{"spiffe://example.org/ns/prod/sa/api/x", ""},
		{"spiffe://example.org/ns/prod/sa", ""},
		{"spiffe://example.org/ns/dev/sa/web", "prefix"},
		{"spiffe://example.org/ns/dev", ""},
		{"spiffe://example.org/ns/development/sa/web", ""},
		{"spiffe://other.org/ns/dev/sa/web", ""},
		{"spiffe://evil.example/anything", "domain"},
		{"spiffe://sub.evil.example/anything", ""},
	} {
		e, ok := l.ID(id(tc.id), now)
		if ok != (tc.reason != "") || e.Reason != tc.reason {
			t.Errorf("ID(%s) = %q, %v; want %q", tc.id, e.Reason, ok, tc.reason)
		}
	}
	if _, ok := l.ID(spiffeid.ID{}, now); ok {
		t.Error("the zero ID is denied")
	}
	for s, want := range map[string]bool{"3a8f01": true, "003A8F01": true, "3a8f02": false, "3a8f0100": false} {
		if _, ok := l.Serial(serial(s), now); ok != want {
			t.Errorf("Serial(%s) = %v, want %v", s, ok, want)
		}
	}
	if _, ok := l.Serial(nil, now); ok {
		t.Error("a nil serial is denied")
	}
	for s, want := range map[string]bool{"tok-1": true, "TOK-1": false, "tok-": false, "tok-1 ": false} {
		if _, ok := l.JTI(s, now); ok != want {
			t.Errorf("JTI(%q) = %v, want %v", s, ok, want)
		}
	}
}

// TestExpiry: an entry denies until its expiry and not from then on, on
// the bubble's clock; an expired exact entry does not hide a live pattern;
// of two entries with one Key the later expiry wins.
func TestExpiry(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		start := time.Now()
		var l revoke.List
		if _, err := l.Replace([]revoke.Entry{
			{Kind: revoke.SPIFFEID, Value: "spiffe://example.org/a/b", Expires: start.Add(time.Hour)},
			{Kind: revoke.SPIFFEID, Value: "spiffe://example.org/a/*", Expires: start.Add(2 * time.Hour), Reason: "pattern"},
			{Kind: revoke.JTI, Value: "t", Expires: start.Add(time.Hour)},
			{Kind: revoke.JTI, Value: "t", Expires: start.Add(3 * time.Hour)},
			{Kind: revoke.JTI, Value: "t", Expires: start.Add(2 * time.Hour)},
			{Kind: revoke.Serial, Value: "01"}, // never expires
		}); err != nil {
			t.Fatal(err)
		}
		ab := id("spiffe://example.org/a/b")
		check := func(when string, wantID, wantJTI bool, wantReason string) {
			t.Helper()
			now := time.Now()
			e, ok := l.ID(ab, now)
			if ok != wantID || e.Reason != wantReason {
				t.Errorf("%s: ID = %q, %v; want %q, %v", when, e.Reason, ok, wantReason, wantID)
			}
			if _, ok := l.JTI("t", now); ok != wantJTI {
				t.Errorf("%s: JTI = %v, want %v", when, ok, wantJTI)
			}
			if _, ok := l.Serial(big.NewInt(1), now); !ok {
				t.Errorf("%s: the entry without expiry stopped denying", when)
			}
		}
		check("at the start", true, true, "")
		time.Sleep(time.Hour - time.Nanosecond)
		check("just before the first expiry", true, true, "")
		time.Sleep(time.Nanosecond)
		check("at the exact entry's expiry", true, true, "pattern")
		time.Sleep(time.Hour)
		check("at the pattern's expiry", false, true, "")
		time.Sleep(time.Hour)
		check("at the latest jti's expiry", false, false, "")
		if n := l.Len(); n != 4 {
			t.Errorf("%d entries, want 4 (one per Key)", n)
		}
	})
}

// TestChanged: every waiter is woken by a Replace that changes the set,
// none by one that changes nothing or fails, and Replace never waits for
// a waiter.
func TestChanged(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var l revoke.List
		one := []revoke.Entry{{Kind: revoke.JTI, Value: "a"}}
		woken := make(chan int, 3)
		for i := range 3 {
			ch := l.Changed()
			go func() {
				<-ch
				woken <- i
			}()
		}
		if changed, err := l.Replace(nil); changed || err != nil {
			t.Fatalf("Replace with the same empty set: changed %v, %v", changed, err)
		}
		if changed, err := l.Replace([]revoke.Entry{{Kind: revoke.JTI, Value: "a"}, {Kind: "bad", Value: "x"}}); changed || err == nil {
			t.Fatalf("Replace with a bad entry: changed %v, %v", changed, err)
		}
		synctest.Wait()
		if len(woken) != 0 {
			t.Fatal("a waiter was woken with no change")
		}
		if l.Len() != 0 {
			t.Fatal("a failed Replace changed the set")
		}

		before := l.Changed()
		if changed, err := l.Replace(one); !changed || err != nil {
			t.Fatalf("Replace with a new entry: changed %v, %v", changed, err)
		}
		synctest.Wait()
		if len(woken) != 3 {
			t.Fatalf("%d of 3 waiters woken", len(woken))
		}
		select {
		case <-before:
		default:
			t.Fatal("the channel taken before the change is not closed")
		}

		after := l.Changed()
		// The same entries again, as a periodic read brings them: no
		// change.
		same := []revoke.Entry{{Kind: revoke.JTI, Value: "a"}}
		if changed, _ := l.Replace(same); changed {
			t.Fatal("the same set counted as a change")
		}
		select {
		case <-after:
			t.Fatal("the channel was closed without a change")
		default:
		}
		if changed, _ := l.Replace([]revoke.Entry{{Kind: revoke.JTI, Value: "a", Reason: "why"}}); !changed {
			t.Fatal("a new reason is not a change")
		}
		<-after
	})
}

// TestEntries: Entries lists one canonical entry per Key, sorted by Key.
func TestEntries(t *testing.T) {
	var l revoke.List
	exp := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	if _, err := l.Replace([]revoke.Entry{
		{Kind: revoke.Serial, Value: "0A"},
		{Kind: revoke.SPIFFEID, Value: "spiffe://example.org/x", Expires: exp},
		{Kind: revoke.JTI, Value: "j"},
		{Kind: revoke.Serial, Value: "0a"},
	}); err != nil {
		t.Fatal(err)
	}
	want := []revoke.Entry{
		{Kind: revoke.JTI, Value: "j"},
		{Kind: revoke.Serial, Value: "a"},
		{Kind: revoke.SPIFFEID, Value: "spiffe://example.org/x", Expires: exp},
	}
	if d := cmp.Diff(want, l.Entries()); d != "" {
		t.Errorf("entries (-want +got):\n%s", d)
	}
}

// BenchmarkLookup: the per-handshake and per-request cost of a lookup that
// does not match, against a list with n entries of each kind (patterns in
// the same trust domain, so each is tried).
func BenchmarkLookup(b *testing.B) {
	for _, n := range []int{10, 1000} {
		var l revoke.List
		var entries []revoke.Entry
		for i := range n {
			entries = append(entries,
				revoke.Entry{Kind: revoke.SPIFFEID, Value: fmt.Sprintf("spiffe://example.org/ns/n%d/sa/api", i)},
				revoke.Entry{Kind: revoke.SPIFFEID, Value: fmt.Sprintf("spiffe://example.org/ns/p%d/*", i)},
				revoke.Entry{Kind: revoke.Serial, Value: fmt.Sprintf("%x", i+1)},
				revoke.Entry{Kind: revoke.JTI, Value: fmt.Sprintf("tok-%d", i)})
		}
		if _, err := l.Replace(entries); err != nil {
			b.Fatal(err)
		}
		now := time.Now()
		peer := id("spiffe://example.org/ns/prod/sa/web")
		serial := new(big.Int).Lsh(big.NewInt(1), 150)
		b.Run(fmt.Sprintf("kind=id/entries=%d", n), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, ok := l.ID(peer, now); ok {
					b.Fatal("denied")
				}
			}
		})
		b.Run(fmt.Sprintf("kind=serial/entries=%d", n), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, ok := l.Serial(serial, now); ok {
					b.Fatal("denied")
				}
			}
		})
		b.Run(fmt.Sprintf("kind=jti/entries=%d", n), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, ok := l.JTI("tok-x", now); ok {
					b.Fatal("denied")
				}
			}
		})
	}
}
