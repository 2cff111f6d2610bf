package reason_test

import (
	"errors"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"regexp"
	"strconv"
	"testing"

	"google.golang.org/grpc/codes"

	"github.com/credflow/credflow/reason"
)

// declared returns every constant of type Reason that reason.go declares,
// by its value.
func declared(t *testing.T) map[string]string {
	t.Helper()
	f, err := parser.ParseFile(token.NewFileSet(), "reason.go", nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	consts := map[string]string{}
	for _, d := range f.Decls {
		g, ok := d.(*ast.GenDecl)
		if !ok || g.Tok != token.CONST {
			continue
		}
		for _, s := range g.Specs {
			vs := s.(*ast.ValueSpec)
			if id, ok := vs.Type.(*ast.Ident); !ok || id.Name != "Reason" {
				continue
			}
			for i, name := range vs.Names {
				v, err := strconv.Unquote(vs.Values[i].(*ast.BasicLit).Value)
				if err != nil {
					t.Fatal(err)
				}
				if prev, dup := consts[v]; dup {
					t.Errorf("%s and %s are both %q", prev, name.Name, v)
				}
				consts[v] = name.Name
			}
		}
	}
	return consts
}

func TestEveryReasonIsInTheTable(t *testing.T) {
	consts := declared(t)
	word := regexp.MustCompile(`^[a-z][a-z0-9]*(_[a-z0-9]+)*$`)
	for v, name := range consts {
		if !reason.Known(reason.Reason(v)) {
			t.Errorf("%s (%q) is not in the table", name, v)
		}
		if !word.MatchString(v) {
			t.Errorf("%s: %q is not a lower-case snake_case word", name, v)
		}
	}
	for _, r := range reason.All() {
		if _, ok := consts[string(r)]; !ok {
			t.Errorf("the table holds %q, which is not a declared constant", r)
		}
	}
	if len(consts) < 50 {
		t.Fatalf("found %d reasons in reason.go: the parse is broken", len(consts))
	}
}

func TestInfo(t *testing.T) {
	for _, r := range reason.All() {
		i := r.Info()
		if i.Status < 400 || i.Status > 599 {
			t.Errorf("%s: HTTP status %d is not an error", r, i.Status)
		}
		if i.Code == codes.OK {
			t.Errorf("%s: gRPC code OK", r)
		}
	}
	for r, want := range map[reason.Reason]reason.Info{
		reason.Unauthorized: {Status: 403, Code: codes.PermissionDenied, Alert: 49},
		reason.Untrusted:    {Status: 403, Code: codes.PermissionDenied, Alert: 48},
		reason.PQRequired:   {Status: 403, Code: codes.PermissionDenied, Alert: 71},
		reason.Expired:      {Status: 403, Code: codes.PermissionDenied, Alert: 45},
		reason.RouteDenied:  {Status: 403, Code: codes.PermissionDenied},
		reason.BadToken:     {Status: 401, Code: codes.Unauthenticated},
		reason.AppTimeout:   {Status: 504, Code: codes.DeadlineExceeded},
		reason.AppBusy:      {Status: 503, Code: codes.Unavailable},
		reason.BadPath:      {Status: 400, Code: codes.InvalidArgument},
	} {
		if got := r.Info(); got != want {
			t.Errorf("%s: %+v, want %+v", r, got, want)
		}
	}
	if got := reason.Reason("no_such_reason").Info(); got.Status != 403 || got.Alert != 42 {
		t.Errorf("an unknown reason is told as %+v, want 403 and bad_certificate", got)
	}
}

type refusal struct{ why reason.Reason }

func (r refusal) Error() string      { return string(r.why) }
func (r refusal) Why() reason.Reason { return r.why }

func TestOf(t *testing.T) {
	wrapped := fmt.Errorf("dial: %w", refusal{reason.Untrusted})
	if got := reason.Of(wrapped); got != reason.Untrusted {
		t.Errorf("Of(wrapped) = %q", got)
	}
	if got := reason.Of(errors.New("plain")); got != "" {
		t.Errorf("Of(plain) = %q, want empty", got)
	}
	if got := reason.Of(nil); got != "" {
		t.Errorf("Of(nil) = %q, want empty", got)
	}
}
