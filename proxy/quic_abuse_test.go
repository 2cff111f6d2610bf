package proxy_test

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"fmt"
	"net"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/credflow/credflow/internal/testca"
	"github.com/credflow/credflow/proxy/quicmux"
)

// settleGoroutines waits up to 10 s for the goroutine count to fall to at
// most limit, and returns it.
func settleGoroutines(limit int) int {
	deadline := time.Now().Add(10 * time.Second)
	for {
		n := runtime.NumGoroutine()
		if n <= limit || time.Now().After(deadline) {
			return n
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestQUICAbuse covers the part of L6 that can be sent from outside
// quic-go's state machine: while one peer relays over QUIC every 20 ms,
// (1) a flood of datagrams (garbage, and Initial packets with random
// connection IDs that fail decryption) and (2) QUIC handshakes presenting
// no certificate. The relaying peer must see no failure, the heap and
// goroutines must return near where they were, and each certificate-less
// handshake is refused. PATH_CHALLENGE and NEW_CONNECTION_ID floods need
// a QUIC stack that emits arbitrary frames; quic-go's public API does not,
// so those are covered by the version pin (TestQUICPinnedPastAdvisories).
// CREDFLOW_SOAK=1 multiplies the flood by ten.
func TestQUICAbuse(t *testing.T) {
	scale := 1
	if longForm() {
		scale = 10
	}
	ca := testca.New(t, td)
	qp := startQUICPair(t, ca, quicOpts{})
	if got := roundTrip(t, qp.outAddr, []byte("warm")); string(got) != "warm" {
		t.Fatalf("relay before the abuse: %q", got)
	}
	runtime.GC()
	baseGo, baseHeap := runtime.NumGoroutine(), heapInUse()

	// The legitimate peer, throughout.
	stop := make(chan struct{})
	done := make(chan [2]int)
	go func() {
		var ok, failed int
		for i := 0; ; i++ {
			select {
			case <-stop:
				done <- [2]int{ok, failed}
				return
			case <-time.After(20 * time.Millisecond):
			}
			msg := fmt.Sprintf("request %d", i)
			if got := roundTrip(t, qp.outAddr, []byte(msg)); string(got) != msg {
				failed++
			} else {
				ok++
			}
		}
	}()

	// (1) Datagram flood.
	udp, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer udp.Close()
	dst, _ := net.ResolveUDPAddr("udp", qp.inQUIC)
	pkt := make([]byte, 1200)
	flood := 20000 * scale
	for i := range flood {
		rand.Read(pkt)
		if i%2 == 0 {
			// A well-formed long header of a QUIC v1 Initial: an 8-byte
			// random DCID, no SCID, no token, the length of the rest;
			// the payload does not decrypt.
			pkt[0] = 0xc0 | pkt[0]&0x03
			copy(pkt[1:5], []byte{0, 0, 0, 1})
			pkt[5] = 8
			pkt[14], pkt[15] = 0, 0
			rest := len(pkt) - 18
			pkt[16], pkt[17] = 0x40|byte(rest>>8), byte(rest)
		}
		if _, err := udp.WriteToUDP(pkt, dst); err != nil {
			t.Fatal(err)
		}
		if i%500 == 0 {
			time.Sleep(time.Millisecond) // stay within the socket buffers
		}
	}

	runtime.GC() // buffers in sync.Pools live through one collection
	floodHeap := heapInUse()
	// (2) Handshakes without a client certificate.
	noCert := &tls.Config{MinVersion: tls.VersionTLS13, InsecureSkipVerify: true, NextProtos: []string{quicmux.ALPN}}
	refused := 0
	for range 50 * scale {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		c, err := quic.DialAddr(ctx, qp.inQUIC, noCert.Clone(), nil)
		cancel()
		if err != nil {
			refused++
			continue
		}
		// The server decides after the client's Finished: look for the
		// close.
		select {
		case <-c.Context().Done():
			refused++
		case <-time.After(3 * time.Second):
		}
		c.CloseWithError(0, "")
	}
	if refused != 50*scale {
		t.Errorf("%d of %d handshakes without a certificate refused", refused, 50*scale)
	}

	close(stop)
	res := <-done
	if res[1] != 0 || res[0] == 0 {
		t.Errorf("the relaying peer: %d ok, %d failed during the abuse", res[0], res[1])
	}
	// Half-open handshakes end at the QUIC handshake timeout (3 s).
	var heap uint64
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		runtime.GC()
		if heap = heapInUse(); heap <= baseHeap+4<<20 || time.Now().After(deadline) {
			break
		}
	}
	goroutines := settleGoroutines(baseGo + 5)
	retries := qp.in.metric(t, "credflow_quic_retries_total")
	t.Logf("%d datagrams (%v answered with a Retry), %d certificate-less handshakes refused; relaying peer %d ok, %d failed; heap %d KiB, after the flood %d, at the end %d; goroutines %d -> %d",
		flood, retries, refused, res[0], res[1], baseHeap>>10, floodHeap>>10, heap>>10, baseGo, goroutines)
	if retries == 0 {
		t.Error("no Retry was sent: the flood of Initials was taken without address validation")
	}
	// Past quic.handshake_rate (100/s) Initials get a stateless Retry, so
	// at most a few hundred half-open handshakes (some 25 KiB each) are
	// held however long the flood; without that limit, ten times this
	// flood held over 90 MiB.
	if floodHeap > baseHeap+24<<20 {
		t.Errorf("heap grew from %d to %d KiB during the flood", baseHeap>>10, floodHeap>>10)
	}
	if heap > baseHeap+4<<20 {
		t.Errorf("heap did not come back: from %d to %d KiB", baseHeap>>10, heap>>10)
	}
	if goroutines > baseGo+5 {
		t.Errorf("goroutines grew from %d to %d", baseGo, goroutines)
	}
}

// quicAdvisories are the quic-go advisories in the Go vulnerability
// database (bin/vulndb, built by make vulncheck) with the version that
// fixed each; L6 asks for quic-go pinned past them.
var quicAdvisories = map[string]string{
	"GO-2023-2160 (handshake panic)":                 "v0.37.3",
	"GO-2024-2459 (path validation DoS)":             "v0.40.1",
	"GO-2024-2682 (NEW_CONNECTION_ID retire flood)":  "v0.42.0",
	"GO-2024-3302 (ICMP packet-too-large injection)": "v0.48.2",
	"GO-2025-3735 (path probe loss recovery panic)":  "v0.50.1",
	"GO-2025-4017 (undecryptable packets panic)":     "v0.54.1",
	"GO-2025-4233 (HTTP/3 QPACK header expansion)":   "v0.57.0",
	"GO-2026-5676 (HTTP/3 QPACK trailer expansion)":  "v0.59.1",
}

// TestQUICPinnedPastAdvisories checks the quic-go version linked into the
// sidecar against those fixes.
func TestQUICPinnedPastAdvisories(t *testing.T) {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		t.Fatal("no build information")
	}
	var have string
	for _, d := range bi.Deps {
		if d.Path == "github.com/quic-go/quic-go" {
			have = d.Version
			if d.Replace != nil {
				have = d.Replace.Version
			}
		}
	}
	if have == "" {
		t.Fatal("quic-go is not linked")
	}
	for adv, fixed := range quicAdvisories {
		if semverLess(have, fixed) {
			t.Errorf("quic-go %s predates the fix of %s (%s)", have, adv, fixed)
		}
	}
	t.Logf("quic-go %s", have)
}

// semverLess compares vMAJOR.MINOR.PATCH versions.
func semverLess(a, b string) bool {
	parse := func(v string) (n [3]int) {
		v, _, _ = strings.Cut(strings.TrimPrefix(v, "v"), "-")
		for i, p := range strings.SplitN(v, ".", 3) {
			n[i], _ = strconv.Atoi(p)
		}
		return n
	}
	pa, pb := parse(a), parse(b)
	for i := range pa {
		if pa[i] != pb[i] {
			return pa[i] < pb[i]
		}
	}
	return false
}
