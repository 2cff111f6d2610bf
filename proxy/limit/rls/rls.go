// Package rls counts requests and connections against a budget shared by
// every sidecar: it is a client of a rate limit service that speaks Envoy's
// Rate Limit Service API (envoy.service.ratelimit.v3, the types of
// github.com/envoyproxy/go-control-plane), such as
// github.com/envoyproxy/ratelimit with Redis behind it.
package rls

import (
	"context"
	"errors"
	"fmt"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/extensions/common/ratelimit/v3"
	rlsv3 "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/credflow/credflow/proxy/limit"
)

// Client checks hits against a budget shared by every sidecar that asks
// the same rate limit service.
type Client struct {
	cfg    limit.GlobalConfig
	conn   *grpc.ClientConn
	client rlsv3.RateLimitServiceClient
}

// Dial makes a client of the service in cfg. It does not connect:
// the connection is made, and remade after a failure, as checks need it.
func Dial(cfg limit.GlobalConfig) (*Client, error) {
	cfg = cfg.WithDefaults()
	conn, err := grpc.NewClient(cfg.Service,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		// Back again within a couple of seconds of the service's return,
		// rather than after gRPC's default backoff of up to two minutes.
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: 100 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 2 * time.Second},
			MinConnectTimeout: time.Second,
		}))
	if err != nil {
		return nil, fmt.Errorf("rls: rate limit service %q: %w", cfg.Service, err)
	}
	return &Client{cfg: cfg, conn: conn, client: rlsv3.NewRateLimitServiceClient(conn)}, nil
}

// Config returns the client's configuration, with its defaults.
func (g *Client) Config() limit.GlobalConfig { return g.cfg }

// Close closes the connection to the service.
func (g *Client) Close() error { return g.conn.Close() }

// errUnknownCode is an answer that is neither OK nor OVER_LIMIT.
var errUnknownCode = errors.New("rls: rate limit service answered with no code")

// Check counts h against the shared budget. It sends the descriptors
// (listener, kind), the listener's total, and (listener, kind, peer), the
// peer's own, and for a request on a named route (listener, kind, route)
// and (listener, kind, route, peer); the service refuses the hit when one
// of them is past its limit (a descriptor its configuration has no limit
// for is not limited).
func (g *Client) Check(ctx context.Context, h limit.Hit) limit.Verdict {
	ctx, cancel := context.WithTimeout(ctx, g.cfg.Timeout)
	defer cancel()
	listener := &corev3.RateLimitDescriptor_Entry{Key: limit.KeyListener, Value: h.Listener}
	kind := &corev3.RateLimitDescriptor_Entry{Key: limit.KeyKind, Value: h.Kind}
	peer := &corev3.RateLimitDescriptor_Entry{Key: limit.KeyPeer, Value: h.Peer.String()}
	descriptors := []*corev3.RateLimitDescriptor{
		{Entries: []*corev3.RateLimitDescriptor_Entry{listener, kind}},
		{Entries: []*corev3.RateLimitDescriptor_Entry{listener, kind, peer}},
	}
	if h.Route != "" {
		route := &corev3.RateLimitDescriptor_Entry{Key: limit.KeyRoute, Value: h.Route}
		descriptors = append(descriptors,
			&corev3.RateLimitDescriptor{Entries: []*corev3.RateLimitDescriptor_Entry{listener, kind, route}},
			&corev3.RateLimitDescriptor{Entries: []*corev3.RateLimitDescriptor_Entry{listener, kind, route, peer}})
	}
	resp, err := g.client.ShouldRateLimit(ctx, &rlsv3.RateLimitRequest{
		Domain:      g.cfg.Domain,
		Descriptors: descriptors,
		HitsAddend:  1,
	})
	if err == nil && resp.GetOverallCode() == rlsv3.RateLimitResponse_UNKNOWN {
		err = errUnknownCode
	}
	if err != nil {
		return limit.Verdict{OK: g.cfg.FailureMode == limit.FailOpen, Err: err}
	}
	if resp.GetOverallCode() == rlsv3.RateLimitResponse_OK {
		return limit.Verdict{OK: true}
	}
	var v limit.Verdict
	for _, s := range resp.GetStatuses() {
		if s.GetCode() == rlsv3.RateLimitResponse_OVER_LIMIT && s.GetDurationUntilReset() != nil {
			v.RetryAfter = max(v.RetryAfter, s.GetDurationUntilReset().AsDuration())
		}
	}
	if v.RetryAfter <= 0 {
		v.RetryAfter = time.Second
	}
	return v
}
