package proxy

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/credflow/credflow/proxy/h1"
)

// countingRT answers every request 204 and counts them.
type countingRT struct{ n atomic.Int64 }

func (c *countingRT) RoundTrip(r *http.Request) (*http.Response, error) {
	c.n.Add(1)
	return &http.Response{StatusCode: http.StatusNoContent, Body: http.NoBody, Request: r}, nil
}

// TestUpstreamRoutePausesH1: HTTP/1.1 connections are opened only once
// the upstream has said it takes one per request in flight. An upstream
// that then closes a new one unanswered (as one over an overload limit
// does) has the request sent over HTTP/2 if it may be sent again, and
// failed otherwise; either way the next requests go over HTTP/2 for
// h1Pause, without a connection tried.
func TestUpstreamRoutePausesH1(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var accepted atomic.Int64
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			accepted.Add(1)
			http.ReadRequest(bufio.NewReader(c))
			c.Close()
		}
	}()
	client := &h1.Client{NoWait: true, Dial: func(ctx context.Context) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "tcp", ln.Addr().String())
	}}
	defer client.Close()
	h2 := &countingRT{}
	route := func() upstreamRoute {
		return upstreamRoute{h1: client, h2: h2, offer: new(connOffer), h1Paused: new(atomic.Int64)}
	}
	get, _ := http.NewRequest(http.MethodGet, "http://upstream/x", nil)
	post := func() *http.Request {
		r, _ := http.NewRequest(http.MethodPost, "http://upstream/x", strings.NewReader("payload"))
		return r
	}
	roundTrip := func(u upstreamRoute, r *http.Request) {
		t.Helper()
		resp, err := u.RoundTrip(r)
		if err != nil || resp.StatusCode != http.StatusNoContent {
			t.Fatalf("%s: got %v, %v; want the HTTP/2 pool's answer", r.Method, resp, err)
		}
	}

	u := route()
	roundTrip(u, get) // not told yet
	if n := accepted.Load(); n != 0 {
		t.Fatalf("%d HTTP/1.1 connections before the upstream said it takes them", n)
	}
	u.offer.take("per-request", time.Now())
	roundTrip(u, get) // refused, sent again over HTTP/2
	if n := accepted.Load(); n != 1 {
		t.Fatalf("%d HTTP/1.1 connections tried, want 1", n)
	}
	for range 3 {
		roundTrip(u, get)
		roundTrip(u, post())
	}
	if n, a := h2.n.Load(), accepted.Load(); n != 8 || a != 1 {
		t.Fatalf("%d requests over HTTP/2, %d HTTP/1.1 connections tried; want 8 and 1", n, a)
	}

	u = route()
	u.offer.take("per-request", time.Now())
	if _, err := u.RoundTrip(post()); !errors.Is(err, h1.ErrNoResponse) {
		t.Fatalf("a POST refused on a new connection: %v, want h1.ErrNoResponse (it may not be sent twice)", err)
	}
	if n := h2.n.Load(); n != 8 {
		t.Fatalf("the refused POST went over HTTP/2 too")
	}
}

// TestConnOffer: HTTP/1.1 connections are usable once the upstream said
// "per-request", and not for limitedHold after it said "limited", whatever
// it says meanwhile; take reports the moment they stop being usable.
func TestConnOffer(t *testing.T) {
	var o connOffer
	now := time.Unix(1000, 0)
	if o.usable(now) {
		t.Fatal("usable before the upstream said anything")
	}
	if o.take("per-request", now) || !o.usable(now) {
		t.Fatal("not usable once told per-request")
	}
	if !o.take("limited", now) || o.usable(now) {
		t.Fatal("told limited: should stop, and did not")
	}
	if o.take("limited", now) {
		t.Fatal("told limited again: reported as a stop again")
	}
	o.take("per-request", now.Add(time.Minute)) // another replica, say
	if o.usable(now.Add(limitedHold - time.Second)) {
		t.Fatal("usable within limitedHold of a limited")
	}
	if !o.usable(now.Add(limitedHold)) {
		t.Fatal("not usable limitedHold after the last limited")
	}
	later := now.Add(limitedHold)
	if o.take("something else", later) || !o.usable(later) {
		t.Fatal("an unknown value changed the state")
	}
}

// rtFunc is a RoundTripper made of a function.
type rtFunc func(*http.Request) (*http.Response, error)

func (f rtFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// TestUpstreamRouteFullAfterAttempt: a request h1 found no connection for
// after a first attempt had read its body goes over HTTP/2 with its whole
// body.
func TestUpstreamRouteFullAfterAttempt(t *testing.T) {
	tried := rtFunc(func(r *http.Request) (*http.Response, error) {
		io.Copy(io.Discard, r.Body) // written on a reused connection that failed
		return nil, errors.Join(errors.New("connection reset"), h1.ErrFull)
	})
	var got string
	h2 := rtFunc(func(r *http.Request) (*http.Response, error) {
		b, _ := io.ReadAll(r.Body)
		got = string(b)
		return &http.Response{StatusCode: http.StatusNoContent, Body: http.NoBody, Request: r}, nil
	})
	u := upstreamRoute{h1: tried, h2: h2, offer: new(connOffer), h1Paused: new(atomic.Int64)}
	u.offer.take("per-request", time.Now())
	req, _ := http.NewRequest(http.MethodGet, "http://upstream/x", struct{ io.Reader }{strings.NewReader("payload")})
	req.ContentLength = int64(len("payload")) // a body with no GetBody, as a server's request has
	if resp, err := u.RoundTrip(req); err != nil || resp.StatusCode != http.StatusNoContent {
		t.Fatalf("got %v, %v", resp, err)
	}
	if got != "payload" {
		t.Fatalf("HTTP/2 got the body %q, want %q", got, "payload")
	}
}
