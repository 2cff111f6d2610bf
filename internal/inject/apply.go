package inject

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
)

// Apply applies a patch of "add" operations (the only kind Patch makes) to
// a JSON document, as the API server does: a path ending in "-" appends to
// an array, one ending in an index inserts before it, any other sets a
// member. It lets tests, and operators with `credflow inject`'s output, see
// the pod a patch makes. Numbers are kept as written: a float64 would round
// large integers and refuse 1e700.
func Apply(doc []byte, ops []Op) ([]byte, error) {
	root, err := decode(doc)
	if err != nil {
		return nil, err
	}
	for _, op := range ops {
		if op.Op != "add" {
			return nil, fmt.Errorf("inject: unsupported op %q", op.Op)
		}
		// Round-trip the value so it holds plain JSON types.
		raw, err := json.Marshal(op.Value)
		if err != nil {
			return nil, err
		}
		v, err := decode(raw)
		if err != nil {
			return nil, err
		}
		if root, err = add(root, pointer(op.Path), v); err != nil {
			return nil, fmt.Errorf("inject: %s: %w", op.Path, err)
		}
	}
	return json.Marshal(root)
}

// decode reads one JSON value with its numbers as json.Number.
func decode(doc []byte) (any, error) {
	d := json.NewDecoder(bytes.NewReader(doc))
	d.UseNumber()
	var v any
	if err := d.Decode(&v); err != nil {
		return nil, err
	}
	if _, err := d.Token(); err != io.EOF {
		return nil, errors.New("inject: data after the JSON value")
	}
	return v, nil
}

func pointer(p string) []string {
	parts := strings.Split(strings.TrimPrefix(p, "/"), "/")
	for i, s := range parts {
		parts[i] = strings.ReplaceAll(strings.ReplaceAll(s, "~1", "/"), "~0", "~")
	}
	return parts
}

func add(node any, path []string, v any) (any, error) {
	if len(path) == 0 {
		return v, nil
	}
	switch n := node.(type) {
	case map[string]any:
		if len(path) == 1 {
			n[path[0]] = v
			return n, nil
		}
		child, ok := n[path[0]]
		if !ok {
			return nil, fmt.Errorf("no member %q", path[0])
		}
		c, err := add(child, path[1:], v)
		n[path[0]] = c
		return n, err
	case []any:
		if len(path) == 1 {
			if path[0] == "-" {
				return append(n, v), nil
			}
			i, err := strconv.Atoi(path[0])
			if err != nil || i < 0 || i > len(n) {
				return nil, fmt.Errorf("bad index %q", path[0])
			}
			return append(n[:i], append([]any{v}, n[i:]...)...), nil
		}
		i, err := strconv.Atoi(path[0])
		if err != nil || i < 0 || i >= len(n) {
			return nil, fmt.Errorf("bad index %q", path[0])
		}
		c, err := add(n[i], path[1:], v)
		n[i] = c
		return n, err
	}
	return nil, fmt.Errorf("cannot descend into %T", node)
}
