package main

import (
	"io"
	"net/http"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

func TestVersionPrintsWhatTheBuildStamped(t *testing.T) {
	t.Parallel()
	// The stamping of `make build`, with values of the test's own.
	stamped := filepath.Join(t.TempDir(), "tqtriage")
	pkg := "github.com/tqtriage/tqtriage/internal/buildinfo"
	build := exec.Command("go", "build", "-o", stamped, "-ldflags",
		"-X "+pkg+".version=v9.8.7-test -X "+pkg+".commit=0123456789abcdef0123456789abcdef01234567 -X "+pkg+".date=2026-01-02T03:04:05Z", ".")
	build.Env = append(build.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	for _, arg := range []string{"version", "--version", "-version"} {
		out, err := exec.Command(stamped, arg).Output()
		if err != nil {
			t.Fatalf("tqtriage %s: %v", arg, err)
		}
		for _, want := range []string{"tqtriage v9.8.7-test\n", "commit  0123456789abcdef0123456789abcdef01234567\n", "built   2026-01-02T03:04:05Z\n", "go      go1."} {
			if !strings.Contains(string(out), want) {
				t.Errorf("tqtriage %s printed\n%s\nwithout %q", arg, out, want)
			}
		}
	}
}

func TestVersionUsage(t *testing.T) {
	t.Parallel()
	mustCode(t, tq(t, minimal(), "", "version", "extra"), 2)
	r := tq(t, minimal(), "", "version", "-h")
	mustCode(t, r, 0)
	if !strings.Contains(r.stdout, "usage: tqtriage version") {
		t.Errorf("version -h: %v", r)
	}
	if r := tq(t, minimal(), "", "help"); !strings.Contains(r.stdout, "version    print the version") {
		t.Errorf("help does not list version: %v", r)
	}
}

// versionOf reads `tqtriage version` of the binary under test.
func versionOf(t *testing.T) (version, commit string) {
	t.Helper()
	r := tq(t, minimal(), "", "version")
	mustCode(t, r, 0)
	m := regexp.MustCompile(`^tqtriage (\S+)\n  commit  (\S+)\n`).FindStringSubmatch(r.stdout)
	if m == nil {
		t.Fatalf("version: %v", r)
	}
	return m[1], m[2]
}

func TestReplicasLogAndExportTheirBuild(t *testing.T) {
	t.Parallel()
	version, commit := versionOf(t)
	s := startSim(t, 0)
	env := s.env(minimal()).with("NATS_URL", startNATS(t))
	reps := startReplicas(t, env)
	defer reps.stop(t)

	for _, p := range []*proc{reps.worker, reps.writeback} {
		log := p.stderr.String()
		if !strings.Contains(log, `"version":"`+version+`","commit":"`+commit+`"`) {
			t.Errorf("tqtriage %s: the start-up line does not carry version %s and commit %s:\n%s", p.args[0], version, commit, log)
		}
	}
	resp, err := http.Get("http://" + reps.healthAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	want := `tqtriage_build_info{commit="` + commit + `",version="` + version + `"} 1`
	if !strings.Contains(string(body), want) {
		t.Errorf("/metrics has no %s:\n%s", want, body)
	}
}

func TestWorkerAndWritebackDefaultToDistinctHTTPPorts(t *testing.T) {
	t.Parallel()
	for cmd, want := range map[string]string{"worker": `(default ":8080")`, "writeback": `(default ":8090")`} {
		r := tq(t, minimal(), "", cmd, "-h")
		mustCode(t, r, 0)
		if !strings.Contains(r.stdout, want) {
			t.Errorf("%s -h: the HTTP address's default is not %s:\n%s", cmd, want, r.stdout)
		}
	}
}
