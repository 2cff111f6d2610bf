package register_test

import (
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/credflow/credflow/register"
)

const validFile = `
entries:
  - spiffe_id: spiffe://example.org/frontend
    parent_id: spiffe://example.org/node
    selectors: [unix:uid:1001, unix:gid:1001, unix:uid:1001]
    x509_svid_ttl: 1h
    jwt_svid_ttl: 5m
    dns_names: [frontend.default.svc, frontend]
    federates_with: [spiffe://partner.example, partner.example, other.example]
  - spiffe_id: spiffe://example.org/backend
    parent_id: spiffe://example.org/node
    selectors: ["unix:uid:1002"]
    downstream: true
`

func TestParseValid(t *testing.T) {
	f, err := register.Parse([]byte(validFile))
	if err != nil {
		t.Fatal(err)
	}
	if len(f.Entries) != 2 {
		t.Fatalf("%d entries, want 2", len(f.Entries))
	}
	e := f.Entries[0]
	got := struct {
		ID, Parent    string
		Selectors     []string
		X509, JWT     time.Duration
		DNS, Federate []string
	}{e.SPIFFEID.String(), e.ParentID.String(), nil, e.X509SVIDTTL, e.JWTSVIDTTL, e.DNSNames, e.FederatesWith}
	for _, s := range e.Selectors {
		got.Selectors = append(got.Selectors, s.String())
	}
	want := struct {
		ID, Parent    string
		Selectors     []string
		X509, JWT     time.Duration
		DNS, Federate []string
	}{
		"spiffe://example.org/frontend", "spiffe://example.org/node",
		[]string{"unix:gid:1001", "unix:uid:1001"}, // sorted, duplicates dropped
		time.Hour, 5 * time.Minute,
		[]string{"frontend.default.svc", "frontend"}, // order kept
		[]string{"other.example", "partner.example"}, // names, sorted, deduplicated
	}
	if d := cmp.Diff(want, got); d != "" {
		t.Fatalf("entry mismatch (-want +got):\n%s", d)
	}
	if !f.Entries[1].Downstream || f.Entries[1].X509SVIDTTL != 0 {
		t.Fatalf("second entry = %+v", f.Entries[1])
	}
	if id := e.ID(); !strings.HasPrefix(id, register.OwnerPrefix) || len(id) > 255 {
		t.Fatalf("entry ID %q", id)
	}
}

func TestParseErrorsNameTheField(t *testing.T) {
	entry := func(extra string) string {
		return "entries:\n  - spiffe_id: spiffe://example.org/a\n    parent_id: spiffe://example.org/node\n    selectors: [unix:uid:1]\n" + extra
	}
	tests := []struct {
		name, file string
		want       []string // every substring must appear in the error
	}{
		{"unknown field", entry("    selector: [x:y]\n"), []string{"field selector not found"}},
		{"unknown top-level field", "entrys: []\n", []string{"field entrys not found"}},
		{"bad spiffe id", "entries:\n  - spiffe_id: spiffe://Example.org/a\n    parent_id: spiffe://example.org/node\n    selectors: [unix:uid:1]\n",
			[]string{"entries[0]", "spiffe_id"}},
		{"id without scheme", "entries:\n  - spiffe_id: example.org/a\n    parent_id: spiffe://example.org/node\n    selectors: [unix:uid:1]\n",
			[]string{"entries[0] (example.org/a)", "spiffe_id"}},
		{"missing parent", "entries:\n  - spiffe_id: spiffe://example.org/a\n    selectors: [unix:uid:1]\n", []string{"parent_id: required"}},
		{"no selectors", "entries:\n  - spiffe_id: spiffe://example.org/a\n    parent_id: spiffe://example.org/node\n", []string{"selectors: at least one"}},
		{"selector without value", "entries:\n  - spiffe_id: spiffe://example.org/a\n    parent_id: spiffe://example.org/node\n    selectors: [unix]\n",
			[]string{"selectors[0]", "not type:value"}},
		{"selector bad type", "entries:\n  - spiffe_id: spiffe://example.org/a\n    parent_id: spiffe://example.org/node\n    selectors: [\"UN IX:uid:1\"]\n",
			[]string{"selectors[0]", "selector type"}},
		{"selector control char", "entries:\n  - spiffe_id: spiffe://example.org/a\n    parent_id: spiffe://example.org/node\n    selectors: [\"unix:uid:1\\n\"]\n",
			[]string{"selectors[0]", "control character"}},
		{"bad ttl", entry("    x509_svid_ttl: 10\n"), []string{"x509_svid_ttl", "missing unit"}},
		{"fractional ttl", entry("    jwt_svid_ttl: 1500ms\n"), []string{"jwt_svid_ttl", "whole number of seconds"}},
		{"negative ttl", entry("    jwt_svid_ttl: -5s\n"), []string{"jwt_svid_ttl", "negative"}},
		{"bad dns", entry("    dns_names: [\"a b\"]\n"), []string{"dns_names[0]"}},
		{"bad federates_with", entry("    federates_with: [\"spiffe://\"]\n"), []string{"federates_with[0]"}},
		{"duplicate key", entry("") + "  - spiffe_id: spiffe://example.org/a\n    parent_id: spiffe://example.org/node\n    selectors: [unix:uid:2]\n",
			[]string{"entries[1]", "same spiffe_id and parent_id as entries[0]"}},
		{"two documents", entry("") + "---\nentries: []\n", []string{"more than one YAML document"}},
		{"not yaml", "entries: [\n", []string{"register:"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f, err := register.Parse([]byte(tt.file))
			if err == nil {
				t.Fatalf("Parse succeeded: %+v", f)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
		})
	}
}

// TestParseReportsEveryProblem: one bad entry among good ones fails the
// whole file, and all problems are listed.
func TestParseReportsEveryProblem(t *testing.T) {
	file := `
entries:
  - spiffe_id: spiffe://example.org/good
    parent_id: spiffe://example.org/node
    selectors: [unix:uid:1]
  - spiffe_id: bad
    parent_id: also-bad
    selectors: [nocolon]
`
	_, err := register.Parse([]byte(file))
	if err == nil {
		t.Fatal("a file with a bad entry parsed")
	}
	for _, w := range []string{"entries[1] (bad): spiffe_id", "entries[1] (bad): parent_id", "entries[1] (bad): selectors[0]"} {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("error does not list %q:\n%v", w, err)
		}
	}
}

func TestParseEmpty(t *testing.T) {
	for _, in := range []string{"", "entries: []\n", "# nothing\n"} {
		f, err := register.Parse([]byte(in))
		if err != nil || len(f.Entries) != 0 {
			t.Errorf("Parse(%q) = %v, %v; want an empty file", in, f, err)
		}
	}
}

func TestParseSizeLimit(t *testing.T) {
	big := "# " + strings.Repeat("x", register.MaxFileSize) + "\n"
	if _, err := register.Parse([]byte(big)); err == nil || !strings.Contains(err.Error(), "limit") {
		t.Fatalf("oversized file: err = %v", err)
	}
}

func FuzzParse(f *testing.F) {
	f.Add([]byte(validFile))
	f.Add([]byte("entries: []\n"))
	f.Add([]byte("entries:\n  - spiffe_id: spiffe://a/b\n    parent_id: spiffe://a/n\n    selectors: [k8s:ns:default]\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		file, err := register.Parse(data)
		if err != nil {
			if file != nil {
				t.Fatal("Parse returned both a file and an error")
			}
			return
		}
		// Whatever parses is valid: IDs set, at least one selector, keys unique.
		seen := map[string]bool{}
		for _, e := range file.Entries {
			if e.SPIFFEID.IsZero() || e.ParentID.IsZero() || len(e.Selectors) == 0 {
				t.Fatalf("invalid entry accepted: %+v", e)
			}
			if seen[e.ID()] {
				t.Fatalf("duplicate entry accepted: %s", e.SPIFFEID)
			}
			seen[e.ID()] = true
			for _, s := range e.Selectors {
				if _, err := register.ParseSelector(s.String()); err != nil {
					t.Fatalf("accepted selector %q does not re-parse: %v", s, err)
				}
			}
		}
	})
}
