package integration

// The container tests' world: the project's own images, built from its
// Dockerfiles (deployments/) out of binaries built from this tree, on a
// private Docker network: a three-node NATS JetStream cluster, the
// simulators, three workers and a write-back, each connecting as its role
// (deployments/nats/permissions.conf). docs/deploy.md describes the same
// topology for compose and Kubernetes.

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/moby/moby/client"
	"github.com/rs/zerolog"
	"github.com/testcontainers/testcontainers-go"
	tclog "github.com/testcontainers/testcontainers-go/log"
	"github.com/testcontainers/testcontainers-go/network"
	"github.com/testcontainers/testcontainers-go/wait"

	"github.com/tqtriage/tqtriage/bus"
	"github.com/tqtriage/tqtriage/internal/retry"
	"github.com/tqtriage/tqtriage/pipeline"
	"github.com/tqtriage/tqtriage/threatq"
	"github.com/tqtriage/tqtriage/threatq/threatqsim"
	"github.com/tqtriage/tqtriage/triage"
	"github.com/tqtriage/tqtriage/triage/triagesim"
)

// requireDocker returns a healthy Docker provider. Without one the
// container tests skip, saying why; with CI=true they fail instead: CI
// must run them.
func requireDocker(t *testing.T) *testcontainers.DockerProvider {
	t.Helper()
	// Ryuk, testcontainers' reaper, is an image to pull, and nothing can
	// be pulled here; the tests remove what they start themselves.
	if os.Getenv("TESTCONTAINERS_RYUK_DISABLED") == "" {
		os.Setenv("TESTCONTAINERS_RYUK_DISABLED", "true")
	}
	// The published ports are on this machine's loopback. Left alone,
	// testcontainers takes a process inside a container (as a CI runner
	// may be) for one beside the daemon and sends it to the default
	// gateway's address instead.
	if os.Getenv("TESTCONTAINERS_HOST_OVERRIDE") == "" {
		os.Setenv("TESTCONTAINERS_HOST_OVERRIDE", "127.0.0.1")
	}
	fail := t.Skipf
	if os.Getenv("CI") == "true" {
		fail = t.Fatalf
	}
	var p *testcontainers.DockerProvider
	err := func() (err error) {
		defer func() { // testcontainers panics when it finds no Docker at all
			if r := recover(); r != nil {
				err = fmt.Errorf("%v", r)
			}
		}()
		if p, err = testcontainers.NewDockerProvider(testcontainers.WithLogger(tclog.TestLogger(t))); err != nil {
			return err
		}
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		return p.Health(ctx)
	}()
	if err != nil {
		fail("the container tests need Docker, which is not reachable (%v); with CI=true this is a failure, elsewhere a skip", err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

// quiet is a testcontainers logger that says nothing.
type quiet struct{}

func (quiet) Printf(string, ...any) {}

// repoRoot is the module's root: the build context of the images.
func repoRoot(t *testing.T) string {
	t.Helper()
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, "deployments", "tqtriage", "Dockerfile")); err != nil {
		t.Fatalf("not the repository's root: %v", err)
	}
	return root
}

// images builds the tqtriage and NATS images from this tree, as `make
// images` does, under tags of this test run's own (removed at its end),
// so that a test never runs a stale image or another run's.
type images struct{ app, nats string }

func buildImages(t *testing.T, ctx context.Context, p *testcontainers.DockerProvider) images {
	t.Helper()
	root := repoRoot(t)
	tag := "ct-" + randomHex(4)
	// Under bin/, which .dockerignore lets into the build context.
	rel := filepath.Join("bin", "containertest", tag)
	dir := filepath.Join(root, rel)
	t.Cleanup(func() { os.RemoveAll(dir) })
	bi := "github.com/tqtriage/tqtriage/internal/buildinfo"
	for _, b := range [][]string{
		{"-ldflags", "-s -w -X " + bi + ".version=containertest-" + tag, "-o", filepath.Join(dir, "tqtriage"), "./cmd/tqtriage"},
		{"-ldflags", "-s -w", "-o", filepath.Join(dir, "nats-server"), "github.com/nats-io/nats-server/v2"},
	} {
		cmd := exec.CommandContext(ctx, "go", append([]string{"build", "-trimpath"}, b...)...)
		cmd.Dir = root
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("go build %v: %v\n%s", b, err, out)
		}
	}
	build := func(repo, dockerfile string) string {
		binArg := rel
		name, err := p.BuildImage(ctx, &testcontainers.ContainerRequest{FromDockerfile: testcontainers.FromDockerfile{
			Context: root, Dockerfile: dockerfile, Repo: repo, Tag: tag,
			BuildArgs: map[string]*string{"BIN": &binArg},
		}})
		if err != nil {
			t.Fatalf("building %s from %s: %v", repo, dockerfile, err)
		}
		t.Cleanup(func() {
			_, _ = p.Client().ImageRemove(context.Background(), name, client.ImageRemoveOptions{Force: true, PruneChildren: true})
		})
		return name
	}
	return images{
		app:  build("tqtriage", "deployments/tqtriage/Dockerfile"),
		nats: build("tqtriage-nats", "deployments/nats/Dockerfile"),
	}
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// The NATS users' passwords of this test (they start with a letter: the
// NATS configuration reads a bare number as a number).
func ctPassword(role string) string { return "ct-" + role + "-secret" }

// natsURL is the URL role connects with from inside the network: every
// node, each with the role's user.
func natsURL(role string) string {
	var urls []string
	for i := 1; i <= 3; i++ {
		urls = append(urls, fmt.Sprintf("nats://%s:%s@nats-%d:4222", role, ctPassword(role), i))
	}
	return strings.Join(urls, ",")
}

// cluster is the running system.
type cluster struct {
	t        *testing.T
	p        *testcontainers.DockerProvider
	img      images
	net      *testcontainers.DockerNetwork
	nats     [3]*testcontainers.DockerContainer
	sim      *testcontainers.DockerContainer
	workers  []*testcontainers.DockerContainer
	writer   *testcontainers.DockerContainer
	triage   *triage.Client  // the Triage simulator, from the host
	threatq  *threatq.Client // the ThreatQ simulator, from the host
	qURL     string          // the ThreatQ simulator's address on the host
	b        *bus.Bus        // a viewer's connection from the host
	settings clusterSettings
}

type clusterSettings struct {
	sample        int           // indicators in the simulator's collection
	cap           int           // TRIAGE_OBJECTS_PER_RUN
	workers       int           // worker containers
	concurrency   int           // WORKER_CONCURRENCY
	triageLatency time.Duration // the Triage simulator's answer time
}

// run starts a container of image on the network and waits for ready.
func (c *cluster) run(ctx context.Context, image string, aliases []string, env map[string]string, ready wait.Strategy, cmd ...string) *testcontainers.DockerContainer {
	c.t.Helper()
	ctr, err := c.start(ctx, image, aliases, env, ready, cmd...)
	if err != nil {
		c.t.Fatal(err)
	}
	return ctr
}

// start is run for a goroutine of the test's: it returns the error.
func (c *cluster) start(ctx context.Context, image string, aliases []string, env map[string]string, ready wait.Strategy, cmd ...string) (*testcontainers.DockerContainer, error) {
	opts := []testcontainers.ContainerCustomizer{
		network.WithNetwork(aliases, c.net),
		testcontainers.WithCmd(cmd...),
		testcontainers.WithEnv(env),
		// A container's life (created, started, ready, stopped) is not
		// news: the test says what matters.
		testcontainers.WithLogger(quiet{}),
	}
	if ready != nil {
		opts = append(opts, testcontainers.WithWaitStrategy(ready))
	}
	if len(aliases) > 0 && strings.HasPrefix(aliases[0], "nats-") {
		opts = append(opts, testcontainers.WithExposedPorts("4222/tcp", "8222/tcp"))
	}
	if len(aliases) > 0 && aliases[0] == "sim" {
		opts = append(opts, testcontainers.WithExposedPorts("8081/tcp", "8082/tcp"))
	}
	ctr, err := testcontainers.Run(ctx, image, opts...)
	testcontainers.CleanupContainer(c.t, ctr)
	if err != nil {
		return nil, fmt.Errorf("container %v (%s): %w%s", aliases, strings.Join(cmd, " "), err, logsOf(ctr))
	}
	return ctr, nil
}

// once runs a one-shot tqtriage command to its end and returns its exit
// code and output.
func (c *cluster) once(ctx context.Context, env map[string]string, cmd ...string) (int, string) {
	c.t.Helper()
	ctr := c.run(ctx, c.img.app, nil, env, wait.ForExit().WithExitTimeout(3*time.Minute), cmd...)
	st, err := ctr.State(ctx)
	if err != nil {
		c.t.Fatal(err)
	}
	out := logsOf(ctr)
	_ = ctr.Terminate(ctx)
	return st.ExitCode, out
}

func logsOf(ctr *testcontainers.DockerContainer) string {
	if ctr == nil {
		return ""
	}
	r, err := ctr.Logs(context.Background())
	if err != nil {
		return ""
	}
	defer r.Close()
	b, _ := io.ReadAll(r)
	return "\n" + string(b)
}

func (c *cluster) natsEnv(i int) map[string]string {
	env := map[string]string{
		"NATS_SERVER_NAME":  fmt.Sprintf("nats-%d", i),
		"NATS_CLUSTER_NAME": "tqtriage",
		"NATS_ROUTES":       "[nats://nats-1:6222, nats://nats-2:6222, nats://nats-3:6222]",
	}
	for _, r := range []string{"publisher", "worker", "writeback", "viewer", "operator"} {
		env["TQTRIAGE_"+strings.ToUpper(r)+"_PASSWORD"] = ctPassword(r)
	}
	return env
}

func (c *cluster) simEnv() map[string]string {
	return map[string]string{
		"TRIAGE_BASE_URL": "http://sim:8081", "TRIAGE_CLIENT_ID": triagesim.DefaultClientID, "TRIAGE_CLIENT_SECRET": triagesim.DefaultClientSecret,
		"THREATQ_BASE_URL": "http://sim:8082", "THREATQ_CLIENT_ID": threatqsim.DefaultClientID, "THREATQ_CLIENT_SECRET": threatqsim.DefaultClientSecret,
	}
}

// roleEnv is what a tqtriage container acting as role gets: its NATS
// user, the cluster's replicas, and the simulators' variables its command
// reads.
func (c *cluster) roleEnv(role string, keep ...string) map[string]string {
	env := map[string]string{"NATS_URL": natsURL(role), "NATS_REPLICAS": "3", "LOG_LEVEL": "info"}
	sim := c.simEnv()
	for _, prefix := range keep {
		for k, v := range sim {
			if strings.HasPrefix(k, prefix) {
				env[k] = v
			}
		}
	}
	return env
}

func startCluster(t *testing.T, s clusterSettings) *cluster {
	t.Helper()
	ctx := context.Background()
	p := requireDocker(t)
	began := time.Now()
	c := &cluster{t: t, p: p, settings: s}
	c.img = buildImages(t, ctx, p)
	built := time.Since(began)
	var err error
	if c.net, err = network.New(ctx); err != nil {
		t.Fatal(err)
	}
	testcontainers.CleanupNetwork(t, c.net)

	var wg sync.WaitGroup
	for i := range c.nats {
		wg.Go(func() {
			var err error
			c.nats[i], err = c.start(ctx, c.img.nats, []string{fmt.Sprintf("nats-%d", i+1)}, c.natsEnv(i+1),
				wait.ForLog("Server is ready").WithStartupTimeout(time.Minute), "--config", "/etc/nats/cluster.conf")
			if err != nil {
				t.Error(err)
			}
		})
	}
	wg.Go(func() {
		var err error
		c.sim, err = c.start(ctx, c.img.app, []string{"sim"}, map[string]string{"SIM_TRIAGE_LATENCY": s.triageLatency.String(), "LOG_LEVEL": "warn"},
			wait.ForLog("sample collection"), "sim", "--triage-addr", "0.0.0.0:8081", "--threatq-addr", "0.0.0.0:8082", "--sample", strconv.Itoa(s.sample))
		if err != nil {
			t.Error(err)
		}
	})
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	// The topology, as the operator, once the cluster has a leader.
	env := c.roleEnv("operator")
	env["TQTRIAGE_SETUP_WAIT"] = "2m"
	if code, out := c.once(ctx, env, "setup"); code != 0 || !strings.Contains(out, "(replicas 3)") {
		t.Fatalf("setup: exit %d%s", code, out)
	}
	c.workers = make([]*testcontainers.DockerContainer, s.workers)
	for i := range s.workers {
		env := c.roleEnv("worker", "TRIAGE_")
		env["TRIAGE_OBJECTS_PER_RUN"] = strconv.Itoa(s.cap)
		env["WORKER_CONCURRENCY"] = strconv.Itoa(s.concurrency)
		wg.Go(func() {
			var err error
			c.workers[i], err = c.start(ctx, c.img.app, []string{fmt.Sprintf("worker-%d", i+1)}, env, wait.ForLog(`"message":"worker started"`), "worker")
			if err != nil {
				t.Error(err)
			}
		})
	}
	wg.Go(func() {
		var err error
		c.writer, err = c.start(ctx, c.img.app, []string{"writeback"}, c.roleEnv("writeback", "THREATQ_"), wait.ForLog(`"message":"write-back started"`), "writeback")
		if err != nil {
			t.Error(err)
		}
	})
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}

	// From the host: the simulators and a viewer's NATS connection, all
	// through published ports.
	host, err := c.sim.Host(ctx)
	if err != nil {
		t.Fatal(err)
	}
	tPort, _ := c.sim.MappedPort(ctx, "8081/tcp")
	qPort, _ := c.sim.MappedPort(ctx, "8082/tcp")
	c.qURL = fmt.Sprintf("http://%s:%s", host, qPort.Port())
	if c.triage, err = pipeline.NewTriage(ctx, pipeline.TriageSettings{BaseURL: fmt.Sprintf("http://%s:%s", host, tPort.Port()), ClientID: triagesim.DefaultClientID, ClientSecret: triagesim.DefaultClientSecret}); err != nil {
		t.Fatal(err)
	}
	if c.threatq, err = pipeline.NewThreatQ(ctx, pipeline.ThreatQSettings{BaseURL: c.qURL, ClientID: threatqsim.DefaultClientID, ClientSecret: threatqsim.DefaultClientSecret}, retry.Policy{MaxAttempts: 5}); err != nil {
		t.Fatal(err)
	}
	var urls []string
	for _, n := range c.nats {
		port, err := n.MappedPort(ctx, "4222/tcp")
		if err != nil {
			t.Fatal(err)
		}
		urls = append(urls, fmt.Sprintf("nats://viewer:%s@%s:%s", ctPassword("viewer"), host, port.Port()))
	}
	log := zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel)
	if c.b, err = bus.Connect(ctx, bus.Config{URL: strings.Join(urls, ","), Name: "tqtriage container test", Role: bus.RoleViewer, Replicas: 3}, log); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.b.Close)
	// On a failure, what the services had to say.
	t.Cleanup(func() {
		if !t.Failed() {
			return
		}
		named := map[string]*testcontainers.DockerContainer{"writeback": c.writer}
		for i, w := range c.workers {
			named[fmt.Sprintf("worker %d", i+1)] = w
		}
		for i, n := range c.nats {
			named[fmt.Sprintf("nats-%d", i+1)] = n
		}
		for name, ctr := range named {
			var lines []string
			for _, l := range strings.Split(logsOf(ctr), "\n") {
				if strings.Contains(l, `"level":"warn"`) || strings.Contains(l, `"level":"error"`) || strings.Contains(l, "[ERR]") || strings.Contains(l, "[WRN]") {
					lines = append(lines, l)
				}
			}
			if len(lines) > 40 {
				lines = append(lines[:20], append([]string{"…"}, lines[len(lines)-20:]...)...)
			}
			t.Logf("%s: %d warnings and errors\n%s", name, len(lines), strings.Join(lines, "\n"))
		}
	})
	t.Logf("cluster up in %v (images built in %v): 3 NATS nodes, %d workers, write-back, simulators with %d indicators; images %s, %s",
		time.Since(began).Round(time.Millisecond), built.Round(time.Millisecond), s.workers, s.sample, c.img.app, c.img.nats)
	return c
}

// kill sends SIGKILL: no hand-back, no goodbye.
func (c *cluster) kill(ctx context.Context, ctr *testcontainers.DockerContainer) {
	c.t.Helper()
	if _, err := c.p.Client().ContainerKill(ctx, ctr.GetContainerID(), client.ContainerKillOptions{Signal: "KILL"}); err != nil {
		c.t.Fatalf("kill: %v", err)
	}
}

// jetStreamHealthy waits until node i answers its JetStream health check.
func (c *cluster) jetStreamHealthy(ctx context.Context, i int, within time.Duration) {
	c.t.Helper()
	deadline := time.Now().Add(within)
	for {
		host, _ := c.nats[i].Host(ctx)
		port, err := c.nats[i].MappedPort(ctx, "8222/tcp")
		if err == nil {
			resp, err := http.Get(fmt.Sprintf("http://%s:%s/healthz", host, port.Port()))
			if err == nil {
				resp.Body.Close()
				if resp.StatusCode == http.StatusOK {
					return
				}
			}
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("nats-%d: JetStream not healthy within %v", i+1, within)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// leaderOf returns the index of the node leading stream, as the first
// node that answers its monitoring endpoint reports it.
func (c *cluster) leaderOf(ctx context.Context, stream string) int {
	c.t.Helper()
	for _, n := range c.nats {
		host, _ := n.Host(ctx)
		port, err := n.MappedPort(ctx, "8222/tcp")
		if err != nil {
			continue
		}
		resp, err := http.Get(fmt.Sprintf("http://%s:%s/jsz?streams=true", host, port.Port()))
		if err != nil {
			continue
		}
		var jsz struct {
			Accounts []struct {
				Streams []struct {
					Name    string `json:"name"`
					Cluster struct {
						Leader string `json:"leader"`
					} `json:"cluster"`
				} `json:"stream_detail"`
			} `json:"account_details"`
		}
		err = json.NewDecoder(resp.Body).Decode(&jsz)
		resp.Body.Close()
		if err != nil {
			continue
		}
		for _, a := range jsz.Accounts {
			for _, s := range a.Streams {
				if i, err := strconv.Atoi(strings.TrimPrefix(s.Cluster.Leader, "nats-")); err == nil && s.Name == stream && i >= 1 && i <= len(c.nats) {
					return i - 1
				}
			}
		}
	}
	c.t.Fatalf("no node names the leader of %s", stream)
	return -1
}

// simOutage switches the ThreatQ simulator's outage (tqtriage sim's knob).
func (c *cluster) simOutage(down bool) {
	c.t.Helper()
	path := "/_sim/threatq/up"
	if down {
		path = "/_sim/threatq/down"
	}
	resp, err := http.Post(c.qURL+path, "", bytes.NewReader(nil))
	if err != nil {
		c.t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNoContent {
		c.t.Fatalf("POST %s: %s", path, resp.Status)
	}
}
