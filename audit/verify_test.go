package audit_test

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/credflow/credflow/audit"
	"github.com/credflow/credflow/internal/testca"
)

// TestVerifyUntouched: a trail as the writer left it verifies, names its
// signer and counts its records and checkpoints.
func TestVerifyUntouched(t *testing.T) {
	ca := testca.New(t, td)
	path := signedTrail(t, ca, 18)
	rep, err := audit.Verify([]string{path}, bundles(ca))
	if err != nil {
		t.Fatal(err)
	}
	want := audit.Report{
		Files: []string{path}, Records: 22, First: 1, Last: 22, Checkpoints: 4,
		Writers: []string{writerID.String()}, Trusted: true,
	}
	if d := cmp.Diff(want, rep); d != "" {
		t.Errorf("report (-want +got):\n%s", d)
	}
	if got, want := rep.Summary(), "22 records, 4 checkpoints signed by spiffe://example.org/frontend, 0 gaps"; got != want {
		t.Errorf("Summary() = %q, want %q", got, want)
	}
	kinds := []string{}
	for _, r := range records(t, path) {
		if r.Type == audit.TypeCheckpoint {
			kinds = append(kinds, r.Checkpoint)
		}
	}
	if d := cmp.Diff([]string{"periodic", "periodic", "periodic", "final"}, kinds); d != "" {
		t.Errorf("checkpoint kinds (-want +got):\n%s", d)
	}
}

// TestVerifyTampering: each way of tampering with a trail fails Verify,
// which names the record tampered with and what was done, as well as the
// evidence tells.
func TestVerifyTampering(t *testing.T) {
	ca := testca.New(t, td)
	other := testca.New(t, td) // same trust domain, another CA
	orig := readLines(t, signedTrail(t, ca, 18))
	if len(orig) != 22 {
		t.Fatalf("the trail has %d lines, want 22", len(orig))
	}
	// Line n holds record n: requests 1-5, a checkpoint 6, requests
	// 7-11, a checkpoint 12, requests 13-17, a checkpoint 18, requests
	// 19-21, the final checkpoint 22.
	edit := func(f func(lines [][]byte) [][]byte) [][]byte {
		lines := make([][]byte, len(orig))
		for i, l := range orig {
			lines[i] = slices.Clone(l)
		}
		return f(lines)
	}
	resign := func(t *testing.T, line []byte) []byte {
		r, err := audit.ParseRecord(line)
		if err != nil {
			t.Fatal(err)
		}
		svid := other.Issue(t, writerID)
		if err := audit.SignCheckpoint(&r, svid.PrivateKey, svid.Certificates); err != nil {
			t.Fatal(err)
		}
		out, err := audit.Marshal(&r)
		if err != nil {
			t.Fatal(err)
		}
		return out
	}

	for _, tc := range []struct {
		name     string
		lines    func(t *testing.T) [][]byte
		cut      int // bytes cut off the file's end
		kind     audit.ProblemKind
		line     int
		seq      uint64
		mentions string
	}{{
		name: "byte changed in a value",
		lines: func(*testing.T) [][]byte {
			return edit(func(l [][]byte) [][]byte {
				l[7] = bytes.Replace(l[7], []byte("/items/6"), []byte("/items/9"), 1)
				return l
			})
		},
		kind: audit.Altered, line: 8, seq: 8, mentions: "this record was altered",
	}, {
		name: "byte changed breaking the JSON",
		lines: func(*testing.T) [][]byte {
			return edit(func(l [][]byte) [][]byte {
				l[7][len(l[7])/2] = '{'
				return l
			})
		},
		kind: audit.Altered, line: 8, seq: 8, mentions: "altered",
	}, {
		name: "space added",
		lines: func(*testing.T) [][]byte {
			return edit(func(l [][]byte) [][]byte {
				l[7] = bytes.Replace(l[7], []byte(`,"path"`), []byte(`, "path"`), 1)
				return l
			})
		},
		kind: audit.Altered, line: 8, seq: 8, mentions: "canonical",
	}, {
		name: "prev changed",
		lines: func(*testing.T) [][]byte {
			return edit(func(l [][]byte) [][]byte {
				l[7] = bytes.Replace(l[7], []byte(`"prev":"`), []byte(`"prev":"0`), 1)
				return l
			})
		},
		kind: audit.Altered, line: 8, seq: 8, mentions: "this record was altered",
	}, {
		name: "record deleted",
		lines: func(*testing.T) [][]byte {
			return edit(func(l [][]byte) [][]byte { return slices.Delete(l, 7, 8) })
		},
		kind: audit.Removed, line: 8, seq: 9, mentions: "record 8 is missing",
	}, {
		name: "records deleted and renumbered",
		lines: func(*testing.T) [][]byte {
			return edit(func(l [][]byte) [][]byte {
				l = slices.Delete(l, 7, 8)
				for i := 7; i < len(l); i++ { // seq 9 becomes 8...
					r, _ := audit.ParseRecord(l[i])
					r.Seq--
					l[i], _ = audit.Marshal(&r)
				}
				return l
			})
		},
		kind: audit.Altered, line: 8, seq: 8, mentions: "this record was altered",
	}, {
		name: "two records swapped",
		lines: func(*testing.T) [][]byte {
			return edit(func(l [][]byte) [][]byte { l[7], l[8] = l[8], l[7]; return l })
		},
		kind: audit.Reordered, line: 8, seq: 9, mentions: "before record 8",
	}, {
		name: "record repeated",
		lines: func(*testing.T) [][]byte {
			return edit(func(l [][]byte) [][]byte { return slices.Insert(l, 8, l[7]) })
		},
		kind: audit.Reordered, line: 9, seq: 8, mentions: "after record 8",
	}, {
		name: "tail truncated by 4 records, to a periodic checkpoint",
		lines: func(*testing.T) [][]byte {
			return edit(func(l [][]byte) [][]byte { return l[:18] })
		},
		kind: audit.Truncated, line: 18, seq: 18, mentions: "not a final one",
	}, {
		name: "tail truncated by 5 records",
		lines: func(*testing.T) [][]byte {
			return edit(func(l [][]byte) [][]byte { return l[:17] })
		},
		kind: audit.Truncated, line: 17, seq: 17, mentions: "without a checkpoint",
	}, {
		name: "tail truncated mid-line",
		lines: func(*testing.T) [][]byte {
			return edit(func(l [][]byte) [][]byte { return l })
		},
		cut:  30,
		kind: audit.Truncated, line: 22, seq: 22, mentions: "cut off",
	}, {
		name: "checkpoint re-signed by another CA",
		lines: func(t *testing.T) [][]byte {
			return edit(func(l [][]byte) [][]byte { l[11] = resign(t, l[11]); return l })
		},
		kind: audit.Forged, line: 12, seq: 12, mentions: "does not verify against the trust bundle",
	}, {
		name: "checkpoint signature altered",
		lines: func(*testing.T) [][]byte {
			return edit(func(l [][]byte) [][]byte {
				i := bytes.Index(l[11], []byte(`"signature":"`)) + len(`"signature":"`) + 10
				if l[11][i] == 'A' { // still base64
					l[11][i] = 'B'
				} else {
					l[11][i] = 'A'
				}
				return l
			})
		},
		kind: audit.Forged, line: 12, seq: 12, mentions: "signature does not verify",
	}, {
		name: "record altered, chain recomputed, checkpoints left",
		lines: func(*testing.T) [][]byte {
			return edit(func(l [][]byte) [][]byte {
				l[7] = bytes.Replace(l[7], []byte(`"allow"`), []byte(`"deny"`), 1)
				for i := 8; i < len(l); i++ {
					r, _ := audit.ParseRecord(l[i])
					r.Prev = audit.HashLine(l[i-1])
					l[i], _ = audit.Marshal(&r)
				}
				return l
			})
		},
		kind: audit.Forged, line: 12, seq: 12, mentions: "signature does not verify",
	}, {
		name: "record altered, chain recomputed, checkpoints re-signed by another CA",
		lines: func(t *testing.T) [][]byte {
			return edit(func(l [][]byte) [][]byte {
				l[7] = bytes.Replace(l[7], []byte(`"allow"`), []byte(`"deny"`), 1)
				for i := 8; i < len(l); i++ {
					r, _ := audit.ParseRecord(l[i])
					r.Prev = audit.HashLine(l[i-1])
					l[i], _ = audit.Marshal(&r)
					if r.Type == audit.TypeCheckpoint {
						l[i] = resign(t, l[i])
					}
				}
				return l
			})
		},
		kind: audit.Forged, line: 12, seq: 12, mentions: "trust bundle",
	}, {
		name: "checkpoint made unsigned",
		lines: func(*testing.T) [][]byte {
			return edit(func(l [][]byte) [][]byte {
				r, _ := audit.ParseRecord(l[21])
				r.Signature, r.X5C, r.Unsigned = "", nil, audit.UnsignedNoSVID
				l[21], _ = audit.Marshal(&r)
				return l
			})
		},
		kind: audit.Unsigned, line: 22, seq: 22, mentions: "unsigned",
	}} {
		t.Run(tc.name, func(t *testing.T) {
			path := writeLines(t, t.TempDir(), "audit.jsonl", tc.lines(t))
			if tc.cut > 0 {
				fi, err := os.Stat(path)
				if err != nil {
					t.Fatal(err)
				}
				if err := os.Truncate(path, fi.Size()-int64(tc.cut)); err != nil {
					t.Fatal(err)
				}
			}
			_, err := audit.Verify([]string{path}, bundles(ca))
			var p *audit.Problem
			if !errors.As(err, &p) {
				t.Fatalf("Verify: %v, want a *Problem", err)
			}
			if p.Kind != tc.kind || p.Line != tc.line || p.Seq != tc.seq || p.File != path || !strings.Contains(p.Detail, tc.mentions) {
				t.Errorf("Verify: %v\ngot kind %s, line %d, seq %d; want %s, line %d, seq %d, mentioning %q",
					err, p.Kind, p.Line, p.Seq, tc.kind, tc.line, tc.seq, tc.mentions)
			}
			if !strings.HasPrefix(err.Error(), "audit: record ") {
				t.Errorf("error %q does not start by naming the record", err)
			}
		})
	}
}

// TestVerifyTrust: without a bundle, signatures are checked against their
// own chain only and the report says so; with another CA's bundle, every
// checkpoint is forged.
func TestVerifyTrust(t *testing.T) {
	ca := testca.New(t, td)
	path := signedTrail(t, ca, 3)
	rep, err := audit.Verify([]string{path}, audit.VerifyOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Trusted || !strings.Contains(rep.Summary(), "not checked against a trust bundle") {
		t.Errorf("without a bundle: trusted %v, summary %q", rep.Trusted, rep.Summary())
	}
	_, err = audit.Verify([]string{path}, bundles(testca.New(t, td)))
	if p := (*audit.Problem)(nil); !errors.As(err, &p) || p.Kind != audit.Forged {
		t.Errorf("with another CA's bundle: %v, want forged", err)
	}
}

// TestVerifyUnsigned: a trail written without an SVID fails unless
// unsigned trails are accepted; an unsigned checkpoint followed by a
// signed one is a warning.
func TestVerifyUnsigned(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	r := start(t, audit.Config{Path: path, CheckpointEvery: 2})
	writeEvents(t, r, 3)
	r.stop(t)
	_, err := audit.Verify([]string{path}, audit.VerifyOptions{})
	if p := (*audit.Problem)(nil); !errors.As(err, &p) || p.Kind != audit.Unsigned || p.Seq != 5 {
		t.Fatalf("unsigned trail: %v, want unsigned at record 5", err)
	}
	rep, err := audit.Verify([]string{path}, audit.VerifyOptions{AllowUnsigned: true})
	if err != nil || rep.Unsigned != 2 || len(rep.Warnings) == 0 {
		t.Fatalf("AllowUnsigned: %+v, %v", rep, err)
	}

	// The SVID arrives: the restarted writer signs, and its final
	// checkpoint covers the unsigned ones.
	ca := testca.New(t, td)
	r = start(t, audit.Config{Path: path, CheckpointEvery: 2, SVIDs: ca.Issue(t, writerID)})
	writeEvents(t, r, 1)
	r.stop(t)
	rep, err = audit.Verify([]string{path}, bundles(ca))
	if err != nil {
		t.Fatal(err)
	}
	if rep.Unsigned != 2 || rep.Checkpoints != 3 || len(rep.Warnings) != 1 {
		t.Errorf("report %+v: want 2 of 3 checkpoints unsigned and a warning", rep)
	}
}

// TestVerifyOpen: a trail still being written verifies with Open, which
// counts the records its signatures do not cover yet.
func TestVerifyOpen(t *testing.T) {
	ca := testca.New(t, td)
	lines := readLines(t, signedTrail(t, ca, 18))
	path := writeLines(t, t.TempDir(), "audit.jsonl", lines[:20])
	rep, err := audit.Verify([]string{path}, audit.VerifyOptions{Bundles: ca.Bundle(), Open: true})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Uncovered != 2 || rep.Last != 20 {
		t.Errorf("report %+v: want 2 records uncovered, the last 20", rep)
	}
}

// FuzzParseRecord: a line that parses is exactly the encoding of the
// record it holds.
func FuzzParseRecord(f *testing.F) {
	f.Add([]byte(`{"v":1,"seq":1,"prev":"0000000000000000000000000000000000000000000000000000000000000000","type":"decision","time":"2026-12-06T12:00:00.5Z","peer_id":"spiffe://example.org/a","decision":"allow"}`))
	f.Add([]byte(`{"v":1,"seq":2,"prev":"ab","type":"gap","time":"2026-12-06T12:00:00Z","dropped":3,"failed":1}`))
	f.Add([]byte(`{"v":1,"seq":3,"prev":"ab","type":"checkpoint","time":"2026-12-06T12:00:00Z","checkpoint":"final","unsigned":"no_svid"}`))
	f.Add([]byte(`{"v":1,"seq":4,"prev":"","type":"config","time":"2026-12-06T12:00:00Z","changed":["inbound[0].allow","limits"],"until":"2027-01-01T00:00:00Z"}`))
	f.Add([]byte(`{"v":2}`))
	f.Fuzz(func(t *testing.T, line []byte) {
		r, err := audit.ParseRecord(line)
		if err != nil {
			return
		}
		out, err := audit.Marshal(&r)
		if err != nil || !bytes.Equal(out, line) {
			t.Fatalf("ParseRecord accepted %q, which encodes as %q (%v)", line, out, err)
		}
	})
}

// FuzzVerify: whatever a file holds, Verify returns a report or an error,
// and a file that verifies has a final checkpoint last.
func FuzzVerify(f *testing.F) {
	f.Add([]byte(`{"v":1,"seq":1,"prev":"0000000000000000000000000000000000000000000000000000000000000000","type":"checkpoint","time":"2026-12-06T12:00:00Z","checkpoint":"final","unsigned":"no_svid"}` + "\n"))
	f.Add([]byte("{}\n{\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		rep, err := audit.VerifyData(data, audit.VerifyOptions{AllowUnsigned: true})
		if err != nil {
			return
		}
		lines := bytes.Split(bytes.TrimSuffix(data, []byte("\n")), []byte("\n"))
		last, perr := audit.ParseRecord(lines[len(lines)-1])
		if perr != nil || last.Checkpoint != audit.CheckpointFinal || rep.Records != len(lines) {
			t.Fatalf("Verify accepted %q: %+v", data, rep)
		}
	})
}
