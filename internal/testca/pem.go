package testca

import (
	"bytes"
	"encoding/pem"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// WritePEM writes svid into dir for tools such as curl and openssl: its chain
// (leaf first, then any intermediate) as CERTIFICATE blocks, byte for byte
// the DER that Issue produced, and its private key as a PKCS #8 PRIVATE KEY
// block (mode 0600). The file names carry the leaf's serial number, so several
// SVIDs can share dir.
func WritePEM(t testing.TB, dir string, svid *x509svid.SVID) (certPath, keyPath string) {
	t.Helper()
	certPEM, keyPEM, err := svid.Marshal()
	if err != nil {
		t.Fatalf("testca: encoding SVID %q: %v", svid.ID, err)
	}
	base := filepath.Join(dir, fmt.Sprintf("svid-%x", svid.Certificates[0].SerialNumber))
	certPath, keyPath = base+".pem", base+".key"
	writeFile(t, certPath, certPEM, 0o644)
	writeFile(t, keyPath, keyPEM, 0o600)
	return certPath, keyPath
}

// WriteBundlePEM writes ca's roots into dir as CERTIFICATE blocks, as a CA
// file for curl --cacert or openssl -CAfile, and returns the file's path. The
// name carries the trust domain and the root's serial number.
func WriteBundlePEM(t testing.TB, dir string, ca *CA) string {
	t.Helper()
	var buf bytes.Buffer
	for _, root := range ca.Roots() {
		if err := pem.Encode(&buf, &pem.Block{Type: "CERTIFICATE", Bytes: root.Raw}); err != nil {
			t.Fatalf("testca: encoding bundle for %q: %v", ca.td, err)
		}
	}
	path := filepath.Join(dir, fmt.Sprintf("bundle-%s-%x.pem", ca.td.Name(), ca.root.SerialNumber))
	writeFile(t, path, buf.Bytes(), 0o644)
	return path
}

func writeFile(t testing.TB, path string, data []byte, perm os.FileMode) {
	t.Helper()
	if err := os.WriteFile(path, data, perm); err != nil {
		t.Fatalf("testca: %v", err)
	}
}
