package config

import (
	"fmt"
	"reflect"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"
)

var unmarshalerType = reflect.TypeFor[yaml.Unmarshaler]()

// shorthand lists the types whose YAML is a full form or a one-value
// shorthand for it: "token_endpoint: ADDR" for {listen: ADDR}, "audience:
// ID" for [ID]. A scalar is checked by decoding it; the full form field by
// field, as any mapping or list.
var shorthand = map[reflect.Type]bool{
	reflect.TypeFor[tokenEndpoint](): true,
	reflect.TypeFor[stringList]():    true,
}

// walker checks a YAML tree against the file's Go types before it is
// decoded: every unknown field, repeated field, value of the wrong kind and
// unparsable value is recorded with its path and line, and removed from
// the tree (a bad value becomes null), so that decoding the rest succeeds
// and the remaining fields can still be checked for meaning.
type walker struct {
	errs *errList
	// budget bounds the nodes visited, aliases expanded: a small file of
	// nested aliases can otherwise name billions.
	budget int
	fields map[reflect.Type]*structFields
}

// structFields are the YAML fields of a struct type, in order.
type structFields struct {
	types map[string]reflect.Type
	names []string
}

// newWalker returns a walker for a file of size bytes: a file without
// aliases has fewer nodes than bytes.
func newWalker(errs *errList, size int) *walker {
	return &walker{errs: errs, budget: 2*size + 1000, fields: map[reflect.Type]*structFields{}}
}

func (w *walker) walk(n *yaml.Node, t reflect.Type, path string) {
	if !w.count(n, path) {
		return
	}
	if n.Kind == yaml.AliasNode {
		if n.Alias != nil {
			w.walk(n.Alias, t, path)
		}
		return
	}
	if n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null" {
		return // the zero value
	}
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if reflect.PointerTo(t).Implements(unmarshalerType) {
		if n.Kind == yaml.ScalarNode || !shorthand[t] {
			w.scalar(n, t, path)
			return
		}
		// The full form of a type with a one-value shorthand: checked as
		// its mapping or list.
	}
	switch t.Kind() {
	case reflect.Struct:
		if w.kind(n, yaml.MappingNode, path) {
			w.mapping(n, t, path)
		}
	case reflect.Map:
		if !w.kind(n, yaml.MappingNode, path) {
			return
		}
		seen := map[string]int{}
		kept := n.Content[:0:0]
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			p := path + "." + keyName(k.Value)
			if k.Kind != yaml.ScalarNode {
				w.errs.errs = append(w.errs.errs, &Error{Line: k.Line, Path: path, Msg: "a key must be a single value"})
				continue
			}
			if !w.unique(seen, k, p) {
				continue
			}
			w.errs.lines[p] = k.Line
			w.walk(v, t.Elem(), p)
			kept = append(kept, k, v)
		}
		n.Content = kept
	case reflect.Slice:
		if !w.kind(n, yaml.SequenceNode, path) {
			return
		}
		for i, item := range n.Content {
			p := fmt.Sprintf("%s[%d]", path, i)
			w.errs.lines[p] = item.Line
			w.walk(item, t.Elem(), p)
		}
	default:
		w.scalar(n, t, path)
	}
}

// mapping checks the fields of a struct.
func (w *walker) mapping(n *yaml.Node, t reflect.Type, path string) {
	sf := w.fields[t]
	if sf == nil {
		sf = &structFields{types: map[string]reflect.Type{}}
		for f := range t.Fields() {
			name, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
			if name == "" || name == "-" {
				continue
			}
			sf.types[name] = f.Type
			sf.names = append(sf.names, name)
		}
		w.fields[t] = sf
	}
	seen := map[string]int{}
	kept := n.Content[:0:0]
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		if k.ShortTag() == "!!merge" {
			// "<<: *base" merges the fields of another mapping.
			w.merge(v, t, path)
			kept = append(kept, k, v)
			continue
		}
		if k.Kind != yaml.ScalarNode {
			w.errs.addAt(k.Line, cmpOr(path, "(file)"), "a key must be a single value")
			continue
		}
		p := join(path, keyName(k.Value))
		ft, known := sf.types[k.Value]
		switch {
		case !known:
			if s := suggest(k.Value, sf.names); s != "" {
				w.errs.addAt(k.Line, p, "unknown field (did you mean %s?)", s)
				w.errs.shadowed = append(w.errs.shadowed, join(path, s))
			} else {
				w.errs.addAt(k.Line, p, "unknown field")
			}
			continue
		case !w.unique(seen, k, p):
			continue
		}
		w.errs.lines[p] = k.Line
		w.walk(v, ft, p)
		kept = append(kept, k, v)
	}
	n.Content = kept
}

// count counts a visit to n; past maxNodes it records an error once and
// reports false.
func (w *walker) count(n *yaml.Node, path string) bool {
	if w.budget--; w.budget >= 0 {
		return true
	}
	if w.budget == -1 {
		w.errs.addAt(n.Line, cmpOr(path, "(file)"), "aliases expand the file to too many values")
	}
	return false
}

// merge checks the value of a merge key: a mapping, or a list of them.
func (w *walker) merge(n *yaml.Node, t reflect.Type, path string) {
	if !w.count(n, path) {
		return
	}
	for n.Kind == yaml.AliasNode && n.Alias != nil {
		n = n.Alias
	}
	if n.Kind == yaml.SequenceNode {
		for _, item := range n.Content {
			w.merge(item, t, path)
		}
		return
	}
	if w.kind(n, yaml.MappingNode, join(path, "<<")) {
		w.mapping(n, t, path)
	}
}

// unique records key k of a mapping, reporting a repeat.
func (w *walker) unique(seen map[string]int, k *yaml.Node, path string) bool {
	if first, dup := seen[k.Value]; dup {
		w.errs.addAt(k.Line, path, "set twice (first on line %d)", first)
		return false
	}
	seen[k.Value] = k.Line
	return true
}

// kind reports whether n is of kind want, recording an error if not.
func (w *walker) kind(n *yaml.Node, want yaml.Kind, path string) bool {
	if n.Kind == want {
		return true
	}
	var got string
	switch n.Kind {
	case yaml.MappingNode:
		got = "a mapping"
	case yaml.SequenceNode:
		got = "a list"
	default:
		got = fmt.Sprintf("%q", n.Value)
	}
	wanted := map[yaml.Kind]string{yaml.MappingNode: "a mapping", yaml.SequenceNode: "a list", yaml.ScalarNode: "a single value"}[want]
	w.errs.addAt(n.Line, path, "expected %s, got %s", wanted, got)
	setNull(n)
	return false
}

// scalar checks that n decodes into a value of type t.
func (w *walker) scalar(n *yaml.Node, t reflect.Type, path string) {
	if !w.kind(n, yaml.ScalarNode, path) {
		return
	}
	err := n.Decode(reflect.New(t).Interface())
	if err == nil {
		return
	}
	var msg string
	switch t.Kind() {
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		msg = fmt.Sprintf("%q is not a whole number", n.Value)
	case reflect.Float32, reflect.Float64:
		msg = fmt.Sprintf("%q is not a number", n.Value)
	case reflect.Bool:
		msg = fmt.Sprintf("%q is not true or false", n.Value)
	default:
		msg = err.Error() // the type's own UnmarshalYAML says what is wrong
		if _, ok := err.(*yaml.TypeError); ok {
			msg = fmt.Sprintf("%q is not a valid value", n.Value)
		}
	}
	w.errs.addAt(n.Line, path, "%s", msg)
	setNull(n)
}

// setNull replaces a bad value by null, so that decoding leaves the field
// at its zero value.
func setNull(n *yaml.Node) {
	*n = yaml.Node{Kind: yaml.ScalarNode, Tag: "!!null", Line: n.Line, Column: n.Column}
}

// keyName is a key as it appears in a field path: quoted if it is empty or
// holds anything but letters, digits and "_-.:".
func keyName(k string) string {
	if k == "" || strings.ContainsFunc(k, func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("_-.:", r))
	}) {
		return strconv.Quote(k)
	}
	return k
}

func join(path, field string) string {
	if path == "" {
		return field
	}
	return path + "." + field
}

// suggest returns the name in names closest to key: within an edit
// distance of 2, or one a prefix of the other; "" if none is.
func suggest(key string, names []string) string {
	best, bestDist := "", 3
	if len(key) > 64 {
		return ""
	}
	lower := strings.ToLower(key)
	for _, name := range names {
		d := editDistance(lower, name)
		if d >= len(key) {
			continue // "a" is 1 edit from "app"
		}
		if d > 2 && len(key) >= 3 && (strings.HasPrefix(name, lower) || strings.HasPrefix(lower, name)) {
			d = 2
		}
		if d < bestDist {
			best, bestDist = name, d
		}
	}
	return best
}

// editDistance is the Levenshtein distance between a and b.
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}
