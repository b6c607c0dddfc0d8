// Package deployments holds the deployment files (images, compose,
// Kubernetes; docs/deploy.md) and the test that they agree with the
// binary: nothing here runs Kubernetes, so the manifests are decoded
// strictly into the Kubernetes API types, and every name, port, probe and
// variable is checked against what `tqtriage` itself accepts.
package deployments

import (
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	"sigs.k8s.io/yaml"

	"github.com/tqtriage/tqtriage/bus"
)

const namespace = "tqtriage"

// bin is tqtriage built from this tree, by TestMain.
var bin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "tqtriage-deploy-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	bin = filepath.Join(dir, "tqtriage")
	build := exec.Command("go", "build", "-o", bin, "../cmd/tqtriage")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "building tqtriage: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// accepted are the variables `tqtriage <command>` reads, as its -h says:
// each flag's [$VAR], and the secrets' variables its help names
// ($TRIAGE_CLIENT_SECRET or $TRIAGE_CLIENT_SECRET_FILE).
type accepted struct {
	vars     map[string]bool
	defaults map[string]string // by variable: the default -h shows
}

var (
	helpVar     = regexp.MustCompile(`\$([A-Z][A-Z0-9_]*)`)
	helpDefault = regexp.MustCompile(`\[\$([A-Z][A-Z0-9_]*)\] \(default "([^"]*)"\)`)
	acceptedBy  = map[string]accepted{}
)

func acceptedVars(t *testing.T, command string) accepted {
	t.Helper()
	if a, ok := acceptedBy[command]; ok {
		return a
	}
	cmd := exec.Command(bin, command, "-h")
	cmd.Env = []string{"PATH=" + os.Getenv("PATH")} // the defaults, not this test's environment
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("tqtriage %s -h: %v", command, err)
	}
	a := accepted{vars: map[string]bool{}, defaults: map[string]string{}}
	for _, m := range helpVar.FindAllStringSubmatch(string(out), -1) {
		a.vars[m[1]] = true
	}
	for _, m := range helpDefault.FindAllStringSubmatch(string(out), -1) {
		a.defaults[m[1]] = m[2]
	}
	if !a.vars["LOG_LEVEL"] {
		t.Fatalf("tqtriage %s -h names no LOG_LEVEL; the help's format changed?\n%s", command, out)
	}
	acceptedBy[command] = a
	return a
}

// natsConfVars are the variables the NATS image's configuration reads.
func natsConfVars(t *testing.T) map[string]bool {
	t.Helper()
	vars := map[string]bool{}
	for _, f := range []string{"nats.conf", "cluster.conf", "permissions.conf"} {
		raw, err := os.ReadFile(filepath.Join("nats", f))
		if err != nil {
			t.Fatal(err)
		}
		for _, line := range strings.Split(string(raw), "\n") {
			if i := strings.Index(line, "#"); i >= 0 {
				line = line[:i]
			}
			// $JS.API… subjects are not variables; a variable is a value.
			for _, m := range regexp.MustCompile(`:\s*\$([A-Z][A-Z0-9_]*)\b`).FindAllStringSubmatch(line, -1) {
				vars[m[1]] = true
			}
		}
	}
	// Permission profiles are variables of the file itself, not the
	// environment's.
	for v := range vars {
		if !strings.Contains(v, "_") || v == "INBOX" {
			delete(vars, v)
		}
	}
	if !vars["NATS_ROUTES"] || !vars["TQTRIAGE_WORKER_PASSWORD"] {
		t.Fatalf("the NATS configuration reads %v: missing NATS_ROUTES or a password?", vars)
	}
	return vars
}

// object is one document of a manifest file.
type object struct {
	file string
	kind string
	name string
	raw  []byte
}

func (o object) String() string { return fmt.Sprintf("%s %s (%s)", o.kind, o.name, o.file) }

var docSep = regexp.MustCompile(`(?m)^---[ \t]*$`)

// manifests reads every document of the kustomization's resources.
func manifests(t *testing.T) []object {
	t.Helper()
	var k struct {
		APIVersion string   `json:"apiVersion"`
		Kind       string   `json:"kind"`
		Resources  []string `json:"resources"`
		Images     []struct {
			Name    string `json:"name"`
			NewName string `json:"newName"`
			NewTag  string `json:"newTag"`
		} `json:"images"`
	}
	raw, err := os.ReadFile("kubernetes/kustomization.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.UnmarshalStrict(raw, &k); err != nil {
		t.Fatalf("kustomization.yaml: %v", err)
	}
	files, _ := filepath.Glob("kubernetes/*.yaml")
	var want []string
	for _, f := range files {
		if b := filepath.Base(f); b != "kustomization.yaml" {
			want = append(want, b)
		}
	}
	if got := slices.Sorted(slices.Values(k.Resources)); !slices.Equal(got, want) {
		t.Errorf("kustomization.yaml lists %v; the folder has %v", got, want)
	}
	var images []string
	for _, im := range k.Images {
		images = append(images, im.Name)
	}
	if !slices.Equal(images, []string{"tqtriage", "tqtriage-nats"}) {
		t.Errorf("kustomization.yaml sets the images %v, want tqtriage and tqtriage-nats", images)
	}

	var out []object
	seen := map[string]bool{}
	for _, f := range k.Resources {
		raw, err := os.ReadFile(filepath.Join("kubernetes", f))
		if err != nil {
			t.Fatal(err)
		}
		for _, doc := range docSep.Split(string(raw), -1) {
			var head struct {
				APIVersion string `json:"apiVersion"`
				Kind       string `json:"kind"`
				Metadata   struct {
					Name      string `json:"name"`
					Namespace string `json:"namespace"`
				} `json:"metadata"`
			}
			if err := yaml.Unmarshal([]byte(doc), &head); err != nil {
				t.Fatalf("%s: %v", f, err)
			}
			if head.Kind == "" {
				if strings.TrimSpace(regexp.MustCompile(`(?m)^\s*#.*$`).ReplaceAllString(doc, "")) != "" {
					t.Errorf("%s: a document without a kind", f)
				}
				continue
			}
			o := object{file: f, kind: head.Kind, name: head.Metadata.Name, raw: []byte(doc)}
			if key := o.kind + "/" + o.name; seen[key] {
				t.Errorf("%s: %s twice", f, key)
			} else {
				seen[key] = true
			}
			if o.kind != "Namespace" && head.Metadata.Namespace != namespace {
				t.Errorf("%v: namespace %q, want %q", o, head.Metadata.Namespace, namespace)
			}
			out = append(out, o)
		}
	}
	return out
}

// decoded is every manifest, decoded strictly into its API type.
type decoded struct {
	secrets      map[string]*corev1.Secret
	configMaps   map[string]*corev1.ConfigMap
	services     map[string]*corev1.Service
	deployments  map[string]*appsv1.Deployment
	statefulSets map[string]*appsv1.StatefulSet
	jobs         map[string]*batchv1.Job
	pdbs         map[string]*policyv1.PodDisruptionBudget
	scaled       map[string]*scaledObject
}

// scaledObject is the part of KEDA's keda.sh/v1alpha1 ScaledObject these
// manifests use (KEDA's own types would bring KEDA's dependencies); a
// field outside it fails the strict decoding, so the test grows with the
// manifest.
type scaledObject struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Metadata   struct {
		Name      string `json:"name"`
		Namespace string `json:"namespace"`
	} `json:"metadata"`
	Spec struct {
		ScaleTargetRef struct {
			Name string `json:"name"`
		} `json:"scaleTargetRef"`
		MinReplicaCount int `json:"minReplicaCount"`
		MaxReplicaCount int `json:"maxReplicaCount"`
		PollingInterval int `json:"pollingInterval"`
		CooldownPeriod  int `json:"cooldownPeriod"`
		Triggers        []struct {
			Type     string            `json:"type"`
			Metadata map[string]string `json:"metadata"`
		} `json:"triggers"`
	} `json:"spec"`
}

func decodeAll(t *testing.T) decoded {
	t.Helper()
	d := decoded{
		secrets: map[string]*corev1.Secret{}, configMaps: map[string]*corev1.ConfigMap{}, services: map[string]*corev1.Service{},
		deployments: map[string]*appsv1.Deployment{}, statefulSets: map[string]*appsv1.StatefulSet{}, jobs: map[string]*batchv1.Job{},
		pdbs: map[string]*policyv1.PodDisruptionBudget{}, scaled: map[string]*scaledObject{},
	}
	for _, o := range manifests(t) {
		var v any
		var apiVersion string
		switch o.kind {
		case "Namespace":
			v, apiVersion = &corev1.Namespace{}, "v1"
		case "Secret":
			s := &corev1.Secret{}
			v, apiVersion, d.secrets[o.name] = s, "v1", s
		case "ConfigMap":
			c := &corev1.ConfigMap{}
			v, apiVersion, d.configMaps[o.name] = c, "v1", c
		case "Service":
			s := &corev1.Service{}
			v, apiVersion, d.services[o.name] = s, "v1", s
		case "Deployment":
			x := &appsv1.Deployment{}
			v, apiVersion, d.deployments[o.name] = x, "apps/v1", x
		case "StatefulSet":
			x := &appsv1.StatefulSet{}
			v, apiVersion, d.statefulSets[o.name] = x, "apps/v1", x
		case "Job":
			x := &batchv1.Job{}
			v, apiVersion, d.jobs[o.name] = x, "batch/v1", x
		case "PodDisruptionBudget":
			x := &policyv1.PodDisruptionBudget{}
			v, apiVersion, d.pdbs[o.name] = x, "policy/v1", x
		case "ScaledObject":
			x := &scaledObject{}
			v, apiVersion, d.scaled[o.name] = x, "keda.sh/v1alpha1", x
		default:
			t.Errorf("%v: a kind the test does not know; teach it", o)
			continue
		}
		// Strict: an unknown or misspelt field, or one given twice, fails.
		if err := yaml.UnmarshalStrict(o.raw, v); err != nil {
			t.Errorf("%v: %v", o, err)
			continue
		}
		var head struct {
			APIVersion string `json:"apiVersion"`
		}
		_ = yaml.Unmarshal(o.raw, &head)
		if head.APIVersion != apiVersion {
			t.Errorf("%v: apiVersion %q, want %q", o, head.APIVersion, apiVersion)
		}
	}
	return d
}

// role is the NATS user each command connects as (docs/deploy.md).
var role = map[string]string{"worker": "worker", "writeback": "writeback", "setup": "operator"}

func TestKubernetesManifests(t *testing.T) {
	d := decodeAll(t)
	for _, name := range []string{"tqtriage-worker", "tqtriage-writeback"} {
		if d.deployments[name] == nil {
			t.Fatalf("no Deployment %s", name)
		}
	}
	if d.jobs["tqtriage-setup"] == nil || d.statefulSets["nats"] == nil || d.services["nats"] == nil {
		t.Fatalf("want the Job tqtriage-setup, the StatefulSet and Service nats")
	}

	// Every tqtriage container: its command, variables, secrets, NATS.
	type pod struct {
		what string
		spec corev1.PodSpec
	}
	var pods []pod
	for name, x := range d.deployments {
		checkSelector(t, "Deployment "+name, x.Spec.Selector.MatchLabels, x.Spec.Template.Labels)
		pods = append(pods, pod{"Deployment " + name, x.Spec.Template.Spec})
	}
	for name, x := range d.jobs {
		pods = append(pods, pod{"Job " + name, x.Spec.Template.Spec})
	}
	for _, p := range pods {
		if len(p.spec.Containers) != 1 {
			t.Fatalf("%s: want one container", p.what)
		}
		c := p.spec.Containers[0]
		if c.Image != "tqtriage" {
			t.Errorf("%s: image %q, want tqtriage (kustomization.yaml sets the registry and tag)", p.what, c.Image)
		}
		if len(c.Command) != 0 || len(c.Args) == 0 {
			t.Fatalf("%s: want the image's entrypoint and the subcommand in args", p.what)
		}
		command := c.Args[0]
		if role[command] == "" {
			t.Fatalf("%s: runs tqtriage %s; the test knows worker, writeback and setup", p.what, command)
		}
		checkSecurity(t, p.what, p.spec, c)
		env := checkEnv(t, d, p.what, command, p.spec, c)
		checkNATSURL(t, d, p.what, command, c, env)
		if c.Resources.Requests.Cpu().IsZero() || c.Resources.Requests.Memory().IsZero() || c.Resources.Limits.Memory().IsZero() {
			t.Errorf("%s: want CPU and memory requests and a memory limit", p.what)
		}
		if command == "setup" {
			continue
		}
		// A replica: its HTTP port, its probes, time to hand back.
		a := acceptedVars(t, command)
		addr := env["HTTP_ADDR"]
		if addr == "" {
			addr = a.defaults["HTTP_ADDR"]
		}
		_, port, err := net.SplitHostPort(addr)
		if err != nil {
			t.Fatalf("%s: HTTP_ADDR %q: %v", p.what, addr, err)
		}
		if want := a.defaults["HTTP_ADDR"]; addr != want {
			t.Errorf("%s: HTTP_ADDR %q, not tqtriage %s's default %q", p.what, addr, command, want)
		}
		if len(c.Ports) != 1 || c.Ports[0].Name != "http" || fmt.Sprint(c.Ports[0].ContainerPort) != port {
			t.Errorf("%s: ports %+v, want one named http on %s", p.what, c.Ports, port)
		}
		for probe, want := range map[*corev1.Probe]string{c.LivenessProbe: "/healthz", c.ReadinessProbe: "/readyz"} {
			if probe == nil || probe.HTTPGet == nil || probe.HTTPGet.Path != want || probe.HTTPGet.Port.String() != "http" {
				t.Errorf("%s: want a liveness probe on GET /healthz and a readiness probe on GET /readyz, port http; got %+v", p.what, probe)
			}
		}
		// The replicas hand back what they hold after 25 s.
		if g := p.spec.TerminationGracePeriodSeconds; g == nil || *g < 30 {
			t.Errorf("%s: terminationGracePeriodSeconds %v: under the 25 s a replica takes to hand back", p.what, g)
		}
	}

	checkNATS(t, d)
	checkPDBs(t, d)
	checkKEDA(t, d)
}

func checkSelector(t *testing.T, what string, selector, labels map[string]string) {
	t.Helper()
	if len(selector) == 0 {
		t.Errorf("%s: an empty selector", what)
	}
	for k, v := range selector {
		if labels[k] != v {
			t.Errorf("%s: the selector's %s=%s is not on the pod template", what, k, v)
		}
	}
}

// checkSecurity: the image runs as 65532, with no shell to escape to.
func checkSecurity(t *testing.T, what string, spec corev1.PodSpec, c corev1.Container) {
	t.Helper()
	sc := spec.SecurityContext
	if sc == nil || sc.RunAsNonRoot == nil || !*sc.RunAsNonRoot || sc.RunAsUser == nil || *sc.RunAsUser != 65532 {
		t.Errorf("%s: want runAsNonRoot and runAsUser 65532 (the image's user)", what)
	}
	cs := c.SecurityContext
	if cs == nil || cs.ReadOnlyRootFilesystem == nil || !*cs.ReadOnlyRootFilesystem || cs.AllowPrivilegeEscalation == nil || *cs.AllowPrivilegeEscalation {
		t.Errorf("%s: want a read-only root file system and no privilege escalation", what)
	}
}

var expansion = regexp.MustCompile(`\$\(([A-Za-z_][A-Za-z0-9_]*)\)`)

// checkEnv checks that every variable the container gets is one its
// command reads, or one spelled into another (Kubernetes' $(VAR)); that
// secrets come as files from a mounted Secret; and that every Secret and
// ConfigMap named exists with the key named. It returns the plain values.
func checkEnv(t *testing.T, d decoded, what, command string, spec corev1.PodSpec, c corev1.Container) map[string]string {
	t.Helper()
	a := acceptedVars(t, command)
	values := map[string]string{}
	for _, ef := range c.EnvFrom {
		if ef.ConfigMapRef == nil {
			t.Errorf("%s: envFrom other than a ConfigMap", what)
			continue
		}
		cm := d.configMaps[ef.ConfigMapRef.Name]
		if cm == nil {
			t.Errorf("%s: no ConfigMap %s", what, ef.ConfigMapRef.Name)
			continue
		}
		for k, v := range cm.Data {
			if !a.vars[k] {
				t.Errorf("%s: ConfigMap %s sets %s, which tqtriage %s does not read", what, cm.Name, k, command)
			}
			values[k] = v
		}
	}
	spelled := map[string]bool{}
	defined := map[string]bool{}
	for _, e := range c.Env {
		for _, m := range expansion.FindAllStringSubmatch(e.Value, -1) {
			if !defined[m[1]] {
				t.Errorf("%s: %s spells $(%s) before it is defined (Kubernetes expands only earlier variables)", what, e.Name, m[1])
			}
			spelled[m[1]] = true
		}
		defined[e.Name] = true
		if e.ValueFrom != nil {
			ref := e.ValueFrom.SecretKeyRef
			if ref == nil {
				t.Errorf("%s: %s comes from something other than a Secret", what, e.Name)
				continue
			}
			checkSecretKey(t, d, what, ref.Name, ref.Key)
		} else {
			values[e.Name] = e.Value
		}
	}
	for _, e := range c.Env {
		if !a.vars[e.Name] && !spelled[e.Name] {
			t.Errorf("%s: sets %s, which tqtriage %s does not read", what, e.Name, command)
		}
		if a.vars[e.Name] && e.ValueFrom != nil {
			t.Errorf("%s: %s from a Secret in the environment: mount the Secret and set %s_FILE", what, e.Name, e.Name)
		}
		if a.vars[e.Name+"_FILE"] && e.Name != "NATS_URL" {
			t.Errorf("%s: the secret %s in the environment; use %s_FILE", what, e.Name, e.Name)
		}
	}
	// *_FILE: a file of a mounted Secret that has the key.
	for name, path := range values {
		if !strings.HasSuffix(name, "_FILE") {
			continue
		}
		found := false
		for _, vm := range c.VolumeMounts {
			if filepath.Dir(path) != vm.MountPath {
				continue
			}
			for _, vol := range spec.Volumes {
				if vol.Name != vm.Name || vol.Secret == nil {
					continue
				}
				key := filepath.Base(path)
				for _, it := range vol.Secret.Items {
					if it.Path == key {
						key = it.Key
					}
				}
				checkSecretKey(t, d, what, vol.Secret.SecretName, key)
				found = true
			}
		}
		if !found {
			t.Errorf("%s: %s=%s is not a file of a mounted Secret", what, name, path)
		}
	}
	// The secret each replica needs, as a file.
	if want := map[string]string{"worker": "TRIAGE_CLIENT_SECRET_FILE", "writeback": "THREATQ_CLIENT_SECRET_FILE"}[command]; want != "" {
		if _, ok := values[want]; !ok {
			t.Errorf("%s: tqtriage %s needs its secret: set %s", what, command, want)
		}
	}
	return values
}

func checkSecretKey(t *testing.T, d decoded, what, name, key string) {
	t.Helper()
	s := d.secrets[name]
	if s == nil {
		t.Errorf("%s: no Secret %s", what, name)
		return
	}
	_, inData := s.Data[key]
	_, inString := s.StringData[key]
	if !inData && !inString {
		t.Errorf("%s: Secret %s has no key %s", what, name, key)
	}
}

// checkNATSURL: each command connects as its role, to the NATS Service's
// client port, with its role's password.
func checkNATSURL(t *testing.T, d decoded, what, command string, c corev1.Container, env map[string]string) {
	t.Helper()
	raw := env["NATS_URL"]
	u, err := url.Parse(expansion.ReplaceAllString(raw, "password"))
	if err != nil || u.User == nil {
		t.Fatalf("%s: NATS_URL %q: want nats://<role>:$(…)@host:port", what, raw)
	}
	if u.User.Username() != role[command] {
		t.Errorf("%s: tqtriage %s connects as %q, want the %s role", what, command, u.User.Username(), role[command])
	}
	pw, _ := url.Parse(raw)
	m := expansion.FindStringSubmatch(raw)
	if pw == nil || m == nil {
		t.Fatalf("%s: NATS_URL %q: the password should be $(VAR) from the Secret", what, raw)
	}
	for _, e := range c.Env {
		if e.Name == m[1] && (e.ValueFrom == nil || e.ValueFrom.SecretKeyRef == nil || e.ValueFrom.SecretKeyRef.Key != role[command]) {
			t.Errorf("%s: %s is not the %s user's password from the Secret", what, m[1], role[command])
		}
	}
	svc := d.services[u.Hostname()]
	if svc == nil {
		t.Fatalf("%s: NATS_URL names %s: no such Service", what, u.Hostname())
	}
	if !slices.ContainsFunc(svc.Spec.Ports, func(p corev1.ServicePort) bool { return fmt.Sprint(p.Port) == u.Port() && p.Name == "client" }) {
		t.Errorf("%s: NATS_URL port %s is not Service %s's client port", what, u.Port(), svc.Name)
	}
	if !regexp.MustCompile(`(?m)^\s*\{ user: ` + role[command] + `,`).Match(mustRead(t, "nats/permissions.conf")) {
		t.Errorf("%s: permissions.conf has no user %s", what, role[command])
	}
}

func mustRead(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// checkNATS: the StatefulSet sets exactly what the image's configuration
// reads, its routes name its own pods, its ports are the Service's, and
// the streams' replicas are its nodes.
func checkNATS(t *testing.T, d decoded) {
	t.Helper()
	ss, svc := d.statefulSets["nats"], d.services["nats"]
	checkSelector(t, "StatefulSet nats", ss.Spec.Selector.MatchLabels, ss.Spec.Template.Labels)
	checkSelector(t, "Service nats", svc.Spec.Selector, ss.Spec.Template.Labels)
	if ss.Spec.ServiceName != svc.Name || svc.Spec.ClusterIP != "None" {
		t.Errorf("StatefulSet nats: serviceName %q; want the headless Service %s", ss.Spec.ServiceName, svc.Name)
	}
	c := ss.Spec.Template.Spec.Containers[0]
	if c.Image != "tqtriage-nats" || !slices.Equal(c.Args, []string{"--config", "/etc/nats/cluster.conf"}) {
		t.Errorf("StatefulSet nats: image %q args %v", c.Image, c.Args)
	}
	reads := natsConfVars(t)
	set := map[string]bool{}
	for _, e := range c.Env {
		set[e.Name] = true
		if !reads[e.Name] {
			t.Errorf("StatefulSet nats: sets %s, which the NATS configuration does not read", e.Name)
		}
		if e.ValueFrom != nil && e.ValueFrom.SecretKeyRef != nil {
			checkSecretKey(t, d, "StatefulSet nats", e.ValueFrom.SecretKeyRef.Name, e.ValueFrom.SecretKeyRef.Key)
		}
		if e.Name == "NATS_SERVER_NAME" && (e.ValueFrom == nil || e.ValueFrom.FieldRef == nil || e.ValueFrom.FieldRef.FieldPath != "metadata.name") {
			t.Errorf("StatefulSet nats: NATS_SERVER_NAME should be the pod's name (KEDA asks nodes by it)")
		}
		if e.Name == "NATS_ROUTES" {
			var want []string
			for i := range int(*ss.Spec.Replicas) {
				want = append(want, fmt.Sprintf("nats://%s-%d.%s:6222", ss.Name, i, svc.Name))
			}
			if e.Value != "["+strings.Join(want, ", ")+"]" {
				t.Errorf("StatefulSet nats: NATS_ROUTES %q, want every pod: [%s]", e.Value, strings.Join(want, ", "))
			}
		}
	}
	for v := range reads {
		if !set[v] {
			t.Errorf("StatefulSet nats: the configuration reads $%s; the server will not start without it", v)
		}
	}
	ports := map[string]int32{}
	for _, p := range c.Ports {
		ports[p.Name] = p.ContainerPort
	}
	want := map[string]int32{"client": 4222, "cluster": 6222, "monitor": 8222}
	for _, p := range svc.Spec.Ports {
		if ports[p.Name] != p.Port || want[p.Name] != p.Port || p.TargetPort.String() != p.Name {
			t.Errorf("Service nats: port %s %d (target %s); the container has %v", p.Name, p.Port, p.TargetPort.String(), ports)
		}
	}
	for _, probe := range []*corev1.Probe{c.LivenessProbe, c.ReadinessProbe} {
		if probe == nil || probe.HTTPGet == nil || probe.HTTPGet.Port.String() != "monitor" || !strings.HasPrefix(probe.HTTPGet.Path, "/healthz") {
			t.Errorf("StatefulSet nats: want liveness and readiness on the monitoring port's /healthz")
		}
	}
	if r := d.configMaps["tqtriage-common"].Data["NATS_REPLICAS"]; r != fmt.Sprint(*ss.Spec.Replicas) {
		t.Errorf("NATS_REPLICAS %q, but the cluster has %d nodes", r, *ss.Spec.Replicas)
	}
}

// checkPDBs: each budget selects a workload's pods, and the workers and
// NATS have one.
func checkPDBs(t *testing.T, d decoded) {
	t.Helper()
	templates := map[string]map[string]string{}
	for n, x := range d.deployments {
		templates[n] = x.Spec.Template.Labels
	}
	for n, x := range d.statefulSets {
		templates[n] = x.Spec.Template.Labels
	}
	covered := map[string]bool{}
	for name, p := range d.pdbs {
		if p.Spec.MaxUnavailable == nil && p.Spec.MinAvailable == nil {
			t.Errorf("PodDisruptionBudget %s: neither maxUnavailable nor minAvailable", name)
		}
		for w, labels := range templates {
			match := len(p.Spec.Selector.MatchLabels) > 0
			for k, v := range p.Spec.Selector.MatchLabels {
				match = match && labels[k] == v
			}
			if match {
				covered[w] = true
			}
		}
	}
	for _, w := range []string{"tqtriage-worker", "nats"} {
		if !covered[w] {
			t.Errorf("no PodDisruptionBudget selects %s's pods", w)
		}
	}
}

// KEDA's nats-jetstream scaler's parameters (keda.sh/docs/scalers/nats-jetstream).
var kedaNATSParams = []string{"natsServerMonitoringEndpoint", "account", "stream", "consumer", "lagThreshold", "activationLagThreshold", "useHttps"}

func checkKEDA(t *testing.T, d decoded) {
	t.Helper()
	so := d.scaled["tqtriage-worker"]
	if so == nil {
		t.Fatal("no ScaledObject tqtriage-worker")
	}
	if d.deployments[so.Spec.ScaleTargetRef.Name] == nil || so.Spec.ScaleTargetRef.Name != "tqtriage-worker" {
		t.Errorf("ScaledObject: scales %q, want the Deployment tqtriage-worker", so.Spec.ScaleTargetRef.Name)
	}
	if so.Spec.MinReplicaCount < 1 || so.Spec.MaxReplicaCount < so.Spec.MinReplicaCount {
		t.Errorf("ScaledObject: replicas %d to %d", so.Spec.MinReplicaCount, so.Spec.MaxReplicaCount)
	}
	if len(so.Spec.Triggers) != 1 || so.Spec.Triggers[0].Type != "nats-jetstream" {
		t.Fatalf("ScaledObject: want one nats-jetstream trigger, got %+v", so.Spec.Triggers)
	}
	md := so.Spec.Triggers[0].Metadata
	for k := range md {
		if !slices.Contains(kedaNATSParams, k) {
			t.Errorf("ScaledObject: %s is not a parameter of KEDA's nats-jetstream scaler", k)
		}
	}
	if md["stream"] != bus.StreamJobs || md["consumer"] != bus.ConsumerWorkers {
		t.Errorf("ScaledObject: stream %q consumer %q, want %s and %s", md["stream"], md["consumer"], bus.StreamJobs, bus.ConsumerWorkers)
	}
	if md["account"] != "$G" {
		t.Errorf("ScaledObject: account %q; users without NATS accounts are in $G", md["account"])
	}
	host, port, err := net.SplitHostPort(md["natsServerMonitoringEndpoint"])
	svc := d.services["nats"]
	if err != nil || host != svc.Name+"."+namespace+".svc.cluster.local" || port != "8222" {
		t.Errorf("ScaledObject: natsServerMonitoringEndpoint %q, want the headless Service's monitor port, %s.%s.svc.cluster.local:8222", md["natsServerMonitoringEndpoint"], svc.Name, namespace)
	}
	if md["lagThreshold"] == "" {
		t.Errorf("ScaledObject: no lagThreshold")
	}
}

// The compose file: the same rules for its services.
func TestComposeFile(t *testing.T) {
	var f struct {
		Services map[string]struct {
			Image       string            `json:"image"`
			Command     []string          `json:"command"`
			Environment map[string]string `json:"environment"`
			Ports       []string          `json:"ports"`
		} `json:"services"`
	}
	// Not strict: compose has many fields this test does not look at.
	if err := yaml.Unmarshal(mustRead(t, "compose/docker-compose.yml"), &f); err != nil {
		t.Fatal(err)
	}
	reads := natsConfVars(t)
	var nodes, workers int
	for name, s := range f.Services {
		switch {
		case strings.Contains(s.Image, "tqtriage-nats"):
			nodes++
			for k := range s.Environment {
				if !reads[k] {
					t.Errorf("compose %s: sets %s, which the NATS configuration does not read", name, k)
				}
			}
			for v := range reads {
				if _, ok := s.Environment[v]; !ok {
					t.Errorf("compose %s: the NATS configuration reads $%s; it is not set", name, v)
				}
			}
			if !slices.Contains(s.Ports, "8222:8222") && name == "nats-1" {
				t.Errorf("compose %s: the monitoring port 8222 is not published", name)
			}
		case strings.Contains(s.Image, "tqtriage:"):
			command := s.Command[0]
			a := acceptedVars(t, command)
			for k := range s.Environment {
				if !a.vars[k] {
					t.Errorf("compose %s: sets %s, which tqtriage %s does not read", name, k, command)
				}
			}
			if r := role[command]; r != "" {
				if u := s.Environment["NATS_URL"]; !strings.HasPrefix(u, "nats://"+r+":") || strings.Count(u, "nats://"+r+":") != 3 {
					t.Errorf("compose %s: NATS_URL %q: want the %s user on each of the three nodes", name, u, r)
				}
				if s.Environment["NATS_REPLICAS"] != "3" {
					t.Errorf("compose %s: NATS_REPLICAS %q, want 3", name, s.Environment["NATS_REPLICAS"])
				}
			}
			if command == "worker" {
				workers++
			}
		}
	}
	if nodes != 3 || workers != 1 || f.Services["writeback"].Image == "" || f.Services["setup"].Image == "" || f.Services["sim"].Image == "" {
		t.Errorf("compose: want three NATS nodes, a worker service (scaled with --scale), writeback, setup and sim")
	}
}
