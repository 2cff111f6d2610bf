package register

import (
	"context"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	entryv1 "github.com/spiffe/spire-api-sdk/proto/spire/api/server/entry/v1"
	"github.com/spiffe/spire-api-sdk/proto/spire/api/types"
	"google.golang.org/grpc/codes"
)

// Op is what reconciliation does with one entry.
type Op string

// Operations.
const (
	Create    Op = "create"
	Update    Op = "update"
	Delete    Op = "delete"
	Unchanged Op = "unchanged"
	// Orphaned: an entry this package created that is no longer in the
	// file, kept because pruning was not asked for.
	Orphaned Op = "orphaned"
)

// Change is one step of a Plan.
type Change struct {
	Op    Op
	Entry *types.Entry // desired (create, update, unchanged) or existing (delete, orphaned)
	// Diffs, for an update, describe each changed field: "selectors: [a] -> [b]".
	Diffs []string
}

// Plan is the list of changes that makes the server match a file.
type Plan []Change

// NewPlan compares the desired entries with the entries on the server.
// Only existing entries whose ID starts with OwnerPrefix are considered:
// the others belong to someone else and are never touched.
func NewPlan(f *File, existing []*types.Entry, prune bool) Plan {
	owned := map[string]*types.Entry{}
	for _, e := range existing {
		if strings.HasPrefix(e.Id, OwnerPrefix) {
			owned[e.Id] = e
		}
	}
	var p Plan
	for i := range f.Entries {
		want := f.Entries[i].proto()
		have, ok := owned[want.Id]
		delete(owned, want.Id)
		switch diffs := diff(have, want); {
		case !ok:
			p = append(p, Change{Op: Create, Entry: want})
		case len(diffs) > 0:
			p = append(p, Change{Op: Update, Entry: want, Diffs: diffs})
		default:
			p = append(p, Change{Op: Unchanged, Entry: want})
		}
	}
	var gone []*types.Entry
	for _, e := range owned {
		gone = append(gone, e)
	}
	slices.SortFunc(gone, func(a, b *types.Entry) int { return strings.Compare(idString(a.SpiffeId), idString(b.SpiffeId)) })
	for _, e := range gone {
		if prune {
			p = append(p, Change{Op: Delete, Entry: e})
		} else {
			p = append(p, Change{Op: Orphaned, Entry: e})
		}
	}
	return p
}

// Count returns how many changes of op the plan holds.
func (p Plan) Count(op Op) int {
	n := 0
	for _, c := range p {
		if c.Op == op {
			n++
		}
	}
	return n
}

// Print writes the plan as a readable diff, one line per entry and one per
// changed field, then a summary line.
func (p Plan) Print(w io.Writer) error {
	var b strings.Builder
	for _, c := range p {
		id, parent := idString(c.Entry.SpiffeId), idString(c.Entry.ParentId)
		switch c.Op {
		case Create:
			fmt.Fprintf(&b, "+ create %s (parent %s, selectors %s)\n", id, parent, selectorList(c.Entry.Selectors))
		case Update:
			fmt.Fprintf(&b, "~ update %s (parent %s)\n", id, parent)
			for _, d := range c.Diffs {
				fmt.Fprintf(&b, "    %s\n", d)
			}
		case Delete:
			fmt.Fprintf(&b, "- delete %s (parent %s, entry %s)\n", id, parent, c.Entry.Id)
		case Orphaned:
			fmt.Fprintf(&b, "! not in the file, kept (use --prune to delete) %s (parent %s)\n", id, parent)
		case Unchanged:
			fmt.Fprintf(&b, "= unchanged %s\n", id)
		}
	}
	fmt.Fprintf(&b, "%d to create, %d to update, %d to delete, %d unchanged\n",
		p.Count(Create), p.Count(Update), p.Count(Delete), p.Count(Unchanged))
	_, err := io.WriteString(w, b.String())
	return err
}

// Apply carries out the plan's creates, updates and deletes through the
// entry API. Every entry's result is checked; the first failure is
// returned, naming the entry.
func (p Plan) Apply(ctx context.Context, client entryv1.EntryClient) error {
	var creates, updates []*types.Entry
	var deletes []string
	for _, c := range p {
		switch c.Op {
		case Create:
			creates = append(creates, c.Entry)
		case Update:
			updates = append(updates, c.Entry)
		case Delete:
			deletes = append(deletes, c.Entry.Id)
		}
	}
	if len(creates) > 0 {
		resp, err := client.BatchCreateEntry(ctx, &entryv1.BatchCreateEntryRequest{Entries: creates})
		if err != nil {
			return fmt.Errorf("register: creating entries: %w", err)
		}
		for i, r := range resp.Results {
			if err := resultErr("creating", idString(creates[i].SpiffeId), r.Status); err != nil {
				return err
			}
		}
	}
	if len(updates) > 0 {
		resp, err := client.BatchUpdateEntry(ctx, &entryv1.BatchUpdateEntryRequest{Entries: updates, InputMask: updateMask})
		if err != nil {
			return fmt.Errorf("register: updating entries: %w", err)
		}
		for i, r := range resp.Results {
			if err := resultErr("updating", idString(updates[i].SpiffeId), r.Status); err != nil {
				return err
			}
		}
	}
	if len(deletes) > 0 {
		resp, err := client.BatchDeleteEntry(ctx, &entryv1.BatchDeleteEntryRequest{Ids: deletes})
		if err != nil {
			return fmt.Errorf("register: deleting entries: %w", err)
		}
		for _, r := range resp.Results {
			if err := resultErr("deleting", r.Id, r.Status); err != nil {
				return err
			}
		}
	}
	return nil
}

// updateMask names the fields an update writes: all that the file declares.
var updateMask = &types.EntryMask{
	Selectors:     true,
	X509SvidTtl:   true,
	JwtSvidTtl:    true,
	DnsNames:      true,
	FederatesWith: true,
	Admin:         true,
	Downstream:    true,
}

func resultErr(verb, what string, st *types.Status) error {
	if st == nil || codes.Code(st.Code) == codes.OK {
		return nil
	}
	return fmt.Errorf("register: %s %s: %s (%s)", verb, what, st.Message, codes.Code(st.Code))
}

// List returns every entry on the server, page by page.
func List(ctx context.Context, client entryv1.EntryClient) ([]*types.Entry, error) {
	var (
		all   []*types.Entry
		token string
	)
	for {
		resp, err := client.ListEntries(ctx, &entryv1.ListEntriesRequest{PageSize: 500, PageToken: token})
		if err != nil {
			return nil, fmt.Errorf("register: listing entries: %w", err)
		}
		all = append(all, resp.Entries...)
		if token = resp.NextPageToken; token == "" {
			return all, nil
		}
	}
}

// proto is e as a SPIRE API entry, with its owned entry ID.
func (e *Entry) proto() *types.Entry {
	sels := make([]*types.Selector, len(e.Selectors))
	for i, s := range e.Selectors {
		sels[i] = &types.Selector{Type: s.Type, Value: s.Value}
	}
	return &types.Entry{
		Id:            e.ID(),
		SpiffeId:      &types.SPIFFEID{TrustDomain: e.SPIFFEID.TrustDomain().Name(), Path: e.SPIFFEID.Path()},
		ParentId:      &types.SPIFFEID{TrustDomain: e.ParentID.TrustDomain().Name(), Path: e.ParentID.Path()},
		Selectors:     sels,
		X509SvidTtl:   int32(e.X509SVIDTTL / time.Second),
		JwtSvidTtl:    int32(e.JWTSVIDTTL / time.Second),
		DnsNames:      e.DNSNames,
		FederatesWith: e.FederatesWith,
		Admin:         e.Admin,
		Downstream:    e.Downstream,
	}
}

// diff lists the fields of want that differ from have. have may be nil.
func diff(have, want *types.Entry) []string {
	if have == nil {
		return nil
	}
	var out []string
	add := func(field, from, to string) {
		if from != to {
			out = append(out, fmt.Sprintf("%s: %s -> %s", field, from, to))
		}
	}
	add("selectors", selectorList(have.Selectors), selectorList(want.Selectors))
	add("x509_svid_ttl", ttl(have.X509SvidTtl), ttl(want.X509SvidTtl))
	add("jwt_svid_ttl", ttl(have.JwtSvidTtl), ttl(want.JwtSvidTtl))
	add("dns_names", fmt.Sprint(have.DnsNames), fmt.Sprint(want.DnsNames))
	add("federates_with", fmt.Sprint(sorted(have.FederatesWith)), fmt.Sprint(want.FederatesWith))
	add("admin", fmt.Sprint(have.Admin), fmt.Sprint(want.Admin))
	add("downstream", fmt.Sprint(have.Downstream), fmt.Sprint(want.Downstream))
	return out
}

func ttl(sec int32) string {
	if sec == 0 {
		return "default"
	}
	return (time.Duration(sec) * time.Second).String()
}

func sorted(s []string) []string {
	s = slices.Clone(s)
	slices.Sort(s)
	return s
}

// selectorList renders selectors sorted, as [type:value ...].
func selectorList(sels []*types.Selector) string {
	s := make([]string, len(sels))
	for i, sel := range sels {
		s[i] = sel.Type + ":" + sel.Value
	}
	slices.Sort(s)
	return "[" + strings.Join(s, " ") + "]"
}

func idString(id *types.SPIFFEID) string {
	if id == nil {
		return "<none>"
	}
	return "spiffe://" + id.TrustDomain + id.Path
}
