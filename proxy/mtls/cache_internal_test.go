package mtls

import (
	"crypto/x509"
	"fmt"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/credflow/credflow/internal/testca"
)

// TestVerifyCacheDropsExpired: the cache of verified chains does not keep
// chains that have expired once it holds more than a few; with short-lived
// SVIDs it would otherwise grow with every rotation (each entry holds the
// bundle it was verified against) until it is emptied at maxVerified.
func TestVerifyCacheDropsExpired(t *testing.T) {
	td := spiffeid.RequireTrustDomainFromString("example.org")
	ca := testca.New(t, td)
	bundles := x509bundle.NewSet(ca.Bundle())
	vc := newVerifyCache()
	now := time.Now()
	for i := range 3 * sweepVerified { // rotations: one short-lived certificate after another
		svid := ca.Issue(t, spiffeid.RequireFromPath(td, fmt.Sprintf("/w%d", i%5)),
			testca.WithValidity(now.Add(time.Duration(i)*time.Second-time.Minute), now.Add(time.Duration(i+10)*time.Second)))
		if _, err := vc.verify(svid.Certificates, bundles, x509.ExtKeyUsageClientAuth, now.Add(time.Duration(i)*time.Second)); err != nil {
			t.Fatal(err)
		}
	}
	if n := vc.len(); n > sweepVerified+10 {
		t.Fatalf("%d chains cached after %d rotations; at most %d are unexpired", n, 3*sweepVerified, 10)
	}
}
