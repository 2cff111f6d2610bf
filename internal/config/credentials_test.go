package config_test

import (
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/credflow/credflow/internal/config"
)

const egressConfig = `
credentials:
  - name: payments-token
    oauth2:
      token_url: https://auth.example.com/oauth2/token
      scopes: [payments.write]
      audience: https://api.payments.example
  - name: payments-key
    file: {path: /var/run/secrets/payments/api-key}
    refresh: 10s
outbound:
  - name: payments
    listen: 127.0.0.1:15101
    upstream: api.payments.example:443
    egress:
      ca_file: /etc/credflow/payments-ca.pem
      inject:
        - {credential: payments-token, paths: [/v1/]}
        - {credential: payments-key, as: header, name: X-Api-Key, app_credential: refuse}
`

func TestParseEgress(t *testing.T) {
	c, err := config.Parse([]byte(egressConfig))
	if err != nil {
		t.Fatal(err)
	}
	want := []config.Credential{
		{Name: "payments-token", OAuth2: &config.OAuth2{TokenURL: "https://auth.example.com/oauth2/token", Auth: config.AuthJWTBearer,
			Scopes: []string{"payments.write"}, Audience: "https://api.payments.example"}},
		{Name: "payments-key", File: "/var/run/secrets/payments/api-key", Refresh: 10 * time.Second},
	}
	if d := cmp.Diff(want, c.Credentials); d != "" {
		t.Errorf("credentials (-want +got):\n%s", d)
	}
	wantEgress := &config.Egress{CAFile: "/etc/credflow/payments-ca.pem", Inject: []config.Injection{
		{Credential: "payments-token", Place: config.PlaceBearer, Paths: []string{"/v1/"}},
		{Credential: "payments-key", Place: config.PlaceHeader, Name: "X-Api-Key", RefuseApp: true},
	}}
	if d := cmp.Diff(wantEgress, c.Outbound[0].Egress); d != "" {
		t.Errorf("egress (-want +got):\n%s", d)
	}
}

// TestParseEgressErrors: each mistake in a credential or an egress
// listener is refused at load with its field named.
func TestParseEgressErrors(t *testing.T) {
	for _, bad := range []struct{ name, from, to, want string }{
		{"token endpoint over plain http", "https://auth.example.com", "http://auth.example.com", "credentials[0].oauth2.token_url: \"http://auth.example.com/oauth2/token\": the assertion goes over https only"},
		{"no token endpoint", "      token_url: https://auth.example.com/oauth2/token\n", "", "credentials[0].oauth2.token_url: the authorization server's token endpoint is required"},
		{"unknown auth", "      scopes:", "      auth: client-password\n      scopes:", "credentials[0].oauth2.auth: \"client-password\" is not jwt-bearer, client-assertion-spiffe or client-secret"},
		{"client secret without its file", "      scopes:", "      auth: client-secret\n      client_id: legacy\n      scopes:", "credentials[0].oauth2.client_secret_file: client-secret reads the secret from a mounted file"},
		{"client secret without a client", "      scopes:", "      auth: client-secret\n      client_secret_file: /s\n      scopes:", "credentials[0].oauth2.client_id: client-secret names the client"},
		{"a secret file with the SVID", "      scopes:", "      client_secret_file: /s\n      scopes:", "credentials[0].oauth2.client_secret_file: only with auth: client-secret"},
		{"client assertion without a client", "      scopes:", "      auth: client-assertion-spiffe\n      scopes:", "credentials[0].oauth2.client_id"},
		{"both sources", "    refresh: 10s", "    refresh: 10s\n    oauth2: {token_url: https://a.example/t}", "credentials[1]: exactly one of oauth2 and file"},
		{"duplicate name", "name: payments-key", "name: payments-token", "credentials[1].name: \"payments-token\" is also credentials[0]'s name"},
		{"refresh too short", "refresh: 10s", "refresh: 10ms", "credentials[1].refresh: at least 1s"},
		{"unknown credential", "{credential: payments-token,", "{credential: payment-token,", "outbound[0].egress.inject[0].credential: \"payment-token\" is not one of credentials[].name"},
		{"unknown place", "as: header", "as: cookie", "outbound[0].egress.inject[1].as: \"cookie\" is not bearer, basic, header or query"},
		{"bad header name", "name: X-Api-Key", "name: \"X Api Key\"", "outbound[0].egress.inject[1].name: \"X Api Key\" is not a header name"},
		{"Host as the header", "name: X-Api-Key", "name: Host", "outbound[0].egress.inject[1].name: Host is not a header a credential goes in"},
		{"path not canonical", "paths: [/v1/]", "paths: [/v1/../admin/]", "outbound[0].egress.inject[0].paths[0]"},
		{"unknown app_credential", "app_credential: refuse", "app_credential: keep", "outbound[0].egress.inject[1].app_credential: \"keep\" is not strip or refuse"},
		{"expect on egress", "    egress:", "    expect: [spiffe://example.org/x]\n    egress:", "outbound[0].expect: an egress listener's server is outside the mesh"},
		{"upstream without a port", "upstream: api.payments.example:443", "upstream: api.payments.example", "outbound[0].upstream"},
		{"egress over QUIC", "    egress:", "    transport: quic\n    egress:", "outbound[0].egress: egress carries HTTP over TCP"},
		{"unknown field", "      ca_file:", "      ca_flie: x\n      ca_file:", "outbound[0].egress.ca_flie: unknown field (did you mean ca_file?)"},
	} {
		t.Run(bad.name, func(t *testing.T) {
			f := strings.Replace(egressConfig, bad.from, bad.to, 1)
			if f == egressConfig {
				t.Fatalf("%q not in the file", bad.from)
			}
			if _, err := config.Parse([]byte(f)); err == nil || !strings.Contains(err.Error(), bad.want) {
				t.Fatalf("error %v, want one naming %q", err, bad.want)
			}
		})
	}
}

// captureEgressConfig is egressConfig with a capture listener that hands
// the app's calls to the API's own address to the egress listener.
const captureEgressConfig = egressConfig + `  - name: capture
    listen: 127.0.0.1:15001
    capture:
      destinations:
        - {host: api.payments.example, port: 80, egress: payments}
        - {cidr: 10.96.0.0/12, port: 8080, expect: [spiffe://example.org/backend]}
`

// TestParseCaptureEgress: a capture destination names an egress listener
// instead of the identities expected there; mistakes are refused at load
// with the field named.
func TestParseCaptureEgress(t *testing.T) {
	c, err := config.Parse([]byte(captureEgressConfig))
	if err != nil {
		t.Fatal(err)
	}
	d := c.Outbound[1].Capture.Destinations
	if d[0].Egress != "payments" || d[0].Host != "api.payments.example" || d[0].Port != 80 || len(d[0].Expect.Patterns()) != 0 || d[1].Egress != "" {
		t.Errorf("destinations: %+v", d)
	}
	for _, bad := range []struct{ name, from, to, want string }{
		{"an unknown listener", "egress: payments}", "egress: paymnets}", `outbound[1].capture.destinations[0].egress: "paymnets" is not the name of an outbound listener with egress`},
		{"a listener without egress", "egress: payments}", "egress: capture}", `outbound[1].capture.destinations[0].egress: "capture" is not the name of an outbound listener with egress`},
		{"egress and expect", "egress: payments}", "egress: payments, expect: [spiffe://example.org/x]}", "outbound[1].capture.destinations[0]: egress and expect"},
		{"no address", "{host: api.payments.example, port: 80,", "{port: 80,", "outbound[1].capture.destinations[0]: an egress destination names the external API's host or cidr"},
	} {
		t.Run(bad.name, func(t *testing.T) {
			f := strings.Replace(captureEgressConfig, bad.from, bad.to, 1)
			if f == captureEgressConfig {
				t.Fatalf("%q not in the file", bad.from)
			}
			if _, err := config.Parse([]byte(f)); err == nil || !strings.Contains(err.Error(), bad.want) {
				t.Fatalf("error %v, want one naming %q", err, bad.want)
			}
		})
	}
}
