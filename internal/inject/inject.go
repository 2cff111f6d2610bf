// Package inject is CredentialFlow's mutating admission webhook: it adds the
// sidecar to pods as a Kubernetes native sidecar (an init container with
// restartPolicy Always and a startup probe, so the app starts only once its
// sidecar is ready), the capture init container that runs `credflow init`,
// the Workload API socket and the sidecar's configuration.
//
// Opting in is the MutatingWebhookConfiguration's business (a namespace
// label, or a pod label credflow.io/inject: "true"; deploy/k8s); a pod
// opts out with the annotation or the label credflow.io/inject: "false". A
// pod that already has the sidecar is left as it is, so injecting twice
// changes nothing. Injected pods carry the label credflow.io/injected:
// "true", which NetworkPolicies select on.
//
// When every container of the pod has a runAsUser (its own or the pod's),
// the sidecar gets those uids in CREDFLOW_CALLER_UIDS
// (peercred.EnvCallerUIDs): its outbound listeners and token endpoint then
// accept only those users, where the configuration names no callers.
//
// The injector refuses (allowed=false) what it cannot put in the mesh
// safely rather than admit it half-meshed: a pod with a container that
// would run as the sidecar's uid (capture exempts that uid, so its traffic
// would leave unencrypted), a pod on the host network (credflow init would
// rewrite the node's netfilter rules), and a pod it cannot read.
//
// The package works on the pod's JSON rather than on Kubernetes API types,
// so that the sidecar binary does not link the Kubernetes API; the patched
// pods are decoded into the real types in deploy/k8s's tests.
package inject

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"slices"
	"strconv"
	"strings"

	"github.com/credflow/credflow/internal/logkey"
	"github.com/credflow/credflow/internal/peercred"
)

// Annotations a pod may carry.
const (
	// AnnotationInject "false" opts a pod out.
	AnnotationInject = "credflow.io/inject"
	// AnnotationConfig names the ConfigMap with the sidecar's credflow.yaml;
	// default Config.ConfigMap.
	AnnotationConfig = "credflow.io/config"
	// AnnotationStatus is set on injected pods.
	AnnotationStatus = "credflow.io/status"
)

// LabelInjected ("true") is set on injected pods, so that a NetworkPolicy
// can admit traffic to an app's ports only from pods whose connections go
// through a sidecar (deploy/k8s/examples/networkpolicy.yaml).
const LabelInjected = "credflow.io/injected"

// Reasons the injector refuses a pod: stable strings, in the refusal's
// message and in the injector's log.
const (
	// ReasonProxyUID: a container would run as the sidecar's uid, whose
	// connections capture does not redirect.
	ReasonProxyUID = "proxy_uid"
	// ReasonHostNetwork: the pod is in the node's network namespace.
	ReasonHostNetwork = "host_network"
	// ReasonUnreadablePod: the object is not a pod the injector can read.
	ReasonUnreadablePod = "unreadable_pod"
)

// RefusedError is a pod the injector will not inject, and that the
// webhook refuses rather than let it start without its sidecar.
type RefusedError struct {
	// Reason is one of the Reason constants.
	Reason string
	// Detail says what in the pod is refused and what to do about it.
	Detail string
	// Err is the underlying error, if any.
	Err error
}

func (e *RefusedError) Error() string {
	return fmt.Sprintf("inject: pod refused (%s): %s", e.Reason, e.Detail)
}

func (e *RefusedError) Unwrap() error { return e.Err }

// Container names.
const (
	SidecarName = "credflow-sidecar"
	InitName    = "credflow-init"
)

// Config is what the injector adds. The zero value is usable once Image is
// set.
type Config struct {
	// Image is the credflow image. Required.
	Image string
	// ProxyUID is the sidecar's uid, exempt from capture; default 1337.
	ProxyUID int64
	// ConfigMap is the default ConfigMap holding credflow.yaml; default
	// "credflow-sidecar".
	ConfigMap string
	// SocketCSI mounts the Workload API through the SPIFFE CSI driver
	// (csi.spiffe.io); otherwise SocketHostPath is a hostPath directory;
	// default the CSI driver.
	SocketHostPath string
	// ExcludeInboundPorts are passed to credflow init; the admin port 15000
	// is always excluded.
	ExcludeInboundPorts []int
}

func (c Config) withDefaults() (Config, error) {
	if c.Image == "" {
		return c, errors.New("inject: an image is required")
	}
	if c.ProxyUID == 0 {
		c.ProxyUID = 1337
	}
	if c.ConfigMap == "" {
		c.ConfigMap = "credflow-sidecar"
	}
	return c, nil
}

// Paths inside the pod.
const (
	socketDir = "/run/spiffe"
	configDir = "/etc/credflow"
	socketVol = "credflow-workload-api"
	configVol = "credflow-config"
	adminPort = 15000
)

// imageUID is the uid the credflow image runs as when the pod does not
// say (the Dockerfile's USER).
const imageUID = 1337

// pod is the part of a Pod the injector reads.
type pod struct {
	Metadata struct {
		Name         string
		GenerateName string
		Annotations  map[string]string
		Labels       map[string]string
	}
	Spec struct {
		HostNetwork bool
		// RunAsUser is the pod's securityContext.runAsUser.
		RunAsUser      *int64
		InitContainers []container
		Containers     []container
		Volumes        []json.RawMessage
	}
}

// container is the part of a container the injector reads.
type container struct {
	Name  string
	Image string
	// RunAsUser is the container's securityContext.runAsUser.
	RunAsUser *int64
}

// Op is one JSON Patch (RFC 6902) operation.
type Op struct {
	Op    string `json:"op"`
	Path  string `json:"path"`
	Value any    `json:"value,omitempty"`
}

// Decision is what the injector does with a pod.
type Decision string

// Decisions.
const (
	Injected        Decision = "injected"
	AlreadyInjected Decision = "already_injected"
	OptedOut        Decision = "opted_out"
)

// Patch returns the JSON Patch that injects the sidecar into the pod, or
// none with the reason (the pod opted out or already has the sidecar). A
// pod it refuses is a *RefusedError.
func Patch(cfg Config, podJSON []byte) ([]Op, Decision, error) {
	c, err := cfg.withDefaults()
	if err != nil {
		return nil, "", err
	}
	p, noMetadata, err := parsePod(podJSON)
	if err != nil {
		return nil, "", &RefusedError{Reason: ReasonUnreadablePod, Detail: err.Error(), Err: err}
	}
	if strings.EqualFold(p.Metadata.Annotations[AnnotationInject], "false") || strings.EqualFold(p.Metadata.Labels[AnnotationInject], "false") {
		return nil, OptedOut, nil
	}
	for _, ic := range p.Spec.InitContainers {
		if ic.Name == SidecarName || ic.Name == InitName {
			return nil, AlreadyInjected, nil
		}
	}
	for _, ct := range p.Spec.Containers {
		if ct.Name == SidecarName {
			return nil, AlreadyInjected, nil
		}
	}
	if err := c.check(p); err != nil {
		return nil, "", err
	}
	configMap := c.ConfigMap
	if v := p.Metadata.Annotations[AnnotationConfig]; v != "" {
		configMap = v
	}
	var ops []Op
	// The capture rules first, then the sidecar: init containers run in
	// order, and the app containers start after the sidecar's startup
	// probe passes.
	inits := []any{c.initContainer(), c.sidecar(callerUIDs(p))}
	if len(p.Spec.InitContainers) == 0 {
		ops = append(ops, Op{"add", "/spec/initContainers", inits})
	} else {
		// Before the pod's own init containers, so that they too reach
		// the mesh through the sidecar.
		ops = append(ops, Op{"add", "/spec/initContainers/0", inits[1]}, Op{"add", "/spec/initContainers/0", inits[0]})
	}
	vols := []any{c.socketVolume(), map[string]any{"name": configVol, "configMap": map[string]any{"name": configMap}}}
	if p.Spec.Volumes == nil {
		ops = append(ops, Op{"add", "/spec/volumes", vols})
	} else {
		for _, v := range vols {
			ops = append(ops, Op{"add", "/spec/volumes/-", v})
		}
	}
	status := map[string]string{AnnotationStatus: string(Injected)}
	label := map[string]string{LabelInjected: "true"}
	switch {
	case noMetadata:
		ops = append(ops, Op{"add", "/metadata", map[string]any{"annotations": status, "labels": label}})
	default:
		ops = append(ops, addMember("/metadata/annotations", p.Metadata.Annotations != nil, AnnotationStatus, string(Injected)))
		ops = append(ops, addMember("/metadata/labels", p.Metadata.Labels != nil, LabelInjected, "true"))
	}
	return ops, Injected, nil
}

// addMember is the op that sets key in the string map at path, creating
// the map when the pod has none.
func addMember(path string, exists bool, key, value string) Op {
	if !exists {
		return Op{"add", path, map[string]string{key: value}}
	}
	return Op{"add", path + "/" + escape(key), value}
}

// check refuses a pod the sidecar cannot be added to safely.
func (c Config) check(p pod) error {
	if p.Spec.HostNetwork {
		return &RefusedError{Reason: ReasonHostNetwork, Detail: "the pod uses hostNetwork, so credflow init would rewrite " +
			`the node's netfilter rules rather than the pod's; run it off the host network, or opt it out (credflow.io/inject: "false")`}
	}
	// The pod's own init containers run after the capture rules are in
	// place, so they are in the mesh too.
	for _, ct := range slices.Concat(p.Spec.InitContainers, p.Spec.Containers) {
		var runs string
		switch {
		case ct.RunAsUser != nil:
			if *ct.RunAsUser != c.ProxyUID {
				continue
			}
			runs = fmt.Sprintf("runs as uid %d", c.ProxyUID)
		case p.Spec.RunAsUser != nil:
			if *p.Spec.RunAsUser != c.ProxyUID {
				continue
			}
			runs = fmt.Sprintf("runs as uid %d (the pod's securityContext.runAsUser)", c.ProxyUID)
		case c.ProxyUID == imageUID && sameRepository(ct.Image, c.Image):
			// Another image's default user is in the image, which the
			// injector does not fetch: that case is not caught here.
			runs = fmt.Sprintf("runs the credflow image with no runAsUser, so as its default uid %d", imageUID)
		default:
			continue
		}
		return &RefusedError{Reason: ReasonProxyUID, Detail: fmt.Sprintf("container %q %s, the sidecar's uid, "+
			"whose connections capture does not redirect: they would leave the pod outside the mesh; "+
			`set another runAsUser, or opt the pod out (credflow.io/inject: "false")`, ct.Name, runs)}
	}
	return nil
}

// sameRepository reports whether two image references name the same
// repository, whatever their tags or digests.
func sameRepository(a, b string) bool {
	repo := func(image string) string {
		image, _, _ = strings.Cut(image, "@")
		if i := strings.LastIndex(image, ":"); i > strings.LastIndex(image, "/") {
			image = image[:i]
		}
		return image
	}
	return a != "" && repo(a) == repo(b)
}

// parsePod reads the parts of a pod the injector uses, by their exact
// names: encoding/json matches struct fields case-insensitively, while the
// API server and the JSON Patch paths go by exact names. It reports whether
// the pod has no metadata object at all.
func parsePod(podJSON []byte) (p pod, noMetadata bool, err error) {
	notPod := func(err error) (pod, bool, error) {
		return pod{}, false, fmt.Errorf("the object is not a pod: %w", err)
	}
	var meta, spec, podSecurity json.RawMessage
	if _, err := decodeObject(podJSON, member{"metadata", &meta}, member{"spec", &spec}); err != nil {
		return notPod(err)
	}
	noMetadata, err = decodeObject(meta,
		member{"name", &p.Metadata.Name},
		member{"generateName", &p.Metadata.GenerateName},
		member{"annotations", &p.Metadata.Annotations},
		member{"labels", &p.Metadata.Labels})
	if err != nil {
		return notPod(fmt.Errorf("metadata: %w", err))
	}
	var initContainers, containers []json.RawMessage
	_, err = decodeObject(spec,
		member{"hostNetwork", &p.Spec.HostNetwork},
		member{"securityContext", &podSecurity},
		member{"initContainers", &initContainers},
		member{"containers", &containers},
		member{"volumes", &p.Spec.Volumes})
	if err == nil {
		_, err = decodeObject(podSecurity, member{"runAsUser", &p.Spec.RunAsUser})
	}
	if err == nil {
		p.Spec.InitContainers, err = decodeContainers(initContainers)
	}
	if err == nil {
		p.Spec.Containers, err = decodeContainers(containers)
	}
	if err != nil {
		return notPod(fmt.Errorf("spec: %w", err))
	}
	if len(p.Spec.Containers) == 0 {
		return notPod(errors.New("spec.containers is empty"))
	}
	return p, noMetadata, nil
}

func decodeContainers(list []json.RawMessage) ([]container, error) {
	var out []container
	for _, raw := range list {
		var ct container
		var security json.RawMessage
		_, err := decodeObject(raw, member{"name", &ct.Name}, member{"image", &ct.Image}, member{"securityContext", &security})
		if err == nil {
			_, err = decodeObject(security, member{"runAsUser", &ct.RunAsUser})
		}
		if err != nil {
			return nil, fmt.Errorf("container %d: %w", len(out), err)
		}
		out = append(out, ct)
	}
	return out, nil
}

// member is a member of a JSON object to decode, and where to.
type member struct {
	name string
	v    any
}

// decodeObject decodes the named members of a JSON object (or null, which
// has none) by their exact names. It reports whether raw was null.
func decodeObject(raw json.RawMessage, members ...member) (null bool, err error) {
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(orNull(raw), &obj); err != nil {
		return false, err
	}
	for _, m := range members {
		if err := json.Unmarshal(orNull(obj[m.name]), m.v); err != nil {
			return false, fmt.Errorf("%s: %w", m.name, err)
		}
	}
	return obj == nil, nil
}

func orNull(raw json.RawMessage) json.RawMessage {
	if len(raw) == 0 {
		return json.RawMessage("null")
	}
	return raw
}

// escape is RFC 6901 escaping of a JSON Pointer token.
func escape(s string) string {
	return strings.ReplaceAll(strings.ReplaceAll(s, "~", "~0"), "/", "~1")
}

func (c Config) socketVolume() map[string]any {
	if c.SocketHostPath != "" {
		return map[string]any{"name": socketVol, "hostPath": map[string]any{"path": c.SocketHostPath, "type": "Directory"}}
	}
	return map[string]any{"name": socketVol, "csi": map[string]any{"driver": "csi.spiffe.io", "readOnly": true}}
}

func (c Config) initContainer() map[string]any {
	args := []string{"init", "-proxy-uid", fmt.Sprint(c.ProxyUID), "-exclude-inbound-ports", fmt.Sprint(adminPort)}
	for _, p := range c.ExcludeInboundPorts {
		args[len(args)-1] += fmt.Sprintf(",%d", p)
	}
	return map[string]any{
		"name":  InitName,
		"image": c.Image,
		"args":  args,
		"resources": map[string]any{
			"requests": map[string]string{"cpu": "10m", "memory": "16Mi"},
			"limits":   map[string]string{"memory": "32Mi"},
		},
		// Root inside the pod's network namespace, with only the
		// capabilities netfilter needs.
		"securityContext": map[string]any{
			"runAsUser":                0,
			"runAsNonRoot":             false,
			"readOnlyRootFilesystem":   true,
			"allowPrivilegeEscalation": false,
			"capabilities":             map[string]any{"add": []string{"NET_ADMIN", "NET_RAW"}, "drop": []string{"ALL"}},
		},
	}
}

// callerUIDs returns the uids the pod's containers (its own init
// containers too) run as, for the sidecar's default callers, or "" when
// one of them runs as the uid its image names, which the injector does not
// fetch: then the sidecar keeps its default, every process of the pod.
func callerUIDs(p pod) string {
	var uids []int64
	for _, ct := range slices.Concat(p.Spec.InitContainers, p.Spec.Containers) {
		switch {
		case ct.RunAsUser != nil:
			uids = append(uids, *ct.RunAsUser)
		case p.Spec.RunAsUser != nil:
			uids = append(uids, *p.Spec.RunAsUser)
		default:
			return ""
		}
	}
	slices.Sort(uids)
	var list []string
	for _, u := range slices.Compact(uids) {
		list = append(list, strconv.FormatInt(u, 10))
	}
	return strings.Join(list, ",")
}

// sidecar is the sidecar container; callers, when not empty, are the uids
// its outbound listeners and token endpoint accept by default
// (peercred.EnvCallerUIDs).
func (c Config) sidecar(callers string) map[string]any {
	env := []map[string]string{
		{"name": "SPIFFE_ENDPOINT_SOCKET", "value": "unix://" + socketDir + "/spire-agent.sock"},
	}
	if callers != "" {
		env = append(env, map[string]string{"name": peercred.EnvCallerUIDs, "value": callers})
	}
	return map[string]any{
		"name":          SidecarName,
		"image":         c.Image,
		"args":          []string{"run", "-c", configDir + "/credflow.yaml"},
		"restartPolicy": "Always",
		"env":           env,
		"ports": []map[string]any{
			{"name": "credflow-in", "containerPort": 15006, "protocol": "TCP"},
		},
		// The admin server listens on loopback only; the probe runs in
		// the container.
		"startupProbe": map[string]any{
			"exec":             map[string]any{"command": []string{"/usr/local/bin/credflow", "probe"}},
			"periodSeconds":    1,
			"failureThreshold": 120,
		},
		"readinessProbe": map[string]any{
			"exec":          map[string]any{"command": []string{"/usr/local/bin/credflow", "probe"}},
			"periodSeconds": 5,
		},
		"resources": map[string]any{
			"requests": map[string]string{"cpu": "50m", "memory": "32Mi"},
			"limits":   map[string]string{"memory": "256Mi"},
		},
		"securityContext": map[string]any{
			"runAsUser":                c.ProxyUID,
			"runAsGroup":               c.ProxyUID,
			"runAsNonRoot":             true,
			"readOnlyRootFilesystem":   true,
			"allowPrivilegeEscalation": false,
			"capabilities":             map[string]any{"drop": []string{"ALL"}},
		},
		"volumeMounts": []map[string]any{
			{"name": socketVol, "mountPath": socketDir, "readOnly": true},
			{"name": configVol, "mountPath": configDir, "readOnly": true},
		},
	}
}

// review is the part of an admission.k8s.io/v1 AdmissionReview the
// webhook reads and writes.
type review struct {
	APIVersion string    `json:"apiVersion"`
	Kind       string    `json:"kind"`
	Request    *request  `json:"request,omitempty"`
	Response   *response `json:"response,omitempty"`
}

type request struct {
	UID       string           `json:"uid"`
	Kind      groupVersionKind `json:"kind"`
	Namespace string           `json:"namespace"`
	Operation string           `json:"operation"`
	Object    json.RawMessage  `json:"object"`
}

type groupVersionKind struct {
	Group   string `json:"group"`
	Version string `json:"version"`
	Kind    string `json:"kind"`
}

type response struct {
	UID       string  `json:"uid"`
	Allowed   bool    `json:"allowed"`
	PatchType *string `json:"patchType,omitempty"`
	Patch     []byte  `json:"patch,omitempty"`
	Result    *status `json:"status,omitempty"`
}

// status is the part of a meta/v1 Status a refusal carries; the API server
// shows its message to whoever created the pod.
type status struct {
	Status  string `json:"status"`
	Code    int    `json:"code"`
	Reason  string `json:"reason"`
	Message string `json:"message"`
}

// maxReview bounds a request body.
const maxReview = 4 << 20

// Handler serves AdmissionReviews at any path. It fails closed, as the
// webhook's failurePolicy does: a pod it refuses (RefusedError, including a
// pod it cannot read) is denied with a 403 status whose message names the
// reason, rather than admitted without its sidecar.
func Handler(cfg Config, log *slog.Logger) (http.Handler, error) {
	if _, err := cfg.withDefaults(); err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost {
			http.Error(w, "POST an AdmissionReview", http.StatusMethodNotAllowed)
			return
		}
		body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxReview))
		if err != nil {
			http.Error(w, "body too large or unreadable", http.StatusBadRequest)
			return
		}
		var in review
		if err := json.Unmarshal(body, &in); err != nil || in.Request == nil || in.Request.UID == "" {
			http.Error(w, "not an AdmissionReview with a request", http.StatusBadRequest)
			return
		}
		resp := &response{UID: in.Request.UID, Allowed: true}
		if in.Request.Kind.Kind == "Pod" && in.Request.Operation == "CREATE" {
			ops, decision, err := Patch(cfg, in.Request.Object)
			switch {
			case err != nil:
				reason := ReasonUnreadablePod
				if refused, ok := errors.AsType[*RefusedError](err); ok {
					reason = refused.Reason
				}
				resp.Allowed = false
				resp.Result = &status{Status: "Failure", Code: http.StatusForbidden, Reason: "Forbidden", Message: err.Error()}
				log.Warn("inject: pod refused", slog.String("namespace", in.Request.Namespace),
					slog.String(logkey.Reason, reason), slog.String(logkey.Error, err.Error()))
			case decision == Injected:
				patch, err := json.Marshal(ops)
				if err != nil {
					http.Error(w, err.Error(), http.StatusInternalServerError)
					return
				}
				pt := "JSONPatch"
				resp.PatchType, resp.Patch = &pt, patch
				log.Info("inject: sidecar injected", slog.String("namespace", in.Request.Namespace))
			}
		}
		out := review{APIVersion: "admission.k8s.io/v1", Kind: "AdmissionReview", Response: resp}
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(out)
	}), nil
}
