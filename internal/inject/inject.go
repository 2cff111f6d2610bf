// Package inject is CredentialFlow's mutating admission webhook: it adds the
// sidecar to pods as a Kubernetes native sidecar (an init container with
// restartPolicy Always and a startup probe, so the app starts only once its
// sidecar is ready), the capture init container that runs `credflow init`,
// the Workload API socket and the sidecar's configuration.
//
// Opting in is the MutatingWebhookConfiguration's business (a namespace
// label, or a pod label credflow.io/inject: "true"; deploy/k8s); a pod
// opts out with the annotation or the label credflow.io/inject: "false". A pod that already has the sidecar is left
// as it is, so injecting twice changes nothing.
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
	"strings"
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

// pod is the part of a Pod the injector reads.
type pod struct {
	Metadata struct {
		Name         string            `json:"name"`
		GenerateName string            `json:"generateName"`
		Annotations  map[string]string `json:"annotations"`
		Labels       map[string]string `json:"labels"`
	} `json:"metadata"`
	Spec struct {
		InitContainers []struct {
			Name string `json:"name"`
		} `json:"initContainers"`
		Containers []struct {
			Name string `json:"name"`
		} `json:"containers"`
		Volumes []json.RawMessage `json:"volumes"`
	} `json:"spec"`
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
// none with the reason.
func Patch(cfg Config, podJSON []byte) ([]Op, Decision, error) {
	c, err := cfg.withDefaults()
	if err != nil {
		return nil, "", err
	}
	p, noMetadata, err := parsePod(podJSON)
	if err != nil {
		return nil, "", err
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
	configMap := c.ConfigMap
	if v := p.Metadata.Annotations[AnnotationConfig]; v != "" {
		configMap = v
	}
	var ops []Op
	// The capture rules first, then the sidecar: init containers run in
	// order, and the app containers start after the sidecar's startup
	// probe passes.
	inits := []any{c.initContainer(), c.sidecar()}
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
	switch {
	case noMetadata:
		ops = append(ops, Op{"add", "/metadata", map[string]any{"annotations": status}})
	case p.Metadata.Annotations == nil:
		ops = append(ops, Op{"add", "/metadata/annotations", status})
	default:
		ops = append(ops, Op{"add", "/metadata/annotations/" + escape(AnnotationStatus), string(Injected)})
	}
	return ops, Injected, nil
}

// parsePod reads the parts of a pod the injector uses, by their exact
// names: encoding/json matches struct fields case-insensitively, while the
// API server and the JSON Patch paths go by exact names. It reports whether
// the pod has no metadata object at all.
func parsePod(podJSON []byte) (p pod, noMetadata bool, err error) {
	notPod := func(err error) (pod, bool, error) {
		return pod{}, false, fmt.Errorf("inject: the object is not a pod: %w", err)
	}
	var top, meta, spec map[string]json.RawMessage
	if err := json.Unmarshal(podJSON, &top); err != nil {
		return notPod(err)
	}
	if err := json.Unmarshal(orNull(top["metadata"]), &meta); err != nil {
		return notPod(err)
	}
	if err := json.Unmarshal(orNull(top["spec"]), &spec); err != nil {
		return notPod(err)
	}
	for _, f := range []struct {
		raw json.RawMessage
		v   any
	}{
		{meta["name"], &p.Metadata.Name},
		{meta["generateName"], &p.Metadata.GenerateName},
		{meta["annotations"], &p.Metadata.Annotations},
		{meta["labels"], &p.Metadata.Labels},
		{spec["initContainers"], &p.Spec.InitContainers},
		{spec["containers"], &p.Spec.Containers},
		{spec["volumes"], &p.Spec.Volumes},
	} {
		if err := json.Unmarshal(orNull(f.raw), f.v); err != nil {
			return notPod(err)
		}
	}
	if len(p.Spec.Containers) == 0 {
		return notPod(errors.New("spec.containers is empty"))
	}
	return p, meta == nil, nil
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

func (c Config) sidecar() map[string]any {
	return map[string]any{
		"name":          SidecarName,
		"image":         c.Image,
		"args":          []string{"run", "-c", configDir + "/credflow.yaml"},
		"restartPolicy": "Always",
		"env": []map[string]string{
			{"name": "SPIFFE_ENDPOINT_SOCKET", "value": "unix://" + socketDir + "/spire-agent.sock"},
		},
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
	UID       string   `json:"uid"`
	Allowed   bool     `json:"allowed"`
	PatchType *string  `json:"patchType,omitempty"`
	Patch     []byte   `json:"patch,omitempty"`
	Warnings  []string `json:"warnings,omitempty"`
}

// maxReview bounds a request body.
const maxReview = 4 << 20

// Handler serves AdmissionReviews at any path. A pod the injector cannot
// read is admitted unchanged with a warning: a broken injector must not
// stop the cluster from scheduling pods (the webhook's failurePolicy says
// the same).
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
				resp.Warnings = []string{"credflow: sidecar not injected: " + err.Error()}
				log.Warn("inject: pod not injected", slog.String("namespace", in.Request.Namespace), slog.String("error", err.Error()))
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
