package register_test

import (
	"strings"
	"testing"

	"github.com/spiffe/spire-api-sdk/proto/spire/api/types"

	"github.com/credflow/credflow/register"
)

func mustParse(t *testing.T, s string) *register.File {
	t.Helper()
	f, err := register.Parse([]byte(s))
	if err != nil {
		t.Fatal(err)
	}
	return f
}

func TestPlan(t *testing.T) {
	base := mustParse(t, `
entries:
  - spiffe_id: spiffe://example.org/a
    parent_id: spiffe://example.org/node
    selectors: [unix:uid:1]
  - spiffe_id: spiffe://example.org/b
    parent_id: spiffe://example.org/node
    selectors: [unix:uid:2]
`)
	// The server holds a and b as created from base, plus one entry that
	// someone else made, which must never appear in a plan.
	var existing []*types.Entry
	for _, c := range register.NewPlan(base, nil, false) {
		if c.Op != register.Create {
			t.Fatalf("empty server: op %s, want create", c.Op)
		}
		existing = append(existing, c.Entry)
	}
	foreign := &types.Entry{Id: "0b1c-made-by-hand", SpiffeId: &types.SPIFFEID{TrustDomain: "example.org", Path: "/manual"}}
	existing = append(existing, foreign)

	if p := register.NewPlan(base, existing, true); p.Count(register.Unchanged) != 2 || len(p) != 2 {
		t.Fatalf("same file again: %+v, want 2 unchanged and nothing else", p)
	}

	next := mustParse(t, `
entries:
  - spiffe_id: spiffe://example.org/a
    parent_id: spiffe://example.org/node
    selectors: [unix:uid:11]
    x509_svid_ttl: 30s
  - spiffe_id: spiffe://example.org/c
    parent_id: spiffe://example.org/node
    selectors: [unix:uid:3]
`)
	for _, prune := range []bool{false, true} {
		p := register.NewPlan(next, existing, prune)
		ops := map[string]register.Op{}
		for _, c := range p {
			ops[c.Entry.SpiffeId.Path] = c.Op
			if c.Entry.Id == foreign.Id {
				t.Fatal("a plan touches an entry it does not own")
			}
			if c.Op == register.Update {
				got := strings.Join(c.Diffs, "; ")
				if !strings.Contains(got, "selectors: [unix:uid:1] -> [unix:uid:11]") || !strings.Contains(got, "x509_svid_ttl: default -> 30s") {
					t.Errorf("update diffs = %q", got)
				}
			}
		}
		wantB := register.Orphaned
		if prune {
			wantB = register.Delete
		}
		if ops["/a"] != register.Update || ops["/c"] != register.Create || ops["/b"] != wantB {
			t.Errorf("prune=%v: ops = %v", prune, ops)
		}
		var out strings.Builder
		if err := p.Print(&out); err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(out.String(), "~ update spiffe://example.org/a") || !strings.Contains(out.String(), "+ create spiffe://example.org/c") {
			t.Errorf("printed plan:\n%s", out.String())
		}
	}
}
