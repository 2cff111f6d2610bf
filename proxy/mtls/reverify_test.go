package mtls_test

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/credflow/credflow/internal/testca"
	"github.com/credflow/credflow/proxy/mtls"
	"github.com/credflow/credflow/reason"
)

// TestReverify: a chain is checked again against the current bundle, with
// its expiry left out: an expired chain whose authority is still trusted
// passes, one whose authority left the bundle is untrusted, expired or
// not.
func TestReverify(t *testing.T) {
	kept, dropped := testca.New(t, td), testca.New(t, td)
	id := spiffeid.RequireFromPath(td, "/frontend")
	now := time.Now()
	// Expired within its authority's lifetime (the CAs started an hour ago),
	// as a real SVID does.
	expired := testca.WithValidity(now.Add(-30*time.Minute), now.Add(-time.Second))
	bundles := x509bundle.NewSet(kept.Bundle())
	tests := []struct {
		name  string
		chain []*x509.Certificate
		why   reason.Reason
	}{
		{"trusted", kept.Issue(t, id).Certificates, ""},
		{"trusted, expired", kept.Issue(t, id, expired).Certificates, ""},
		{"trusted, intermediate", kept.Issue(t, id, testca.WithIntermediate()).Certificates, ""},
		{"authority dropped", dropped.Issue(t, id).Certificates, reason.Untrusted},
		{"authority dropped, expired", dropped.Issue(t, id, expired).Certificates, reason.Untrusted},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := mtls.Reverify(tt.chain, bundles, x509.ExtKeyUsageClientAuth, now)
			if r := reason.Of(err); r != tt.why {
				t.Fatalf("reason %q, want %q (%v)", r, tt.why, err)
			}
			if err == nil && got != id {
				t.Fatalf("ID %s, want %s", got, id)
			}
		})
	}
	// Verify, for handshakes, still refuses the expired chain.
	if _, err := mtls.Verify(kept.Issue(t, id, expired).Certificates, bundles, x509.ExtKeyUsageClientAuth, now); reason.Of(err) != reason.Expired {
		t.Fatalf("Verify of an expired chain: %v", err)
	}
}

// TestRefusalAlert: each refusal names its TLS alert, found with errors.As
// through the wrapping crypto/tls adds, and an unverified ID is only
// claimed.
func TestRefusalAlert(t *testing.T) {
	ca, other := testca.New(t, td), testca.New(t, td)
	id := spiffeid.RequireFromPath(td, "/frontend")
	_, err := mtls.Verify(other.Issue(t, id).Certificates, x509bundle.NewSet(ca.Bundle()), x509.ExtKeyUsageClientAuth, time.Now())
	var r *mtls.Refusal
	if !errors.As(err, &r) || !r.Peer.IsZero() || r.Claimed != id {
		t.Fatalf("an unverified chain: refusal %+v, want only Claimed set", r)
	}
	for why, want := range map[reason.Reason]tls.AlertError{
		reason.Unauthorized: 49,
		reason.Untrusted:    48,
		reason.Expired:      45,
		reason.PQRequired:   71,
		reason.NoPeerCert:   116,
		reason.InvalidSVID:  42,
	} {
		// crypto/tls wraps the callback's error next to the alert it sent.
		wrapped := errors.Join(&mtls.Refusal{Reason: why}, tls.AlertError(42))
		var got tls.AlertError
		if !errors.As(wrapped, &got) || got != want {
			t.Errorf("%s: alert %d, want %d", why, got, want)
		}
	}
}
