// Package config loads and validates the sidecar's YAML configuration file.
// Decoding is strict: an unknown field is an error (with the field probably
// meant), and every error names the field it is about and its line (for
// example "line 9: inbound[0].allow[1]: ..."). All errors are reported at
// once, as Errors.
//
// The package is a leaf: it imports only the small packages whose rules a
// file is checked against (SPIFFE ID patterns, HTTP routes, the
// key-exchange policy, local callers, the token rules and the data plane's
// defaults), never the data plane itself. internal/app translates a Config
// into the data plane's types.
package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"reflect"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/credflow/credflow/internal/peercred"
	"github.com/credflow/credflow/pqc"
	"github.com/credflow/credflow/proxy/authz"
	"github.com/credflow/credflow/proxy/limit"
	"github.com/credflow/credflow/proxy/route"
)

// MaxSize bounds the configuration file.
const MaxSize = 1 << 20

// Version is the version of the file format this package reads; a file
// without a version field is this version.
const Version = 1

// Defaults of the settings the process wiring owns. The data plane's
// timeouts and connection budget are declared in proxy/defaults, the
// token rules in package token.
const (
	DefaultAdmin        = "127.0.0.1:15000"
	DefaultLogLevel     = "info"
	DefaultLogFormat    = "json"
	DefaultDrainTimeout = 30 * time.Second
	// MaxJWTLeeway bounds jwt.leeway, and is its default: go-spiffe
	// checks JWT-SVID times with that minute, and a larger tolerance
	// would only lengthen the life of every token.
	MaxJWTLeeway = time.Minute
)

// Config is a validated configuration.
type Config struct {
	// WorkloadAPI is the Workload API address; empty means
	// $SPIFFE_ENDPOINT_SOCKET, read by the process wiring.
	WorkloadAPI string
	Admin       string
	// TokenEndpoint, if set, configures the RFC 8693 token endpoint.
	TokenEndpoint *TokenEndpoint
	LogLevel      string
	LogFormat     string

	HandshakeTimeout time.Duration
	DialTimeout      time.Duration
	IdleTimeout      time.Duration
	DrainTimeout     time.Duration
	Revalidate       time.Duration
	MaxConnections   int

	// ParkAfter is timeouts.park: an L4 connection idle this long gives
	// up its goroutines and buffers until a byte arrives. Zero means the
	// data plane's default (5s), negative never (the file's 0).
	ParkAfter time.Duration

	// FirstByteTimeout is timeouts.first_byte: how long an inbound
	// connection may stay silent after accept before it is closed.
	FirstByteTimeout time.Duration
	// OutboundReserve, MaxHandshakes and HandshakesPerSource are
	// limits.outbound_reserve, limits.max_handshakes and
	// limits.handshakes_per_source; 0 selects the data plane's default
	// (proxy.Config documents them).
	OutboundReserve     int
	MaxHandshakes       int
	HandshakesPerSource int
	// Revocation is where the deny list comes from; nil: no deny list.
	Revocation *Revocation
	// Anomaly is anomaly detection; nil: none.
	Anomaly *Anomaly
	// Tracing is the tracing of the HTTP modes; nil: none.
	Tracing *Tracing
	// Audit is the audit trail; nil: none.
	Audit *Audit
	// GlobalLimits is limits.global: the rate limit service inbound
	// listeners with limits.global count against; nil when not set.
	GlobalLimits *limit.GlobalConfig

	// MaxConnectionAge is timeouts.max_connection_age: the longest an
	// established connection between sidecars lives; 0 (the default, the
	// field absent) means no limit.
	MaxConnectionAge time.Duration
	// CloseOnPeerExpiry is timeouts.close_on_peer_expiry: close an
	// established connection when its peer's certificate expires. Default
	// false: connections outlive SVID rotation.
	CloseOnPeerExpiry bool

	Inbound  []Inbound
	Outbound []Outbound

	// Credentials are the credential sources egress listeners inject.
	Credentials []Credential

	// KeyExchange is the key-exchange policy (default hybrid-preferred).
	KeyExchange pqc.Policy
	// NoResumption is tls.session_resumption: false.
	NoResumption bool

	// Edge, if set, configures the exchange of external tokens for
	// transaction tokens (outbound listeners with exchange: true, and the
	// token endpoint).
	Edge *Edge
	// JWTLeeway is jwt.leeway: the clock skew tolerated on the exp, nbf
	// and iat of every token validated (JWT-SVIDs, external tokens,
	// transaction tokens). Edge.Leeway and each inbound listener's
	// TxnLeeway carry it too.
	JWTLeeway time.Duration

	// QUIC limits; zero fields mean the data plane's defaults.
	QUICMaxStreams       int64
	QUICHandshakeTimeout time.Duration
	QUICIdleTimeout      time.Duration
	QUICHandshakeRate    float64

	// Pprof is debug.pprof: serve net/http/pprof's profiles under
	// /debug/pprof/ on the admin listener. Default false (404 there).
	Pprof bool

	// raw is the file as decoded, for Diff.
	raw *file
}

// TokenEndpoint is the validated token_endpoint section.
type TokenEndpoint struct {
	// Network is "tcp", with Address a loopback host:port, or "unix", with
	// Address the absolute path of the socket.
	Network, Address string
	// SocketGroup, for a unix socket, is the group that may connect too
	// (mode 0660); -1 is none (mode 0600: the sidecar's uid and root).
	SocketGroup int
	// Callers are the local users that may get tokens; empty is every
	// local process.
	Callers peercred.Callers
	// Audiences are the audiences JWT-SVIDs are issued for;
	// token.AnyAudience is every one, empty none.
	Audiences []string
	// NewAudienceRate, NewAudienceBurst and MaxAudiences are the issuance
	// limits per caller (exchange.Config documents them); 0 selects
	// exchange's defaults.
	NewAudienceRate  float64
	NewAudienceBurst int
	MaxAudiences     int
}

// Edge is the validated edge-exchange configuration.
type Edge struct {
	Issuers []Issuer
	// Leeway is jwt.leeway, for the external tokens.
	Leeway time.Duration
	// TxnTTL, TxnAudiences and Scopes are the minting policy
	// (txn.MintConfig): TxnTTL 0 is txn's default lifetime, TxnAudiences
	// empty the default audience, this trust domain.
	TxnTTL       time.Duration
	TxnAudiences []string
	Scopes       []string
	KeepExternal bool
}

// Issuer is a trusted external token issuer.
type Issuer struct {
	Issuer     string
	Audiences  []string
	Algorithms []string
	// Exactly one of JWKSFile and JWKSURL is set; JWKSCAFile, if set, holds
	// the PEM roots for JWKSURL. JWKSRefresh 0 is edge's default interval.
	JWKSFile, JWKSURL, JWKSCAFile string
	JWKSRefresh                   time.Duration
}

// Inbound is a validated inbound listener.
type Inbound struct {
	Name, Listen, App string
	Allow             authz.Policy
	QUICListen        string
	// HTTP is set for protocol: http.
	HTTP *InboundHTTP
	// Limits are the listener's rate limits; the zero value sets none.
	Limits limit.Config
	// Unobserved is anomaly: false: the listener's outcomes are kept
	// from anomaly detection.
	Unobserved bool
	// Unaudited and Untraced are audit: false and tracing: false: the
	// listener's decisions kept from the audit trail, its requests from
	// tracing.
	Unaudited, Untraced bool
}

// InboundHTTP is an inbound listener's protocol: http settings
// (proxy.InboundHTTP documents each; a zero value selects its default).
type InboundHTTP struct {
	Routes       route.Table
	RequireJWT   bool
	TokenHeader  string
	PassJWT      bool
	AppH2C       bool
	TxnMinters   authz.Policy
	RequireTxn   bool
	TxnLeeway    time.Duration
	TxnSingleUse bool
	// ResponseHeaderTimeout is app_response_timeout: 0 when absent (the
	// default), negative when set to 0 (no limit).
	ResponseHeaderTimeout time.Duration
	AppConnections        int
	MaxConcurrentStreams  int
}

// Outbound is a validated outbound listener.
type Outbound struct {
	Name, Listen, Upstream   string
	Expect                   authz.Policy
	QUICUpstream, QUICTarget string
	// HTTP is set for protocol: http.
	HTTP *OutboundHTTP
	// Capture is set for a transparent capture listener.
	Capture *Capture
	// Egress is set for a listener to an external HTTPS API.
	Egress *Egress
	// Callers are callers.uids: the local users whose connections the
	// listener takes; empty (the default) is every local process.
	Callers peercred.Callers
	// AllowNonLoopback is allow_non_loopback: Listen may be an address
	// other hosts can reach (default false: loopback only).
	AllowNonLoopback bool
}

// OutboundHTTP is an outbound listener's protocol: http settings
// (proxy.OutboundHTTP documents each).
type OutboundHTTP struct {
	JWTAudience  string
	TokenHeader  string
	Pool         int
	Exchange     bool
	KeepExternal bool
}

// Egress is an egress listener's settings (proxy.Egress documents them):
// the external server's name and CA file (empty: the system roots), and the
// credentials injected.
type Egress struct {
	ServerName string
	CAFile     string
	Inject     []Injection
}

// The places of an injected credential (credential.Place).
const (
	PlaceBearer = "bearer"
	PlaceBasic  = "basic"
	PlaceHeader = "header"
	PlaceQuery  = "query"
)

// Injection is one rule of an egress listener (credential.Rule documents
// it): the credential, its place, the path prefixes covered.
type Injection struct {
	Credential string
	Place      string
	Name       string
	Paths      []string
	RefuseApp  bool
	Optional   bool
}

// The ways an oauth2 credential authenticates the workload
// (credential.GrantJWTBearer and credential.ClientAssertionSPIFFE).
const (
	AuthJWTBearer             = "jwt-bearer"
	AuthClientAssertionSPIFFE = "client-assertion-spiffe"
	AuthClientSecret          = "client-secret"
)

// Credential is a credential source: exactly one of OAuth2 and File.
type Credential struct {
	Name   string
	OAuth2 *OAuth2
	File   string
	// Refresh is how often a credential with no expiry is read again, and
	// Timeout bounds one fetch; 0 selects credential.Cache's defaults.
	Refresh, Timeout time.Duration
}

// OAuth2 is an oauth2 credential source (credential.OAuth2 documents it).
type OAuth2 struct {
	TokenURL          string
	Auth              string
	ClientID          string
	Scopes            []string
	Audience          string
	Resource          string
	AssertionAudience string
	CAFile            string
	// ClientSecretFile is the mounted secret holding the client secret of
	// AuthClientSecret.
	ClientSecretFile string
}

// Capture is a transparent capture listener's destinations.
type Capture struct {
	Destinations []Destination
}

// Destination maps original destinations to the identities expected
// there (capture.Destination, in proxy/capture, documents the matching).
type Destination struct {
	Prefix netip.Prefix
	Port   uint16
	Host   string
	Expect authz.Policy
	// Egress names the egress listener that takes connections to the
	// destination, instead of Expect.
	Egress string
}

// DefaultCallers makes d the callers of every outbound listener and of
// the token endpoint whose configuration lists none, and returns the
// fields it set. Diff compares the files as written, so defaults applied
// to both configurations of a reload change nothing there.
func (c *Config) DefaultCallers(d peercred.Callers) []string {
	if d.Any() {
		return nil
	}
	var set []string
	for i := range c.Outbound {
		if c.Outbound[i].Callers.Any() {
			c.Outbound[i].Callers = d
			set = append(set, fmt.Sprintf("outbound[%d].callers", i))
		}
	}
	if c.TokenEndpoint != nil && c.TokenEndpoint.Callers.Any() {
		c.TokenEndpoint.Callers = d
		set = append(set, "token_endpoint.callers")
	}
	return set
}

// Load reads and parses the file at path.
func Load(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	c, err := Parse(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return c, nil
}

// Parse decodes and validates a configuration. All problems are reported.
func Parse(data []byte) (*Config, error) {
	root, err := document(data)
	if err != nil {
		return nil, err
	}
	// Structure first (unknown fields, wrong kinds, bad values), then
	// meaning; every error is reported, each with its field path.
	e := &errList{lines: map[string]int{}}
	newWalker(e, len(data)).walk(root, reflect.TypeFor[file](), "")
	var f file
	if err := root.Decode(&f); err != nil {
		return nil, fmt.Errorf("config: %w", err) // the walk lets through nothing the decoder refuses
	}
	c := &Config{}
	v := &validator{fail: e.add, ports: map[string]string{}, names: map[string]string{}}
	v.version(f.Version)
	v.process(c, &f)
	v.connections(c, &f)
	v.keyExchange(c, f.KeyExchange)
	v.jwt(c, f.JWT)
	if f.TokenEndpoint.set {
		c.TokenEndpoint = v.tokenEndpoint(&f.TokenEndpoint, c.Admin, f.Edge != nil)
	}
	if f.Edge != nil {
		c.Edge = v.edge(f.Edge, c.JWTLeeway)
	}
	v.claimAdmin(c)
	for i := range f.Inbound {
		c.Inbound = append(c.Inbound, v.inbound(fmt.Sprintf("inbound[%d]", i), &f.Inbound[i], c.JWTLeeway))
	}
	for i := range f.Credentials {
		c.Credentials = append(c.Credentials, v.credential(fmt.Sprintf("credentials[%d]", i), &f.Credentials[i]))
	}
	for i := range f.Outbound {
		c.Outbound = append(c.Outbound, v.outbound(fmt.Sprintf("outbound[%d]", i), &f.Outbound[i], c.Edge))
	}
	v.credentialsUsed(c)
	v.captureEgress(c)
	v.globalUsed(c)
	if f.Revocation != nil {
		c.Revocation = v.revocation("revocation", f.Revocation)
	}
	if f.Anomaly != nil {
		c.Anomaly = v.anomaly("anomaly", f.Anomaly)
	}
	if f.Tracing != nil {
		c.Tracing = v.tracing("tracing", f.Tracing)
	}
	if f.Audit != nil {
		c.Audit = v.audit("audit", f.Audit)
	}
	v.quic(c, f.QUIC)
	if len(f.Inbound)+len(f.Outbound) == 0 {
		v.fail("inbound", "no inbound or outbound listener is configured")
	}
	if errs := e.result(); len(errs) > 0 {
		return nil, fmt.Errorf("config: invalid:\n%w", errs)
	}
	c.raw = &f
	return c, nil
}

// document decodes data into its one YAML document's root mapping.
func document(data []byte) (*yaml.Node, error) {
	if len(data) > MaxSize {
		return nil, fmt.Errorf("config: %d bytes, over the %d limit", len(data), MaxSize)
	}
	var doc yaml.Node
	dec := yaml.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, errors.New("config: the file is empty")
		}
		return nil, fmt.Errorf("config: %w", err)
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		return nil, errors.New("config: the file holds more than one YAML document")
	}
	root := &doc
	if root.Kind == yaml.DocumentNode && len(root.Content) == 1 {
		root = root.Content[0]
	}
	for root.Kind == yaml.AliasNode && root.Alias != nil {
		root = root.Alias
	}
	if root.Kind != yaml.MappingNode {
		return nil, fmt.Errorf("config: line %d: the file must be a mapping of fields (workload_api, inbound, ...)", root.Line)
	}
	return root, nil
}
