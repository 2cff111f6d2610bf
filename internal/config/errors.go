package config

import (
	"fmt"
	"slices"
	"strings"
)

// Error is one problem in a configuration file: the field path it is about
// (for example "inbound[0].allow[1]"), the line it is on when known, and
// what is wrong.
type Error struct {
	Line int // 1-based; 0 when the field is not in the file
	Path string
	Msg  string
}

func (e *Error) Error() string {
	if e.Line > 0 {
		return fmt.Sprintf("line %d: %s: %s", e.Line, e.Path, e.Msg)
	}
	return e.Path + ": " + e.Msg
}

// Errors is every problem found in a configuration file, in file order.
// Its Error prints one per line.
type Errors []*Error

func (es Errors) Error() string {
	lines := make([]string, len(es))
	for i, e := range es {
		lines[i] = e.Error()
	}
	return strings.Join(lines, "\n")
}

// errList collects the errors of one parse.
type errList struct {
	errs Errors
	// lines maps the field paths present in the file to their lines.
	lines map[string]int
	// shadowed paths already have a structural error (a bad value, or an
	// unknown field that meant them); checks of their meaning, and of what
	// encloses them, would only repeat it.
	shadowed []string
}

// add records an error about path.
func (l *errList) add(path, format string, args ...any) {
	l.errs = append(l.errs, &Error{Path: path, Msg: fmt.Sprintf(format, args...)})
}

// addAt records a structural error found at line; path's own checks are
// then left out.
func (l *errList) addAt(line int, path, format string, args ...any) {
	l.errs = append(l.errs, &Error{Line: line, Path: path, Msg: fmt.Sprintf(format, args...)})
	l.shadowed = append(l.shadowed, path)
}

// result drops the errors under shadowed paths that do not come from the
// structure itself, gives every error the line of its field (or of the
// nearest enclosing one in the file), and sorts them by line. Errors with
// no line come last.
func (l *errList) result() Errors {
	var out Errors
	for _, e := range l.errs {
		if e.Line == 0 {
			if l.isShadowed(e.Path) {
				continue
			}
			e.Line = l.lineOf(e.Path)
		}
		out = append(out, e)
	}
	slices.SortStableFunc(out, func(a, b *Error) int {
		switch {
		case a.Line == b.Line:
			return 0
		case a.Line == 0:
			return 1
		case b.Line == 0:
			return -1
		}
		return a.Line - b.Line
	})
	return out
}

// isShadowed reports whether path is at, under or above a shadowed path: a
// list with a bad item, or a listener with a bad field, would only be
// reported again for what is missing.
func (l *errList) isShadowed(path string) bool {
	under := func(a, b string) bool { return strings.HasPrefix(a, b+".") || strings.HasPrefix(a, b+"[") }
	for _, s := range l.shadowed {
		if path == s || under(path, s) || under(s, path) {
			return true
		}
	}
	return false
}

// lineOf returns the line of path, or of the nearest enclosing field in the
// file, or 0.
func (l *errList) lineOf(path string) int {
	for path != "" {
		if n, ok := l.lines[path]; ok {
			return n
		}
		i := strings.LastIndexAny(path, ".[")
		if i < 0 {
			return 0
		}
		path = path[:i]
	}
	return 0
}
