package inject

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/credflow/credflow/internal/peercred"
)

const plainPod = `{"apiVersion":"v1","kind":"Pod","metadata":{"name":"web","namespace":"shop"},
"spec":{"containers":[{"name":"web","image":"example/web:1","ports":[{"containerPort":8080}]}]}}`

const busyPod = `{"apiVersion":"v1","kind":"Pod","metadata":{"name":"db","labels":{"tier":"db"},"annotations":{"team":"data","credflow.io/config":"db-mesh"}},
"spec":{"initContainers":[{"name":"migrate","image":"example/migrate:1"}],
"containers":[{"name":"db","image":"example/db:1"}],
"volumes":[{"name":"data","emptyDir":{}}]}}`

var cfg = Config{Image: "registry.example/credflow:v1"}

// injected applies Patch to a pod and returns the result as generic JSON.
func injected(t *testing.T, podJSON string) map[string]any {
	t.Helper()
	ops, d, err := Patch(cfg, []byte(podJSON))
	if err != nil || d != Injected {
		t.Fatalf("Patch: %v, %v", d, err)
	}
	out, err := Apply([]byte(podJSON), ops)
	if err != nil {
		t.Fatal(err)
	}
	var p map[string]any
	if err := json.Unmarshal(out, &p); err != nil {
		t.Fatal(err)
	}
	return p
}

func names(list any) []string {
	var out []string
	for _, c := range list.([]any) {
		out = append(out, c.(map[string]any)["name"].(string))
	}
	return out
}

func TestPatch(t *testing.T) {
	p := injected(t, plainPod)
	spec := p["spec"].(map[string]any)
	if got := strings.Join(names(spec["initContainers"]), ","); got != "credflow-init,credflow-sidecar" {
		t.Fatalf("init containers %s", got)
	}
	side := spec["initContainers"].([]any)[1].(map[string]any)
	if side["restartPolicy"] != "Always" || side["startupProbe"] == nil {
		t.Errorf("the sidecar is not a native sidecar with a startup probe: %v", side)
	}
	sc := side["securityContext"].(map[string]any)
	if sc["runAsNonRoot"] != true || sc["readOnlyRootFilesystem"] != true || sc["runAsUser"].(float64) != 1337 {
		t.Errorf("sidecar security context %v", sc)
	}
	init := spec["initContainers"].([]any)[0].(map[string]any)
	caps := init["securityContext"].(map[string]any)["capabilities"].(map[string]any)
	if strings.Join(asStrings(caps["add"]), ",") != "NET_ADMIN,NET_RAW" || strings.Join(asStrings(caps["drop"]), ",") != "ALL" {
		t.Errorf("capture init capabilities %v", caps)
	}
	if got := strings.Join(asStrings(init["args"]), " "); got != "init -proxy-uid 1337 -exclude-inbound-ports 15000" {
		t.Errorf("capture init args %q", got)
	}
	if got := strings.Join(names(spec["volumes"]), ","); got != "credflow-workload-api,credflow-config" {
		t.Errorf("volumes %s", got)
	}
	if p["metadata"].(map[string]any)["annotations"].(map[string]any)[AnnotationStatus] != "injected" {
		t.Error("no status annotation")
	}
	// The label the mesh's NetworkPolicies select on (deploy/k8s/examples).
	if labels, _ := p["metadata"].(map[string]any)["labels"].(map[string]any); labels[LabelInjected] != "true" {
		t.Errorf("no %s label: %v", LabelInjected, p["metadata"])
	}

	// A pod with its own init containers, volumes and annotations: the
	// sidecar goes first, the rest is kept.
	b := injected(t, busyPod)
	bspec := b["spec"].(map[string]any)
	if got := strings.Join(names(bspec["initContainers"]), ","); got != "credflow-init,credflow-sidecar,migrate" {
		t.Fatalf("init containers %s", got)
	}
	if got := strings.Join(names(bspec["volumes"]), ","); got != "data,credflow-workload-api,credflow-config" {
		t.Errorf("volumes %s", got)
	}
	ann := b["metadata"].(map[string]any)["annotations"].(map[string]any)
	if ann["team"] != "data" || ann[AnnotationStatus] != "injected" {
		t.Errorf("annotations %v", ann)
	}
	if labels := b["metadata"].(map[string]any)["labels"].(map[string]any); labels["tier"] != "db" || labels[LabelInjected] != "true" {
		t.Errorf("labels %v", labels)
	}
	// A pod with no metadata at all gets both the annotation and the label.
	bare := injected(t, `{"spec":{"containers":[{"name":"a","image":"example/a:1"}]}}`)
	meta := bare["metadata"].(map[string]any)
	labels, _ := meta["labels"].(map[string]any)
	if annotations, _ := meta["annotations"].(map[string]any); labels[LabelInjected] != "true" || annotations[AnnotationStatus] != "injected" {
		t.Errorf("metadata of a pod that had none: %v", meta)
	}
	for _, v := range bspec["volumes"].([]any) {
		if m := v.(map[string]any); m["name"] == "credflow-config" && m["configMap"].(map[string]any)["name"] != "db-mesh" {
			t.Errorf("the config annotation was not used: %v", m)
		}
	}
}

func TestPatchTwiceAndOptOut(t *testing.T) {
	for _, pod := range []string{plainPod, busyPod} {
		ops, _, _ := Patch(cfg, []byte(pod))
		once, _ := Apply([]byte(pod), ops)
		again, d, err := Patch(cfg, once)
		if err != nil || d != AlreadyInjected || len(again) != 0 {
			t.Errorf("re-injection: %d ops, %v, %v", len(again), d, err)
		}
	}
	out := strings.Replace(plainPod, `"name":"web","namespace"`, `"name":"web","annotations":{"credflow.io/inject":"false"},"namespace"`, 1)
	if ops, d, err := Patch(cfg, []byte(out)); err != nil || d != OptedOut || len(ops) != 0 {
		t.Errorf("opted-out pod: %d ops, %v, %v", len(ops), d, err)
	}
	byLabel := strings.Replace(plainPod, `"name":"web","namespace"`, `"name":"web","labels":{"credflow.io/inject":"false"},"namespace"`, 1)
	if ops, d, err := Patch(cfg, []byte(byLabel)); err != nil || d != OptedOut || len(ops) != 0 {
		t.Errorf("pod opted out by label: %d ops, %v, %v", len(ops), d, err)
	}
	if _, _, err := Patch(Config{}, []byte(plainPod)); err == nil {
		t.Error("a config without an image was accepted")
	}
}

func asStrings(v any) []string {
	var out []string
	for _, s := range v.([]any) {
		out = append(out, s.(string))
	}
	return out
}

// reviewOf is an AdmissionReview request as the API server sends it.
func reviewOf(kind, op, obj string) string {
	return `{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u-1","kind":{"group":"","version":"v1","kind":"` +
		kind + `"},"namespace":"shop","operation":"` + op + `","object":` + obj + `}}`
}

func TestHandler(t *testing.T) {
	h, err := Handler(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	post := func(body string) (int, map[string]any) {
		w := httptest.NewRecorder()
		h.ServeHTTP(w, httptest.NewRequest("POST", "/inject", strings.NewReader(body)))
		var out map[string]any
		json.Unmarshal(w.Body.Bytes(), &out)
		return w.Code, out
	}
	code, out := post(reviewOf("Pod", "CREATE", plainPod))
	resp := out["response"].(map[string]any)
	if code != 200 || out["kind"] != "AdmissionReview" || resp["uid"] != "u-1" || resp["allowed"] != true || resp["patchType"] != "JSONPatch" {
		t.Fatalf("%d %v", code, out)
	}
	var ops []Op
	patch, _ := json.Marshal(resp["patch"]) // base64 in JSON
	var b64 []byte
	json.Unmarshal(patch, &b64)
	if err := json.Unmarshal(b64, &ops); err != nil || len(ops) == 0 {
		t.Fatalf("patch %s: %v", b64, err)
	}
	for _, tc := range []struct{ name, body string }{
		{"a deployment", reviewOf("Deployment", "CREATE", `{}`)},
		{"an update", reviewOf("Pod", "UPDATE", plainPod)},
	} {
		code, out := post(tc.body)
		resp := out["response"].(map[string]any)
		if code != 200 || resp["allowed"] != true || resp["patch"] != nil {
			t.Errorf("%s: %d %v", tc.name, code, out)
		}
	}
	// A pod the injector cannot read is refused: the webhook fails closed,
	// like its failurePolicy, rather than let the pod start without its
	// sidecar.
	code, out = post(reviewOf("Pod", "CREATE", `"not a pod"`))
	if resp := out["response"].(map[string]any); code != 200 || resp["allowed"] != false || resp["patch"] != nil ||
		!strings.Contains(fmt.Sprint(resp["status"]), "unreadable_pod") {
		t.Errorf("unreadable pod: %d %v", code, out)
	}
	for _, bad := range []string{"", "{}", `{"request":{}}`, string(bytes.Repeat([]byte("x"), maxReview+1))} {
		if code, _ := post(bad); code != http.StatusBadRequest {
			t.Errorf("%.20q: %d", bad, code)
		}
	}
}

// refusable are pods the injector must refuse rather than patch, with the
// reason and what the message must name.
var refusable = []struct {
	name, pod, reason, names string
}{
	{
		"app container as the proxy uid",
		`{"metadata":{"name":"web"},"spec":{"containers":[{"name":"web","image":"example/web:1","securityContext":{"runAsUser":1337}}]}}`,
		ReasonProxyUID, `container "web" runs as uid 1337`,
	},
	{
		"pod securityContext as the proxy uid",
		`{"metadata":{"name":"web"},"spec":{"securityContext":{"runAsUser":1337,"fsGroup":2000},
		"containers":[{"name":"ok","image":"example/web:1","securityContext":{"runAsUser":1000}},{"name":"web","image":"example/web:1"}]}}`,
		ReasonProxyUID, `container "web" runs as uid 1337 (the pod's securityContext.runAsUser)`,
	},
	{
		"the pod's own init container as the proxy uid",
		`{"metadata":{"name":"web"},"spec":{"initContainers":[{"name":"migrate","image":"example/m:1","securityContext":{"runAsUser":1337}}],
		"containers":[{"name":"web","image":"example/web:1"}]}}`,
		ReasonProxyUID, `container "migrate" runs as uid 1337`,
	},
	{
		"the credflow image with its default user",
		`{"metadata":{"name":"tool"},"spec":{"containers":[{"name":"tool","image":"registry.example/credflow@sha256:0123","args":["register"]}]}}`,
		ReasonProxyUID, `container "tool" runs the credflow image`,
	},
	{
		"host network",
		`{"metadata":{"name":"node-agent"},"spec":{"hostNetwork":true,"containers":[{"name":"agent","image":"example/agent:1"}]}}`,
		ReasonHostNetwork, "hostNetwork",
	},
}

// TestPatchRefuses: a pod whose app would run as the sidecar's uid (which
// capture exempts, so its traffic would leave the pod unencrypted) and a
// pod on the node's network (where credflow init would rewrite the node's
// netfilter rules) are refused, not patched.
func TestPatchRefuses(t *testing.T) {
	for _, tc := range refusable {
		t.Run(tc.name, func(t *testing.T) {
			ops, d, err := Patch(cfg, []byte(tc.pod))
			var refused *RefusedError
			if !errors.As(err, &refused) || refused.Reason != tc.reason || len(ops) != 0 || d != "" {
				t.Fatalf("Patch: %d ops, decision %q, error %v; want refused (%s)", len(ops), d, err, tc.reason)
			}
			if !strings.Contains(err.Error(), tc.names) {
				t.Errorf("message %q does not say %q", err, tc.names)
			}
		})
	}
	// What is not refused: a container that sets another uid over the
	// pod's 1337, other uids, another image with its default user, the
	// credflow image run as another uid, a pod off the host network, and
	// a pod that opts out (nothing is added to it, so nothing is at risk).
	for _, pod := range []string{
		`{"spec":{"securityContext":{"runAsUser":1337},"containers":[{"name":"web","image":"example/web:1","securityContext":{"runAsUser":1000}}]}}`,
		`{"spec":{"securityContext":{"runAsUser":0},"containers":[{"name":"web","image":"example/web:1","securityContext":{"runAsUser":1338}}]}}`,
		`{"spec":{"containers":[{"name":"web","image":"example/credflow-web:1"}]}}`,
		`{"spec":{"containers":[{"name":"tool","image":"registry.example/credflow:v2","securityContext":{"runAsUser":1000}}]}}`,
		`{"spec":{"hostNetwork":false,"containers":[{"name":"web","image":"example/web:1","securityContext":{"runAsUser":null}}]}}`,
	} {
		if _, d, err := Patch(cfg, []byte(pod)); err != nil || d != Injected {
			t.Errorf("%s: %v, %v; want injected", pod, d, err)
		}
	}
	optedOut := `{"metadata":{"annotations":{"credflow.io/inject":"false"}},"spec":{"hostNetwork":true,"containers":[{"name":"a","securityContext":{"runAsUser":1337}}]}}`
	if _, d, err := Patch(cfg, []byte(optedOut)); err != nil || d != OptedOut {
		t.Errorf("opted-out pod: %v, %v", d, err)
	}
	// Another proxy uid moves the check with it.
	other := Config{Image: cfg.Image, ProxyUID: 2000}
	if _, d, err := Patch(other, []byte(refusable[0].pod)); err != nil || d != Injected {
		t.Errorf("uid 1337 with proxy uid 2000: %v, %v", d, err)
	}
	if _, _, err := Patch(other, []byte(`{"spec":{"containers":[{"name":"web","securityContext":{"runAsUser":2000}}]}}`)); err == nil {
		t.Error("uid 2000 with proxy uid 2000 was not refused")
	}
}

// TestHandlerRefuses sends the refusable pods to the webhook as the API
// server does: the answer is allowed=false with a 403 status whose message
// carries the reason, and no patch.
func TestHandlerRefuses(t *testing.T) {
	h, err := Handler(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range refusable {
		t.Run(tc.name, func(t *testing.T) {
			w := httptest.NewRecorder()
			h.ServeHTTP(w, httptest.NewRequest("POST", "/inject", strings.NewReader(reviewOf("Pod", "CREATE", tc.pod))))
			var out struct {
				Kind     string `json:"kind"`
				Response struct {
					UID     string `json:"uid"`
					Allowed bool   `json:"allowed"`
					Patch   []byte `json:"patch"`
					Status  struct {
						Status  string `json:"status"`
						Code    int    `json:"code"`
						Reason  string `json:"reason"`
						Message string `json:"message"`
					} `json:"status"`
				} `json:"response"`
			}
			if err := json.Unmarshal(w.Body.Bytes(), &out); err != nil || w.Code != http.StatusOK || out.Kind != "AdmissionReview" {
				t.Fatalf("%d %s: %v", w.Code, w.Body, err)
			}
			r := out.Response
			if r.UID != "u-1" || r.Allowed || r.Patch != nil {
				t.Fatalf("the pod was not refused: uid %q, allowed %v, %d patch bytes", r.UID, r.Allowed, len(r.Patch))
			}
			st := r.Status
			if st.Status != "Failure" || st.Code != http.StatusForbidden || st.Reason != "Forbidden" ||
				!strings.Contains(st.Message, "("+tc.reason+")") || !strings.Contains(st.Message, tc.names) {
				t.Errorf("status %+v; want 403 Forbidden naming %s and %q", st, tc.reason, tc.names)
			}
		})
	}
}

// Apply leaves the document's numbers as they were written, and refuses
// what is not one JSON value.
func TestApplyKeepsNumbers(t *testing.T) {
	doc := `{"spec":{"priority":12345678901234567890123,"x":1e700,"y":0.10}}`
	out, err := Apply([]byte(doc), []Op{{"add", "/spec/z", 1}})
	if err != nil {
		t.Fatal(err)
	}
	if want := `{"spec":{"priority":12345678901234567890123,"x":1e700,"y":0.10,"z":1}}`; string(out) != want {
		t.Errorf("got  %s\nwant %s", out, want)
	}
	for _, bad := range []string{`{"spec":{}} {}`, `{"spec":{}}}`, ``} {
		if _, err := Apply([]byte(bad), nil); err == nil {
			t.Errorf("Apply(%q) took it", bad)
		}
	}
}

// FuzzPatch: whatever the API server sends as a pod, Patch never panics;
// a patch it makes applies to that pod, and patching the result again is
// a no-op.
func FuzzPatch(f *testing.F) {
	f.Add([]byte(plainPod))
	f.Add([]byte(busyPod))
	f.Add([]byte(`{"spec":{"containers":null,"initContainers":[{}]}}`))
	f.Add([]byte(`{"spec":{"containers":[{"name":"a"}]}}`)) // no metadata: found by this target
	f.Add([]byte(`{"metadata":null,"spec":{"containers":[{"name":"a"}],"volumes":null}}`))
	f.Add([]byte(`{"metadata":{"annotations":{"credflow.io/inject":"false"}},"spec":{}}`))
	f.Add([]byte(`{"spec":{"volumes":[{"name":"credflow-socket"}],"containers":[{"name":"x"}]}}`))
	for _, tc := range refusable {
		f.Add([]byte(tc.pod))
	}
	f.Fuzz(func(t *testing.T, pod []byte) {
		ops, d, err := Patch(cfg, pod)
		if err != nil && len(ops) != 0 {
			t.Fatalf("%d ops with the error %v", len(ops), err)
		}
		if err != nil || d != Injected {
			return
		}
		out, err := Apply(pod, ops)
		if err != nil {
			t.Fatalf("the patch for an accepted pod does not apply: %v", err)
		}
		again, d, err := Patch(cfg, out)
		if err != nil || d != AlreadyInjected || len(again) != 0 {
			t.Fatalf("patching the injected pod again: %d ops, %v, %v", len(again), d, err)
		}
	})
}

// sidecarEnv returns the injected sidecar's environment.
func sidecarEnv(t *testing.T, podJSON string) map[string]string {
	t.Helper()
	spec := injected(t, podJSON)["spec"].(map[string]any)
	for _, c := range spec["initContainers"].([]any) {
		if c := c.(map[string]any); c["name"] == SidecarName {
			env := map[string]string{}
			for _, e := range c["env"].([]any) {
				e := e.(map[string]any)
				env[e["name"].(string)] = e["value"].(string)
			}
			return env
		}
	}
	t.Fatal("no sidecar")
	return nil
}

// The sidecar's default callers are the uids the pod's containers run as,
// its own init containers included, when every one of them is known from
// the pod; one container that runs as its image's user leaves the default
// (every process of the pod).
func TestPatchCallerUIDs(t *testing.T) {
	for _, tc := range []struct {
		name, pod, want string
	}{
		{"per container", `{"metadata":{},"spec":{"initContainers":[{"name":"migrate","securityContext":{"runAsUser":1002}}],
			"containers":[{"name":"web","securityContext":{"runAsUser":1000}},{"name":"worker","securityContext":{"runAsUser":1000}}]}}`, "1000,1002"},
		{"pod default and override", `{"metadata":{},"spec":{"securityContext":{"runAsUser":2000},
			"containers":[{"name":"web"},{"name":"admin","securityContext":{"runAsUser":0}}]}}`, "0,2000"},
		{"one unknown", `{"metadata":{},"spec":{"containers":[{"name":"web","securityContext":{"runAsUser":1000}},{"name":"log"}]}}`, ""},
		{"none known", plainPod, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, set := sidecarEnv(t, tc.pod)[peercred.EnvCallerUIDs]
			if got != tc.want || set != (tc.want != "") {
				t.Fatalf("%s = %q (set %v), want %q", peercred.EnvCallerUIDs, got, set, tc.want)
			}
			if tc.want == "" {
				return
			}
			uids, err := peercred.ParseUIDs(got)
			if err != nil || len(uids) != strings.Count(tc.want, ",")+1 {
				t.Fatalf("the sidecar cannot read %q: %v %v", got, uids, err)
			}
		})
	}
}
