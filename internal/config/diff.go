package config

import (
	"fmt"
	"reflect"
	"regexp"
	"slices"
	"strings"
)

// hotReload lists the fields a running sidecar can take from a new file,
// with list indices written [*]: listener policies, the local callers of
// outbound listeners, the routes and token settings of HTTP inbound
// listeners, and inbound listeners' limits. Every other field that
// changed, including fields this list has never heard of, needs a restart.
var hotReload = []string{
	"version", // one version is read; writing it down changes nothing
	"inbound[*].allow",
	"inbound[*].routes[*].peers",
	"inbound[*].routes[*].methods",
	"inbound[*].routes[*].paths",
	"inbound[*].routes[*].upgrade",
	"inbound[*].routes[*].name",
	"inbound[*].routes[*].limit.rate",
	"inbound[*].routes[*].limit.burst",
	"inbound[*].case_insensitive_paths",
	"inbound[*].jwt.require",
	"inbound[*].jwt.header",
	"inbound[*].jwt.pass",
	"inbound[*].txn_token.require",
	"inbound[*].txn_token.minters",
	"inbound[*].limits.requests.total.rate",
	"inbound[*].limits.requests.total.burst",
	"inbound[*].limits.requests.per_identity.rate",
	"inbound[*].limits.requests.per_identity.burst",
	"inbound[*].limits.requests.overrides[*].peers",
	"inbound[*].limits.requests.overrides[*].rate",
	"inbound[*].limits.requests.overrides[*].burst",
	"inbound[*].limits.connections.total.rate",
	"inbound[*].limits.connections.total.burst",
	"inbound[*].limits.connections.per_identity.rate",
	"inbound[*].limits.connections.per_identity.burst",
	"inbound[*].limits.connections.overrides[*].peers",
	"inbound[*].limits.connections.overrides[*].rate",
	"inbound[*].limits.connections.overrides[*].burst",
	"inbound[*].limits.concurrent_per_identity",
	"inbound[*].limits.max_identities",
	"inbound[*].limits.global.requests",
	"inbound[*].anomaly",
	"inbound[*].limits.global.connections",
	"outbound[*].expect",
	"outbound[*].callers.uids",
	"token_endpoint.callers.uids",
	"token_endpoint.callers.gids",
	"token_endpoint.audiences",
}

var index = regexp.MustCompile(`\[\d+\]`)

// Diff compares the files old and next were parsed from, field by field,
// and returns the paths of the fields that changed (for example
// "inbound[0].routes[1].paths"), split into those a running sidecar can
// apply and those that need a restart. Fields compare as written: one
// removed that held its default value has changed. A list item or a
// section added or removed is named as a whole unless all its fields can
// be applied. A Config not made by Parse differs in everything.
func Diff(old, next *Config) (hot, restart []string) {
	if old == nil || next == nil || old.raw == nil || next.raw == nil {
		return nil, []string{"(configuration)"}
	}
	var changed []string
	diffValue("", reflect.ValueOf(*old.raw), reflect.ValueOf(*next.raw), &changed)
	for _, p := range changed {
		if isHot(p) {
			hot = append(hot, p)
		} else {
			restart = append(restart, p)
		}
	}
	return hot, restart
}

func isHot(path string) bool {
	return slices.Contains(hotReload, index.ReplaceAllString(path, "[*]"))
}

// diffValue appends to out the paths of the leaf fields in which a and b,
// values of one YAML shape, differ.
func diffValue(path string, a, b reflect.Value, out *[]string) {
	t := a.Type()
	switch {
	case reflect.PointerTo(t).Implements(unmarshalerType) && t != reflect.TypeFor[tokenEndpoint]():
		// A leaf with its own YAML syntax (a duration). token_endpoint has
		// its own syntax too (an address, or a mapping), but decodes to a
		// plain struct compared field by field below: its callers and
		// audiences can be applied while running, its address cannot.
	case t.Kind() == reflect.Pointer:
		switch {
		case a.IsNil() && b.IsNil():
		case a.IsNil() || b.IsNil():
			whole(path, a, b, out)
		default:
			diffValue(path, a.Elem(), b.Elem(), out)
		}
		return
	case t.Kind() == reflect.Struct:
		for i := range t.NumField() {
			name, _, _ := strings.Cut(t.Field(i).Tag.Get("yaml"), ",")
			if name == "" || name == "-" {
				continue
			}
			diffValue(join(path, name), a.Field(i), b.Field(i), out)
		}
		return
	case t.Kind() == reflect.Slice && elemKind(t) == reflect.Struct:
		for i := range max(a.Len(), b.Len()) {
			p := fmt.Sprintf("%s[%d]", path, i)
			if i < a.Len() && i < b.Len() {
				diffValue(p, a.Index(i), b.Index(i), out)
				continue
			}
			var x, y reflect.Value
			if i < a.Len() {
				x, y = a.Index(i), reflect.Zero(t.Elem())
			} else {
				x, y = reflect.Zero(t.Elem()), b.Index(i)
			}
			whole(p, x, y, out)
		}
		return
	case t.Kind() == reflect.Slice || t.Kind() == reflect.Map:
		if a.Len() == 0 && b.Len() == 0 {
			return // nil and empty are the same
		}
	}
	if !reflect.DeepEqual(a.Interface(), b.Interface()) {
		*out = append(*out, path)
	}
}

// whole reports an item or section present on one side only: as its
// fields when all of them can be applied while running, else as a whole.
func whole(path string, a, b reflect.Value, out *[]string) {
	if a.Kind() == reflect.Pointer {
		if a.IsNil() {
			a = reflect.New(a.Type().Elem())
		}
		if b.IsNil() {
			b = reflect.New(b.Type().Elem())
		}
	}
	var fields []string
	diffValue(path, a, b, &fields)
	if !slices.ContainsFunc(fields, func(p string) bool { return !isHot(p) }) {
		*out = append(*out, fields...)
		return
	}
	*out = append(*out, path)
}

func elemKind(t reflect.Type) reflect.Kind {
	e := t.Elem()
	for e.Kind() == reflect.Pointer {
		e = e.Elem()
	}
	return e.Kind()
}
