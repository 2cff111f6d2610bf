package audit

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
)

// tailChunk is how much of a file's end is read at a time to find its last
// record.
const tailChunk = 64 << 10

// rotatedName is the name a file whose first record is firstSeq gets at
// rotation.
func rotatedName(path string, firstSeq uint64) string {
	return path + "." + strconv.FormatUint(firstSeq, 10)
}

// rotatedFile is a rotated file of a trail.
type rotatedFile struct {
	path     string
	firstSeq uint64
}

// rotatedFiles lists the rotated files of the trail at path, oldest first.
func rotatedFiles(path string) ([]rotatedFile, error) {
	dir, base := filepath.Split(path)
	if dir == "" {
		dir = "."
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var files []rotatedFile
	for _, e := range entries {
		suffix, ok := strings.CutPrefix(e.Name(), base+".")
		if !ok || !e.Type().IsRegular() {
			continue
		}
		n, err := strconv.ParseUint(suffix, 10, 64)
		if err != nil || strconv.FormatUint(n, 10) != suffix {
			continue
		}
		files = append(files, rotatedFile{path: filepath.Join(dir, e.Name()), firstSeq: n})
	}
	slices.SortFunc(files, func(a, b rotatedFile) int { return cmpUint(a.firstSeq, b.firstSeq) })
	return files, nil
}

func cmpUint(a, b uint64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// trailEnd is where an existing trail stands.
type trailEnd struct {
	seq      uint64 // of its last record; 0: no trail
	prev     string // the hash of its last record
	size     int64  // of the current file, after any partial line is cut
	firstSeq uint64 // of the current file's first record; 0: empty
	gap      string // the reason for a gap at the restart; "": none
}

// readTrail finds the end of the trail at path: its last record, in path
// or, when path is missing or empty, in the newest rotated file. A partial
// last line in path is cut off.
func readTrail(path string) (trailEnd, error) {
	end := trailEnd{prev: zeroHash}
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	switch {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		return end, fmt.Errorf("audit: opening %s: %w", path, err)
	default:
		defer f.Close()
		fi, err := f.Stat()
		if err != nil {
			return end, fmt.Errorf("audit: %w", err)
		}
		end.size = fi.Size()
	}
	src := path
	if end.size == 0 {
		files, err := rotatedFiles(path)
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return end, fmt.Errorf("audit: listing rotated files of %s: %w", path, err)
		}
		if len(files) == 0 {
			return end, nil // a new trail
		}
		src = files[len(files)-1].path
		rf, err := os.Open(src)
		if err != nil {
			return end, fmt.Errorf("audit: %w", err)
		}
		defer rf.Close()
		fi, err := rf.Stat()
		if err != nil {
			return end, fmt.Errorf("audit: %w", err)
		}
		last, complete, err := lastLine(rf, fi.Size())
		if err != nil || !complete || last == nil {
			return end, fmt.Errorf("audit: %s does not end with a complete record; move it away to start a new trail", src)
		}
		return end, end.resumeAfter(src, last)
	}

	first, err := bufio.NewReader(io.NewSectionReader(f, 0, end.size)).ReadBytes('\n')
	if err == nil {
		r, perr := ParseRecord(first[:len(first)-1])
		if perr != nil {
			return end, fmt.Errorf("audit: the first line of %s is not a record (%v); move it away to start a new trail", path, perr)
		}
		end.firstSeq = r.Seq
	}
	last, complete, err := lastLine(f, end.size)
	if err != nil {
		return end, fmt.Errorf("audit: reading %s: %w", path, err)
	}
	if !complete {
		// A write cut short by a crash: cut it off and say so.
		end.size -= int64(len(last))
		if err := f.Truncate(end.size); err != nil {
			return end, fmt.Errorf("audit: cutting the partial record off %s: %w", path, err)
		}
		if last, _, err = lastLine(f, end.size); err != nil {
			return end, fmt.Errorf("audit: reading %s: %w", path, err)
		}
		if end.size == 0 {
			end.firstSeq = 0
			return readTrailAfterPartial(path)
		}
		if err := end.resumeAfter(path, last); err != nil {
			return end, err
		}
		end.gap = GapPartialRecord
		return end, nil
	}
	return end, end.resumeAfter(path, last)
}

// readTrailAfterPartial is readTrail for a file that held nothing but a
// partial line, now cut off.
func readTrailAfterPartial(path string) (trailEnd, error) {
	end, err := readTrail(path)
	if err == nil {
		end.gap = GapPartialRecord
	}
	return end, err
}

// resumeAfter sets the end of the trail to the record in line, the last
// of file.
func (end *trailEnd) resumeAfter(file string, line []byte) error {
	r, err := ParseRecord(line)
	if err != nil {
		return fmt.Errorf("audit: the last line of %s is not a record (%v); move it away to start a new trail", file, err)
	}
	end.seq, end.prev = r.Seq, hashLine(line)
	if r.Type != TypeCheckpoint || r.Checkpoint == CheckpointPeriodic {
		end.gap = GapRestart
	}
	return nil
}

// lastLine returns the last line of the first size bytes of f, without
// its "\n", and whether it is complete (ends in "\n"). An incomplete line
// is returned whole. It is nil when there is none.
func lastLine(f io.ReaderAt, size int64) (line []byte, complete bool, err error) {
	if size == 0 {
		return nil, false, nil
	}
	var tail []byte
	for n := int64(tailChunk); ; n *= 2 {
		off := max(size-n, 0)
		tail = make([]byte, size-off)
		if _, err := f.ReadAt(tail, off); err != nil && !errors.Is(err, io.EOF) {
			return nil, false, err
		}
		complete = tail[len(tail)-1] == '\n'
		body := tail
		if complete {
			body = tail[:len(tail)-1]
		}
		if i := bytes.LastIndexByte(body, '\n'); i >= 0 {
			return body[i+1:], complete, nil
		}
		if off == 0 {
			return body, complete, nil
		}
	}
}
