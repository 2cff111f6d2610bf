package spiretest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"slices"
	"strings"
	"sync"
	"time"

	bundlev1 "github.com/spiffe/spire-api-sdk/proto/spire/api/server/bundle/v1"
	trustdomainv1 "github.com/spiffe/spire-api-sdk/proto/spire/api/server/trustdomain/v1"
	"github.com/spiffe/spire-api-sdk/proto/spire/api/types"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Federation configures a server's SPIFFE federation: a bundle endpoint
// with the https_spiffe profile on 127.0.0.1, and the trust domains whose
// bundles it fetches.
type Federation struct {
	// BundleEndpointPort is the port of the server's bundle endpoint on
	// 127.0.0.1. Required.
	BundleEndpointPort int
	// RefreshHint is the refresh hint the bundle endpoint publishes.
	// Zero leaves SPIRE's default (5m); SPIRE never refreshes a federated
	// bundle more often than once a minute, whatever the hint.
	RefreshHint time.Duration
	// FederatesWith maps a trust domain name to the URL of its bundle
	// endpoint, which is authenticated as spiffe://<td>/spire/server.
	FederatesWith map[string]string
}

// federationConf is the federation block of the server configuration, or
// "" when there is none.
func (s *SPIRE) federationConf() string {
	f := s.opts.Federation
	if f == nil {
		return ""
	}
	var b strings.Builder
	fmt.Fprintf(&b, "  federation {\n    bundle_endpoint {\n      address = \"127.0.0.1\"\n      port = %d\n", f.BundleEndpointPort)
	if f.RefreshHint > 0 {
		fmt.Fprintf(&b, "      refresh_hint = %q\n", f.RefreshHint)
	}
	b.WriteString("      profile \"https_spiffe\" {}\n    }\n")
	for _, td := range slices.Sorted(maps.Keys(f.FederatesWith)) {
		url := f.FederatesWith[td]
		fmt.Fprintf(&b, "    federates_with %q {\n      bundle_endpoint_url = %q\n      bundle_endpoint_profile \"https_spiffe\" {\n        endpoint_spiffe_id = %q\n      }\n    }\n",
			td, url, "spiffe://"+td+"/spire/server")
	}
	b.WriteString("  }\n")
	return b.String()
}

// Federated is two SPIRE deployments that federate with each other. Each
// fetches the other's bundle through a Front that a test can cut.
type Federated struct {
	A, B *SPIRE
	// ToA relays to A's bundle endpoint; B fetches A's bundle through
	// it. ToB relays to B's bundle endpoint, for A.
	ToA, ToB *Front
}

// StartFederated starts deployments a and b (their Federation option is
// set here), each federating with the other through a Front, and
// bootstraps the federation by giving each server the other's bundle once.
// Later refreshes come from the bundle endpoints. Register workloads with
// Entry.FederatesWith to have the other trust domain's bundle in their
// X.509 contexts.
func StartFederated(ctx context.Context, a, b Options) (_ *Federated, err error) {
	if a.TrustDomain == "" || b.TrustDomain == "" || a.TrustDomain == b.TrustDomain {
		return nil, errors.New("spiretest: federation needs two distinct trust domains")
	}
	f := &Federated{}
	defer func() {
		if err != nil {
			f.Close()
		}
	}()
	portA, err := freePort()
	if err != nil {
		return nil, err
	}
	portB, err := freePort()
	if err != nil {
		return nil, err
	}
	if f.ToA, err = NewFront(fmt.Sprintf("127.0.0.1:%d", portA)); err != nil {
		return nil, err
	}
	if f.ToB, err = NewFront(fmt.Sprintf("127.0.0.1:%d", portB)); err != nil {
		return nil, err
	}
	a.Federation = withEndpoint(a.Federation, portA, b.TrustDomain, "https://"+f.ToB.Addr())
	b.Federation = withEndpoint(b.Federation, portB, a.TrustDomain, "https://"+f.ToA.Addr())

	// Two start-ups at once: most of each is waiting for health.
	var wg sync.WaitGroup
	var errA, errB error
	wg.Go(func() { f.A, errA = Start(ctx, a) })
	wg.Go(func() { f.B, errB = Start(ctx, b) })
	wg.Wait()
	if err := errors.Join(errA, errB); err != nil {
		return nil, err
	}
	if err := exchangeBundle(ctx, f.A, f.B); err != nil {
		return nil, err
	}
	if err := exchangeBundle(ctx, f.B, f.A); err != nil {
		return nil, err
	}
	return f, nil
}

// withEndpoint copies f (nil: a new one) with the bundle endpoint's port
// and a relationship with td at url.
func withEndpoint(f *Federation, port int, td, url string) *Federation {
	out := &Federation{}
	if f != nil {
		*out = *f
	}
	out.BundleEndpointPort = port
	fw := maps.Clone(out.FederatesWith)
	if fw == nil {
		fw = map[string]string{}
	}
	fw[td] = url
	out.FederatesWith = fw
	return out
}

// exchangeBundle sets from's bundle as a federated bundle on to.
func exchangeBundle(ctx context.Context, from, to *SPIRE) error {
	b, err := bundlev1.NewBundleClient(from.conn).GetBundle(ctx, &bundlev1.GetBundleRequest{})
	if err != nil {
		return fmt.Errorf("spiretest: bundle of %s: %w", from.td, err)
	}
	resp, err := bundlev1.NewBundleClient(to.conn).BatchSetFederatedBundle(ctx, &bundlev1.BatchSetFederatedBundleRequest{Bundle: []*types.Bundle{b}})
	if err != nil {
		return fmt.Errorf("spiretest: setting %s's bundle on %s: %w", from.td, to.td, err)
	}
	if r := resp.Results[0]; codes.Code(r.Status.Code) != codes.OK {
		return fmt.Errorf("spiretest: setting %s's bundle on %s: %w", from.td, to.td, status.Error(codes.Code(r.Status.Code), r.Status.Message))
	}
	return nil
}

// Close stops both deployments and both fronts.
func (f *Federated) Close() {
	for _, s := range []*SPIRE{f.A, f.B} {
		if s != nil {
			s.Close()
		}
	}
	for _, fr := range []*Front{f.ToA, f.ToB} {
		if fr != nil {
			fr.Close()
		}
	}
}

// RefreshFederatedBundle makes the server fetch td's bundle from td's
// bundle endpoint now, through the trust domain API, instead of at the
// next refresh the bundle's hint schedules (a minute at the least). It
// fails when the endpoint cannot be reached or authenticated.
func (s *SPIRE) RefreshFederatedBundle(ctx context.Context, td string) error {
	_, err := trustdomainv1.NewTrustDomainClient(s.conn).RefreshBundle(ctx, &trustdomainv1.RefreshBundleRequest{TrustDomain: td})
	if err != nil {
		return fmt.Errorf("spiretest: refreshing %s's bundle on %s: %w", td, s.td, err)
	}
	return nil
}

// Front is a TCP relay on a loopback port to a target address. Cut makes
// it unreachable (connections to its port are refused, relayed ones are
// closed) and Restore opens it again on the same port.
type Front struct {
	target string
	addr   string

	mu       sync.Mutex
	ln       net.Listener // nil while cut
	conns    map[net.Conn]struct{}
	accepted int
	closed   bool
	wg       sync.WaitGroup // accept loop and relays
}

// NewFront starts a front to target on a free loopback port.
func NewFront(target string) (*Front, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("spiretest: %w", err)
	}
	f := &Front{target: target, addr: ln.Addr().String(), conns: map[net.Conn]struct{}{}}
	f.serve(ln)
	return f, nil
}

// Addr is the front's address, host:port.
func (f *Front) Addr() string { return f.addr }

// Accepted counts the connections the front has accepted.
func (f *Front) Accepted() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.accepted
}

// Cut closes the listener and every relayed connection, and waits for the
// relays to end.
func (f *Front) Cut() {
	f.mu.Lock()
	if f.ln != nil {
		f.ln.Close()
		f.ln = nil
	}
	for c := range f.conns {
		c.Close()
	}
	f.mu.Unlock()
	f.wg.Wait()
}

// Restore listens on the front's port again.
func (f *Front) Restore() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return errors.New("spiretest: front closed")
	}
	if f.ln != nil {
		return nil
	}
	ln, err := net.Listen("tcp", f.addr)
	if err != nil {
		return fmt.Errorf("spiretest: reopening front: %w", err)
	}
	f.serveLocked(ln)
	return nil
}

// Close cuts the front for good.
func (f *Front) Close() {
	f.mu.Lock()
	f.closed = true
	f.mu.Unlock()
	f.Cut()
}

func (f *Front) serve(ln net.Listener) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.serveLocked(ln)
}

// serveLocked starts the accept loop on ln. f.mu is held.
func (f *Front) serveLocked(ln net.Listener) {
	f.ln = ln
	f.wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			if !f.track(c, true) {
				c.Close()
				continue
			}
			f.mu.Lock()
			f.accepted++
			f.mu.Unlock()
			f.wg.Go(func() { f.relay(c) })
		}
	})
}

// track adds (or removes) c from the live connections; adding fails once
// the listener it came from was cut.
func (f *Front) track(c net.Conn, add bool) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !add {
		delete(f.conns, c)
		return true
	}
	if f.ln == nil {
		return false
	}
	f.conns[c] = struct{}{}
	return true
}

func (f *Front) relay(c net.Conn) {
	defer f.track(c, false)
	defer c.Close()
	up, err := net.DialTimeout("tcp", f.target, 2*time.Second)
	if err != nil {
		return
	}
	if !f.track(up, true) {
		up.Close()
		return
	}
	defer f.track(up, false)
	defer up.Close()
	done := make(chan struct{}, 2)
	go func() { io.Copy(up, c); done <- struct{}{} }()
	go func() { io.Copy(c, up); done <- struct{}{} }()
	<-done // either side ending ends the pair
	c.Close()
	up.Close()
	<-done
}
