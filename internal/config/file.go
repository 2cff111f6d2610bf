package config

import (
	"fmt"
	"time"

	"gopkg.in/yaml.v3"
)

// file is the YAML shape of the configuration file. Every section is a
// named type; walk checks a document against these types before it is
// decoded, and Diff compares two of them field by field.
type file struct {
	Version       int              `yaml:"version"`
	WorkloadAPI   string           `yaml:"workload_api"`
	Admin         string           `yaml:"admin"`
	TokenEndpoint tokenEndpoint    `yaml:"token_endpoint"`
	Log           fileLog          `yaml:"log"`
	Timeouts      fileTimeouts     `yaml:"timeouts"`
	Limits        fileLimits       `yaml:"limits"`
	TLS           fileTLS          `yaml:"tls"`
	JWT           fileJWT          `yaml:"jwt"`
	Debug         fileDebug        `yaml:"debug"`
	KeyExchange   fileKeyExch      `yaml:"key_exchange"`
	Edge          *fileEdge        `yaml:"edge"`
	QUIC          fileQUIC         `yaml:"quic"`
	Inbound       []fileInbound    `yaml:"inbound"`
	Outbound      []fileOutbound   `yaml:"outbound"`
	Credentials   []fileCredential `yaml:"credentials"`
	Revocation    *fileRevocation  `yaml:"revocation"`
	Anomaly       *fileAnomaly     `yaml:"anomaly"`
	Tracing       *fileTracing     `yaml:"tracing"`
	Audit         *fileAudit       `yaml:"audit"`
}

// fileAudit is the audit trail (package audit).
type fileAudit struct {
	Path               string           `yaml:"path"`
	MaxBytes           int64            `yaml:"max_bytes"`
	MaxFiles           int              `yaml:"max_files"`
	CheckpointEvery    int              `yaml:"checkpoint_every"`
	CheckpointInterval duration         `yaml:"checkpoint_interval"`
	Queue              int              `yaml:"queue"`
	Export             *fileAuditExport `yaml:"export"`
}

// fileAuditExport sends the audit events to an OpenTelemetry collector as
// OTLP logs.
type fileAuditExport struct {
	Endpoint    string   `yaml:"endpoint"`
	Insecure    bool     `yaml:"insecure"`
	ServiceName string   `yaml:"service_name"`
	Queue       int      `yaml:"queue"`
	Timeout     duration `yaml:"timeout"`
}

// fileTracing is the OpenTelemetry tracing of the HTTP modes.
type fileTracing struct {
	Endpoint    string   `yaml:"endpoint"`
	Insecure    bool     `yaml:"insecure"`
	SampleRatio *float64 `yaml:"sample_ratio"`
	ServiceName string   `yaml:"service_name"`
	Queue       int      `yaml:"queue"`
	Timeout     duration `yaml:"timeout"`
	Connections bool     `yaml:"connections"`
}

// fileAnomaly is anomaly detection (proxy/anomaly).
type fileAnomaly struct {
	RefusalBurst   *fileBurst   `yaml:"refusal_burst"`
	TokenFailures  *fileBurst   `yaml:"token_failures"`
	RateSpike      *fileSpike   `yaml:"rate_spike"`
	NewCaller      *fileNovelty `yaml:"new_caller"`
	MaxSubjects    int          `yaml:"max_subjects"`
	MaxCallers     int          `yaml:"max_callers"`
	MaxQuarantined int          `yaml:"max_quarantined"`
	Webhook        *fileWebhook `yaml:"webhook"`
}

// Each detector has its response fields (action, for, cooldown) of its
// own: the walker that checks a document knows no inline structs.
type fileBurst struct {
	Count    int      `yaml:"count"`
	Window   duration `yaml:"window"`
	Action   string   `yaml:"action"`
	For      duration `yaml:"for"`
	Cooldown duration `yaml:"cooldown"`
}

type fileSpike struct {
	Factor   float64  `yaml:"factor"`
	MinRate  float64  `yaml:"min_rate"`
	HalfLife duration `yaml:"half_life"`
	Interval duration `yaml:"interval"`
	WarmUp   duration `yaml:"warm_up"`
	Action   string   `yaml:"action"`
	For      duration `yaml:"for"`
	Cooldown duration `yaml:"cooldown"`
}

type fileNovelty struct {
	Routes   []string `yaml:"routes"`
	LearnFor duration `yaml:"learn_for"`
	Action   string   `yaml:"action"`
	For      duration `yaml:"for"`
	Cooldown duration `yaml:"cooldown"`
}

type fileWebhook struct {
	URL     string            `yaml:"url"`
	Labels  map[string]string `yaml:"labels"`
	Timeout duration          `yaml:"timeout"`
	Queue   int               `yaml:"queue"`
}

// fileRevocation is where the deny list comes from (proxy/revoke): a
// watched file or Redis.
type fileRevocation struct {
	File     string     `yaml:"file"`
	Interval duration   `yaml:"interval"`
	Redis    *fileRedis `yaml:"redis"`
}

type fileRedis struct {
	Address string   `yaml:"address"`
	Key     string   `yaml:"key"`
	Resync  duration `yaml:"resync"`
}

type fileLog struct {
	Level  string `yaml:"level"`
	Format string `yaml:"format"`
}

type fileTimeouts struct {
	Handshake  duration       `yaml:"handshake"`
	Dial       duration       `yaml:"dial"`
	Idle       duration       `yaml:"idle"`
	Park       zeroOrDuration `yaml:"park"`
	Drain      duration       `yaml:"drain"`
	Revalidate duration       `yaml:"revalidate"`
	FirstByte  duration       `yaml:"first_byte"`

	MaxConnectionAge  duration `yaml:"max_connection_age"`
	CloseOnPeerExpiry bool     `yaml:"close_on_peer_expiry"`
}

type fileLimits struct {
	MaxConnections      int               `yaml:"max_connections"`
	OutboundReserve     int               `yaml:"outbound_reserve"`
	MaxHandshakes       int               `yaml:"max_handshakes"`
	HandshakesPerSource int               `yaml:"handshakes_per_source"`
	Global              *fileGlobalLimits `yaml:"global"`
}

// fileGlobalLimits is the global rate limit service (proxy/limit.GlobalConfig).
type fileGlobalLimits struct {
	Service     string   `yaml:"service"`
	Domain      string   `yaml:"domain"`
	Timeout     duration `yaml:"timeout"`
	FailureMode string   `yaml:"failure_mode"`
}

type fileTLS struct {
	SessionResumption *bool `yaml:"session_resumption"`
}

type fileJWT struct {
	Leeway duration `yaml:"leeway"`
}

type fileDebug struct {
	Pprof bool `yaml:"pprof"`
}

type fileKeyExch struct {
	Mode         string            `yaml:"mode"`
	Groups       []string          `yaml:"groups"`
	TrustDomains map[string]string `yaml:"trust_domains"`
}

type fileEdge struct {
	Issuers      []fileIssuer `yaml:"issuers"`
	TxnToken     fileTxnMint  `yaml:"txn_token"`
	KeepExternal bool         `yaml:"keep_external"`
}

type fileIssuer struct {
	Issuer      string   `yaml:"issuer"`
	Audiences   []string `yaml:"audiences"`
	Algorithms  []string `yaml:"algorithms"`
	JWKSFile    string   `yaml:"jwks_file"`
	JWKSURL     string   `yaml:"jwks_url"`
	JWKSCAFile  string   `yaml:"jwks_ca_file"`
	JWKSRefresh duration `yaml:"jwks_refresh"`
}

type fileTxnMint struct {
	TTL      duration   `yaml:"ttl"`
	Audience stringList `yaml:"audience"`
	Scopes   []string   `yaml:"scopes"`
}

type fileQUIC struct {
	MaxStreams       int64    `yaml:"max_streams"`
	HandshakeTimeout duration `yaml:"handshake_timeout"`
	IdleTimeout      duration `yaml:"idle_timeout"`
	HandshakeRate    float64  `yaml:"handshake_rate"`
}

type fileInbound struct {
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
	Routes               []fileRoute    `yaml:"routes"`
	CaseInsensitivePaths bool           `yaml:"case_insensitive_paths"`
	JWT                  fileInboundJWT `yaml:"jwt"`
	TxnToken             fileTxnVerify  `yaml:"txn_token"`
	Limits               *fileLimitsIn  `yaml:"limits"`
	Anomaly              *bool          `yaml:"anomaly"`
	Audit                *bool          `yaml:"audit"`
	Tracing              *bool          `yaml:"tracing"`
}

// fileLimitsIn is an inbound listener's limits (proxy/limit).
type fileLimitsIn struct {
	Requests              *fileLimitSet `yaml:"requests"`
	Connections           *fileLimitSet `yaml:"connections"`
	ConcurrentPerIdentity int           `yaml:"concurrent_per_identity"`
	MaxIdentities         int           `yaml:"max_identities"`
	Global                *fileGlobalIn `yaml:"global"`
}

// fileGlobalIn is what an inbound listener counts against the global
// budget.
type fileGlobalIn struct {
	Requests    bool `yaml:"requests"`
	Connections bool `yaml:"connections"`
}

type fileLimitSet struct {
	Total       *fileRate          `yaml:"total"`
	PerIdentity *fileRate          `yaml:"per_identity"`
	Overrides   []fileRateOverride `yaml:"overrides"`
}

type fileRate struct {
	Rate  float64 `yaml:"rate"`
	Burst int     `yaml:"burst"`
}

type fileRateOverride struct {
	Peers []string `yaml:"peers"`
	Rate  float64  `yaml:"rate"`
	Burst int      `yaml:"burst"`
}

type fileRoute struct {
	Name    string    `yaml:"name"`
	Peers   []string  `yaml:"peers"`
	Methods []string  `yaml:"methods"`
	Paths   []string  `yaml:"paths"`
	Upgrade []string  `yaml:"upgrade"`
	Limit   *fileRate `yaml:"limit"`
}

type fileInboundJWT struct {
	Require bool   `yaml:"require"`
	Header  string `yaml:"header"`
	Pass    bool   `yaml:"pass"`
}

type fileTxnVerify struct {
	Require   bool     `yaml:"require"`
	Minters   []string `yaml:"minters"`
	SingleUse bool     `yaml:"single_use"`
}

type fileOutbound struct {
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

	Capture *fileCapture `yaml:"capture"`
	Egress  *fileEgress  `yaml:"egress"`

	Callers          callers `yaml:"callers"`
	AllowNonLoopback bool    `yaml:"allow_non_loopback"`
}

type fileCapture struct {
	Destinations []fileDestination `yaml:"destinations"`
}

type fileDestination struct {
	CIDR   string   `yaml:"cidr"`
	Port   int      `yaml:"port"`
	Host   string   `yaml:"host"`
	Expect []string `yaml:"expect"`
	Egress string   `yaml:"egress"`
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

// callers is a listener's callers section in YAML.
type callers struct {
	UIDs []int64 `yaml:"uids"`
	GIDs []int64 `yaml:"gids"`
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

// timeout returns the duration for a data-plane field whose zero value
// selects its default and whose negative value means none: 0 if unset, -1
// if set to 0.
func (d zeroOrDuration) timeout() time.Duration {
	if d.set && d.d == 0 {
		return -1
	}
	return d.d
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

type fileEgress struct {
	ServerName string       `yaml:"server_name"`
	CAFile     string       `yaml:"ca_file"`
	Inject     []fileInject `yaml:"inject"`
}

type fileInject struct {
	Credential    string   `yaml:"credential"`
	As            string   `yaml:"as"`
	Name          string   `yaml:"name"`
	Paths         []string `yaml:"paths"`
	AppCredential string   `yaml:"app_credential"`
	Optional      bool     `yaml:"optional"`
}

type fileCredential struct {
	Name    string          `yaml:"name"`
	OAuth2  *fileOAuth2     `yaml:"oauth2"`
	File    *fileSecretFile `yaml:"file"`
	Refresh duration        `yaml:"refresh"`
	Timeout duration        `yaml:"timeout"`
}

type fileOAuth2 struct {
	TokenURL          string   `yaml:"token_url"`
	Auth              string   `yaml:"auth"`
	ClientID          string   `yaml:"client_id"`
	Scopes            []string `yaml:"scopes"`
	Audience          string   `yaml:"audience"`
	Resource          string   `yaml:"resource"`
	AssertionAudience string   `yaml:"assertion_audience"`
	CAFile            string   `yaml:"ca_file"`
	ClientSecretFile  string   `yaml:"client_secret_file"`
}

type fileSecretFile struct {
	Path string `yaml:"path"`
}
