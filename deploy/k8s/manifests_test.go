package k8s

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"sigs.k8s.io/kustomize/api/krusty"
	kusttypes "sigs.k8s.io/kustomize/api/types"
	"sigs.k8s.io/kustomize/kyaml/filesys"
	"sigs.k8s.io/yaml"

	"github.com/credflow/credflow/internal/config"
	"github.com/credflow/credflow/internal/inject"
	"github.com/credflow/credflow/register"
)

// clusterSPIFFEID is spire-controller-manager's ClusterSPIFFEID, the fields
// the examples use (its Go types live in that project).
type clusterSPIFFEID struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Metadata   struct {
		Name string `json:"name"`
	} `json:"metadata"`
	Spec struct {
		SPIFFEIDTemplate  string         `json:"spiffeIDTemplate"`
		NamespaceSelector *labelSelector `json:"namespaceSelector"`
		PodSelector       *labelSelector `json:"podSelector"`
		X509SVIDTTL       string         `json:"x509SVIDTTL"`
		JWTSVIDTTL        string         `json:"jwtSVIDTTL"`
		DNSNameTemplates  []string       `json:"dnsNameTemplates"`
		Hint              string         `json:"hint"`
	} `json:"spec"`
}

type labelSelector struct {
	MatchLabels map[string]string `json:"matchLabels"`
}

// newObject returns an empty object of the Go type for apiVersion and
// kind; an unknown kind fails the test, so every manifest is checked.
func newObject(apiVersion, kind string) (any, bool) {
	switch apiVersion + "/" + kind {
	case "v1/Namespace":
		return &corev1.Namespace{}, true
	case "v1/ServiceAccount":
		return &corev1.ServiceAccount{}, true
	case "v1/ConfigMap":
		return &corev1.ConfigMap{}, true
	case "v1/Service":
		return &corev1.Service{}, true
	case "v1/Secret":
		return &corev1.Secret{}, true
	case "apps/v1/Deployment":
		return &appsv1.Deployment{}, true
	case "apps/v1/StatefulSet":
		return &appsv1.StatefulSet{}, true
	case "apps/v1/DaemonSet":
		return &appsv1.DaemonSet{}, true
	case "rbac.authorization.k8s.io/v1/ClusterRole":
		return &rbacv1.ClusterRole{}, true
	case "rbac.authorization.k8s.io/v1/ClusterRoleBinding":
		return &rbacv1.ClusterRoleBinding{}, true
	case "rbac.authorization.k8s.io/v1/Role":
		return &rbacv1.Role{}, true
	case "rbac.authorization.k8s.io/v1/RoleBinding":
		return &rbacv1.RoleBinding{}, true
	case "admissionregistration.k8s.io/v1/MutatingWebhookConfiguration":
		return &admissionregistrationv1.MutatingWebhookConfiguration{}, true
	case "networking.k8s.io/v1/NetworkPolicy":
		return &networkingv1.NetworkPolicy{}, true
	case "policy/v1/PodDisruptionBudget":
		return &policyv1.PodDisruptionBudget{}, true
	case "spire.spiffe.io/v1alpha1/ClusterSPIFFEID":
		return &clusterSPIFFEID{}, true
	case "kustomize.config.k8s.io/v1beta1/Kustomization":
		return &kusttypes.Kustomization{}, true
	}
	return nil, false
}

// documents splits a YAML stream.
func documents(data []byte) [][]byte {
	var out [][]byte
	for _, d := range regexp.MustCompile(`(?m)^---\s*$`).Split(string(data), -1) {
		if strings.TrimSpace(regexp.MustCompile(`(?m)^\s*#.*$`).ReplaceAllString(d, "")) != "" {
			out = append(out, []byte(d))
		}
	}
	return out
}

// decodeStrict decodes one manifest into its Kubernetes type; unknown
// fields are errors.
func decodeStrict(t *testing.T, name string, doc []byte) any {
	t.Helper()
	var meta struct {
		APIVersion string `json:"apiVersion"`
		Kind       string `json:"kind"`
	}
	if err := yaml.Unmarshal(doc, &meta); err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	obj, ok := newObject(meta.APIVersion, meta.Kind)
	if !ok {
		t.Fatalf("%s: no Go type known for %s %s", name, meta.APIVersion, meta.Kind)
	}
	if err := yaml.UnmarshalStrict(doc, obj); err != nil {
		t.Fatalf("%s: %s %s does not decode strictly: %v", name, meta.APIVersion, meta.Kind, err)
	}
	return obj
}

// manifests is every YAML file under deploy/k8s but the monitoring rule
// file (not a Kubernetes object).
func manifests(t *testing.T) map[string][]byte {
	files := map[string][]byte{}
	err := filepath.WalkDir(".", func(path string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(path, ".yaml") || path == "monitoring/credflow-rules.yaml" {
			return err
		}
		b, err := os.ReadFile(path)
		files[path] = b
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(files) < 10 {
		t.Fatalf("%d manifests found: the walk is not what this test expects", len(files))
	}
	return files
}

func TestManifestsDecodeStrictly(t *testing.T) {
	n := 0
	for path, data := range manifests(t) {
		if path == "examples/register.yaml" {
			if _, err := register.Parse(data); err != nil {
				t.Errorf("%s: %v", path, err)
			}
			continue
		}
		for i, doc := range documents(data) {
			obj := decodeStrict(t, fmt.Sprintf("%s#%d", path, i), doc)
			n++
			// The sidecar configurations the examples ship must load.
			if cm, ok := obj.(*corev1.ConfigMap); ok && cm.Data["credflow.yaml"] != "" {
				if _, err := config.Parse([]byte(cm.Data["credflow.yaml"])); err != nil {
					t.Errorf("%s: ConfigMap %s: credflow.yaml: %v", path, cm.Name, err)
				}
			}
		}
	}
	t.Logf("%d objects decoded strictly", n)
}

// TestStrictDecodingCatchesTypos proves the check above can fail.
func TestStrictDecodingCatchesTypos(t *testing.T) {
	doc := []byte("apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\nspec:\n  replicas: 1\n  replica: 2\n")
	obj, _ := newObject("apps/v1", "Deployment")
	if err := yaml.UnmarshalStrict(doc, obj); err == nil {
		t.Fatal("a typo'd field decoded")
	}
}

// build runs kustomize on a directory and decodes every resulting object
// strictly.
func build(t *testing.T, dir string) []any {
	t.Helper()
	res, err := krusty.MakeKustomizer(krusty.MakeDefaultOptions()).Run(filesys.MakeFsOnDisk(), dir)
	if err != nil {
		t.Fatalf("kustomize build %s: %v", dir, err)
	}
	out, err := res.AsYaml()
	if err != nil {
		t.Fatal(err)
	}
	var objs []any
	for i, doc := range documents(out) {
		objs = append(objs, decodeStrict(t, fmt.Sprintf("%s (built) #%d", dir, i), doc))
	}
	return objs
}

func TestKustomizeBuilds(t *testing.T) {
	base := build(t, "base")
	ha := build(t, "overlays/postgres-ha")
	examples := build(t, "examples")
	monitoring := build(t, "monitoring")
	if len(base) < 15 || len(examples) < 8 || len(monitoring) != 2 {
		t.Errorf("objects built: base %d, examples %d, monitoring %d", len(base), len(examples), len(monitoring))
	}
	find := func(objs []any, kind, name string) any {
		for _, o := range objs {
			switch v := o.(type) {
			case *appsv1.StatefulSet:
				if kind == "StatefulSet" && v.Name == name {
					return v
				}
			case *corev1.ConfigMap:
				if kind == "ConfigMap" && v.Name == name {
					return v
				}
			case *appsv1.Deployment:
				if kind == "Deployment" && v.Name == name {
					return v
				}
			}
		}
		return nil
	}
	server, _ := find(ha, "StatefulSet", "spire-server").(*appsv1.StatefulSet)
	if server == nil || *server.Spec.Replicas != 2 || find(ha, "StatefulSet", "spire-postgres") == nil {
		t.Fatal("the postgres-ha overlay does not run two SPIRE servers and PostgreSQL")
	}
	c := server.Spec.Template.Spec.Containers[0]
	if c.Image != "ghcr.io/spiffe/spire-server:1.13.3" || !slices.Contains(c.Args, "-expandEnv") || len(c.Env) == 0 {
		t.Errorf("overlay spire-server container: image %s, args %v, env %v", c.Image, c.Args, c.Env)
	}
	conf, _ := find(ha, "ConfigMap", "spire-server").(*corev1.ConfigMap)
	if conf == nil || !strings.Contains(conf.Data["server.conf"], `database_type = "postgres"`) {
		t.Error("the overlay's SPIRE server is not configured for PostgreSQL")
	}
	var webhooks []admissionregistrationv1.MutatingWebhook
	for _, o := range base {
		if w, ok := o.(*admissionregistrationv1.MutatingWebhookConfiguration); ok {
			webhooks = append(webhooks, w.Webhooks...)
		}
	}
	if len(webhooks) != 2 || webhooks[0].NamespaceSelector.MatchLabels["credflow.io/injection"] != "enabled" ||
		webhooks[1].ObjectSelector.MatchLabels["credflow.io/inject"] != "true" {
		t.Errorf("webhooks: want opt-in by namespace label and by pod label, got %+v", webhooks)
	}
	for _, w := range webhooks {
		if w.SideEffects == nil || *w.SideEffects != admissionregistrationv1.SideEffectClassNone {
			t.Errorf("webhook %s: sideEffects %v", w.Name, w.SideEffects)
		}
	}
	baseConf, _ := find(base, "ConfigMap", "spire-server").(*corev1.ConfigMap)
	if baseConf == nil || !strings.Contains(baseConf.Data["server.conf"], `database_type = "sqlite3"`) {
		t.Error("the base SPIRE server is not on SQLite")
	}
}

// TestInjectedExamplesAreValidPods runs the injector on the examples' pods
// and decodes the patched pods strictly into corev1.Pod: every field the
// patch adds is a real field, every mount has its volume, and the sidecar
// is a native sidecar that starts before the app.
func TestInjectedExamplesAreValidPods(t *testing.T) {
	cfg := inject.Config{Image: "registry.example/credflow:v0.1.0"}
	n := 0
	for _, obj := range build(t, "examples") {
		d, ok := obj.(*appsv1.Deployment)
		if !ok {
			continue
		}
		n++
		pod := corev1.Pod{ObjectMeta: d.Spec.Template.ObjectMeta, Spec: d.Spec.Template.Spec}
		pod.APIVersion, pod.Kind, pod.Name, pod.Namespace = "v1", "Pod", d.Name+"-x", d.Namespace
		raw, err := json.Marshal(pod)
		if err != nil {
			t.Fatal(err)
		}
		ops, decision, err := inject.Patch(cfg, raw)
		if err != nil || decision != inject.Injected {
			t.Fatalf("%s: %v %v", d.Name, decision, err)
		}
		patched, err := inject.Apply(raw, ops)
		if err != nil {
			t.Fatal(err)
		}
		var got corev1.Pod
		dec := json.NewDecoder(bytes.NewReader(patched))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&got); err != nil {
			t.Fatalf("%s: the patched pod does not decode into corev1.Pod: %v", d.Name, err)
		}
		if len(got.Spec.InitContainers) != 2 || got.Spec.InitContainers[0].Name != inject.InitName || got.Spec.InitContainers[1].Name != inject.SidecarName {
			t.Fatalf("%s: init containers %v", d.Name, got.Spec.InitContainers)
		}
		side := got.Spec.InitContainers[1]
		if side.RestartPolicy == nil || *side.RestartPolicy != corev1.ContainerRestartPolicyAlways || side.StartupProbe == nil {
			t.Errorf("%s: the sidecar is not native (restartPolicy %v, startupProbe %v)", d.Name, side.RestartPolicy, side.StartupProbe)
		}
		sc := side.SecurityContext
		if sc == nil || sc.RunAsNonRoot == nil || !*sc.RunAsNonRoot || sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem ||
			sc.Capabilities == nil || len(sc.Capabilities.Add) != 0 {
			t.Errorf("%s: sidecar security context %+v", d.Name, sc)
		}
		if side.Resources.Requests.Cpu().IsZero() || side.Resources.Limits.Memory().IsZero() {
			t.Errorf("%s: sidecar resources %+v", d.Name, side.Resources)
		}
		initSC := got.Spec.InitContainers[0].SecurityContext
		if initSC == nil || initSC.Capabilities == nil || !slices.Equal(initSC.Capabilities.Add, []corev1.Capability{"NET_ADMIN", "NET_RAW"}) {
			t.Errorf("%s: capture init capabilities %+v", d.Name, initSC)
		}
		vols := map[string]bool{}
		for _, v := range got.Spec.Volumes {
			vols[v.Name] = true
		}
		for _, c := range append(got.Spec.InitContainers, got.Spec.Containers...) {
			for _, m := range c.VolumeMounts {
				if !vols[m.Name] {
					t.Errorf("%s: container %s mounts %s, which is not a volume", d.Name, c.Name, m.Name)
				}
			}
		}
		if cfgName := pod.Annotations[inject.AnnotationConfig]; cfgName != "" {
			found := false
			for _, v := range got.Spec.Volumes {
				found = found || v.ConfigMap != nil && v.ConfigMap.Name == cfgName
			}
			if !found {
				t.Errorf("%s: the ConfigMap %s of its annotation is not mounted", d.Name, cfgName)
			}
		}
		again, decision, _ := inject.Patch(cfg, patched)
		if decision != inject.AlreadyInjected || len(again) != 0 {
			t.Errorf("%s: injecting twice: %v, %d ops", d.Name, decision, len(again))
		}
	}
	if n != 2 {
		t.Fatalf("%d example deployments, want 2", n)
	}
}

// TestMonitoringNamesDocumentedMetrics: the alert rules and the dashboard
// use only metrics the README documents, so neither watches a name the
// sidecar does not export.
func TestMonitoringNamesDocumentedMetrics(t *testing.T) {
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	metric := regexp.MustCompile(`credflow_[a-z0-9_]+`)
	documented := map[string]bool{}
	for _, m := range metric.FindAllString(string(readme), -1) {
		documented[m] = true
	}
	var rules struct {
		Groups []struct {
			Name  string `json:"name"`
			Rules []struct {
				Alert       string            `json:"alert"`
				Expr        string            `json:"expr"`
				For         string            `json:"for"`
				Labels      map[string]string `json:"labels"`
				Annotations map[string]string `json:"annotations"`
			} `json:"rules"`
		} `json:"groups"`
	}
	data, err := os.ReadFile("monitoring/credflow-rules.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.UnmarshalStrict(data, &rules); err != nil {
		t.Fatalf("rules: %v", err)
	}
	var alerts []string
	for _, g := range rules.Groups {
		for _, r := range g.Rules {
			alerts = append(alerts, r.Alert)
			if r.Expr == "" || r.Labels["severity"] == "" || r.Annotations["summary"] == "" {
				t.Errorf("rule %s lacks an expression, a severity or a summary", r.Alert)
			}
		}
	}
	for _, want := range []string{"CredflowSVIDNearExpiry", "CredflowRefusalSpike", "CredflowClassicalKeyExchange"} {
		if !slices.Contains(alerts, want) {
			t.Errorf("no alert %s", want)
		}
	}
	dash, err := os.ReadFile("monitoring/credflow-dashboard.json")
	if err != nil {
		t.Fatal(err)
	}
	var d struct {
		Panels []struct {
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(dash, &d); err != nil || len(d.Panels) == 0 {
		t.Fatalf("dashboard: %v, %d panels", err, len(d.Panels))
	}
	for _, text := range []string{string(data), string(dash)} {
		for _, m := range metric.FindAllString(text, -1) {
			m = strings.TrimSuffix(strings.TrimSuffix(strings.TrimSuffix(m, "_bucket"), "_sum"), "_count")
			if !documented[m] {
				t.Errorf("%s is used by the monitoring but not documented in the README", m)
			}
		}
	}
}

// selects evaluates a label selector as the API server does; a nil
// selector selects everything.
func selects(t *testing.T, sel *metav1.LabelSelector, set map[string]string) bool {
	t.Helper()
	if sel == nil {
		return true
	}
	s, err := metav1.LabelSelectorAsSelector(sel)
	if err != nil {
		t.Fatalf("selector %v: %v", sel, err)
	}
	return s.Matches(labels.Set(set))
}

// namespaceLabels are a namespace's labels as the API server sees them,
// with the name label it sets on every namespace.
func namespaceLabels(name string, set map[string]string) map[string]string {
	out := map[string]string{"kubernetes.io/metadata.name": name}
	for k, v := range set {
		out[k] = v
	}
	return out
}

// TestInjectorFailsClosed: a pod that should get the sidecar never starts
// without it. The webhooks fail closed (failurePolicy Fail) for labelled
// namespaces and labelled pods, but never for the control plane's own
// namespaces (even mislabelled), where they would keep the injector itself
// from starting; and the injector runs at least two replicas, spread
// across nodes, that a PodDisruptionBudget keeps from being drained at
// once.
func TestInjectorFailsClosed(t *testing.T) {
	base := build(t, "base")
	var (
		webhooks []admissionregistrationv1.MutatingWebhook
		injector *appsv1.Deployment
		pdbs     []*policyv1.PodDisruptionBudget
	)
	for _, o := range base {
		switch v := o.(type) {
		case *admissionregistrationv1.MutatingWebhookConfiguration:
			webhooks = append(webhooks, v.Webhooks...)
		case *appsv1.Deployment:
			if v.Name == "credflow-injector" {
				injector = v
			}
		case *policyv1.PodDisruptionBudget:
			pdbs = append(pdbs, v)
		}
	}
	if len(webhooks) == 0 || injector == nil {
		t.Fatalf("base: %d webhooks, injector %v", len(webhooks), injector != nil)
	}
	mesh := namespaceLabels("shop", map[string]string{"credflow.io/injection": "enabled"})
	byNamespace := 0
	for _, w := range webhooks {
		policy := admissionregistrationv1.FailurePolicyType("unset")
		if w.FailurePolicy != nil {
			policy = *w.FailurePolicy
		}
		if policy != admissionregistrationv1.Fail {
			t.Errorf("webhook %s: failurePolicy %s, want Fail: a pod must not start without its sidecar when the injector is down", w.Name, policy)
		}
		if w.NamespaceSelector == nil {
			t.Errorf("webhook %s has no namespaceSelector", w.Name)
		}
		for _, ns := range []string{injector.Namespace, "kube-system", "spire"} {
			if selects(t, w.NamespaceSelector, namespaceLabels(ns, map[string]string{"credflow.io/injection": "enabled"})) {
				t.Errorf("webhook %s applies to the namespace %s, which the injector and the mesh depend on", w.Name, ns)
			}
		}
		if !selects(t, w.NamespaceSelector, mesh) {
			t.Errorf("webhook %s does not apply to a labelled namespace", w.Name)
		}
		if !selects(t, w.NamespaceSelector, namespaceLabels("other", nil)) {
			continue // applies to labelled namespaces only
		}
		if w.ObjectSelector == nil || selects(t, w.ObjectSelector, map[string]string{"app": "x"}) {
			t.Errorf("webhook %s applies to every pod of every namespace", w.Name)
		}
	}
	for _, w := range webhooks {
		if selects(t, w.NamespaceSelector, mesh) && !selects(t, w.NamespaceSelector, namespaceLabels("other", nil)) {
			byNamespace++
		}
	}
	if byNamespace == 0 {
		t.Error("no webhook selects namespaces by the label credflow.io/injection: enabled")
	}

	if r := injector.Spec.Replicas; r == nil || *r < 2 {
		t.Errorf("injector replicas %v, want at least 2", r)
	}
	spread := injector.Spec.Template.Spec.TopologySpreadConstraints
	if len(spread) == 0 || spread[0].TopologyKey != "kubernetes.io/hostname" || !selects(t, spread[0].LabelSelector, injector.Spec.Template.Labels) {
		t.Errorf("the injector's replicas are not spread across nodes: %+v", spread)
	}
	covered := false
	for _, pdb := range pdbs {
		if pdb.Namespace != injector.Namespace || pdb.Spec.Selector == nil || !selects(t, pdb.Spec.Selector, injector.Spec.Template.Labels) {
			continue
		}
		covered = true
		// One replica may go (a drain can proceed), never all of them.
		min := pdb.Spec.MinAvailable
		if min == nil || min.IntValue() < 1 || min.IntValue() >= int(*injector.Spec.Replicas) || pdb.Spec.MaxUnavailable != nil {
			t.Errorf("PodDisruptionBudget %s: minAvailable %v, maxUnavailable %v; want minAvailable between 1 and replicas-1",
				pdb.Name, min, pdb.Spec.MaxUnavailable)
		}
	}
	if !covered {
		t.Error("no PodDisruptionBudget covers the injector's pods")
	}
}

// TestAppPortsOnlyFromInjectedPods: the examples' NetworkPolicies admit
// traffic to an app's ports only from pods the injector has patched (the
// label it sets, read from its real patch), so a pod that started without
// a sidecar, or opted out, cannot reach a server in plain TCP.
func TestAppPortsOnlyFromInjectedPods(t *testing.T) {
	objs := build(t, "examples")
	cfg := inject.Config{Image: "registry.example/credflow:v0.1.0"}
	namespaces := map[string]map[string]string{}
	type podLabels struct{ namespace, name, state string }
	pods := map[podLabels]map[string]string{}
	var policies []*networkingv1.NetworkPolicy
	for _, o := range objs {
		switch v := o.(type) {
		case *corev1.Namespace:
			namespaces[v.Name] = namespaceLabels(v.Name, v.Labels)
		case *networkingv1.NetworkPolicy:
			policies = append(policies, v)
		case *appsv1.Deployment:
			pod := corev1.Pod{ObjectMeta: v.Spec.Template.ObjectMeta, Spec: v.Spec.Template.Spec}
			raw, err := json.Marshal(pod)
			if err != nil {
				t.Fatal(err)
			}
			ops, _, err := inject.Patch(cfg, raw)
			if err != nil {
				t.Fatalf("%s: %v", v.Name, err)
			}
			patched, err := inject.Apply(raw, ops)
			if err != nil {
				t.Fatal(err)
			}
			var got corev1.Pod
			if err := json.Unmarshal(patched, &got); err != nil {
				t.Fatal(err)
			}
			pods[podLabels{v.Namespace, v.Name, "uninjected"}] = v.Spec.Template.Labels
			pods[podLabels{v.Namespace, v.Name, "injected"}] = got.Labels
		}
	}
	if len(policies) == 0 || len(pods) != 4 {
		t.Fatalf("%d NetworkPolicies, %d pods", len(policies), len(pods))
	}
	// admits reports whether a rule lets a pod in.
	admits := func(np *networkingv1.NetworkPolicy, rule networkingv1.NetworkPolicyIngressRule, from podLabels) bool {
		if len(rule.From) == 0 {
			return true // from anywhere
		}
		for _, peer := range rule.From {
			if peer.IPBlock != nil {
				return true
			}
			nsOK := from.namespace == np.Namespace
			if peer.NamespaceSelector != nil {
				nsOK = selects(t, peer.NamespaceSelector, namespaces[from.namespace])
			}
			if nsOK && selects(t, peer.PodSelector, pods[from]) {
				return true
			}
		}
		return false
	}
	frontendCanCall := false
	for _, np := range policies {
		for i, rule := range np.Spec.Ingress {
			for from := range pods {
				if admits(np, rule, from) && from.state != "injected" {
					t.Errorf("NetworkPolicy %s rule %d admits the %s pod %s/%s", np.Name, i, from.state, from.namespace, from.name)
				}
			}
			frontendCanCall = frontendCanCall || np.Name == "backend" && admits(np, rule, podLabels{"shop", "frontend", "injected"})
		}
	}
	if !frontendCanCall {
		t.Error("the backend's NetworkPolicy does not admit the injected frontend: the example would not work")
	}
}
