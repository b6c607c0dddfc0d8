package main

// Black-box tests of the tqtriage binary: it is built once, then driven the
// way docs/cli.md tells an operator to drive it (subcommands, flags,
// environment variables, exit codes, standard output and error), against
// the simulators served by `tqtriage sim` and a JetStream server, either
// the one `run` embeds or one this test process serves.

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/tqtriage/tqtriage/bus/bustest"
	"github.com/tqtriage/tqtriage/mapping"
	"github.com/tqtriage/tqtriage/threatq"
	"github.com/tqtriage/tqtriage/threatq/threatqsim"
	"github.com/tqtriage/tqtriage/triage"
	"github.com/tqtriage/tqtriage/triage/triagesim"
)

// bin is the binary under test, built by TestMain.
var bin string

func TestMain(m *testing.M) { os.Exit(testMain(m)) }

func testMain(m *testing.M) int {
	dir, err := os.MkdirTemp("", "tqtriage-cli-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	bin = filepath.Join(dir, "tqtriage")
	// go test puts the go command of its own GOROOT first on PATH.
	build := exec.Command("go", "build", "-o", bin, ".")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "building tqtriage: %v\n%s", err, out)
		return 1
	}
	return m.Run()
}

// testSecret is a secret of the tests' own; like the simulators'
// credentials, it must never appear in anything the binary prints.
const testSecret = "cli-test-s3cret-7Qx9"

// secrets are the strings no output of the binary may contain (but the
// simulator's own announcement of its credentials, which are public test
// constants).
var secrets = []string{triagesim.DefaultClientSecret, threatqsim.DefaultClientSecret, testSecret}

func checkNoSecrets(t *testing.T, what, out string) {
	t.Helper()
	for _, s := range secrets {
		if strings.Contains(out, s) {
			t.Errorf("%s: the output holds the secret %q:\n%s", what, s, out)
		}
	}
}

// vars is a process environment. Every process starts from minimal():
// nothing of the test's own environment (NATS_URL, TRIAGE_…) leaks in.
type vars map[string]string

func minimal() vars {
	return vars{"PATH": os.Getenv("PATH"), "HOME": os.Getenv("HOME"), "TMPDIR": os.TempDir()}
}

// with returns a copy with the pairs key, value, … set.
func (v vars) with(kv ...string) vars {
	out := maps.Clone(v)
	for i := 0; i+1 < len(kv); i += 2 {
		out[kv[i]] = kv[i+1]
	}
	return out
}

// without returns a copy without the keys.
func (v vars) without(keys ...string) vars {
	out := maps.Clone(v)
	for _, k := range keys {
		delete(out, k)
	}
	return out
}

func (v vars) list() []string {
	var out []string
	for k, val := range v {
		out = append(out, k+"="+val)
	}
	slices.Sort(out)
	return out
}

// result is what one finished command came to.
type result struct {
	args           []string
	stdout, stderr string
	code           int
	took           time.Duration
}

func (r result) String() string {
	return fmt.Sprintf("tqtriage %s: exit %d after %v\n--- stdout:\n%s--- stderr:\n%s", strings.Join(r.args, " "), r.code, r.took.Round(time.Millisecond), r.stdout, tail(r.stderr, 40))
}

func tail(s string, lines int) string {
	l := strings.SplitAfter(s, "\n")
	if len(l) > lines {
		l = append([]string{"…\n"}, l[len(l)-lines:]...)
	}
	return strings.Join(l, "")
}

// tq runs the binary to its end (at most a minute) with env, stdin (none
// when empty) and args.
func tq(t *testing.T, env vars, stdin string, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = env.list()
	cmd.Dir = t.TempDir()
	cmd.WaitDelay = 5 * time.Second
	if stdin != "" {
		cmd.Stdin = strings.NewReader(stdin)
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	start := time.Now()
	err := cmd.Run()
	r := result{args: args, stdout: stdout.String(), stderr: stderr.String(), took: time.Since(start)}
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		r.code = ee.ExitCode()
	case err != nil:
		t.Fatalf("tqtriage %s: %v", strings.Join(args, " "), err)
	}
	if ctx.Err() != nil {
		t.Fatalf("did not end within a minute: %v", r)
	}
	checkNoSecrets(t, "tqtriage "+strings.Join(args, " "), r.stdout+r.stderr)
	return r
}

// mustCode fails the test unless r ended with code.
func mustCode(t *testing.T, r result, code int) {
	t.Helper()
	if r.code != code {
		t.Fatalf("want exit %d, got %v", code, r)
	}
}

// syncBuffer collects the output of a process running in the background.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// proc is the binary running in the background (worker, writeback, sim).
type proc struct {
	args           []string
	cmd            *exec.Cmd
	stdout, stderr syncBuffer
	done           chan struct{}
	code           int
}

// start runs the binary in the background; the test's end kills it if it
// was not stopped before. checkSecrets is false only for `sim`, which
// announces its own (public) credentials.
func start(t *testing.T, env vars, checkSecrets bool, args ...string) *proc {
	t.Helper()
	p := &proc{args: args, done: make(chan struct{})}
	p.cmd = exec.Command(bin, args...)
	p.cmd.Env = env.list()
	p.cmd.Dir = t.TempDir()
	p.cmd.Stdout, p.cmd.Stderr = &p.stdout, &p.stderr
	p.cmd.WaitDelay = 5 * time.Second
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start tqtriage %s: %v", strings.Join(args, " "), err)
	}
	go func() {
		err := p.cmd.Wait()
		p.code = 0
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			p.code = ee.ExitCode()
		} else if err != nil {
			p.code = -1
		}
		close(p.done)
	}()
	t.Cleanup(func() {
		select {
		case <-p.done:
		default:
			_ = p.cmd.Process.Kill()
			<-p.done
		}
		if checkSecrets {
			checkNoSecrets(t, "tqtriage "+strings.Join(args, " "), p.stdout.String()+p.stderr.String())
		}
		if t.Failed() {
			t.Logf("tqtriage %s (exit %d)\n--- stdout:\n%s--- stderr:\n%s", strings.Join(args, " "), p.code, p.stdout.String(), tail(p.stderr.String(), 30))
		}
	})
	return p
}

// stop sends SIGTERM and returns the exit code; the process must be gone
// within the time given.
func (p *proc) stop(t *testing.T, within time.Duration) int {
	t.Helper()
	select {
	case <-p.done:
		t.Errorf("tqtriage %s ended before it was stopped, exit %d:\n%s", strings.Join(p.args, " "), p.code, tail(p.stderr.String(), 20))
		return p.code
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
		return p.code
	case <-time.After(within):
		t.Errorf("tqtriage %s still running %v after SIGTERM", strings.Join(p.args, " "), within)
		_ = p.cmd.Process.Kill()
		<-p.done
		return -1
	}
}

// waitFor polls the process's standard error until re matches, and
// returns the match.
func (p *proc) waitFor(t *testing.T, re *regexp.Regexp) []string {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		if m := re.FindStringSubmatch(p.stderr.String()); m != nil {
			return m
		}
		select {
		case <-p.done:
			t.Fatalf("tqtriage %s ended (exit %d) before its log showed %s:\n%s", strings.Join(p.args, " "), p.code, re, p.stderr.String())
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("tqtriage %s: no %s in its log after 20s:\n%s", strings.Join(p.args, " "), re, p.stderr.String())
		}
	}
}

// sim is a running `tqtriage sim`.
type sim struct {
	triageURL, threatqURL string
	collection            string // the sample collection's hash
}

var (
	simTriageLine  = regexp.MustCompile(`(?m)^Triage simulator\s+(http://127\.0\.0\.1:\d+)\s`)
	simThreatQLine = regexp.MustCompile(`(?m)^ThreatQ simulator\s+(http://127\.0\.0\.1:\d+)\s`)
	simSampleLine  = regexp.MustCompile(`(?m)^sample collection\s+([0-9a-f]+) \((\d+) indicators\)`)
)

// startSim serves the simulators on free ports with a sample collection
// of sample indicators (0: none), and stops them at the test's end: they
// must exit 0 on SIGTERM.
func startSim(t *testing.T, sample int, flags ...string) *sim {
	t.Helper()
	args := append([]string{"sim", "--triage-addr", "127.0.0.1:0", "--threatq-addr", "127.0.0.1:0", "--sample", strconv.Itoa(sample)}, flags...)
	p := start(t, minimal(), false, args...)
	t.Cleanup(func() {
		if code := p.stop(t, 5*time.Second); code != 0 {
			t.Errorf("sim exited %d on SIGTERM", code)
		}
	})
	deadline := time.Now().Add(20 * time.Second)
	for {
		out := p.stdout.String()
		tm, qm, sm := simTriageLine.FindStringSubmatch(out), simThreatQLine.FindStringSubmatch(out), simSampleLine.FindStringSubmatch(out)
		if tm != nil && qm != nil && (sample == 0 || sm != nil) {
			s := &sim{triageURL: tm[1], threatqURL: qm[1]}
			if sample > 0 {
				if sm[2] != strconv.Itoa(sample) {
					t.Fatalf("sim announced %s sample indicators, want %d", sm[2], sample)
				}
				s.collection = sm[1]
			}
			return s
		}
		select {
		case <-p.done:
			t.Fatalf("sim ended (exit %d):\n%s%s", p.code, out, p.stderr.String())
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("sim did not announce its addresses in 20s:\n%s", out)
		}
	}
}

// env adds the settings that reach both simulators.
func (s *sim) env(v vars) vars {
	return v.with(
		"TRIAGE_BASE_URL", s.triageURL,
		"TRIAGE_CLIENT_ID", triagesim.DefaultClientID,
		"TRIAGE_CLIENT_SECRET", triagesim.DefaultClientSecret,
		"THREATQ_BASE_URL", s.threatqURL,
		"THREATQ_CLIENT_ID", threatqsim.DefaultClientID,
		"THREATQ_CLIENT_SECRET", threatqsim.DefaultClientSecret,
	)
}

// threatq returns a client of the ThreatQ simulator, to look at what the
// binary did from the outside.
func (s *sim) threatq(t *testing.T) *threatq.Client {
	t.Helper()
	c, err := threatq.New(context.Background(), threatq.Config{BaseURL: s.threatqURL, ClientID: threatqsim.DefaultClientID, ClientSecret: threatqsim.DefaultClientSecret})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// indicators returns the sample collection as ThreatQ serves it.
func (s *sim) indicators(t *testing.T) []threatq.Indicator {
	t.Helper()
	var out []threatq.Indicator
	for ind, err := range s.threatq(t).CollectionIndicators(context.Background(), s.collection, 100) {
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, ind)
	}
	return out
}

// triageLevels counts Triage's indicators of source ThreatQ by threat level.
func (s *sim) triageLevels(t *testing.T) map[string]int {
	t.Helper()
	c, err := triage.New(context.Background(), triage.Config{BaseURL: s.triageURL, ClientID: triagesim.DefaultClientID, ClientSecret: triagesim.DefaultClientSecret})
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]int{}
	for ind, err := range c.ListIndicators(context.Background(), triage.ListOptions{ThreatSource: "ThreatQ"}) {
		if err != nil {
			t.Fatal(err)
		}
		out[ind.ThreatLevel]++
	}
	return out
}

// attribute returns the value of a ThreatQ indicator's attribute ("" when
// it has none of that name).
func (s *sim) attribute(t *testing.T, id int64, name string) string {
	t.Helper()
	attrs, err := s.threatq(t).Attributes(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range attrs {
		if a.Name == name {
			return a.Value
		}
	}
	return ""
}

// eventually polls cond for up to 20s.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("not after 20s: %s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// startNATS serves JetStream in the test process, for the subcommands
// that need an external server, and returns its URL.
func startNATS(t *testing.T) string {
	t.Helper()
	return bustest.Server(t).ClientURL()
}

var (
	runIDLine  = regexp.MustCompile(`^(\d{8}T\d{6}-[0-9a-f]{8})\n`)
	statusLine = regexp.MustCompile(`(?m)^  (created|exists|updated|not_found|invalid|skipped|failed|would_create|would_update|unchanged)\s+(\d+)\s`)
)

// runID is the run id a publish or run prints on its first line.
func runID(t *testing.T, r result) string {
	t.Helper()
	m := runIDLine.FindStringSubmatch(r.stdout)
	if m == nil {
		t.Fatalf("no run id on the first line: %v", r)
	}
	return m[1]
}

// counts reads the count of each status off a summary.
func counts(out string) map[string]int {
	c := map[string]int{}
	for _, m := range statusLine.FindAllStringSubmatch(out, -1) {
		n, _ := strconv.Atoi(m[2])
		c[m[1]] = n
	}
	return c
}

func wantCounts(t *testing.T, r result, want map[string]int) {
	t.Helper()
	if got := counts(r.stdout); !maps.Equal(got, want) {
		t.Fatalf("summary counts %v, want %v: %v", got, want, r)
	}
}

// The sample collection of 40 indicators: one invalid (a 30-digit MD5, the
// 18th), 39 valid, the first 8 of which Triage holds already.
const (
	sampleSize    = 40
	sampleInvalid = 1
	sampleValid   = sampleSize - sampleInvalid
	sampleExists  = 8 // sample.InTriage, all in the collection
)

// pick returns n valid sample indicators that Triage does not hold: the
// collection in its order, past the first eight (seeded in Triage); n is
// at most 9, before the invalid 18th.
func pick(t *testing.T, s *sim, n int) []threatq.Indicator {
	t.Helper()
	all := s.indicators(t)
	if len(all) != sampleSize {
		t.Fatalf("the sample collection has %d indicators, want %d", len(all), sampleSize)
	}
	return all[8 : 8+n]
}

func TestRunCreatesThenFindsEverythingExisting(t *testing.T) {
	t.Parallel()
	s := startSim(t, sampleSize)
	env := s.env(minimal()).with("TQTRIAGE_DATA_DIR", t.TempDir())

	r := tq(t, env, "", "run", "--action", "create", "--collection", s.collection)
	mustCode(t, r, 0)
	id := runID(t, r)
	if !strings.Contains(r.stdout, "run "+id+": create from collection "+s.collection) {
		t.Errorf("no summary header naming the run and its source: %v", r)
	}
	wantCounts(t, r, map[string]int{"created": sampleValid - sampleExists, "exists": sampleExists, "invalid": sampleInvalid})
	if !strings.Contains(r.stdout, "invalid, for example:") || !strings.Contains(r.stdout, "d41d8cd98f00b204e9800998ecf842") {
		t.Errorf("the summary does not show the invalid indicator: %v", r)
	}

	// The same collection again, on the same store: every valid one is
	// in Triage now.
	again := tq(t, env, "", "run", "--action", "create", "--collection", s.collection)
	mustCode(t, again, 0)
	if runID(t, again) == id {
		t.Errorf("the second run has the first one's id %s", id)
	}
	wantCounts(t, again, map[string]int{"exists": sampleValid, "invalid": sampleInvalid})

	if got := s.triageLevels(t); got["Malicious"] != sampleValid-sampleExists {
		t.Errorf("Triage holds %v indicators of source ThreatQ by level, want %d Malicious", got, sampleValid-sampleExists)
	}
}

func TestRunUpdateSetsTheThreatLevelOfTheEnvironmentAndAFlagWins(t *testing.T) {
	t.Parallel()
	s := startSim(t, sampleSize)
	env := s.env(minimal()).with("TQTRIAGE_DATA_DIR", t.TempDir())
	mustCode(t, tq(t, env, "", "run", "--action", "create", "--collection", s.collection), 0)

	r := tq(t, env.with("TRIAGE_THREAT_LEVEL", "Benign"), "", "run", "--action", "update", "--collection", s.collection)
	mustCode(t, r, 0)
	runID(t, r)
	if !strings.Contains(r.stdout, ": update from collection "+s.collection) {
		t.Errorf("the summary header does not name the update: %v", r)
	}
	wantCounts(t, r, map[string]int{"updated": sampleValid, "invalid": sampleInvalid})
	if got := s.triageLevels(t); got["Benign"] != sampleValid {
		t.Errorf("Triage holds %v indicators of source ThreatQ by level, want %d Benign", got, sampleValid)
	}
	ind := pick(t, s, 1)[0]
	if got := s.attribute(t, ind.ID, mapping.AttrThreatLevel); got != "Benign" {
		t.Errorf("ThreatQ indicator %d has %s %q, want Benign", ind.ID, mapping.AttrThreatLevel, got)
	}

	// Bad values in the environment do not matter when flags override
	// them: a flag wins.
	r = tq(t, env.with("TRIAGE_THREAT_LEVEL", "junk", "TRIAGE_VERIFY_SSL", "junk", "TRIAGE_OBJECTS_PER_RUN", "lots"), "",
		"run", "--action", "update", "--collection", s.collection,
		"--triage-threat-level", "Suspicious", "--triage-verify-ssl=true", "--triage-objects-per-run", "100")
	mustCode(t, r, 0)
	wantCounts(t, r, map[string]int{"updated": sampleValid, "invalid": sampleInvalid})
	if got := s.triageLevels(t); got["Suspicious"] != sampleValid {
		t.Errorf("Triage holds %v indicators of source ThreatQ by level, want %d Suspicious", got, sampleValid)
	}
	if got := s.attribute(t, ind.ID, mapping.AttrThreatLevel); got != "Suspicious" {
		t.Errorf("ThreatQ indicator %d has %s %q, want Suspicious", ind.ID, mapping.AttrThreatLevel, got)
	}
}

func TestRunHonoursObjectsPerRunThenUpsertCreatesTheRest(t *testing.T) {
	t.Parallel()
	s := startSim(t, sampleSize)
	env := s.env(minimal()).with("TQTRIAGE_DATA_DIR", t.TempDir())

	r := tq(t, env.with("TRIAGE_OBJECTS_PER_RUN", "10"), "", "run", "--action", "create", "--collection", s.collection)
	mustCode(t, r, 0)
	c := counts(r.stdout)
	if c["created"]+c["exists"] != 10 || c["skipped"] != sampleValid-10 || c["invalid"] != sampleInvalid {
		t.Fatalf("with TRIAGE_OBJECTS_PER_RUN=10: counts %v, want 10 created or exists and %d skipped: %v", c, sampleValid-10, r)
	}
	if !strings.Contains(r.stdout, "limit of 10 objects per run") {
		t.Errorf("the summary does not say why indicators were skipped: %v", r)
	}

	r = tq(t, env, "", "run", "--action", "update", "--upsert", "--collection", s.collection)
	mustCode(t, r, 0)
	if !strings.Contains(r.stdout, ", upsert") {
		t.Errorf("the summary header does not mention the upsert: %v", r)
	}
	// Triage now holds the seeded indicators and those the capped run
	// created; the upsert updates those and creates the rest.
	inTriage := sampleExists + c["created"]
	wantCounts(t, r, map[string]int{"updated": inTriage, "created": sampleValid - inTriage, "invalid": sampleInvalid})
}

// replicas are a worker and a write-back replica on the test's NATS server.
type replicas struct {
	worker, writeback *proc
	healthAddr        string // the worker's /healthz, /readyz, /metrics
}

var servingLine = regexp.MustCompile(`"addr":"(127\.0\.0\.1:\d+)".*serving /metrics`)

// startReplicas starts a worker (serving HTTP on a free port) and a
// write-back replica (serving none) with env, and waits for both to be
// consuming.
func startReplicas(t *testing.T, env vars) replicas {
	t.Helper()
	r := replicas{
		worker:    start(t, env.with("HTTP_ADDR", "127.0.0.1:0"), true, "worker"),
		writeback: start(t, env.with("HTTP_ADDR", ""), true, "writeback"),
	}
	r.healthAddr = r.worker.waitFor(t, servingLine)[1]
	r.worker.waitFor(t, regexp.MustCompile(`"message":"worker started"`))
	r.writeback.waitFor(t, regexp.MustCompile(`"message":"write-back started"`))
	return r
}

// stop stops both replicas with SIGTERM: each must exit 0, promptly.
func (r replicas) stop(t *testing.T) {
	t.Helper()
	var wg sync.WaitGroup
	for _, p := range []*proc{r.worker, r.writeback} {
		wg.Go(func() {
			start := time.Now()
			if code := p.stop(t, 10*time.Second); code != 0 {
				t.Errorf("tqtriage %s exited %d on SIGTERM", p.args[0], code)
			}
			if took := time.Since(start); took > 5*time.Second {
				t.Errorf("tqtriage %s took %v to stop", p.args[0], took)
			}
		})
	}
	wg.Wait()
	if !strings.Contains(r.worker.stderr.String(), "worker stopped") || !strings.Contains(r.writeback.stderr.String(), "write-back stopped") {
		t.Errorf("the replicas did not log their stop")
	}
}

// exportJSON writes an export file of JSON lines: inds, with a bad line
// third and an unsupported indicator last.
func exportJSON(t *testing.T, inds []threatq.Indicator) string {
	t.Helper()
	var b strings.Builder
	for i, ind := range inds {
		if i == 2 {
			b.WriteString("this line is not JSON\n")
		}
		fmt.Fprintf(&b, `{"id":%d,"type":%q,"value":%q}`+"\n", ind.ID, ind.Type, ind.Value)
	}
	b.WriteString(`{"id":900000001,"type":"IP Address","value":"198.51.100.7"}` + "\n")
	path := filepath.Join(t.TempDir(), "export.jsonl")
	if err := os.WriteFile(path, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestSeparateReplicasPublishWaitStatusAndStopCleanly(t *testing.T) {
	t.Parallel()
	s := startSim(t, sampleSize)
	env := s.env(minimal()).with("NATS_URL", startNATS(t))
	reps := startReplicas(t, env)

	for _, path := range []string{"/healthz", "/readyz", "/metrics"} {
		resp, err := http.Get("http://" + reps.healthAddr + path)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Errorf("worker %s: %s %s", path, resp.Status, body)
		}
	}

	inds := pick(t, s, 3)
	file := exportJSON(t, inds)
	r := tq(t, env, "", "publish", "--action", "create", "--file", file, "--wait")
	mustCode(t, r, 0)
	id := runID(t, r)
	wantCounts(t, r, map[string]int{"created": 3, "invalid": 1})
	for _, want := range []string{"run " + id + ": create from file " + file, "1 input lines or repeats not queued", `IP Address "198.51.100.7"`} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("the summary does not say %q: %v", want, r)
		}
	}
	if !strings.Contains(r.stderr, "line 3") {
		t.Errorf("the bad line 3 is not reported on standard error: %v", r)
	}

	st := tq(t, env, "", "status", id)
	mustCode(t, st, 0)
	wantCounts(t, st, counts(r.stdout))
	if !strings.Contains(st.stdout, "run "+id) || !strings.Contains(st.stdout, "complete") {
		t.Errorf("status does not show run %s complete: %v", id, st)
	}

	// The write-back replica wrote Triage's answer onto the indicators.
	for _, ind := range inds {
		eventually(t, fmt.Sprintf("ThreatQ indicator %d carries %s Malicious", ind.ID, mapping.AttrThreatLevel), func() bool {
			return s.attribute(t, ind.ID, mapping.AttrThreatLevel) == "Malicious"
		})
	}
	dl := tq(t, env, "", "dlq", "list")
	mustCode(t, dl, 0)
	if !strings.Contains(dl.stdout, "0 dead letters") {
		t.Errorf("dead letters after a clean run: %v", dl)
	}

	reps.stop(t)

	// The run stays recorded after the replicas are gone.
	mustCode(t, tq(t, env, "", "status", id), 0)
	nf := tq(t, env, "", "status", "20200101T000000-deadbeef")
	mustCode(t, nf, 1)
	if !strings.Contains(nf.stderr, "no run 20200101T000000-deadbeef") {
		t.Errorf("status of an unknown run does not say so: %v", nf)
	}
}

func TestWorkerStoppedWithJobsInFlightExits0AndLosesNone(t *testing.T) {
	t.Parallel()
	// Every Triage answer (the token too) takes a second: the jobs are
	// in flight when the worker is told to stop.
	s := startSim(t, sampleSize, "--triage-latency", "1s")
	env := s.env(minimal()).with("NATS_URL", startNATS(t))
	reps := startReplicas(t, env)
	inds := pick(t, s, 3)

	r := tq(t, env, "", "publish", "--action", "create", "--file", exportJSON(t, inds))
	mustCode(t, r, 0)
	id := runID(t, r)
	time.Sleep(300 * time.Millisecond)
	reps.stop(t)

	// A new pair of replicas takes whatever the old one handed back.
	reps = startReplicas(t, env)
	eventually(t, "every job of the run has its result", func() bool {
		st := tq(t, env, "", "status", id)
		return st.code == 0 && strings.Contains(st.stdout, "complete") && maps.Equal(counts(st.stdout), map[string]int{"created": 3, "invalid": 1})
	})
	for _, ind := range inds {
		eventually(t, fmt.Sprintf("ThreatQ indicator %d carries %s Malicious", ind.ID, mapping.AttrThreatLevel), func() bool {
			return s.attribute(t, ind.ID, mapping.AttrThreatLevel) == "Malicious"
		})
	}
	reps.stop(t)
}

func TestPublishReadsCSVFromStandardInput(t *testing.T) {
	t.Parallel()
	s := startSim(t, sampleSize)
	env := s.env(minimal()).with("NATS_URL", startNATS(t))
	reps := startReplicas(t, env)

	inds := pick(t, s, 2)
	var csv strings.Builder
	csv.WriteString("id,type,value\r\n")
	for _, ind := range inds {
		fmt.Fprintf(&csv, "%d,%s,%q\r\n", ind.ID, ind.Type, ind.Value)
	}
	csv.WriteString("not-a-number,MD5,0cc175b9c0f1b6a831c399e269772661\r\n")

	r := tq(t, env, csv.String(), "publish", "--action", "create", "--file", "-", "--wait")
	mustCode(t, r, 0)
	id := runID(t, r)
	wantCounts(t, r, map[string]int{"created": 2})
	if !strings.Contains(r.stdout, "run "+id+": create from stdin; 1 input lines or repeats not queued") {
		t.Errorf("the summary header does not name standard input and the bad line: %v", r)
	}
	if !strings.Contains(r.stderr, "line 4") {
		t.Errorf("the bad line 4 is not reported on standard error: %v", r)
	}

	// Without --wait, publish prints the run id only; status follows it.
	r = tq(t, env, csv.String(), "publish", "--action", "create", "--file", "-")
	mustCode(t, r, 0)
	id = runID(t, r)
	if strings.TrimSpace(r.stdout) != id {
		t.Errorf("publish without --wait printed more than its run id: %v", r)
	}
	eventually(t, "the second run complete with 2 exists", func() bool {
		st := tq(t, env, "", "status", id)
		return st.code == 0 && strings.Contains(st.stdout, "complete") && maps.Equal(counts(st.stdout), map[string]int{"exists": 2})
	})
	reps.stop(t)
}

func TestTriageFailuresEndNonZeroAndDeadLettersReplay(t *testing.T) {
	t.Parallel()
	failing := startSim(t, 0, "--triage-failure-rate", "1")
	healthy := startSim(t, sampleSize)
	inds := pick(t, healthy, 3)
	file := exportJSON(t, inds)
	// Triage fails for good; ThreatQ (the write-back) is the healthy one.
	failEnv := healthy.env(minimal()).with("TRIAGE_BASE_URL", failing.triageURL)

	t.Run("run", func(t *testing.T) {
		t.Parallel()
		r := tq(t, failEnv.with("TQTRIAGE_DATA_DIR", t.TempDir(), "WORKER_MAX_DELIVER", "1"), "", "run", "--action", "create", "--file", file)
		mustCode(t, r, 1)
		runID(t, r)
		wantCounts(t, r, map[string]int{"failed": 3, "invalid": 1})
		if !strings.Contains(r.stdout, "failed, for example:") || !strings.Contains(r.stdout, "503") {
			t.Errorf("the summary does not show why jobs failed: %v", r)
		}
	})

	t.Run("replicas", func(t *testing.T) {
		t.Parallel()
		nats := startNATS(t)
		env := failEnv.with("NATS_URL", nats, "WORKER_MAX_DELIVER", "2")
		reps := startReplicas(t, env)

		r := tq(t, env, "", "publish", "--action", "create", "--file", file, "--wait")
		mustCode(t, r, 1)
		id := runID(t, r)
		wantCounts(t, r, map[string]int{"failed": 3, "invalid": 1})

		dl := tq(t, env, "", "dlq", "list", "--action", "create")
		mustCode(t, dl, 0)
		if !strings.Contains(dl.stdout, "3 dead letters") || strings.Count(dl.stdout, "run="+id) != 3 ||
			strings.Count(dl.stdout, "gave up after 2 deliveries") != 3 || !strings.Contains(dl.stdout, "tqtriage.dlq.create") {
			t.Errorf("dlq list does not show the 3 failed jobs of run %s with their reasons: %v", id, dl)
		}
		for _, ind := range inds {
			if !strings.Contains(dl.stdout, ind.Value) {
				t.Errorf("dlq list does not show the job of %s: %v", ind.Value, dl)
			}
		}

		// Triage is healthy again (another simulator): a new worker
		// takes the replayed jobs.
		reps.stop(t)
		env = env.with("TRIAGE_BASE_URL", healthy.triageURL)
		reps = startReplicas(t, env)
		rp := tq(t, env, "", "dlq", "replay", "--action", "create")
		mustCode(t, rp, 0)
		if !strings.Contains(rp.stdout, "replayed 3 dead letters") {
			t.Errorf("dlq replay: %v", rp)
		}
		eventually(t, "the replayed jobs created", func() bool {
			st := tq(t, env, "", "status", id)
			return st.code == 0 && maps.Equal(counts(st.stdout), map[string]int{"created": 3, "invalid": 1})
		})
		for _, ind := range inds {
			eventually(t, fmt.Sprintf("ThreatQ indicator %d carries %s Malicious", ind.ID, mapping.AttrThreatLevel), func() bool {
				return healthy.attribute(t, ind.ID, mapping.AttrThreatLevel) == "Malicious"
			})
		}
		dl = tq(t, env, "", "dlq", "list", "--action", "create")
		mustCode(t, dl, 0)
		if !strings.Contains(dl.stdout, "0 dead letters") {
			t.Errorf("dead letters left after the replay: %v", dl)
		}
		reps.stop(t)
	})
}

func TestUsageErrorsExit2NamingFlagAndVariable(t *testing.T) {
	t.Parallel()
	secretFile := filepath.Join(t.TempDir(), "secret")
	if err := os.WriteFile(secretFile, []byte(testSecret+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	// Everything a worker and a write-back need, with a NATS address that
	// refuses at once: a usage error must come before any connection.
	ok := minimal().with(
		"NATS_URL", "nats://127.0.0.1:1",
		"TRIAGE_BASE_URL", "http://127.0.0.1:1", "TRIAGE_CLIENT_ID", "id", "TRIAGE_CLIENT_SECRET", testSecret,
		"THREATQ_BASE_URL", "http://127.0.0.1:1", "THREATQ_CLIENT_ID", "id", "THREATQ_CLIENT_SECRET", testSecret,
	)
	for _, c := range []struct {
		name string
		env  vars
		args []string
		want []string
	}{
		{"missing action", ok, []string{"publish", "--file", "x.csv"}, []string{"--action is required"}},
		{"bad action", ok, []string{"run", "--action", "delete", "--file", "x.csv"}, []string{`--action "delete"`}},
		{"two sources", ok, []string{"publish", "--action", "create", "--collection", "abc", "--file", "x.csv"}, []string{"--collection", "--file"}},
		{"no source", ok, []string{"run", "--action", "update"}, []string{"--collection", "--file"}},
		{"upsert with create", ok, []string{"publish", "--action", "create", "--upsert", "--file", "x.csv"}, []string{"--upsert"}},
		{"objects per run not a number", ok.with("TRIAGE_OBJECTS_PER_RUN", "abc"), []string{"worker"}, []string{"--triage-objects-per-run", "$TRIAGE_OBJECTS_PER_RUN", `"abc"`}},
		{"unknown threat level", ok.with("TRIAGE_THREAT_LEVEL", "critical"), []string{"worker"}, []string{"--triage-threat-level", "$TRIAGE_THREAT_LEVEL", "critical"}},
		{"bad boolean", ok.with("TRIAGE_VERIFY_SSL", "maybe"), []string{"worker"}, []string{"--triage-verify-ssl", "$TRIAGE_VERIFY_SSL", "maybe"}},
		{"bad concurrency flag", ok, []string{"worker", "--worker-concurrency", "0"}, []string{"--worker-concurrency", "$WORKER_CONCURRENCY"}},
		{"bad log level", ok.with("LOG_LEVEL", "loud"), []string{"writeback"}, []string{"--log-level", "$LOG_LEVEL"}},
		{"no pause after a 429", ok.with("TRIAGE_MAX_PAUSE", "0s"), []string{"worker"}, []string{"--triage-max-pause", "$TRIAGE_MAX_PAUSE", "at least 1s"}},
		{"a pause that is not a duration", ok, []string{"writeback", "--threatq-max-pause", "5"}, []string{"--threatq-max-pause", "$THREATQ_MAX_PAUSE"}},
		{"missing Triage secret", ok.without("TRIAGE_CLIENT_SECRET"), []string{"worker"}, []string{"$TRIAGE_CLIENT_SECRET", "$TRIAGE_CLIENT_SECRET_FILE", "required"}},
		{"missing Triage address", ok.without("TRIAGE_BASE_URL"), []string{"worker"}, []string{"--triage-base-url", "$TRIAGE_BASE_URL", "required"}},
		{"missing ThreatQ address", ok.without("THREATQ_BASE_URL"), []string{"writeback"}, []string{"--threatq-base-url", "$THREATQ_BASE_URL", "required"}},
		{"missing ThreatQ secret for a collection", ok.without("THREATQ_CLIENT_SECRET"), []string{"publish", "--action", "create", "--collection", "abc"}, []string{"$THREATQ_CLIENT_SECRET"}},
		{"secret and secret file", ok.with("TRIAGE_CLIENT_SECRET_FILE", secretFile), []string{"worker"}, []string{"$TRIAGE_CLIENT_SECRET", "$TRIAGE_CLIENT_SECRET_FILE", "set one"}},
		{"missing secret file", ok.without("TRIAGE_CLIENT_SECRET").with("TRIAGE_CLIENT_SECRET_FILE", secretFile+".gone"), []string{"worker"}, []string{"$TRIAGE_CLIENT_SECRET_FILE"}},
		{"secret as a flag", ok, []string{"worker", "--triage-client-secret", testSecret}, []string{"flag provided but not defined: -triage-client-secret"}},
		{"status without a run id", ok, []string{"status"}, []string{"run id"}},
		{"a report without a wait", ok, []string{"publish", "--action", "create", "--file", "x.csv", "--report", "r.json"}, []string{"--report needs --wait"}},
		{"runs with an argument", ok, []string{"runs", "extra"}, []string{"runs takes no arguments"}},
		{"runs with no room", ok, []string{"runs", "--limit", "0"}, []string{"--limit"}},
		{"dlq without a verb", ok, []string{"dlq"}, []string{"list|replay"}},
		{"replay of invalid", ok, []string{"dlq", "replay", "--action", "invalid"}, []string{"cannot be replayed"}},
		{"unknown command", ok, []string{"frobnicate"}, []string{`unknown command "frobnicate"`, "usage: tqtriage <command>"}},
		{"no command", ok, nil, []string{"usage: tqtriage <command>"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			r := tq(t, c.env, "", c.args...)
			mustCode(t, r, 2)
			for _, w := range c.want {
				if !strings.Contains(r.stderr, w) {
					t.Errorf("standard error does not name %q: %v", w, r)
				}
			}
			if r.stdout != "" {
				t.Errorf("a usage error printed on standard output: %v", r)
			}
		})
	}
}

func TestSecretsFromFilesAndNeverPrinted(t *testing.T) {
	t.Parallel()
	s := startSim(t, sampleSize)
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	env := s.env(minimal()).without("TRIAGE_CLIENT_SECRET", "THREATQ_CLIENT_SECRET").with(
		"TRIAGE_CLIENT_SECRET_FILE", write("triage", triagesim.DefaultClientSecret+"\n"),
		"THREATQ_CLIENT_SECRET_FILE", write("threatq", threatqsim.DefaultClientSecret+"\r\n"),
		"TQTRIAGE_DATA_DIR", t.TempDir(),
		"LOG_LEVEL", "debug",
	)
	r := tq(t, env, "", "run", "--action", "create", "--collection", s.collection)
	mustCode(t, r, 0)
	wantCounts(t, r, map[string]int{"created": sampleValid - sampleExists, "exists": sampleExists, "invalid": sampleInvalid})

	// Wrong secrets: the runs end before publishing, saying why, without
	// the secret (tq checks every output for it); no job is failed.
	bad := write("bad", testSecret+"\n")
	for _, c := range []struct{ file, service string }{{"THREATQ_CLIENT_SECRET_FILE", "ThreatQ"}, {"TRIAGE_CLIENT_SECRET_FILE", "Triage"}} {
		r = tq(t, env.with(c.file, bad, "WORKER_MAX_DELIVER", "1"), "", "run", "--action", "update", "--collection", s.collection)
		mustCode(t, r, 1)
		if !strings.Contains(r.stderr, c.service+" refused the credentials") || !strings.Contains(r.stderr, "401") || !strings.Contains(r.stderr, "nothing published") {
			t.Errorf("a refused %s secret is not reported: %v", c.service, r)
		}
		if r.stdout != "" {
			t.Errorf("a run refused its credentials printed a run: %v", r)
		}
	}
}

func TestDemoShowsCreateThenUpdate(t *testing.T) {
	t.Parallel()
	r := tq(t, minimal(), "", "demo")
	mustCode(t, r, 0)
	if r.took > 20*time.Second {
		t.Errorf("the demo took %v", r.took)
	}
	headers := regexp.MustCompile(`(?m)^run \S+: (create|update) from collection .*?(, dry run: .*)?$`).FindAllStringSubmatch(r.stdout, -1)
	if len(headers) != 3 || headers[0][1] != "create" || headers[0][2] == "" || headers[1][1] != "create" || headers[1][2] != "" || headers[2][1] != "update" {
		t.Fatalf("want a dry run of create, then a create summary, then an update summary: %v", r)
	}
	dry := r.stdout[:strings.Index(r.stdout, "2. create")]
	create, update := r.stdout[strings.Index(r.stdout, "2. create"):strings.Index(r.stdout, "3. update")], r.stdout[strings.Index(r.stdout, "3. update"):]
	// The dry run foretold what create did.
	if d, c := counts(dry), counts(create); d["would_create"] != c["created"] || d["exists"] != c["exists"] || d["invalid"] != c["invalid"] || d["created"] != 0 {
		t.Errorf("the dry run says %v, create did %v: %v", d, c, r)
	}
	if c := counts(create); c["created"] == 0 || c["invalid"] == 0 || c["failed"] != 0 {
		t.Errorf("create summary counts %v: %v", c, r)
	}
	if c := counts(update); c["updated"] == 0 || c["failed"] != 0 {
		t.Errorf("update summary counts %v: %v", c, r)
	}
	// What the demo says of Triage's starting state matches its summary.
	m := regexp.MustCompile(`\((\d+) of the indicators already there\)`).FindStringSubmatch(r.stdout)
	if m == nil || m[1] != strconv.Itoa(counts(create)["exists"]) {
		t.Errorf("the demo announces %v indicators already in Triage, its summary counts %d exists: %v", m, counts(create)["exists"], r)
	}
}

func TestHelpListsFlagsWithTheirEnvironmentVariables(t *testing.T) {
	t.Parallel()
	// The environment's values are not shown as defaults: they may hold
	// credentials (tq checks that testSecret appears nowhere).
	env := minimal().with("TRIAGE_CLIENT_SECRET", testSecret, "THREATQ_CLIENT_SECRET", testSecret,
		"NATS_URL", "nats://tqtriage:"+testSecret+"@127.0.0.1:4222", "TRIAGE_THREAT_LEVEL", "Benign", "TRIAGE_VERIFY_SSL", "false")
	for _, c := range []struct {
		args []string
		want []string
	}{
		{[]string{"worker"}, []string{"-nats-url", "[$NATS_URL]", "-triage-base-url", "[$TRIAGE_BASE_URL]", "[$TRIAGE_CLIENT_ID]", "$TRIAGE_CLIENT_SECRET_FILE", "[$TRIAGE_THREAT_LEVEL] (default \"Malicious\")", "[$TRIAGE_OBJECTS_PER_RUN]", "[$TRIAGE_VERIFY_SSL] (default true)", "[$TRIAGE_SOURCE]", "[$TRIAGE_RATE_LIMIT]", "[$TRIAGE_MAX_PAUSE] (default \"5m0s\")", "[$WORKER_CONCURRENCY]", "[$HTTP_ADDR]", "[$LOG_LEVEL]", "[$LOG_FORMAT]", "[$NATS_CREDS]", "[$NATS_TLS_CA]"}},
		{[]string{"writeback"}, []string{"-threatq-base-url", "[$THREATQ_BASE_URL]", "[$THREATQ_CLIENT_ID]", "$THREATQ_CLIENT_SECRET_FILE", "[$THREATQ_VERIFY_SSL]", "[$THREATQ_EMAIL]", "[$THREATQ_ATTRIBUTE_SOURCE]", "[$THREATQ_MAX_PAUSE] (default \"5m0s\")", "[$NATS_URL]"}},
		{[]string{"publish"}, []string{"-action", "-collection", "-file", "-upsert", "-wait", "-dry-run", "-report", "[$NATS_URL]", "[$THREATQ_BASE_URL]"}},
		{[]string{"run"}, []string{"-action", "-collection", "-file", "-upsert", "-data-dir", "[$TQTRIAGE_DATA_DIR]", "[$NATS_URL]", "[$TRIAGE_BASE_URL]", "[$THREATQ_BASE_URL]"}},
		{[]string{"status"}, []string{"RUN_ID", "-json", "[$NATS_URL]"}},
		{[]string{"runs"}, []string{"-limit", "-json", "[$NATS_URL]"}},
		{[]string{"dlq", "list"}, []string{"-action", "-json", "[$NATS_URL]"}},
		{[]string{"dlq", "replay"}, []string{"-action", "[$NATS_URL]"}},
		{[]string{"dlq"}, []string{"list|replay"}},
		{[]string{"demo"}, []string{"-size", "[$DEMO_SIZE]"}},
		{[]string{"sim"}, []string{"-triage-addr", "[$SIM_TRIAGE_ADDR]", "[$SIM_TRIAGE_FAILURE_RATE]", "[$SIM_SAMPLE]"}},
		{nil, []string{"worker", "writeback", "publish", "run", "status", "runs", "dlq", "demo", "sim"}},
	} {
		for _, h := range []string{"-h", "--help"} {
			args := append(slices.Clone(c.args), h)
			t.Run(strings.Join(args, " "), func(t *testing.T) {
				t.Parallel()
				r := tq(t, env, "", args...)
				mustCode(t, r, 0)
				for _, w := range c.want {
					if !strings.Contains(r.stdout, w) {
						t.Errorf("help does not list %q: %v", w, r)
					}
				}
				if r.stderr != "" {
					t.Errorf("help wrote to standard error: %v", r)
				}
			})
		}
	}
}

// Each flag of the help of the worker is named with its variable.
func TestEveryWorkerFlagNamesItsVariable(t *testing.T) {
	t.Parallel()
	r := tq(t, minimal(), "", "worker", "-h")
	mustCode(t, r, 0)
	sc := bufio.NewScanner(strings.NewReader(r.stdout))
	flagLine := regexp.MustCompile(`^  -(\S+)`)
	var flag string
	for sc.Scan() {
		if m := flagLine.FindStringSubmatch(sc.Text()); m != nil {
			flag = m[1]
			continue
		}
		if flag != "" {
			want := "[$" + strings.ToUpper(strings.ReplaceAll(flag, "-", "_")) + "]"
			if !strings.Contains(sc.Text(), want) {
				t.Errorf("-%s: its help %q does not name %s", flag, strings.TrimSpace(sc.Text()), want)
			}
			flag = ""
		}
	}
}
