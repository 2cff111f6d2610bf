// Package wlapitest serves a stand-in SPIFFE Workload API on a unix socket:
// one X.509-SVID and its bundle, streamed to every client, replaced on
// demand (a rotation), and JWT-SVIDs signed by its own ES256 key (or one
// shared with another stand-in), published in the JWT bundle. The benchmark harness uses it to run the sidecar as a
// process with the same certificates as the peers it is compared with;
// everything that claims SPIRE behaviour runs the real SPIRE instead.
package wlapitest

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"sync"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Server is a stand-in Workload API for one workload.
type Server struct {
	workload.UnimplementedSpiffeWorkloadAPIServer

	grpc *grpc.Server
	addr string

	mu      sync.Mutex
	jwtKey  *ecdsa.PrivateKey
	issuer  string
	svid    *x509svid.SVID
	bundle  *x509bundle.Bundle
	changed chan struct{} // closed and replaced on every SetSVID
}

// Start serves svid and bundle on a unix socket at path until ctx ends.
func Start(ctx context.Context, path string, svid *x509svid.SVID, bundle *x509bundle.Bundle) (*Server, error) {
	os.Remove(path)
	l, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("wlapitest: %w", err)
	}
	if err := os.Chmod(path, 0o777); err != nil {
		l.Close()
		return nil, fmt.Errorf("wlapitest: %w", err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		l.Close()
		return nil, fmt.Errorf("wlapitest: %w", err)
	}
	s := &Server{grpc: grpc.NewServer(), addr: "unix://" + path, svid: svid, bundle: bundle, changed: make(chan struct{}), jwtKey: key}
	workload.RegisterSpiffeWorkloadAPIServer(s.grpc, s)
	go s.grpc.Serve(l)
	context.AfterFunc(ctx, s.grpc.Stop)
	return s, nil
}

// Addr is the socket address in the form clients take ("unix:///path").
func (s *Server) Addr() string { return s.addr }

// SetSVID replaces the SVID (and bundle, if not nil) and pushes them to
// every watching client.
func (s *Server) SetSVID(svid *x509svid.SVID, bundle *x509bundle.Bundle) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.svid = svid
	if bundle != nil {
		s.bundle = bundle
	}
	close(s.changed)
	s.changed = make(chan struct{})
}

// SetJWTKey makes key the JWT signing key: the one JWT-SVIDs are signed
// with and the JWT bundle holds. Give two stand-ins the same key for
// either's workload to validate the other's JWT-SVIDs, as workloads of
// one SPIRE server do. Call it before clients connect: the JWT bundle is
// sent once per watch.
func (s *Server) SetJWTKey(key *ecdsa.PrivateKey) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.jwtKey = key
}

// SetJWTIssuer makes iss the iss claim of the JWT-SVIDs minted from now,
// as SPIRE's jwt_issuer does; none by default.
func (s *Server) SetJWTIssuer(iss string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.issuer = iss
}

func (s *Server) key() *ecdsa.PrivateKey {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.jwtKey
}

func (s *Server) current() (*x509svid.SVID, *x509bundle.Bundle, <-chan struct{}) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.svid, s.bundle, s.changed
}

func concat(certs []*x509.Certificate) []byte {
	var out []byte
	for _, c := range certs {
		out = append(out, c.Raw...)
	}
	return out
}

// FetchX509SVID streams the SVID, again after every SetSVID.
func (s *Server) FetchX509SVID(_ *workload.X509SVIDRequest, stream grpc.ServerStreamingServer[workload.X509SVIDResponse]) error {
	for {
		svid, bundle, changed := s.current()
		der, err := x509.MarshalPKCS8PrivateKey(svid.PrivateKey)
		if err != nil {
			return status.Error(codes.Internal, err.Error())
		}
		resp := &workload.X509SVIDResponse{Svids: []*workload.X509SVID{{
			SpiffeId:    svid.ID.String(),
			X509Svid:    concat(svid.Certificates),
			X509SvidKey: der,
			Bundle:      concat(bundle.X509Authorities()),
		}}}
		if err := stream.Send(resp); err != nil {
			return err
		}
		select {
		case <-changed:
		case <-stream.Context().Done():
			return nil
		}
	}
}

// FetchX509Bundles streams the bundle, again after every SetSVID.
func (s *Server) FetchX509Bundles(_ *workload.X509BundlesRequest, stream grpc.ServerStreamingServer[workload.X509BundlesResponse]) error {
	for {
		_, bundle, changed := s.current()
		resp := &workload.X509BundlesResponse{Bundles: map[string][]byte{bundle.TrustDomain().IDString(): concat(bundle.X509Authorities())}}
		if err := stream.Send(resp); err != nil {
			return err
		}
		select {
		case <-changed:
		case <-stream.Context().Done():
			return nil
		}
	}
}

// JWTKeyID is the kid of the stand-in's JWT signing key.
const JWTKeyID = "wlapitest"

// FetchJWTBundles sends the JWT bundle: the stand-in's signing key.
func (s *Server) FetchJWTBundles(_ *workload.JWTBundlesRequest, stream grpc.ServerStreamingServer[workload.JWTBundlesResponse]) error {
	_, bundle, _ := s.current()
	jwks, err := json.Marshal(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: s.key().Public(), KeyID: JWTKeyID, Use: "jwt-svid"}}})
	if err != nil {
		return status.Error(codes.Internal, err.Error())
	}
	resp := &workload.JWTBundlesResponse{Bundles: map[string][]byte{bundle.TrustDomain().IDString(): jwks}}
	if err := stream.Send(resp); err != nil {
		return err
	}
	<-stream.Context().Done()
	return nil
}

// FetchJWTSVID mints a five-minute JWT-SVID for the audience.
func (s *Server) FetchJWTSVID(_ context.Context, req *workload.JWTSVIDRequest) (*workload.JWTSVIDResponse, error) {
	if len(req.Audience) == 0 {
		return nil, status.Error(codes.InvalidArgument, "wlapitest: audience required")
	}
	svid, _, _ := s.current()
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: s.key()},
		(&jose.SignerOptions{}).WithType("JWT").WithHeader("kid", JWTKeyID))
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	now := time.Now()
	s.mu.Lock()
	iss := s.issuer
	s.mu.Unlock()
	tok, err := jwt.Signed(signer).Claims(jwt.Claims{Issuer: iss, Subject: svid.ID.String(), Audience: req.Audience,
		IssuedAt: jwt.NewNumericDate(now), Expiry: jwt.NewNumericDate(now.Add(5 * time.Minute))}).Serialize()
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	return &workload.JWTSVIDResponse{Svids: []*workload.JWTSVID{{SpiffeId: svid.ID.String(), Svid: tok}}}, nil
}
