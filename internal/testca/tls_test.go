package testca_test

import (
	"crypto/tls"
	"crypto/x509"
	"net"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/credflow/credflow/internal/testca"
)

// TestTLSCertificate presents client SVIDs through TLSCertificate over a
// loopback mTLS handshake with go-spiffe's server configuration, showing
// that malformed leaves reach the peer as they are and what refuses them.
func TestTLSCertificate(t *testing.T) {
	ca := testca.New(t, tdA)
	other := testca.New(t, tdB)
	serverSVID := ca.Issue(t, spiffeid.RequireFromPath(tdA, "/server"))
	nulURI := "spiffe://a.test/web\x00.evil.test"

	tests := []struct {
		name string
		svid *x509svid.SVID
		// wantErr is part of the server's handshake error, or "" when the
		// handshake succeeds.
		wantErr string
	}{
		{name: "valid", svid: ca.Issue(t, idA)},
		{name: "valid with intermediate", svid: ca.Issue(t, idA, testca.WithIntermediate())},
		{name: "B5 two URI SANs", svid: ca.Issue(t, idA, testca.WithURIs(idA.String(), "spiffe://a.test/admin")), wantErr: "more than one URI SAN"},
		// crypto/tls refuses the certificate while parsing it, with the
		// very error x509.ParseCertificate gives for the DER we sent.
		{name: "B6 NUL in URI SAN", svid: ca.Issue(t, idA, testca.WithURIs(nulURI)), wantErr: "failed to parse client certificate"},
		{name: "B7 leaf with CA=true", svid: ca.Issue(t, idA, testca.WithCA()), wantErr: "leaf certificate with CA flag set to true"},
		// Accepted by go-spiffe: the sidecar's own VerifyConnection must
		// require clientAuth.
		{name: "B7 ServerAuth only", svid: ca.Issue(t, idA, testca.WithExtKeyUsage(x509.ExtKeyUsageServerAuth))},
		{name: "B8 signed by another trust domain", svid: ca.Issue(t, idA, testca.WithSigner(other)), wantErr: "certificate signed by unknown authority"},
		{name: "expired", svid: ca.Issue(t, idA, testca.WithValidity(time.Now().Add(-2*time.Hour), time.Now().Add(-time.Hour))), wantErr: "expired"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			serverCfg := tlsconfig.MTLSServerConfig(serverSVID, ca.Bundle(), tlsconfig.AuthorizeAny())
			clientCfg := tlsconfig.MTLSClientConfig(serverSVID, ca.Bundle(), tlsconfig.AuthorizeID(serverSVID.ID))
			cert := testca.TLSCertificate(tt.svid)
			clientCfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
				return &cert, nil
			}

			state, err := handshake(t, serverCfg, clientCfg)
			checkErr(t, "server handshake", err, tt.wantErr)
			if tt.wantErr == "" && err == nil {
				if len(state.PeerCertificates) == 0 || !state.PeerCertificates[0].Equal(tt.svid.Certificates[0]) {
					t.Error("server saw another client certificate")
				}
			}
			if tt.name == "B6 NUL in URI SAN" && err != nil {
				_, parseErr := x509.ParseCertificate(tt.svid.Certificates[0].Raw)
				checkErr(t, "server handshake", err, parseErr.Error())
			}
		})
	}
}

// handshake runs one TLS handshake over loopback TCP and returns the
// server's view of it.
func handshake(t *testing.T, serverCfg, clientCfg *tls.Config) (tls.ConnectionState, error) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	deadline := time.Now().Add(10 * time.Second)

	clientDone := make(chan struct{})
	go func() {
		defer close(clientDone)
		conn, err := tls.DialWithDialer(&net.Dialer{Deadline: deadline}, "tcp", ln.Addr().String(), clientCfg)
		if err != nil {
			return
		}
		defer conn.Close()
		// Read until the server closes or alerts; the client's handshake
		// can finish before the server has judged its certificate.
		_ = conn.SetDeadline(deadline)
		_, _ = conn.Read(make([]byte, 1))
	}()
	defer func() { <-clientDone }()

	raw, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	conn := tls.Server(raw, serverCfg)
	defer conn.Close()
	if err := conn.SetDeadline(deadline); err != nil {
		t.Fatal(err)
	}
	err = conn.Handshake()
	return conn.ConnectionState(), err
}
