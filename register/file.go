// Package register reconciles a declarative file of workload identities
// with the registration entries of a SPIRE server, through the server API.
//
// Each entry in the file is keyed by its SPIFFE ID and parent ID. The
// entries this package creates carry an entry ID derived from that key with
// the prefix "credflow-"; that prefix is how ownership is recorded, so
// pruning deletes only entries this package made, never entries made by an
// operator or another tool.
package register

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math"
	"slices"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"gopkg.in/yaml.v3"
)

// OwnerPrefix starts the entry ID of every entry this package creates.
const OwnerPrefix = "credflow-"

// MaxFileSize bounds the registration file accepted by Parse.
const MaxFileSize = 4 << 20

// File is a parsed, validated registration file.
type File struct {
	Entries []Entry
}

// Entry is one workload identity to register.
type Entry struct {
	SPIFFEID      spiffeid.ID
	ParentID      spiffeid.ID
	Selectors     []Selector // sorted, without duplicates
	X509SVIDTTL   time.Duration
	JWTSVIDTTL    time.Duration
	DNSNames      []string // in order: SPIRE uses the first as the subject CN
	FederatesWith []string // trust domain names, sorted, without duplicates
	Admin         bool
	Downstream    bool
}

// Selector is a SPIRE selector, type:value (for example unix:uid:1001).
type Selector struct {
	Type, Value string
}

func (s Selector) String() string { return s.Type + ":" + s.Value }

// ID is the entry ID under which this package registers e: OwnerPrefix and
// a digest of the SPIFFE ID and parent ID.
func (e *Entry) ID() string {
	sum := sha256.Sum256([]byte(e.SPIFFEID.String() + "\n" + e.ParentID.String()))
	return OwnerPrefix + hex.EncodeToString(sum[:16])
}

// fileYAML is the file's shape on disk.
type fileYAML struct {
	Entries []entryYAML `yaml:"entries"`
}

type entryYAML struct {
	SPIFFEID      string   `yaml:"spiffe_id"`
	ParentID      string   `yaml:"parent_id"`
	Selectors     []string `yaml:"selectors"`
	X509SVIDTTL   string   `yaml:"x509_svid_ttl"`
	JWTSVIDTTL    string   `yaml:"jwt_svid_ttl"`
	DNSNames      []string `yaml:"dns_names"`
	FederatesWith []string `yaml:"federates_with"`
	Admin         bool     `yaml:"admin"`
	Downstream    bool     `yaml:"downstream"`
}

// Parse decodes and validates a registration file. Unknown fields are
// errors. Every problem is reported, each naming the entry and the field;
// if there is any, no File is returned, so nothing is applied from a file
// that does not validate as a whole.
func Parse(data []byte) (*File, error) {
	if len(data) > MaxFileSize {
		return nil, fmt.Errorf("register: file is %d bytes, over the %d limit", len(data), MaxFileSize)
	}
	var raw fileYAML
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&raw); err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("register: %w", err)
	}
	var extra any
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		return nil, errors.New("register: the file holds more than one YAML document")
	}

	var (
		errs []error
		f    File
		keys = map[string]int{}
	)
	for i, re := range raw.Entries {
		e, entryErrs := parseEntry(re)
		name := fmt.Sprintf("entries[%d]", i)
		if re.SPIFFEID != "" {
			name += fmt.Sprintf(" (%s)", re.SPIFFEID)
		}
		for _, err := range entryErrs {
			errs = append(errs, fmt.Errorf("%s: %w", name, err))
		}
		if len(entryErrs) > 0 {
			continue
		}
		if j, dup := keys[e.ID()]; dup {
			errs = append(errs, fmt.Errorf("%s: same spiffe_id and parent_id as entries[%d]; merge their selectors", name, j))
			continue
		}
		keys[e.ID()] = i
		f.Entries = append(f.Entries, e)
	}
	if len(errs) > 0 {
		return nil, fmt.Errorf("register: invalid file:\n%w", errors.Join(errs...))
	}
	return &f, nil
}

func parseEntry(re entryYAML) (Entry, []error) {
	var (
		e    Entry
		errs []error
		err  error
	)
	fail := func(field string, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: "+format, append([]any{field}, args...)...))
	}
	if re.SPIFFEID == "" {
		fail("spiffe_id", "required")
	} else if e.SPIFFEID, err = spiffeid.FromString(re.SPIFFEID); err != nil {
		fail("spiffe_id", "%v", err)
	}
	if re.ParentID == "" {
		fail("parent_id", "required")
	} else if e.ParentID, err = spiffeid.FromString(re.ParentID); err != nil {
		fail("parent_id", "%v", err)
	}
	if len(re.Selectors) == 0 {
		fail("selectors", "at least one selector is required")
	}
	for i, s := range re.Selectors {
		sel, err := ParseSelector(s)
		if err != nil {
			fail(fmt.Sprintf("selectors[%d]", i), "%v", err)
			continue
		}
		if !slices.Contains(e.Selectors, sel) {
			e.Selectors = append(e.Selectors, sel)
		}
	}
	slices.SortFunc(e.Selectors, func(a, b Selector) int { return strings.Compare(a.String(), b.String()) })
	if e.X509SVIDTTL, err = parseTTL(re.X509SVIDTTL); err != nil {
		fail("x509_svid_ttl", "%v", err)
	}
	if e.JWTSVIDTTL, err = parseTTL(re.JWTSVIDTTL); err != nil {
		fail("jwt_svid_ttl", "%v", err)
	}
	for i, n := range re.DNSNames {
		if err := checkDNSName(n); err != nil {
			fail(fmt.Sprintf("dns_names[%d]", i), "%v", err)
			continue
		}
		e.DNSNames = append(e.DNSNames, n)
	}
	for i, s := range re.FederatesWith {
		td, err := spiffeid.TrustDomainFromString(s)
		if err != nil {
			fail(fmt.Sprintf("federates_with[%d]", i), "%v", err)
			continue
		}
		if !slices.Contains(e.FederatesWith, td.Name()) {
			e.FederatesWith = append(e.FederatesWith, td.Name())
		}
	}
	slices.Sort(e.FederatesWith)
	e.Admin, e.Downstream = re.Admin, re.Downstream
	return e, errs
}

// ParseSelector parses "type:value". The value may itself hold colons
// (unix:uid:1001 has type unix, value uid:1001).
func ParseSelector(s string) (Selector, error) {
	typ, value, ok := strings.Cut(s, ":")
	switch {
	case !ok || typ == "" || value == "":
		return Selector{}, fmt.Errorf("%q is not type:value", s)
	case strings.ContainsFunc(typ, func(r rune) bool {
		return (r < 'a' || r > 'z') && (r < '0' || r > '9') && r != '_' && r != '-'
	}):
		return Selector{}, fmt.Errorf("selector type %q: only a-z, 0-9, '_' and '-'", typ)
	case strings.ContainsFunc(value, func(r rune) bool { return r < 0x20 || r == 0x7f }):
		return Selector{}, fmt.Errorf("selector %q holds a control character", s)
	}
	return Selector{Type: typ, Value: value}, nil
}

// parseTTL parses a Go duration of whole seconds; empty means the server's
// default.
func parseTTL(s string) (time.Duration, error) {
	if s == "" {
		return 0, nil
	}
	d, err := time.ParseDuration(s)
	switch {
	case err != nil:
		return 0, err
	case d < 0:
		return 0, fmt.Errorf("%s is negative", s)
	case d%time.Second != 0:
		return 0, fmt.Errorf("%s is not a whole number of seconds", s)
	case d/time.Second > math.MaxInt32:
		return 0, fmt.Errorf("%s is too long", s)
	}
	return d, nil
}

// checkDNSName accepts a host name of letters, digits and hyphens in
// labels of up to 63 bytes, with an optional leading "*." wildcard.
func checkDNSName(n string) error {
	name := strings.TrimPrefix(n, "*.")
	if name == "" || len(n) > 253 {
		return fmt.Errorf("%q: not a DNS name", n)
	}
	for label := range strings.SplitSeq(name, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return fmt.Errorf("%q: not a DNS name", n)
		}
		for _, r := range label {
			if (r < 'a' || r > 'z') && (r < 'A' || r > 'Z') && (r < '0' || r > '9') && r != '-' {
				return fmt.Errorf("%q: not a DNS name", n)
			}
		}
	}
	return nil
}
