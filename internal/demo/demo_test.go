package demo_test

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"github.com/credflow/credflow/internal/demo"
	"github.com/credflow/credflow/internal/testenv"
)

// TestDemo runs `make demo`'s program and checks that its output shows the
// allowed calls and the refused one, the external API called with
// injected credentials, before and after a key rotation, the limits,
// the intruder quarantined and the revocation closing a live connection.
func TestDemo(t *testing.T) {
	testenv.NeedsSPIRE(t)
	testenv.NeedsRoot(t, "the demo, which runs workloads as other uids,")
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	var out bytes.Buffer
	if err := demo.Run(ctx, &out); err != nil {
		t.Fatalf("demo: %v\n%s", err, out.String())
	}
	for _, want := range []string{
		`sent "hello backend #1"  got "hello backend #1"`,
		"refused: no reply, connection closed",
		"ALLOW spiffe://example.org/frontend",
		"DENY  spiffe://example.org/intruder    reason=unauthorized",
		// 1 from the TCP act, and the intruder's handshakes the quarantine refused.
		"credflow_refusals_total{direction=outbound,reason=peer_refused} ",
		"the API saw X-Api-Key key #1",
		"the next calls use key #2",
		"POST /v1/charges 200 upstream=",
		"injected=payments-token,payments-key",
		"credflow_credential_fetches_total{credential=payments-token} 1",
		"refused 429 rate_limited (with Retry-After) by the backend sidecar",
		"anomaly detector=token_failures subject=spiffe://example.org/intruder action=quarantine",
		"spiffe://example.org/intruder  ",
		"DENY  spiffe://example.org/intruder    reason=bad_token x7",
		"meanwhile the frontend's calls still answer 200",
		"its next forged token: 401 bad_token",
		"the backend sidecar closed the live connection",
		"credflow_anomalies_total{detector=token_failures,action=quarantine} 1",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("the demo's output lacks %q:\n%s", want, out.String())
		}
	}
}
