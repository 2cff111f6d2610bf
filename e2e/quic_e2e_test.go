package e2e_test

import (
	"bytes"
	"crypto/rand"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestE2EQUIC: two sidecars on real SPIRE carry app connections over QUIC:
// payloads from 1 B to 10 MiB intact, 100 concurrent app connections on one
// QUIC connection, the hybrid group negotiated, and an intruder refused.
func TestE2EQUIC(t *testing.T) {
	m := startMeshWith(t, 0, true, "")
	ctx := t.Context()
	for _, size := range []int{1, 64 << 10, 10 << 20} {
		payload := make([]byte, size)
		rand.Read(payload)
		got, err := roundTrip(m.frontAddr, payload)
		if err != nil || !bytes.Equal(got, payload) {
			t.Fatalf("%d bytes: %d came back, %v", size, len(got), err)
		}
	}
	var wg sync.WaitGroup
	for i := range 100 {
		wg.Go(func() {
			msg := []byte(fmt.Sprintf("concurrent %d", i))
			if got, err := roundTrip(m.frontAddr, msg); err != nil || !bytes.Equal(got, msg) {
				t.Errorf("connection %d: %q, %v", i, got, err)
			}
		})
	}
	wg.Wait()
	metric := func(sc string, name string, labels ...string) float64 {
		s := m.backend
		if sc == "frontend" {
			s = m.frontend
		}
		v, err := s.Metric(ctx, name, labels...)
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	if n := metric("frontend", "credflow_quic_connections_total"); n != 1 {
		t.Errorf("frontend QUIC handshakes = %v for 103 app connections, want 1", n)
	}
	if n := metric("backend", "credflow_quic_streams_total"); n != 103 {
		t.Errorf("backend QUIC streams = %v, want 103", n)
	}
	if n := metric("frontend", "credflow_quic_fallbacks_total"); n != 0 {
		t.Errorf("%v fallbacks to TCP", n)
	}
	if n := metric("backend", "credflow_tls_connections_total", "group=X25519MLKEM768"); n != 103 {
		t.Errorf("backend connections with X25519MLKEM768 = %v, want 103", n)
	}
	if lines := m.backend.LogLines(`"transport":"quic"`); len(lines) != 103 {
		t.Errorf("%d access-log lines say transport quic, want 103", len(lines))
	}
	if got, _ := roundTrip(m.intruderAddr, []byte("let me in")); len(got) != 0 {
		t.Fatalf("the intruder got %q", got)
	}
	deadline := time.Now().Add(5 * time.Second)
	for metric("backend", "credflow_refusals_total", "reason=unauthorized") < 1 {
		if time.Now().After(deadline) {
			t.Fatal("the intruder's refusal was not counted")
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestE2EQUICRotation: SVIDs of ~10 s, a steady client over QUIC across at
// least three rotations, no failed app connection; the QUIC connection is
// replaced before its certificates expire.
func TestE2EQUICRotation(t *testing.T) {
	m := startMeshWith(t, 10*time.Second, true, "")
	ctx := t.Context()
	trafficAcrossRotations(t, m, 3)
	conns, _ := m.frontend.Metric(ctx, "credflow_quic_connections_total")
	fallbacks, _ := m.frontend.Metric(ctx, "credflow_quic_fallbacks_total")
	t.Logf("%v QUIC connections, %v fallbacks", conns, fallbacks)
	if conns < 2 {
		t.Errorf("the QUIC connection was never replaced (%v connections)", conns)
	}
	if fallbacks != 0 {
		t.Errorf("%v app connections fell back to TCP", fallbacks)
	}
}

// TestE2EQUICFallback: the frontend's QUIC upstream is a UDP port nobody
// listens on; app traffic falls back to TCP within the configured 1s QUIC
// handshake timeout, and the metric shows it.
func TestE2EQUICFallback(t *testing.T) {
	dead, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := dead.LocalAddr().String()
	dead.Close()
	m := startMeshWith(t, 0, true, fmt.Sprintf("    quic_upstream: %q\n", addr))
	// The frontend's handshake timeout comes from its quic section.
	start := time.Now()
	got, err := roundTrip(m.frontAddr, []byte("hello"))
	if err != nil || string(got) != "hello" {
		t.Fatalf("fallback: %q, %v", got, err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("fallback took %s with a 1s QUIC handshake timeout", d)
	}
	if n, _ := m.frontend.Metric(t.Context(), "credflow_quic_fallbacks_total", "reason=timeout"); n != 1 {
		t.Fatalf("fallbacks{timeout} = %v, want 1", n)
	}
	if lines := m.backend.LogLines(`"transport":"tcp"`); len(lines) != 1 || !strings.Contains(lines[0], `"decision":"allow"`) {
		t.Fatalf("backend access log:\n%s", strings.Join(lines, "\n"))
	}
}
