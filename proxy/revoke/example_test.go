package revoke_test

import (
	"fmt"
	"math/big"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/credflow/credflow/proxy/revoke"
)

// A List is filled by a source (here by hand) and consulted on every
// handshake and request; Changed tells when open connections need a new
// look.
func ExampleList() {
	var l revoke.List
	changed := l.Changed()
	now := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	l.Replace([]revoke.Entry{
		{Kind: revoke.SPIFFEID, Value: "spiffe://example.org/ns/dev/*", Reason: "incident 42"},
		{Kind: revoke.Serial, Value: "3A:8F:01", Expires: now.Add(time.Hour)},
	})
	<-changed // closed by the Replace

	e, ok := l.ID(spiffeid.RequireFromString("spiffe://example.org/ns/dev/web"), now)
	fmt.Println(ok, e.Reason)
	_, ok = l.Serial(big.NewInt(0x3a8f01), now)
	fmt.Println(ok)
	_, ok = l.Serial(big.NewInt(0x3a8f01), now.Add(time.Hour))
	fmt.Println(ok)
	// Output:
	// true incident 42
	// true
	// false
}
