// Package config loads and validates the sidecar's YAML configuration file.
// Decoding is strict: an unknown field is an error (with the field probably
// meant), and every error names the field it is about and its line (for
// example "line 9: inbound[0].allow[1]: ..."). All errors are reported at
// once, as Errors.
package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/netip"
	"os"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"golang.org/x/net/http/httpguts"
	"gopkg.in/yaml.v3"

	"github.com/credflow/credflow/internal/peercred"
	"github.com/credflow/credflow/pqc"
	"github.com/credflow/credflow/proxy"
	"github.com/credflow/credflow/proxy/authz"
	"github.com/credflow/credflow/proxy/route"
	"github.com/credflow/credflow/token/edge"
	"github.com/credflow/credflow/token/exchange"
	"github.com/credflow/credflow/token/txn"
)

// MaxSize bounds the configuration file.
const MaxSize = 1 << 20

// Defaults.
const (
	DefaultAdmin            = "127.0.0.1:15000"
	DefaultLogLevel         = "info"
	DefaultLogFormat        = "json"
	DefaultHandshakeTimeout = 10 * time.Second
	DefaultDialTimeout      = 5 * time.Second
	DefaultIdleTimeout      = time.Hour
	DefaultDrainTimeout     = 30 * time.Second
	DefaultRevalidate       = 5 * time.Second
	DefaultMaxConnections   = 10000
	// DefaultFirstByteTimeout, DefaultMaxHandshakes and
	// DefaultHandshakesPerSource are proxy's; limits.outbound_reserve
	// defaults to a tenth of max_connections.
	DefaultFirstByteTimeout    = proxy.DefaultFirstByteTimeout
	DefaultMaxHandshakes       = proxy.DefaultMaxHandshakes
	DefaultHandshakesPerSource = proxy.DefaultHandshakesPerSource
	// MaxJWTLeeway bounds jwt.leeway (whose default is jwt.DefaultLeeway,
	// the same minute): go-spiffe checks JWT-SVID times with that minute,
	// and a larger tolerance would only lengthen the life of every token.
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

	// FirstByteTimeout is timeouts.first_byte: how long an inbound
	// connection may stay silent after accept before it is closed
	// (first_byte_timeout).
	FirstByteTimeout time.Duration
	// OutboundReserve, MaxHandshakes and HandshakesPerSource are
	// limits.outbound_reserve, limits.max_handshakes and
	// limits.handshakes_per_source (proxy.Config documents them).
	OutboundReserve     int
	MaxHandshakes       int
	HandshakesPerSource int

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

	// QUIC limits; zero fields mean proxy's defaults.
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
	// exchange.AnyAudience is every one, empty none.
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
	// (txn.MintConfig); TxnAudiences is empty for the default, this trust
	// domain.
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
	// the PEM roots for JWKSURL.
	JWKSFile, JWKSURL, JWKSCAFile string
	JWKSRefresh                   time.Duration
}

// Inbound is a validated inbound listener.
type Inbound struct {
	Name, Listen, App string
	Allow             authz.Policy
	QUICListen        string
	// HTTP is set for protocol: http.
	HTTP *proxy.InboundHTTP
}

// Outbound is a validated outbound listener.
type Outbound struct {
	Name, Listen, Upstream   string
	Expect                   authz.Policy
	QUICUpstream, QUICTarget string
	// HTTP is set for protocol: http.
	HTTP *proxy.OutboundHTTP
	// Capture is set for a transparent capture listener.
	Capture *proxy.Capture
	// Callers are callers.uids: the local users whose connections the
	// listener takes; empty (the default) is every local process.
	Callers peercred.Callers
	// AllowNonLoopback is allow_non_loopback: Listen may be an address
	// other hosts can reach (default false: loopback only).
	AllowNonLoopback bool
}

// file is the YAML shape.
type file struct {
	WorkloadAPI   string        `yaml:"workload_api"`
	Admin         string        `yaml:"admin"`
	TokenEndpoint tokenEndpoint `yaml:"token_endpoint"`
	Log           struct {
		Level  string `yaml:"level"`
		Format string `yaml:"format"`
	} `yaml:"log"`
	Timeouts struct {
		Handshake  duration `yaml:"handshake"`
		Dial       duration `yaml:"dial"`
		Idle       duration `yaml:"idle"`
		Drain      duration `yaml:"drain"`
		Revalidate duration `yaml:"revalidate"`
		FirstByte  duration `yaml:"first_byte"`

		MaxConnectionAge  duration `yaml:"max_connection_age"`
		CloseOnPeerExpiry bool     `yaml:"close_on_peer_expiry"`
	} `yaml:"timeouts"`
	Limits struct {
		MaxConnections      int `yaml:"max_connections"`
		OutboundReserve     int `yaml:"outbound_reserve"`
		MaxHandshakes       int `yaml:"max_handshakes"`
		HandshakesPerSource int `yaml:"handshakes_per_source"`
	} `yaml:"limits"`
	TLS struct {
		SessionResumption *bool `yaml:"session_resumption"`
	} `yaml:"tls"`
	JWT struct {
		Leeway duration `yaml:"leeway"`
	} `yaml:"jwt"`
	Debug struct {
		Pprof bool `yaml:"pprof"`
	} `yaml:"debug"`
	KeyExchange struct {
		Mode         string            `yaml:"mode"`
		Groups       []string          `yaml:"groups"`
		TrustDomains map[string]string `yaml:"trust_domains"`
	} `yaml:"key_exchange"`
	Edge *struct {
		Issuers []struct {
			Issuer      string   `yaml:"issuer"`
			Audiences   []string `yaml:"audiences"`
			Algorithms  []string `yaml:"algorithms"`
			JWKSFile    string   `yaml:"jwks_file"`
			JWKSURL     string   `yaml:"jwks_url"`
			JWKSCAFile  string   `yaml:"jwks_ca_file"`
			JWKSRefresh duration `yaml:"jwks_refresh"`
		} `yaml:"issuers"`
		TxnToken struct {
			TTL      duration   `yaml:"ttl"`
			Audience stringList `yaml:"audience"`
			Scopes   []string   `yaml:"scopes"`
		} `yaml:"txn_token"`
		KeepExternal bool `yaml:"keep_external"`
	} `yaml:"edge"`
	QUIC struct {
		MaxStreams       int64    `yaml:"max_streams"`
		HandshakeTimeout duration `yaml:"handshake_timeout"`
		IdleTimeout      duration `yaml:"idle_timeout"`
		HandshakeRate    float64  `yaml:"handshake_rate"`
	} `yaml:"quic"`
	Inbound []struct {
		Name   string   `yaml:"name"`
		Listen string   `yaml:"listen"`
		App    string   `yaml:"app"`
		Allow  []string `yaml:"allow"`
		QUIC   string   `yaml:"quic_listen"`

		Protocol             string         `yaml:"protocol"`
		AppProtocol          string         `yaml:"app_protocol"`
		AppResponseTimeout   zeroOrDuration `yaml:"app_response_timeout"`
		AppConnections       int            `yaml:"app_connections"`
		MaxConcurrentStreams int            `yaml:"max_concurrent_streams"`
		Routes               []struct {
			Peers   []string `yaml:"peers"`
			Methods []string `yaml:"methods"`
			Paths   []string `yaml:"paths"`
			Upgrade []string `yaml:"upgrade"`
		} `yaml:"routes"`
		CaseInsensitivePaths bool `yaml:"case_insensitive_paths"`
		JWT                  struct {
			Require bool   `yaml:"require"`
			Header  string `yaml:"header"`
			Pass    bool   `yaml:"pass"`
		} `yaml:"jwt"`
		TxnToken struct {
			Require   bool     `yaml:"require"`
			Minters   []string `yaml:"minters"`
			SingleUse bool     `yaml:"single_use"`
		} `yaml:"txn_token"`
	} `yaml:"inbound"`
	Outbound []struct {
		Name      string   `yaml:"name"`
		Listen    string   `yaml:"listen"`
		Upstream  string   `yaml:"upstream"`
		Expect    []string `yaml:"expect"`
		Transport string   `yaml:"transport"`
		QUIC      string   `yaml:"quic_upstream"`
		Target    string   `yaml:"quic_target"`

		Protocol    string `yaml:"protocol"`
		JWTAudience string `yaml:"jwt_audience"`
		TokenHeader string `yaml:"token_header"`
		Pool        int    `yaml:"pool"`
		Exchange    bool   `yaml:"exchange"`

		Capture *struct {
			Destinations []struct {
				CIDR   string   `yaml:"cidr"`
				Port   int      `yaml:"port"`
				Host   string   `yaml:"host"`
				Expect []string `yaml:"expect"`
			} `yaml:"destinations"`
		} `yaml:"capture"`

		Callers          callers `yaml:"callers"`
		AllowNonLoopback bool    `yaml:"allow_non_loopback"`
	} `yaml:"outbound"`
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

// tokenEndpoint is token_endpoint in YAML: an address, or a mapping.
type tokenEndpoint struct {
	Listen      string   `yaml:"listen"`
	SocketGroup *int64   `yaml:"socket_group"`
	Callers     callers  `yaml:"callers"`
	Audiences   []string `yaml:"audiences"`

	NewAudienceRate  float64 `yaml:"new_audience_rate"`
	NewAudienceBurst int     `yaml:"new_audience_burst"`
	MaxAudiences     int     `yaml:"max_audiences"`
	set              bool
}

// callers is a listener's callers section in YAML.
type callers struct {
	UIDs []int64 `yaml:"uids"`
	GIDs []int64 `yaml:"gids"`
}

// parse checks the uids and gids of the callers section at field.
func (c callers) parse(field string, fail func(field, format string, args ...any)) peercred.Callers {
	var out peercred.Callers
	id := func(field string, v int64) uint32 {
		if v < 0 || v >= int64(peercred.NoID) {
			fail(field, "%d is not a uid or gid", v)
		}
		return uint32(v)
	}
	for i, u := range c.UIDs {
		out.UIDs = append(out.UIDs, id(fmt.Sprintf("%s.uids[%d]", field, i), u))
	}
	for i, g := range c.GIDs {
		out.GIDs = append(out.GIDs, id(fmt.Sprintf("%s.gids[%d]", field, i), g))
	}
	return out
}

// UnmarshalYAML takes "token_endpoint: ADDR" as {listen: ADDR}. Unknown
// fields of the mapping are errors, as everywhere in the file (the
// decoder's KnownFields does not reach into custom unmarshalers).
func (t *tokenEndpoint) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind == yaml.ScalarNode {
		t.set = n.Value != ""
		return n.Decode(&t.Listen)
	}
	t.set = true
	if err := knownKeys(n, "token_endpoint", "listen", "socket_group", "callers", "audiences",
		"new_audience_rate", "new_audience_burst", "max_audiences"); err != nil {
		return err
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		if n.Content[i].Value == "callers" {
			if err := knownKeys(n.Content[i+1], "token_endpoint.callers", "uids", "gids"); err != nil {
				return err
			}
		}
	}
	type plain tokenEndpoint
	return n.Decode((*plain)(t))
}

// knownKeys refuses a key of the mapping n that is not one of keys.
func knownKeys(n *yaml.Node, field string, keys ...string) error {
	if n.Kind != yaml.MappingNode {
		return nil // the decoder reports the wrong kind
	}
	for i := 0; i < len(n.Content); i += 2 {
		if k := n.Content[i]; !slices.Contains(keys, k.Value) {
			return fmt.Errorf("line %d: field %s not found in %s (known: %s)", k.Line, k.Value, field, strings.Join(keys, ", "))
		}
	}
	return nil
}

// parseTokenEndpoint checks the token_endpoint section.
func parseTokenEndpoint(t *tokenEndpoint, admin string, edge bool, fail func(field, format string, args ...any)) *TokenEndpoint {
	te := &TokenEndpoint{SocketGroup: -1, Audiences: t.Audiences}
	if path, ok := strings.CutPrefix(t.Listen, "unix://"); ok {
		te.Network, te.Address = "unix", path
		switch {
		case !strings.HasPrefix(path, "/"):
			fail("token_endpoint.listen", "%q: the socket path must be absolute (unix:///run/credflow/token.sock)", t.Listen)
		case len(path) > 107:
			fail("token_endpoint.listen", "%q: a unix socket path is at most 107 bytes", t.Listen)
		}
	} else {
		te.Network, te.Address = "tcp", t.Listen
		if err := checkAddr(t.Listen, true); err != nil {
			fail("token_endpoint.listen", "%v (or unix:///path/to.sock)", err)
		} else if clash(t.Listen, admin) {
			fail("token_endpoint.listen", "%s clashes with admin (%s)", t.Listen, admin)
		}
	}
	id := func(field string, v int64) uint32 {
		if v < 0 || v >= int64(peercred.NoID) {
			fail(field, "%d is not a uid or gid", v)
		}
		return uint32(v)
	}
	if t.SocketGroup != nil {
		if te.Network != "unix" {
			fail("token_endpoint.socket_group", "only applies to a unix:// listen address")
		}
		te.SocketGroup = int(id("token_endpoint.socket_group", *t.SocketGroup))
	}
	te.Callers = t.Callers.parse("token_endpoint.callers", fail)
	if len(te.Callers.GIDs) > 0 && te.Network != "unix" {
		fail("token_endpoint.callers.gids", "a TCP caller has no group the kernel can name; use uids, or a unix:// listen address")
	}
	for i, a := range t.Audiences {
		if a == "" {
			fail(fmt.Sprintf("token_endpoint.audiences[%d]", i), "empty")
		}
	}
	te.NewAudienceRate, te.NewAudienceBurst, te.MaxAudiences = t.NewAudienceRate, t.NewAudienceBurst, t.MaxAudiences
	if t.NewAudienceRate < 0 || math.IsNaN(t.NewAudienceRate) || math.IsInf(t.NewAudienceRate, 0) {
		fail("token_endpoint.new_audience_rate", "must be a positive number of audiences a second (absent: %d)", exchange.DefaultNewAudienceRate)
	}
	if t.NewAudienceBurst < 0 {
		fail("token_endpoint.new_audience_burst", "must be positive (absent: %d)", exchange.DefaultNewAudienceBurst)
	}
	if t.MaxAudiences < 0 {
		fail("token_endpoint.max_audiences", "must be positive (absent: %d)", exchange.DefaultMaxAudiences)
	}
	if len(t.Audiences) == 0 && !edge {
		fail("token_endpoint.audiences", "required: the audiences this workload's JWT-SVIDs may be issued for "+
			"(token_endpoint: {listen: %s, audiences: [spiffe://example.org/backend]}; %q allows every audience)",
			cmpOr(t.Listen, "127.0.0.1:15080"), exchange.AnyAudience)
	}
	return te
}

// duration is a time.Duration written as "10s" in YAML.
type duration struct {
	d   time.Duration
	set bool
}

func (d *duration) UnmarshalYAML(n *yaml.Node) error {
	v, err := time.ParseDuration(n.Value)
	if err != nil {
		return fmt.Errorf("%q is not a duration such as 10s or 1m30s", n.Value)
	}
	if v <= 0 {
		return fmt.Errorf("%q must be positive", n.Value)
	}
	d.d, d.set = v, true
	return nil
}

// stringList is a list of strings written as a YAML sequence or, for one
// value, a scalar.
type stringList []string

func (l *stringList) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind == yaml.ScalarNode {
		*l = stringList{n.Value}
		return nil
	}
	var v []string
	if err := n.Decode(&v); err != nil {
		return fmt.Errorf("line %d: want a string or a list of strings", n.Line)
	}
	*l = v
	return nil
}

func (d duration) or(def time.Duration) time.Duration {
	if d.set {
		return d.d
	}
	return def
}

// zeroOrDuration is a duration that may also be 0 ("0" or "0s"), meaning
// none.
type zeroOrDuration struct{ duration }

func (d *zeroOrDuration) UnmarshalYAML(n *yaml.Node) error {
	if v, err := time.ParseDuration(n.Value); err == nil && v == 0 {
		d.d, d.set = 0, true
		return nil
	}
	return d.duration.UnmarshalYAML(n)
}

// timeout returns the duration for a proxy field whose zero value selects
// its default and whose negative value means none: 0 if unset, -1 if set
// to 0.
func (d zeroOrDuration) timeout() time.Duration {
	if d.set && d.d == 0 {
		return -1
	}
	return d.d
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

	// Structure first (unknown fields, wrong kinds, bad values), then
	// meaning; every error is reported, each with its field path.
	e := &errList{lines: map[string]int{}}
	newWalker(e, len(data)).walk(root, reflect.TypeFor[file](), "")
	var f file
	if err := root.Decode(&f); err != nil {
		return nil, fmt.Errorf("config: %w", err) // the walk lets through nothing the decoder refuses
	}
	var err error
	fail := e.add
	c := &Config{
		WorkloadAPI:      f.WorkloadAPI,
		Admin:            cmpOr(f.Admin, DefaultAdmin),
		LogLevel:         cmpOr(f.Log.Level, DefaultLogLevel),
		LogFormat:        cmpOr(f.Log.Format, DefaultLogFormat),
		HandshakeTimeout: f.Timeouts.Handshake.or(DefaultHandshakeTimeout),
		DialTimeout:      f.Timeouts.Dial.or(DefaultDialTimeout),
		IdleTimeout:      f.Timeouts.Idle.or(DefaultIdleTimeout),
		DrainTimeout:     f.Timeouts.Drain.or(DefaultDrainTimeout),
		Revalidate:       f.Timeouts.Revalidate.or(DefaultRevalidate),
		MaxConnections:   f.Limits.MaxConnections,
		NoResumption:     f.TLS.SessionResumption != nil && !*f.TLS.SessionResumption,
		Pprof:            f.Debug.Pprof,
	}
	c.MaxConnectionAge = f.Timeouts.MaxConnectionAge.or(0)
	c.CloseOnPeerExpiry = f.Timeouts.CloseOnPeerExpiry
	switch {
	case c.MaxConnections == 0:
		c.MaxConnections = DefaultMaxConnections
	case c.MaxConnections < 0:
		fail("limits.max_connections", "must be positive")
	}
	c.FirstByteTimeout = f.Timeouts.FirstByte.or(DefaultFirstByteTimeout)
	if c.FirstByteTimeout > c.HandshakeTimeout {
		fail("timeouts.first_byte", "%s is longer than timeouts.handshake (%s), which bounds the whole handshake", c.FirstByteTimeout, c.HandshakeTimeout)
	}
	c.OutboundReserve, c.MaxHandshakes, c.HandshakesPerSource = f.Limits.OutboundReserve, f.Limits.MaxHandshakes, f.Limits.HandshakesPerSource
	switch {
	case c.OutboundReserve < 0:
		fail("limits.outbound_reserve", "must be positive (0 or absent: a tenth of max_connections)")
	case c.OutboundReserve > 0 && c.OutboundReserve >= c.MaxConnections:
		fail("limits.outbound_reserve", "%d leaves no slot of max_connections (%d) for inbound connections", c.OutboundReserve, c.MaxConnections)
	}
	if c.MaxHandshakes < 0 {
		fail("limits.max_handshakes", "must be positive (0 or absent: %d)", DefaultMaxHandshakes)
	}
	if c.HandshakesPerSource < 0 {
		fail("limits.handshakes_per_source", "must be positive (0 or absent: %d)", DefaultHandshakesPerSource)
	}
	switch c.LogLevel {
	case "debug", "info", "warn", "error":
	default:
		fail("log.level", "%q is not debug, info, warn or error", c.LogLevel)
	}
	switch c.LogFormat {
	case "json", "text":
	default:
		fail("log.format", "%q is not json or text", c.LogFormat)
	}
	if err := checkAddr(c.Admin, true); err != nil {
		fail("admin", "%v", err)
	}
	if f.TokenEndpoint.set {
		c.TokenEndpoint = parseTokenEndpoint(&f.TokenEndpoint, c.Admin, f.Edge != nil, fail)
	}
	if c.KeyExchange.Mode, err = pqc.ParseMode(f.KeyExchange.Mode); err != nil {
		fail("key_exchange.mode", "%v", err)
	}
	for i, g := range f.KeyExchange.Groups {
		id, err := pqc.ParseGroup(g)
		if err != nil {
			fail(fmt.Sprintf("key_exchange.groups[%d]", i), "%v", err)
			continue
		}
		c.KeyExchange.Groups = append(c.KeyExchange.Groups, id)
	}
	for name, mode := range f.KeyExchange.TrustDomains {
		field := "key_exchange.trust_domains." + name
		td, err := spiffeid.TrustDomainFromString(name)
		if err != nil {
			fail(field, "%v", err)
			continue
		}
		m, err := pqc.ParseMode(mode)
		if err != nil {
			fail(field, "%v", err)
			continue
		}
		if c.KeyExchange.Overrides == nil {
			c.KeyExchange.Overrides = map[spiffeid.TrustDomain]pqc.Mode{}
		}
		c.KeyExchange.Overrides[td] = m
	}

	if c.JWTLeeway = f.JWT.Leeway.or(jwt.DefaultLeeway); c.JWTLeeway > MaxJWTLeeway {
		fail("jwt.leeway", "%v is over the %v limit", c.JWTLeeway, MaxJWTLeeway)
	}
	if f.Edge != nil {
		c.Edge = parseEdge(f.Edge.Issuers, e)
		c.Edge.Leeway = c.JWTLeeway
		c.Edge.TxnTTL = f.Edge.TxnToken.TTL.or(txn.DefaultTTL)
		if c.Edge.TxnTTL > txn.MaxTTL {
			fail("edge.txn_token.ttl", "%v is over the %v limit", c.Edge.TxnTTL, txn.MaxTTL)
		}
		if aud := f.Edge.TxnToken.Audience; aud != nil {
			if err := txn.CheckAudiences(aud); err != nil {
				fail("edge.txn_token.audience", "%v", err)
			}
			c.Edge.TxnAudiences = aud
		}
		c.Edge.Scopes, c.Edge.KeepExternal = f.Edge.TxnToken.Scopes, f.Edge.KeepExternal
	}

	names := map[string]string{}
	ports := map[string]string{} // listen address -> field
	if c.Admin != "" {
		ports[c.Admin] = "admin"
	}
	if te := c.TokenEndpoint; te != nil && te.Network == "tcp" {
		ports[te.Address] = "token_endpoint"
	}
	claim := func(field, name, listen string) {
		if name == "" {
			fail(field+".name", "required")
		} else if prev, dup := names[name]; dup {
			fail(field+".name", "%q is also the name of %s", name, prev)
		} else {
			names[name] = field
		}
		if err := checkAddr(listen, false); err != nil {
			fail(field+".listen", "%v", err)
			return
		}
		for addr, prev := range ports {
			if clash(addr, listen) {
				fail(field+".listen", "%s clashes with %s (%s)", listen, prev, addr)
			}
		}
		ports[listen] = field + ".listen"
	}
	for i, in := range f.Inbound {
		field := fmt.Sprintf("inbound[%d]", i)
		claim(field, in.Name, in.Listen)
		if err := checkAddr(in.App, true); err != nil {
			fail(field+".app", "%v", err)
		}
		pol := policy(e, field+".allow", in.Allow)
		if in.QUIC != "" {
			if err := checkAddr(in.QUIC, false); err != nil {
				fail(field+".quic_listen", "%v", err)
			}
		}
		ib := Inbound{Name: in.Name, Listen: in.Listen, App: in.App, Allow: pol, QUICListen: in.QUIC}
		switch in.Protocol {
		case "", "tcp":
			if len(in.Routes) > 0 || in.JWT.Require || in.AppProtocol != "" || in.TxnToken.Require || len(in.TxnToken.Minters) > 0 ||
				in.TxnToken.SingleUse || in.AppResponseTimeout.set || in.AppConnections != 0 || in.MaxConcurrentStreams != 0 {
				fail(field+".protocol", "routes, jwt, txn_token, app_protocol, app_response_timeout, app_connections and max_concurrent_streams need protocol: http")
			}
		case "http":
			h := &proxy.InboundHTTP{RequireJWT: in.JWT.Require, TokenHeader: in.JWT.Header, PassJWT: in.JWT.Pass,
				ResponseHeaderTimeout: in.AppResponseTimeout.timeout(), AppConnections: in.AppConnections, MaxConcurrentStreams: in.MaxConcurrentStreams,
				TxnLeeway: c.JWTLeeway}
			if in.AppConnections < 0 {
				fail(field+".app_connections", "must be positive")
			}
			switch {
			case in.MaxConcurrentStreams < 0:
				fail(field+".max_concurrent_streams", "must be positive")
			case in.MaxConcurrentStreams > math.MaxInt32:
				fail(field+".max_concurrent_streams", "at most %d", math.MaxInt32)
			}
			h.Routes.CaseInsensitive = in.CaseInsensitivePaths
			switch in.AppProtocol {
			case "", "http1":
			case "h2c":
				h.AppH2C = true
			default:
				fail(field+".app_protocol", "%q is not http1 or h2c", in.AppProtocol)
			}
			if len(in.Routes) == 0 {
				fail(field+".routes", "protocol http denies every request without a route")
			}
			for j, r := range in.Routes {
				rf := fmt.Sprintf("%s.routes[%d]", field, j)
				peers := policy(e, rf+".peers", r.Peers)
				rule := route.Rule{Peers: peers}
				for _, m := range r.Methods {
					if m == "" || strings.ToUpper(m) != m || strings.ContainsAny(m, " \t/") {
						fail(rf+".methods", "%q is not an upper-case HTTP method", m)
					}
					rule.Methods = append(rule.Methods, m)
				}
				if len(r.Paths) == 0 {
					fail(rf+".paths", "at least one path (exact, or a prefix ending in /*) is required")
				}
				for k, ps := range r.Paths {
					pth, err := route.ParsePath(ps)
					if err != nil {
						fail(fmt.Sprintf("%s.paths[%d]", rf, k), "%v", err)
						continue
					}
					rule.Paths = append(rule.Paths, pth)
				}
				if len(r.Upgrade) > 0 && h.AppH2C {
					fail(rf+".upgrade", "needs app_protocol http1: an HTTP/2 connection to the app cannot switch protocols")
				}
				for k, up := range r.Upgrade {
					if err := checkUpgrade(up); err != nil {
						fail(fmt.Sprintf("%s.upgrade[%d]", rf, k), "%v", err)
					}
					rule.Upgrade = append(rule.Upgrade, up)
				}
				h.Routes.Rules = append(h.Routes.Rules, rule)
			}
			if len(in.TxnToken.Minters) > 0 {
				h.TxnMinters = policy(e, field+".txn_token.minters", in.TxnToken.Minters)
			} else if in.TxnToken.Require {
				fail(field+".txn_token.minters", "require: true needs the workloads allowed to mint")
			} else if in.TxnToken.SingleUse {
				fail(field+".txn_token.minters", "single_use: true needs the workloads allowed to mint")
			}
			h.RequireTxn, h.TxnSingleUse = in.TxnToken.Require, in.TxnToken.SingleUse
			if in.QUIC != "" {
				fail(field+".quic_listen", "QUIC carries protocol tcp only")
			}
			ib.HTTP = h
		default:
			fail(field+".protocol", "%q is not tcp or http", in.Protocol)
		}
		c.Inbound = append(c.Inbound, ib)
	}
	for i, out := range f.Outbound {
		field := fmt.Sprintf("outbound[%d]", i)
		claim(field, out.Name, out.Listen)
		if !out.AllowNonLoopback && checkAddr(out.Listen, false) == nil && !isLoopback(out.Listen) {
			fail(field+".listen", "%s is not a loopback address; set allow_non_loopback: true to listen there", out.Listen)
		}
		o := Outbound{Name: out.Name, Listen: out.Listen, Upstream: out.Upstream, AllowNonLoopback: out.AllowNonLoopback,
			Callers: out.Callers.parse(field+".callers", fail)}
		if len(o.Callers.GIDs) > 0 {
			fail(field+".callers.gids", "a TCP caller has no group the kernel can name; use uids")
		}
		if out.Capture != nil {
			o.Capture = parseCapture(field, out.Capture.Destinations, e)
			if out.Upstream != "" {
				fail(field+".upstream", "a capture listener sends each connection to its original destination; remove upstream")
			}
			if out.Protocol != "" && out.Protocol != "tcp" || out.Transport != "" && out.Transport != "tcp" {
				fail(field+".capture", "capture carries protocol tcp over transport tcp only")
			}
			if len(out.Expect) > 0 {
				o.Expect = policy(e, field+".expect", out.Expect)
			}
			c.Outbound = append(c.Outbound, o)
			continue
		}
		if err := checkAddr(out.Upstream, false); err != nil {
			fail(field+".upstream", "%v", err)
		}
		o.Expect = policy(e, field+".expect", out.Expect)
		switch out.Transport {
		case "", "tcp":
			if out.QUIC != "" || out.Target != "" {
				fail(field+".quic_upstream", "set, but transport is not quic")
			}
		case "quic":
			o.QUICUpstream, o.QUICTarget = cmpOr(out.QUIC, out.Upstream), out.Target
			if err := checkAddr(o.QUICUpstream, false); err != nil {
				fail(field+".quic_upstream", "%v", err)
			}
			if len(o.QUICTarget) > 255 {
				fail(field+".quic_target", "longer than 255 bytes")
			}
		default:
			fail(field+".transport", "%q is not tcp or quic", out.Transport)
		}
		switch out.Protocol {
		case "", "tcp":
			if out.JWTAudience != "" || out.Pool != 0 || out.TokenHeader != "" || out.Exchange {
				fail(field+".protocol", "jwt_audience, token_header, pool and exchange need protocol: http")
			}
		case "http":
			if out.Pool < 0 {
				fail(field+".pool", "must be positive")
			}
			if o.QUICUpstream != "" {
				fail(field+".transport", "QUIC carries protocol tcp only")
			}
			o.HTTP = &proxy.OutboundHTTP{JWTAudience: out.JWTAudience, TokenHeader: out.TokenHeader, Pool: out.Pool, Exchange: out.Exchange}
			if out.Exchange {
				if c.Edge == nil {
					fail(field+".exchange", "needs an edge section with the external issuers")
				} else {
					o.HTTP.KeepExternal = c.Edge.KeepExternal
				}
			}
		default:
			fail(field+".protocol", "%q is not tcp or http", out.Protocol)
		}
		c.Outbound = append(c.Outbound, o)
	}
	c.QUICMaxStreams, c.QUICHandshakeTimeout, c.QUICIdleTimeout = f.QUIC.MaxStreams, f.QUIC.HandshakeTimeout.or(0), f.QUIC.IdleTimeout.or(0)
	if c.QUICHandshakeRate = f.QUIC.HandshakeRate; c.QUICHandshakeRate < 0 {
		fail("quic.handshake_rate", "must be positive")
	}
	if c.QUICMaxStreams < 0 {
		fail("quic.max_streams", "must be positive")
	}
	if len(f.Inbound)+len(f.Outbound) == 0 {
		fail("inbound", "no inbound or outbound listener is configured")
	}
	if errs := e.result(); len(errs) > 0 {
		return nil, fmt.Errorf("config: invalid:\n%w", errs)
	}
	c.raw = &f
	return c, nil
}

// parseEdge checks the external issuers.
func parseEdge(issuers []struct {
	Issuer      string   `yaml:"issuer"`
	Audiences   []string `yaml:"audiences"`
	Algorithms  []string `yaml:"algorithms"`
	JWKSFile    string   `yaml:"jwks_file"`
	JWKSURL     string   `yaml:"jwks_url"`
	JWKSCAFile  string   `yaml:"jwks_ca_file"`
	JWKSRefresh duration `yaml:"jwks_refresh"`
}, errs *errList) *Edge {
	fail := errs.add
	e := &Edge{}
	if len(issuers) == 0 {
		fail("edge.issuers", "at least one external issuer is required")
	}
	seen := map[string]bool{}
	for i, is := range issuers {
		field := fmt.Sprintf("edge.issuers[%d]", i)
		switch {
		case is.Issuer == "":
			fail(field+".issuer", "required (the exact iss of its tokens)")
		case seen[is.Issuer]:
			fail(field+".issuer", "%q is configured twice", is.Issuer)
		}
		seen[is.Issuer] = true
		if len(is.Audiences) == 0 || slices.Contains(is.Audiences, "") {
			fail(field+".audiences", "at least one non-empty audience is required; the audience check is never skipped")
		}
		for j, a := range is.Algorithms {
			if err := edge.CheckAlgorithm(a); err != nil {
				fail(fmt.Sprintf("%s.algorithms[%d]", field, j), "%q is not an asymmetric JWS algorithm (RS*, PS*, ES*, EdDSA)", a)
			}
		}
		switch {
		case (is.JWKSFile == "") == (is.JWKSURL == ""):
			fail(field, "exactly one of jwks_file and jwks_url is required")
		case is.JWKSURL != "" && !strings.HasPrefix(is.JWKSURL, "https://"):
			fail(field+".jwks_url", "%q is not an https:// URL", is.JWKSURL)
		case is.JWKSCAFile != "" && is.JWKSURL == "":
			fail(field+".jwks_ca_file", "only applies to jwks_url")
		}
		e.Issuers = append(e.Issuers, Issuer{Issuer: is.Issuer, Audiences: is.Audiences, Algorithms: is.Algorithms,
			JWKSFile: is.JWKSFile, JWKSURL: is.JWKSURL, JWKSCAFile: is.JWKSCAFile, JWKSRefresh: is.JWKSRefresh.or(edge.DefaultRefresh)})
	}
	return e
}

// parseCapture checks a capture listener's destinations.
func parseCapture(field string, dests []struct {
	CIDR   string   `yaml:"cidr"`
	Port   int      `yaml:"port"`
	Host   string   `yaml:"host"`
	Expect []string `yaml:"expect"`
}, errs *errList) *proxy.Capture {
	fail := errs.add
	c := &proxy.Capture{}
	for j, d := range dests {
		df := fmt.Sprintf("%s.capture.destinations[%d]", field, j)
		var dst proxy.Destination
		if d.CIDR != "" {
			p, err := netip.ParsePrefix(d.CIDR)
			if err != nil {
				fail(df+".cidr", "%q is not a CIDR such as 10.96.0.0/12 or fd00:10:96::/112", d.CIDR)
			}
			dst.Prefix = p.Masked()
		}
		if d.Port < 0 || d.Port > 65535 {
			fail(df+".port", "%d is not a port", d.Port)
		}
		dst.Port = uint16(d.Port)
		if d.Host != "" {
			if strings.ContainsAny(d.Host, " /:") || len(d.Host) > 253 {
				fail(df+".host", "%q is not a host name", d.Host)
			}
			dst.Host = strings.TrimSuffix(d.Host, ".")
		}
		if d.CIDR == "" && d.Port == 0 && d.Host == "" {
			fail(df, "a cidr, a port, a host or a combination is required")
		}
		dst.Expect = policy(errs, df+".expect", d.Expect)
		c.Destinations = append(c.Destinations, dst)
	}
	return c
}

func cmpOr(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// policy parses a list of SPIFFE ID patterns, naming each bad entry.
func policy(errs *errList, field string, patterns []string) authz.Policy {
	if len(patterns) == 0 {
		errs.add(field, "at least one SPIFFE ID, trust domain or prefix is required")
		return authz.Policy{}
	}
	bad := false
	for i, s := range patterns {
		if _, err := authz.ParsePattern(s); err != nil {
			errs.add(fmt.Sprintf("%s[%d]", field, i), "%v", err)
			bad = true
		}
	}
	if bad {
		return authz.Policy{}
	}
	pol, err := authz.ParsePolicy(patterns)
	if err != nil {
		errs.add(field, "%v", err)
	}
	return pol
}

// checkUpgrade checks a protocol a route lets requests switch to: one
// protocol token as an Upgrade header carries it ("websocket", or a
// name/version pair), and never h2c, whose HTTP/2 connection to the app
// would carry requests no route has seen.
func checkUpgrade(up string) error {
	name, version, versioned := strings.Cut(up, "/")
	if !httpguts.ValidHeaderFieldName(name) || versioned && !httpguts.ValidHeaderFieldName(version) {
		return fmt.Errorf("%q is not a protocol such as websocket", up)
	}
	if strings.EqualFold(name, "h2c") {
		return errors.New("h2c is never forwarded: its HTTP/2 connection to the app would carry requests no route has seen")
	}
	return nil
}

// checkAddr checks a host:port address with a numeric port; with loopback
// set, the host must be a loopback IP or "localhost".
func checkAddr(addr string, loopback bool) error {
	if addr == "" {
		return errors.New("required")
	}
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("%q: %v", addr, err)
	}
	if n, err := strconv.Atoi(port); err != nil || n < 0 || n > 65535 {
		return fmt.Errorf("%q: port %q is not a number from 0 to 65535", addr, port)
	}
	if loopback && !isLoopback(addr) {
		return fmt.Errorf("%q: must be a loopback address (127.0.0.1, [::1] or localhost)", addr)
	}
	return nil
}

// isLoopback reports whether the host of the host:port addr is a loopback
// IP or "localhost".
func isLoopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	ip := net.ParseIP(host)
	return host == "localhost" || ip != nil && ip.IsLoopback()
}

// clash reports whether two listen addresses would collide: the same port
// (other than 0) on the same host, or on a wildcard host.
func clash(a, b string) bool {
	ha, pa, _ := net.SplitHostPort(a)
	hb, pb, _ := net.SplitHostPort(b)
	if pa != pb || pa == "0" {
		return false
	}
	wild := func(h string) bool { return h == "" || h == "0.0.0.0" || h == "::" }
	return ha == hb || wild(ha) || wild(hb)
}
