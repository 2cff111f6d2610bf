package revoke

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/fsnotify/fsnotify"

	"github.com/credflow/credflow/internal/logkey"
)

// DefaultInterval is how often FileSource reads its file when
// FileSource.Interval is not set.
const DefaultInterval = 2 * time.Second

// document is the revocation file:
//
//	{"entries": [ENTRY, ...]}
//
// with each ENTRY as the package doc describes. An empty list is
// {"entries": []}; an empty file, null or a document without "entries" is
// an error, so that a file truncated by mistake never lifts every
// revocation.
type document struct {
	Entries *[]Entry `json:"entries"`
}

// ParseFile parses a revocation file (see FileSource). It fails when any
// entry is not valid, naming each bad one: a file is applied whole or not
// at all. The entries are returned in canonical form, in file order.
func ParseFile(data []byte) ([]Entry, error) {
	var doc document
	if err := json.Unmarshal(data, &doc); err != nil {
		return nil, fmt.Errorf("revoke: %w", err)
	}
	if doc.Entries == nil {
		return nil, errors.New(`revoke: no "entries" array (an empty list is {"entries": []})`)
	}
	entries := *doc.Entries
	var errs []error
	for i, e := range entries {
		c, err := e.Canonical()
		if err != nil {
			errs = append(errs, fmt.Errorf("entries[%d]: %w", i, err))
			continue
		}
		entries[i] = c
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return entries, nil
}

// FormatFile encodes entries as a revocation file, indented, sorted by Key.
func FormatFile(entries []Entry) ([]byte, error) {
	entries = slices.Clone(entries)
	if entries == nil {
		entries = []Entry{}
	}
	slices.SortFunc(entries, func(a, b Entry) int { return cmp.Compare(a.Key(), b.Key()) })
	data, err := json.MarshalIndent(document{Entries: &entries}, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("revoke: %w", err)
	}
	return append(data, '\n'), nil
}

// readFile reads and parses the revocation file at path.
func readFile(path string) ([]Entry, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("revoke: %w", err)
	}
	entries, err := ParseFile(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return entries, nil
}

// live returns the entries of entries that are live at now.
func live(entries []Entry, now time.Time) []Entry {
	return slices.DeleteFunc(entries, func(e Entry) bool { return !e.Live(now) })
}

// logger returns l, or a logger that discards when l is nil.
func logger(l *slog.Logger) *slog.Logger {
	if l == nil {
		return slog.New(slog.DiscardHandler)
	}
	return l
}

// FileSource keeps a List equal to the live entries of a revocation file,
// typically a mounted ConfigMap:
//
//	{"entries": [
//	  {"kind": "spiffe_id", "value": "spiffe://example.org/ns/prod/*",
//	   "expires": "2030-01-02T15:04:05Z", "reason": "incident 42"},
//	  {"kind": "serial", "value": "3a8f01"},
//	  {"kind": "jti", "value": "0b1c6b0e-5b1e-4a5e-9a9f-2f7d0c1e4c11"}
//	]}
//
// It watches the file's directory (a ConfigMap update swaps the ..data
// symlink there) and reads the file every Interval besides. A file that
// is missing or does not parse is logged and the last good list kept.
type FileSource struct {
	// Path is the revocation file. Required.
	Path string
	// Interval is how often the file is read even when no change is seen;
	// default DefaultInterval.
	Interval time.Duration
	// List is the list kept up to date. Required.
	List *List
	// Logger receives a line when the list changes or the file is bad;
	// nil logs nothing.
	Logger *slog.Logger
}

// Load reads the file once into the List. It fails when the file is
// missing or does not parse: call it at start, so that a deny list that
// is not there is never taken for an empty one.
func (s *FileSource) Load() error {
	entries, err := readFile(s.Path)
	if err != nil {
		return err
	}
	if _, err := s.List.Replace(live(entries, time.Now())); err != nil {
		return fmt.Errorf("%s: %w", s.Path, err) // not reached: ParseFile validated
	}
	return nil
}

// Run keeps the List up to date until ctx ends, then returns nil. When the
// directory cannot be watched it says so and reads every Interval only.
func (s *FileSource) Run(ctx context.Context) error {
	log := logger(s.Logger).With(slog.String(logkey.File, s.Path))
	var (
		events <-chan fsnotify.Event
		errs   <-chan error
	)
	w, err := fsnotify.NewWatcher()
	if err == nil {
		if err = w.Add(filepath.Dir(s.Path)); err != nil {
			w.Close()
		}
	}
	if err != nil {
		log.Warn("revocation list: cannot watch the file's directory; reading it every interval only",
			slog.Any(logkey.Error, err))
	} else {
		defer w.Close()
		events, errs = w.Events, w.Errors
	}
	t := time.NewTicker(cmp.Or(s.Interval, DefaultInterval))
	defer t.Stop()

	var lastErr string // the error last logged, logged again only when it changes
	reload := func() {
		err := s.reload(log)
		switch {
		case err == nil:
			lastErr = ""
		case err.Error() != lastErr:
			lastErr = err.Error()
			log.Warn("revocation list: keeping the last good list", slog.Any(logkey.Error, err))
		}
	}
	reload()
	log.Debug("revocation list: watching the file", slog.Bool(logkey.Watch, events != nil))
	for {
		select {
		case <-ctx.Done():
			return nil
		case _, ok := <-events:
			if !ok {
				events = nil
				continue
			}
			reload()
		case err, ok := <-errs:
			if !ok {
				errs = nil
				continue
			}
			log.Warn("revocation list: watching the file's directory", slog.Any(logkey.Error, err))
		case <-t.C:
			reload()
		}
	}
}

// reload reads the file into the List, logging a change.
func (s *FileSource) reload(log *slog.Logger) error {
	entries, err := readFile(s.Path)
	if err != nil {
		return err
	}
	changed, err := s.List.Replace(live(entries, time.Now()))
	if changed {
		log.Info("revocation list updated", slog.Int(logkey.Entries, s.List.Len()))
	}
	return err
}

// FileStore edits a revocation file (see FileSource): Add and Remove read
// it, change it and write it whole to a temporary file in the same
// directory that is then renamed over it, so that a reader never sees half
// a file. It assumes a single writer at a time: two editors at once can
// lose one's change. Entries that have expired are dropped on each write.
// A FileStore is for a file the operator then publishes (for instance as a
// ConfigMap); a mounted ConfigMap itself is read-only.
type FileStore struct {
	// Path is the revocation file; Add creates it when it does not exist.
	Path string
}

var _ Store = (*FileStore)(nil)

// Add adds e to the file, replacing the entry with the same Key. An Added
// time that is not set is set to now.
func (s *FileStore) Add(ctx context.Context, e Entry) error {
	e, err := prepare(e, time.Now())
	if err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	entries, mode, err := s.read()
	if errors.Is(err, fs.ErrNotExist) {
		entries, mode, err = nil, 0o644, nil
	}
	if err != nil {
		return err
	}
	entries = slices.DeleteFunc(entries, func(o Entry) bool { return o.Key() == e.Key() })
	return s.write(append(entries, e), mode)
}

// Remove removes the entry whose Key is key; when there is none, the error
// wraps ErrNotFound and names the key.
func (s *FileStore) Remove(ctx context.Context, key string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	entries, mode, err := s.read()
	if err != nil {
		return err
	}
	n := len(entries)
	entries = slices.DeleteFunc(entries, func(e Entry) bool { return e.Key() == key })
	if len(entries) == n {
		return fmt.Errorf("%w: %q in %s", ErrNotFound, key, s.Path)
	}
	return s.write(entries, mode)
}

// List returns the file's entries sorted by Key, expired ones included.
func (s *FileStore) List(ctx context.Context) ([]Entry, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	entries, _, err := s.read()
	if err != nil {
		return nil, err
	}
	slices.SortFunc(entries, func(a, b Entry) int { return cmp.Compare(a.Key(), b.Key()) })
	return entries, nil
}

// read returns the file's entries and mode.
func (s *FileStore) read() ([]Entry, fs.FileMode, error) {
	fi, err := os.Stat(s.Path)
	if err != nil {
		return nil, 0, fmt.Errorf("revoke: %w", err)
	}
	entries, err := readFile(s.Path)
	return entries, fi.Mode().Perm(), err
}

// write replaces the file with entries, the expired ones dropped.
func (s *FileStore) write(entries []Entry, mode fs.FileMode) error {
	data, err := FormatFile(live(entries, time.Now()))
	if err != nil {
		return err
	}
	dir, base := filepath.Split(s.Path)
	f, err := os.CreateTemp(cmp.Or(dir, "."), "."+base+".tmp-*")
	if err != nil {
		return fmt.Errorf("revoke: %w", err)
	}
	defer os.Remove(f.Name()) // fails harmlessly once renamed
	_, err = f.Write(data)
	err = errors.Join(err, f.Chmod(mode), f.Sync(), f.Close())
	if err == nil {
		err = os.Rename(f.Name(), s.Path)
	}
	if err != nil {
		return fmt.Errorf("revoke: writing %s: %w", s.Path, err)
	}
	return nil
}

// prepare validates e for a store: canonical, Added set, not yet expired.
func prepare(e Entry, now time.Time) (Entry, error) {
	e, err := e.Canonical()
	if err != nil {
		return Entry{}, err
	}
	if e.Added.IsZero() {
		e.Added = now
	}
	if !e.Live(now) {
		return Entry{}, fmt.Errorf("%w: %s: already expired at %s", ErrInvalid, e.Key(), e.Expires.Format(time.RFC3339))
	}
	return e, nil
}
