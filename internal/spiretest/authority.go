package spiretest

import (
	"bytes"
	"context"
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	bundlev1 "github.com/spiffe/spire-api-sdk/proto/spire/api/server/bundle/v1"
	localauthorityv1 "github.com/spiffe/spire-api-sdk/proto/spire/api/server/localauthority/v1"
)

// AuthorityKind selects the server's X.509 or JWT local authority.
type AuthorityKind int

// The kinds of local authority.
const (
	X509Authority AuthorityKind = iota
	JWTAuthority
)

func (k AuthorityKind) String() string {
	if k == JWTAuthority {
		return "JWT"
	}
	return "X.509"
}

// Authorities is the state of the server's local authorities of one kind.
// An ID is the CA certificate's subject key ID in hex (X.509) or the key ID
// (JWT); empty when no authority is in that state.
type Authorities struct {
	Active, Prepared, Old string
}

// AuthorityID is the ID SPIRE gives the authority that signed cert: its
// authority key ID in hex.
func AuthorityID(cert *x509.Certificate) string { return hex.EncodeToString(cert.AuthorityKeyId) }

func (s *SPIRE) localAuthority() localauthorityv1.LocalAuthorityClient {
	return localauthorityv1.NewLocalAuthorityClient(s.conn)
}

// Authorities returns the state of the local authorities of kind.
func (s *SPIRE) Authorities(ctx context.Context, kind AuthorityKind) (Authorities, error) {
	type state interface {
		GetActive() *localauthorityv1.AuthorityState
		GetPrepared() *localauthorityv1.AuthorityState
		GetOld() *localauthorityv1.AuthorityState
	}
	var (
		resp state
		err  error
	)
	if kind == JWTAuthority {
		resp, err = s.localAuthority().GetJWTAuthorityState(ctx, &localauthorityv1.GetJWTAuthorityStateRequest{})
	} else {
		resp, err = s.localAuthority().GetX509AuthorityState(ctx, &localauthorityv1.GetX509AuthorityStateRequest{})
	}
	if err != nil {
		return Authorities{}, fmt.Errorf("spiretest: %s authority state in %s: %w", kind, s.td, err)
	}
	return Authorities{
		Active:   resp.GetActive().GetAuthorityId(),
		Prepared: resp.GetPrepared().GetAuthorityId(),
		Old:      resp.GetOld().GetAuthorityId(),
	}, nil
}

// PrepareAuthority prepares a new authority of kind, which the server adds
// to the trust bundle, and returns its ID.
func (s *SPIRE) PrepareAuthority(ctx context.Context, kind AuthorityKind) (string, error) {
	var (
		st  *localauthorityv1.AuthorityState
		err error
	)
	if kind == JWTAuthority {
		var r *localauthorityv1.PrepareJWTAuthorityResponse
		if r, err = s.localAuthority().PrepareJWTAuthority(ctx, &localauthorityv1.PrepareJWTAuthorityRequest{}); err == nil {
			st = r.GetPreparedAuthority()
		}
	} else {
		var r *localauthorityv1.PrepareX509AuthorityResponse
		if r, err = s.localAuthority().PrepareX509Authority(ctx, &localauthorityv1.PrepareX509AuthorityRequest{}); err == nil {
			st = r.GetPreparedAuthority()
		}
	}
	if err != nil {
		return "", fmt.Errorf("spiretest: preparing a %s authority in %s: %w", kind, s.td, err)
	}
	if st.GetAuthorityId() == "" {
		return "", fmt.Errorf("spiretest: preparing a %s authority in %s: no authority ID returned", kind, s.td)
	}
	return st.GetAuthorityId(), nil
}

// ActivateAuthority makes the prepared authority id of kind the one the
// server signs with; the previous one becomes old.
func (s *SPIRE) ActivateAuthority(ctx context.Context, kind AuthorityKind, id string) error {
	var err error
	if kind == JWTAuthority {
		_, err = s.localAuthority().ActivateJWTAuthority(ctx, &localauthorityv1.ActivateJWTAuthorityRequest{AuthorityId: id})
	} else {
		_, err = s.localAuthority().ActivateX509Authority(ctx, &localauthorityv1.ActivateX509AuthorityRequest{AuthorityId: id})
	}
	if err != nil {
		return fmt.Errorf("spiretest: activating %s authority %s in %s: %w", kind, id, s.td, err)
	}
	return nil
}

// TaintAuthority marks the old authority id of kind as tainted; agents then
// replace what it signed.
func (s *SPIRE) TaintAuthority(ctx context.Context, kind AuthorityKind, id string) error {
	var err error
	if kind == JWTAuthority {
		_, err = s.localAuthority().TaintJWTAuthority(ctx, &localauthorityv1.TaintJWTAuthorityRequest{AuthorityId: id})
	} else {
		_, err = s.localAuthority().TaintX509Authority(ctx, &localauthorityv1.TaintX509AuthorityRequest{AuthorityId: id})
	}
	if err != nil {
		return fmt.Errorf("spiretest: tainting %s authority %s in %s: %w", kind, id, s.td, err)
	}
	return nil
}

// RevokeAuthority removes the old authority id of kind from the trust
// bundle.
func (s *SPIRE) RevokeAuthority(ctx context.Context, kind AuthorityKind, id string) error {
	var err error
	if kind == JWTAuthority {
		_, err = s.localAuthority().RevokeJWTAuthority(ctx, &localauthorityv1.RevokeJWTAuthorityRequest{AuthorityId: id})
	} else {
		_, err = s.localAuthority().RevokeX509Authority(ctx, &localauthorityv1.RevokeX509AuthorityRequest{AuthorityId: id})
	}
	if err != nil {
		return fmt.Errorf("spiretest: revoking %s authority %s in %s: %w", kind, id, s.td, err)
	}
	return nil
}

// ServerSVIDAuthority returns the ID of the authority that signed the X.509
// SVID the (first) server presents to agents, read from a TLS handshake.
func (s *SPIRE) ServerSVIDAuthority(ctx context.Context) (string, error) {
	d := tls.Dialer{Config: &tls.Config{InsecureSkipVerify: true}} // only the certificate is read
	c, err := d.DialContext(ctx, "tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(s.serverPort)))
	if err != nil {
		return "", fmt.Errorf("spiretest: reading the server's SVID: %w", err)
	}
	defer c.Close()
	certs := c.(*tls.Conn).ConnectionState().PeerCertificates
	if len(certs) == 0 {
		return "", errors.New("spiretest: the server presented no certificate")
	}
	return AuthorityID(certs[0]), nil
}

// AgentSVID returns the agent's own X.509-SVID chain, leaf first, as the
// agent last stored it in its data directory.
func (s *SPIRE) AgentSVID() ([]*x509.Certificate, error) {
	b, err := os.ReadFile(filepath.Join(s.dir, "agent", "data", "agent-data.json"))
	if err != nil {
		return nil, fmt.Errorf("spiretest: reading the agent's SVID: %w", err)
	}
	var data struct {
		SVID [][]byte `json:"svid"`
	}
	if err := json.Unmarshal(b, &data); err != nil || len(data.SVID) == 0 {
		return nil, fmt.Errorf("spiretest: no SVID in the agent's data (%v)", err)
	}
	chain := make([]*x509.Certificate, 0, len(data.SVID))
	for _, p := range data.SVID {
		blk, _ := pem.Decode(p)
		if blk == nil {
			return nil, errors.New("spiretest: the agent's stored SVID is not PEM")
		}
		cert, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			return nil, fmt.Errorf("spiretest: the agent's stored SVID: %w", err)
		}
		chain = append(chain, cert)
	}
	return chain, nil
}

// AgentSVIDAuthority returns the ID of the authority that signed the
// agent's own SVID, as the agent last stored it in its data directory.
func (s *SPIRE) AgentSVIDAuthority() (string, error) {
	chain, err := s.AgentSVID()
	if err != nil {
		return "", err
	}
	return AuthorityID(chain[0]), nil
}

// FetchX509SVID fetches, with its key, the X.509-SVID that the Workload
// API serves to a workload running as uid, by running `spire-agent api
// fetch x509` as uid. It retries until the agent serves one (an entry is
// served a few seconds after it is created) or ctx ends. Needs root.
func (s *SPIRE) FetchX509SVID(ctx context.Context, uid int) (*x509svid.SVID, error) {
	bin, err := s.agentBinFor()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp(s.dir, "fetch-")
	if err != nil {
		return nil, fmt.Errorf("spiretest: %w", err)
	}
	defer os.RemoveAll(dir)
	if err := os.Chown(dir, uid, uid); err != nil {
		return nil, fmt.Errorf("spiretest: %w", err)
	}
	var last []byte
	for {
		cmd := s.Command(ctx, uid, bin, "api", "fetch", "x509", "-silent", "-write", dir, "-socketPath", s.AgentSocket())
		if last, err = cmd.CombinedOutput(); err == nil {
			svid, err := x509svid.Load(filepath.Join(dir, "svid.0.pem"), filepath.Join(dir, "svid.0.key"))
			if err != nil {
				return nil, fmt.Errorf("spiretest: the X.509-SVID fetched as uid %d: %w", uid, err)
			}
			return svid, nil
		}
		if err := sleepCtx(ctx, 250*time.Millisecond); err != nil {
			return nil, fmt.Errorf("spiretest: no X.509-SVID for uid %d: %w (%s)", uid, err, bytes.TrimSpace(last))
		}
	}
}

// FetchJWTSVID fetches a JWT-SVID for audience as the workload running as
// uid, by running `spire-agent api fetch jwt` as uid, retrying as
// FetchX509SVID does, and returns the token.
func (s *SPIRE) FetchJWTSVID(ctx context.Context, uid int, audience string) (string, error) {
	bin, err := s.agentBinFor()
	if err != nil {
		return "", err
	}
	var stderr bytes.Buffer
	for {
		stderr.Reset()
		cmd := s.Command(ctx, uid, bin, "api", "fetch", "jwt", "-audience", audience, "-output", "json", "-socketPath", s.AgentSocket())
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err == nil {
			return tokenFromJSON(out)
		}
		if err := sleepCtx(ctx, 250*time.Millisecond); err != nil {
			return "", fmt.Errorf("spiretest: no JWT-SVID for uid %d: %w (%s)", uid, err, bytes.TrimSpace(stderr.Bytes()))
		}
	}
}

// tokenFromJSON finds the token in the JSON output of `spire-agent api
// fetch jwt`: the responses, the first of which holds the SVIDs.
func tokenFromJSON(out []byte) (string, error) {
	var resps []struct {
		SVIDs []struct {
			SVID string `json:"svid"`
		} `json:"svids"`
	}
	if err := json.Unmarshal(out, &resps); err != nil {
		return "", fmt.Errorf("spiretest: spire-agent api fetch jwt output: %w", err)
	}
	for _, r := range resps {
		for _, s := range r.SVIDs {
			if s.SVID != "" {
				return s.SVID, nil
			}
		}
	}
	return "", errors.New("spiretest: no token in the spire-agent api fetch jwt output")
}

// agentBinFor returns the spire-agent binary installed where every uid can
// run it, installing it if needed.
func (s *SPIRE) agentBinFor() (string, error) {
	p := filepath.Join(s.dir, "bin", filepath.Base(s.agentBin))
	if _, err := os.Stat(p); err == nil {
		return p, nil
	}
	return s.InstallBinary(s.agentBin)
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(d):
		return nil
	}
}

// JWTKey is a JWT signing key of the trust domain's bundle.
type JWTKey struct {
	KeyID  string
	Public crypto.PublicKey
}

// JWTKeys returns the JWT signing keys of the server's bundle, as an
// authorization server or a secret store that trusts the trust domain's
// JWT-SVIDs is configured with them.
func (s *SPIRE) JWTKeys(ctx context.Context) ([]JWTKey, error) {
	b, err := bundlev1.NewBundleClient(s.conn).GetBundle(ctx, &bundlev1.GetBundleRequest{})
	if err != nil {
		return nil, fmt.Errorf("spiretest: bundle: %w", err)
	}
	var keys []JWTKey
	for _, a := range b.JwtAuthorities {
		pub, err := x509.ParsePKIXPublicKey(a.PublicKey)
		if err != nil {
			return nil, fmt.Errorf("spiretest: JWT authority %s: %w", a.KeyId, err)
		}
		keys = append(keys, JWTKey{KeyID: a.KeyId, Public: pub})
	}
	if len(keys) == 0 {
		return nil, errors.New("spiretest: the bundle has no JWT authority")
	}
	return keys, nil
}
