package audit

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// VerifyOptions say what Verify trusts and accepts.
type VerifyOptions struct {
	// Bundles are the trust bundles the checkpoints' chains must verify
	// against, at each checkpoint's time. Nil checks each signature
	// against its own x5c only: that proves the trail is as its signer
	// left it, not who the signer is (Report.Trusted is false).
	Bundles x509bundle.Source
	// AllowUnsigned accepts a trail whose last checkpoint is unsigned.
	AllowUnsigned bool
	// Open accepts a trail that does not end with a final checkpoint: one
	// still being written. The records after its last checkpoint are not
	// covered by a signature (Report.Uncovered).
	Open bool
	// Partial accepts a trail that does not start at record 1: its oldest
	// files were removed.
	Partial bool
}

// Report is what Verify found.
type Report struct {
	// Files are the files verified, in the order of their records.
	Files []string
	// Records counts the records: events, gaps and checkpoints.
	Records int
	// First and Last are the seq of the first and the last record.
	First, Last uint64
	// Checkpoints counts the checkpoints, Unsigned those without a
	// signature.
	Checkpoints, Unsigned int
	// Writers are the SPIFFE IDs that signed checkpoints, in the order
	// they first did.
	Writers []string
	// Trusted reports that every signature chains to VerifyOptions.Bundles.
	Trusted bool
	// Gaps counts the gap records; Dropped and Failed add up their
	// counts of events lost.
	Gaps            int
	Dropped, Failed uint64
	// Uncovered counts the records after the last checkpoint (with
	// VerifyOptions.Open).
	Uncovered int
	// Warnings are what Verify accepted but a reader should know.
	Warnings []string
}

// Summary is the report in one line: "1234 records, 5 checkpoints signed
// by spiffe://example.org/frontend, 0 gaps".
func (r Report) Summary() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%d records, %d checkpoints", r.Records, r.Checkpoints)
	if len(r.Writers) > 0 {
		fmt.Fprintf(&b, " signed by %s", strings.Join(r.Writers, ", "))
		if !r.Trusted {
			b.WriteString(" (not checked against a trust bundle)")
		}
	}
	if r.Unsigned > 0 {
		fmt.Fprintf(&b, " (%d unsigned)", r.Unsigned)
	}
	fmt.Fprintf(&b, ", %d gaps", r.Gaps)
	if r.Dropped+r.Failed > 0 {
		fmt.Fprintf(&b, " (%d events lost)", r.Dropped+r.Failed)
	}
	if r.Uncovered > 0 {
		fmt.Fprintf(&b, ", %d records after the last checkpoint", r.Uncovered)
	}
	return b.String()
}

// ProblemKind is what is wrong with a trail, as far as the evidence tells.
type ProblemKind string

// Problem kinds.
const (
	// Altered: a record was changed (or replaced): its line does not
	// parse or is not canonical, or its hash is not the next record's
	// prev.
	Altered ProblemKind = "altered"
	// Removed: records are missing (a seq skips), or a whole file.
	Removed ProblemKind = "removed"
	// Reordered: records are out of order or repeated (a seq goes
	// back).
	Reordered ProblemKind = "reordered"
	// Truncated: the trail, or one of its files, ends early.
	Truncated ProblemKind = "truncated"
	// Forged: a checkpoint's signature does not verify, or its chain
	// does not lead to the trust bundle.
	Forged ProblemKind = "forged"
	// Unsigned: the last checkpoint has no signature.
	Unsigned ProblemKind = "unsigned"
)

// Problem is the first thing wrong with a trail: Verify's error when the
// trail does not verify.
type Problem struct {
	Kind ProblemKind
	// File and Line (from 1) locate the record.
	File string
	Line int
	// Seq is the record's seq: what it holds, or for a line that does
	// not parse, what it should hold.
	Seq uint64
	// Detail says what is wrong, in words.
	Detail string
}

// Error is "audit: record 57 (line 57 of audit.jsonl): ...".
func (p *Problem) Error() string {
	return "audit: " + p.Where() + ": " + p.Detail
}

// Where is "record 57 (line 57 of audit.jsonl)".
func (p *Problem) Where() string {
	return fmt.Sprintf("record %d (line %d of %s)", p.Seq, p.Line, p.File)
}

// entry is what Verify keeps of a record.
type entry struct {
	file    string
	line    int
	rec     Record // without its x5c and signature
	hash    string
	writer  string
	partial bool
	bad     *Problem
}

// Verify checks the trail in files, which may be given in any order, and
// reports what it holds. When the trail is not as its writer left it, or
// not complete, the error is a *Problem naming the first record that is
// not; other errors are failures to read the files.
func Verify(files []string, opts VerifyOptions) (Report, error) {
	if len(files) == 0 {
		return Report{}, errors.New("audit: no files to verify")
	}
	contents := make([][]byte, len(files))
	for i, name := range files {
		var err error
		if contents[i], err = os.ReadFile(name); err != nil {
			return Report{}, fmt.Errorf("audit: %w", err)
		}
	}
	return verify(files, contents, opts)
}

// verify is Verify of files that hold contents.
func verify(files []string, contents [][]byte, opts VerifyOptions) (Report, error) {
	rep := Report{Trusted: opts.Bundles != nil}
	var perFile [][]entry
	for i, name := range files {
		entries := parseFile(name, contents[i], opts)
		if len(entries) == 0 {
			rep.Warnings = append(rep.Warnings, name+" is empty")
			continue
		}
		if entries[0].bad != nil {
			return rep, entries[0].bad // the file cannot be placed
		}
		perFile = append(perFile, entries)
	}
	if len(perFile) == 0 {
		return rep, &Problem{Kind: Truncated, File: files[0], Line: 1, Seq: 1, Detail: "no records: the trail was emptied"}
	}
	slices.SortStableFunc(perFile, func(a, b []entry) int { return cmpUint(a[0].rec.Seq, b[0].rec.Seq) })
	var all []entry
	for _, entries := range perFile {
		rep.Files = append(rep.Files, entries[0].file)
		all = append(all, entries...)
	}
	return rep, walk(&rep, all, opts)
}

// parseFile parses the lines of one file and checks what can be checked
// of each record alone: its form and its signature.
func parseFile(name string, data []byte, opts VerifyOptions) []entry {
	var entries []entry
	for n := 1; len(data) > 0; n++ {
		line, rest, complete := bytes.Cut(data, []byte{'\n'})
		data = rest
		e := entry{file: name, line: n, partial: !complete}
		r, err := ParseRecord(line)
		switch {
		case !complete:
			e.bad = &Problem{Kind: Truncated, Detail: "the file ends in the middle of this line: cut off"}
		case err != nil:
			e.bad = &Problem{Kind: Altered, Detail: fmt.Sprintf("not a record as the writer writes it (%v): altered", strings.TrimPrefix(err.Error(), "audit: "))}
		default:
			e.hash = hashLine(line)
			if r.Type == TypeCheckpoint {
				e.writer, err = checkCheckpoint(&r, opts.Bundles)
				if err != nil {
					e.bad = &Problem{Kind: Forged, Detail: "checkpoint " + err.Error() + ": forged or altered"}
				}
			}
		}
		r.X5C, r.Signature = nil, ""
		r.Event.Changed = nil
		e.rec = r
		if e.bad != nil {
			e.bad.File, e.bad.Line, e.bad.Seq = name, n, r.Seq
		}
		entries = append(entries, e)
	}
	return entries
}

// checkCheckpoint checks a checkpoint's signature and, with bundles, its
// chain, and returns the SPIFFE ID of its signer ("" when unsigned).
func checkCheckpoint(r *Record, bundles x509bundle.Source) (string, error) {
	if r.Signature == "" {
		if r.Unsigned == "" || len(r.X5C) > 0 {
			return "", errors.New("has neither a signature nor a reason for none")
		}
		return "", nil
	}
	if r.Unsigned != "" {
		return "", errors.New("is both signed and unsigned")
	}
	certs, err := r.chain()
	if err != nil {
		return "", err
	}
	if err := r.checkSignature(certs[0]); err != nil {
		return "", err
	}
	if bundles == nil {
		id, err := x509svid.IDFromCert(certs[0])
		if err != nil {
			return "", fmt.Errorf("signer is not an X.509-SVID (%v)", err)
		}
		return id.String(), nil
	}
	id, _, err := x509svid.Verify(certs, bundles, x509svid.WithTime(r.Time))
	if err != nil {
		return "", fmt.Errorf("signer's chain does not verify against the trust bundle at %s (%v)",
			r.Time.Format("2006-01-02T15:04:05Z07:00"), err)
	}
	return id.String(), nil
}

// walk follows the chain through the records in order.
func walk(rep *Report, all []entry, opts VerifyOptions) error {
	at := func(kind ProblemKind, e entry, format string, args ...any) *Problem {
		return &Problem{Kind: kind, File: e.file, Line: e.line, Seq: e.rec.Seq, Detail: fmt.Sprintf(format, args...)}
	}
	lastCheckpoint := -1
	for i, e := range all {
		if e.bad != nil {
			if e.bad.Seq == 0 && i > 0 {
				e.bad.Seq = all[i-1].rec.Seq + 1
			}
			return e.bad
		}
		if i == 0 {
			switch {
			case e.rec.Seq == 1 && e.rec.Prev != zeroHash:
				return at(Altered, e, "the first record of a trail has a prev of 64 zeros, this one %q: altered", e.rec.Prev)
			case e.rec.Seq != 1 && !opts.Partial:
				return at(Removed, e, "the trail starts here, not at record 1: records 1 to %d are missing (give the older files too, or accept a partial trail)", e.rec.Seq-1)
			case e.rec.Seq != 1:
				rep.Warnings = append(rep.Warnings, fmt.Sprintf("the trail starts at record %d: the records before it were not checked", e.rec.Seq))
			}
			rep.First = e.rec.Seq
		} else {
			p := all[i-1]
			want := p.rec.Seq + 1
			var next *entry
			if i+1 < len(all) && all[i+1].bad == nil {
				next = &all[i+1]
			}
			switch {
			case e.rec.Seq == want && e.rec.Prev != p.hash:
				if next != nil && next.rec.Seq == e.rec.Seq+1 && next.rec.Prev != e.hash {
					return at(Altered, e, "its prev is not the hash of record %d, and its hash is not the prev of record %d: this record was altered", p.rec.Seq, next.rec.Seq)
				}
				return at(Altered, p, "its hash is not the prev of record %d (line %d of %s): this record was altered", e.rec.Seq, e.line, e.file)
			case e.rec.Seq > want && next != nil && next.rec.Seq == want:
				return at(Reordered, e, "it comes before record %d: records out of order (swapped)", want)
			case e.rec.Seq > want && p.file != e.file:
				return at(Removed, e, "%s is missing between %s and %s: a file or its last records removed", span(want, e.rec.Seq-1), p.file, e.file)
			case e.rec.Seq > want:
				return at(Removed, e, "%s is missing before it: removed", span(want, e.rec.Seq-1))
			case e.rec.Seq < want:
				return at(Reordered, e, "it comes after record %d: records out of order or repeated", p.rec.Seq)
			}
		}
		rep.Records++
		rep.Last = e.rec.Seq
		switch e.rec.Type {
		case TypeGap:
			rep.Gaps++
			rep.Dropped += e.rec.Dropped
			rep.Failed += e.rec.Failed
		case TypeCheckpoint:
			lastCheckpoint = i
			rep.Checkpoints++
			if e.writer == "" {
				rep.Unsigned++
			} else if !slices.Contains(rep.Writers, e.writer) {
				rep.Writers = append(rep.Writers, e.writer)
			}
		}
	}
	if len(rep.Writers) == 0 {
		rep.Trusted = false
	}

	last := all[len(all)-1]
	switch {
	case lastCheckpoint < 0 && !opts.Open:
		return at(Truncated, last, "the trail has no checkpoint: cut off, or its writer never reached one")
	case lastCheckpoint != len(all)-1 && !opts.Open:
		return at(Truncated, last, "the trail ends here without a checkpoint: the records after it were cut off, or its writer crashed or is still writing")
	case lastCheckpoint == len(all)-1 && last.rec.Checkpoint != CheckpointFinal && !opts.Open:
		return at(Truncated, last, "the trail ends at a %s checkpoint, not a final one: the records after it were cut off, or its writer crashed or is still writing", last.rec.Checkpoint)
	}
	rep.Uncovered = len(all) - 1 - lastCheckpoint
	if rep.Uncovered > 0 {
		rep.Warnings = append(rep.Warnings, fmt.Sprintf("the %d records after the last checkpoint are not covered by a signature", rep.Uncovered))
	}
	if lastCheckpoint >= 0 {
		if lc := all[lastCheckpoint]; lc.writer == "" {
			if !opts.AllowUnsigned {
				return at(Unsigned, lc, "the last checkpoint is unsigned (%s): nothing authenticates the trail", lc.rec.Unsigned)
			}
			rep.Warnings = append(rep.Warnings, "the last checkpoint is unsigned: nothing authenticates the trail")
		} else if rep.Unsigned > 0 {
			rep.Warnings = append(rep.Warnings, fmt.Sprintf("%d checkpoints are unsigned; the last, signed, checkpoint covers them", rep.Unsigned))
		}
	} else if !opts.AllowUnsigned {
		return at(Unsigned, last, "the trail has no checkpoint: nothing authenticates it")
	}
	return nil
}

// span names the records from a to b.
func span(a, b uint64) string {
	if a == b {
		return fmt.Sprintf("record %d", a)
	}
	return fmt.Sprintf("records %d to %d", a, b)
}
