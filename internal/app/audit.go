package app

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/credflow/credflow/audit"
)

// auditUsage is the usage of `credflow audit`.
const auditUsage = "credflow audit verify (-bundle FILE.pem [-trust-domain TD] | -insecure-no-bundle) [-allow-unsigned] [-open] [-partial] FILE..."

// auditFlags are the flags of `credflow audit verify`.
type auditFlags struct {
	bundle, trustDomain                    string
	noBundle, allowUnsigned, open, partial bool
}

// runAudit implements `credflow audit verify`.
func runAudit(_ context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		return fmt.Errorf("%w: want verify", errUsage)
	}
	if args[0] != "verify" {
		return fmt.Errorf("%w: unknown audit command %q (want verify)", errUsage, args[0])
	}
	var f auditFlags
	fs := newFlagSet("audit verify", auditUsage, stderr)
	fs.StringVar(&f.bundle, "bundle", "", "the trust bundle: PEM CA certificates (spire-server bundle show); the checkpoints' signers must chain to it")
	fs.StringVar(&f.trustDomain, "trust-domain", "", "the trust domain of the -bundle certificates (default: the SPIFFE ID in each certificate)")
	fs.BoolVar(&f.noBundle, "insecure-no-bundle", false, "check each signature against its own certificate only: proves the trail unchanged since signed, not who signed it")
	fs.BoolVar(&f.allowUnsigned, "allow-unsigned", false, "accept a trail whose last checkpoint is unsigned (written with no SVID)")
	fs.BoolVar(&f.open, "open", false, "accept a trail that does not end with a final checkpoint: one still being written")
	fs.BoolVar(&f.partial, "partial", false, "accept a trail that does not start at record 1: its oldest files were removed")
	files, err := parseInterspersed(fs, args[1:])
	if err != nil {
		return err
	}
	if len(files) == 0 {
		return fmt.Errorf("%w: no FILE to verify", errUsage)
	}
	if (f.bundle == "") == !f.noBundle {
		return fmt.Errorf("%w: want exactly one of -bundle FILE.pem or -insecure-no-bundle", errUsage)
	}
	opts := audit.VerifyOptions{AllowUnsigned: f.allowUnsigned, Open: f.open, Partial: f.partial}
	if f.bundle != "" {
		set, err := readBundlePEM(f.bundle, f.trustDomain)
		if err != nil {
			return err
		}
		opts.Bundles = set
	}

	rep, err := audit.Verify(files, opts)
	for _, w := range rep.Warnings {
		fmt.Fprintf(stderr, "warning: %s\n", w)
	}
	if p := (*audit.Problem)(nil); errors.As(err, &p) {
		return fmt.Errorf("%s (%s): %s", p.Where(), p.Kind, p.Detail)
	}
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(stdout, "ok: %s\n", rep.Summary())
	return err
}

// parseInterspersed parses args into fs, flags before and after the
// positional arguments, and returns the positional ones.
func parseInterspersed(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return nil, err
			}
			return nil, fmt.Errorf("%w: %v", errUsage, err)
		}
		rest := fs.Args()
		if len(rest) == 0 {
			return pos, nil
		}
		pos, args = append(pos, rest[0]), rest[1:]
	}
}

// readBundlePEM reads the CA certificates of a PEM file as trust bundles,
// each for the trust domain td or, when td is empty, the one its SPIFFE ID
// names.
func readBundlePEM(path, td string) (*x509bundle.Set, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var forced spiffeid.TrustDomain
	if td != "" {
		if forced, err = spiffeid.TrustDomainFromString(td); err != nil {
			return nil, fmt.Errorf("%w: -trust-domain %q: %v", errUsage, td, err)
		}
	}
	set := x509bundle.NewSet()
	n := 0
	for block, rest := pem.Decode(data); block != nil; block, rest = pem.Decode(rest) {
		if block.Type != "CERTIFICATE" {
			continue
		}
		n++
		cert, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("%s: certificate %d: %w", path, n, err)
		}
		certTD := forced
		if certTD.IsZero() {
			if certTD, err = caTrustDomain(cert); err != nil {
				return nil, fmt.Errorf("%s: certificate %d (%s): %w; give -trust-domain", path, n, cert.Subject, err)
			}
		}
		b, ok := set.Get(certTD)
		if !ok {
			b = x509bundle.New(certTD)
			set.Add(b)
		}
		b.AddX509Authority(cert)
	}
	if n == 0 {
		return nil, fmt.Errorf("%s: no PEM CERTIFICATE block", path)
	}
	return set, nil
}

// caTrustDomain is the trust domain of the SPIFFE ID in a CA
// certificate's URI SANs, as SPIRE writes it.
func caTrustDomain(cert *x509.Certificate) (spiffeid.TrustDomain, error) {
	for _, u := range cert.URIs {
		if strings.EqualFold(u.Scheme, "spiffe") {
			id, err := spiffeid.FromURI(u)
			if err != nil {
				return spiffeid.TrustDomain{}, fmt.Errorf("bad SPIFFE ID %q: %v", u, err)
			}
			return id.TrustDomain(), nil
		}
	}
	return spiffeid.TrustDomain{}, errors.New("no SPIFFE ID")
}
