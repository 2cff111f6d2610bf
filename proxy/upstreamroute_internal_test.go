package proxy

import (
	"bufio"
	"context"
	"errors"
	"net"
	"net/http"
	"sync/atomic"
	"testing"

	"github.com/credflow/credflow/proxy/h1"
)

// countingRT answers every request 204 and counts them.
type countingRT struct{ n atomic.Int64 }

func (c *countingRT) RoundTrip(r *http.Request) (*http.Response, error) {
	c.n.Add(1)
	return &http.Response{StatusCode: http.StatusNoContent, Body: http.NoBody, Request: r}, nil
}

// TestUpstreamRoutePausesH1: an upstream that closes a new HTTP/1.1
// connection unanswered (as one over its connection limits does) fails
// that request, and the next ones go over HTTP/2 for h1Pause.
func TestUpstreamRoutePausesH1(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			http.ReadRequest(bufio.NewReader(c))
			c.Close()
		}
	}()
	client := &h1.Client{NoWait: true, Dial: func(ctx context.Context) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "tcp", ln.Addr().String())
	}}
	defer client.Close()
	h2 := &countingRT{}
	u := upstreamRoute{h1: client, h2: h2, h1Paused: new(atomic.Int64)}
	req, _ := http.NewRequest(http.MethodGet, "http://upstream/x", nil)
	if _, err := u.RoundTrip(req); !errors.Is(err, h1.ErrNoResponse) {
		t.Fatalf("first request: %v, want h1.ErrNoResponse", err)
	}
	for range 3 {
		resp, err := u.RoundTrip(req)
		if err != nil || resp.StatusCode != http.StatusNoContent {
			t.Fatalf("got %v, %v; want the HTTP/2 pool's answer", resp, err)
		}
	}
	if n := h2.n.Load(); n != 3 {
		t.Fatalf("%d requests over HTTP/2, want 3", n)
	}
}
