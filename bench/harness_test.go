// Package bench measures tqtriage as an operator runs it: the built binary
// in processes of its own (`run` with its embedded JetStream server, or
// `worker` replicas on a server this process serves), against the Triage
// and ThreatQ simulators served by this process. What it reports is the
// tqtriage processes' own: wall time against the bound Triage sets, their
// CPU time (user and system, from the kernel), their peak resident memory.
//
//	make bench     # or: go test -run '^$' -bench . -benchtime 1x ./bench
//
// The machine is shared and noisy: compare ratios within one run.
package bench

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/tqtriage/tqtriage/internal/sample"
	"github.com/tqtriage/tqtriage/threatq/threatqsim"
	"github.com/tqtriage/tqtriage/triage/triagesim"
)

var bin string

func TestMain(m *testing.M) { os.Exit(testMain(m)) }

func testMain(m *testing.M) int {
	dir, err := os.MkdirTemp("", "tqtriage-bench-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	// BENCH_BIN measures another build (an earlier commit's, say) with the
	// same benchmarks: compare it with this tree's within one session.
	if b := os.Getenv("BENCH_BIN"); b != "" {
		bin = b
		return m.Run()
	}
	bin = filepath.Join(dir, "tqtriage")
	build := exec.Command("go", "build", "-o", bin, "../cmd/tqtriage")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "building tqtriage: %v\n%s", err, out)
		return 1
	}
	return m.Run()
}

// sims are both simulators, served by this process, with a count of the
// Triage API requests each second.
type sims struct {
	triage  *triagesim.Server
	threatq *threatqsim.Server
	tURL    string
	qURL    string
	perSec  *perSecond
	inds    []threatqsim.SeedIndicator // the collection's
}

const collection = "benchcollection"

func startSims(tb testing.TB, to triagesim.Options, n int, prefix string) *sims {
	tb.Helper()
	s := &sims{triage: triagesim.New(to), threatq: threatqsim.New(threatqsim.Options{MaxPageSize: 500}), perSec: &perSecond{}}
	ts := httptest.NewServer(s.perSec.wrap(s.triage))
	qs := httptest.NewServer(s.threatq)
	tb.Cleanup(ts.Close)
	tb.Cleanup(qs.Close)
	s.tURL, s.qURL = ts.URL, qs.URL
	if n > 0 {
		s.inds = sample.Valid(prefix, n)
		s.threatq.AddCollection(collection, "bench", s.inds)
	}
	return s
}

func (s *sims) env(kv ...string) []string {
	env := []string{
		"PATH=" + os.Getenv("PATH"), "HOME=" + os.Getenv("HOME"), "TMPDIR=" + os.TempDir(),
		"TRIAGE_BASE_URL=" + s.tURL, "TRIAGE_CLIENT_ID=" + triagesim.DefaultClientID, "TRIAGE_CLIENT_SECRET=" + triagesim.DefaultClientSecret,
		"THREATQ_BASE_URL=" + s.qURL, "THREATQ_CLIENT_ID=" + threatqsim.DefaultClientID, "THREATQ_CLIENT_SECRET=" + threatqsim.DefaultClientSecret,
		"LOG_LEVEL=warn", "TRIAGE_OBJECTS_PER_RUN=10000000", "THREATQ_PAGE_SIZE=500",
	}
	if g := os.Getenv("BENCH_GOGC"); g != "" {
		env = append(env, "GOGC="+g) // try the collector's setting on the measured process
	}
	if g := os.Getenv("BENCH_GOMEMLIMIT"); g != "" {
		env = append(env, "GOMEMLIMIT="+g) // and its soft memory limit
	}
	if p := os.Getenv("TQTRIAGE_PPROF"); p != "" {
		env = append(env, "TQTRIAGE_PPROF="+p) // profile the measured process
	}
	for i := 0; i+1 < len(kv); i += 2 {
		env = append(env, kv[i]+"="+kv[i+1])
	}
	return env
}

// perSecond counts the requests of each second, for "never more than 10%
// above the budget for more than a second".
type perSecond struct {
	mu     sync.Mutex
	counts map[int64]int
}

func (p *perSecond) wrap(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasPrefix(r.URL.Path, "/api/") {
			p.mu.Lock()
			if p.counts == nil {
				p.counts = map[int64]int{}
			}
			p.counts[time.Now().Unix()]++
			p.mu.Unlock()
		}
		h.ServeHTTP(w, r)
	})
}

// over returns how many whole seconds between from and to saw more than
// limit requests, and the highest count of a second.
func (p *perSecond) over(from, to time.Time, limit float64) (seconds, highest int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for s := from.Unix() + 1; s < to.Unix(); s++ { // whole seconds only
		c := p.counts[s]
		highest = max(highest, c)
		if float64(c) > limit {
			seconds++
		}
	}
	return seconds, highest
}

// proc is one tqtriage process's measure.
type proc struct {
	wall   time.Duration
	cpu    time.Duration
	maxRSS int64 // bytes
	stdout string
	stderr string
}

// runTQ runs the binary to its end and measures it.
func runTQ(tb testing.TB, env []string, args ...string) proc {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = env
	cmd.Dir = tb.TempDir()
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	start := time.Now()
	err := cmd.Start()
	var hw *highWater
	if err == nil {
		hw = watchHighWater(cmd.Process.Pid)
		err = cmd.Wait()
	}
	p := proc{wall: time.Since(start), stdout: out.String(), stderr: errb.String()}
	if err != nil {
		tb.Fatalf("tqtriage %s: %v\n%s\n%s", strings.Join(args, " "), err, p.stdout, tail(p.stderr))
	}
	p.cpu, p.maxRSS = cpuTime(cmd.ProcessState), hw.end()
	return p
}

func cpuTime(ps *os.ProcessState) time.Duration {
	ru, ok := ps.SysUsage().(*syscall.Rusage)
	if !ok {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// highWater follows a process's peak resident memory (VmHWM in
// /proc/<pid>/status) while it runs. The rusage of its end cannot say
// it: Go starts a child with vfork and exec, and exec carries the
// parent's high-water mark into the child's ru_maxrss, so a child of this
// benchmark (holding simulators and servers of hundreds of MiB) would be
// reported as large as it. Read every 20 ms; the mark only grows, so
// at most the last 20 ms of a process's life escape it.
type highWater struct {
	peak atomic.Int64
	once sync.Once
	stop chan struct{}
	done chan struct{}
}

func watchHighWater(pid int) *highWater {
	h := &highWater{stop: make(chan struct{}), done: make(chan struct{})}
	path := fmt.Sprintf("/proc/%d/status", pid)
	go func() {
		defer close(h.done)
		t := time.NewTicker(20 * time.Millisecond)
		defer t.Stop()
		for {
			if kb, ok := vmHWM(path); ok {
				h.peak.Store(max(h.peak.Load(), kb*1024))
			}
			select {
			case <-h.stop:
				return
			case <-t.C:
			}
		}
	}()
	return h
}

// end stops following and returns the peak seen, in bytes.
func (h *highWater) end() int64 {
	if h == nil {
		return 0
	}
	h.once.Do(func() { close(h.stop) })
	<-h.done
	return h.peak.Load()
}

func vmHWM(path string) (int64, bool) {
	data, err := os.ReadFile(path)
	if err != nil {
		return 0, false
	}
	for line := range strings.Lines(string(data)) {
		if rest, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			return kb, err == nil
		}
	}
	return 0, false
}

func tail(s string) string {
	l := strings.Split(s, "\n")
	if len(l) > 30 {
		l = l[len(l)-30:]
	}
	return strings.Join(l, "\n")
}

var summaryLine = regexp.MustCompile(`(?m)^  (created|exists|updated|not_found|invalid|skipped|failed)\s+(\d+)\s`)

// counts reads a summary's counts by status.
func counts(summary string) map[string]int {
	out := map[string]int{}
	for _, m := range summaryLine.FindAllStringSubmatch(summary, -1) {
		n, _ := strconv.Atoi(m[2])
		out[m[1]] = n
	}
	return out
}

// background is a tqtriage process serving until stopped.
type background struct {
	cmd    *exec.Cmd
	stderr *syncBuffer
	done   chan struct{}
	hw     *highWater
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}
func (s *syncBuffer) String() string { s.mu.Lock(); defer s.mu.Unlock(); return s.b.String() }

func startTQ(tb testing.TB, env []string, args ...string) *background {
	tb.Helper()
	b := &background{cmd: exec.Command(bin, args...), stderr: &syncBuffer{}, done: make(chan struct{})}
	b.cmd.Env = env
	b.cmd.Dir = tb.TempDir()
	b.cmd.Stderr = b.stderr
	if err := b.cmd.Start(); err != nil {
		tb.Fatal(err)
	}
	b.hw = watchHighWater(b.cmd.Process.Pid)
	go func() { _ = b.cmd.Wait(); close(b.done) }()
	tb.Cleanup(func() { b.stop() })
	return b
}

// stop ends the process (SIGTERM, then SIGKILL) and returns its usage.
func (b *background) stop() (time.Duration, int64) {
	select {
	case <-b.done:
	default:
		_ = b.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-b.done:
		case <-time.After(30 * time.Second):
			_ = b.cmd.Process.Kill()
			<-b.done
		}
	}
	peak := b.hw.end()
	if b.cmd.ProcessState == nil {
		return 0, peak
	}
	return cpuTime(b.cmd.ProcessState), peak
}

func mib(b int64) float64 { return float64(b) / (1 << 20) }

// exportFile writes n indicators as JSON lines.
func exportFile(tb testing.TB, n int) string {
	tb.Helper()
	path := filepath.Join(tb.TempDir(), "export.jsonl")
	f, err := os.Create(path)
	if err != nil {
		tb.Fatal(err)
	}
	w := bufio.NewWriterSize(f, 1<<20)
	for i, in := range sample.Valid("export", n) {
		fmt.Fprintf(w, `{"id":%d,"type":%q,"value":%q}`+"\n", i+1, in.Type, in.Value)
	}
	if err := w.Flush(); err != nil {
		tb.Fatal(err)
	}
	f.Close()
	return path
}
