package main

import (
	"encoding/json"
	"fmt"
	"maps"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	dto "github.com/prometheus/client_model/go"

	"github.com/tqtriage/tqtriage/internal/metricstest"
	"github.com/tqtriage/tqtriage/mapping"
	"github.com/tqtriage/tqtriage/run"
)

// report is what a --report file or status --json says, as a script reads it.
type report struct {
	RunID      string         `json:"run_id"`
	Action     string         `json:"action"`
	DryRun     bool           `json:"dry_run"`
	Source     string         `json:"source"`
	SourceName string         `json:"source_name"`
	State      string         `json:"state"`
	Jobs       int            `json:"jobs"`
	Results    int            `json:"results"`
	Statuses   map[string]int `json:"statuses"`
	Duration   float64        `json:"duration_seconds"`
	WriteBack  struct {
		Awaiting, Failed int
	} `json:"write_back"`
	Requests map[string]map[string]int `json:"requests"`
	Errors   []struct {
		Status, Reason string
		Count          int
		Indicators     []struct{ ID int64 }
	} `json:"errors"`
	Failed     bool               `json:"failed"`
	JobLatency *run.LatencyReport `json:"job_latency"`
}

func readReport(t *testing.T, data []byte) report {
	t.Helper()
	var r report
	if err := json.Unmarshal(data, &r); err != nil {
		t.Fatalf("not a report: %v\n%s", err, data)
	}
	return r
}

func readReportFile(t *testing.T, path string) report {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return readReport(t, data)
}

// nonZero drops the zero counts of a report's statuses.
func nonZero(m map[string]int) map[string]int {
	out := map[string]int{}
	for k, v := range m {
		if v != 0 {
			out[k] = v
		}
	}
	return out
}

func TestRunDryRunWritesNothingAndForetellsTheRun(t *testing.T) {
	t.Parallel()
	s := startSim(t, sampleSize)
	env := s.env(minimal()).with("TQTRIAGE_DATA_DIR", t.TempDir())
	ind := pick(t, s, 1)[0]
	rep := filepath.Join(t.TempDir(), "dry.json")
	before := s.triageLevels(t) // the sample's own, seeded

	r := tq(t, env, "", "run", "--dry-run", "--action", "create", "--collection", s.collection, "--report", rep)
	mustCode(t, r, 0)
	id := runID(t, r)
	want := map[string]int{"would_create": sampleValid - sampleExists, "exists": sampleExists, "invalid": sampleInvalid}
	wantCounts(t, r, want)
	if !strings.Contains(r.stdout, "run "+id+": create from collection "+s.collection) || !strings.Contains(r.stdout, "dry run") {
		t.Errorf("the summary does not say it is a dry run: %v", r)
	}
	if got := s.triageLevels(t); !maps.Equal(got, before) {
		t.Errorf("a dry run changed Triage's indicators of source ThreatQ: %v, before %v", got, before)
	}
	if got := s.attribute(t, ind.ID, mapping.AttrID); got != "" {
		t.Errorf("a dry run wrote %s %q onto ThreatQ indicator %d", mapping.AttrID, got, ind.ID)
	}

	rp := readReportFile(t, rep)
	if rp.RunID != id || !rp.DryRun || rp.State != "complete" || rp.Action != "create" || rp.Failed || rp.Jobs != sampleSize ||
		!maps.Equal(nonZero(rp.Statuses), want) || rp.Duration <= 0 || rp.SourceName == "" {
		t.Errorf("report %+v", rp)
	}
	if len(rp.Errors) != 1 || rp.Errors[0].Status != "invalid" || rp.Errors[0].Count != 1 {
		t.Errorf("report's errors %+v, want the one invalid", rp.Errors)
	}
	// Reads only, and the token: the requests made say so.
	for service, ops := range rp.Requests {
		for op := range ops {
			if op != "token" && op != "find_indicator" && op != "list_collection" && op != "collection_name" {
				t.Errorf("a dry run made %s requests to %s: %v", op, service, rp.Requests)
			}
		}
	}
	if rp.Requests["triage"]["find_indicator"] < sampleValid {
		t.Errorf("requests %v: want a lookup for each valid indicator", rp.Requests)
	}

	// The real run does what the dry run said, and its report says so.
	rep = filepath.Join(t.TempDir(), "real.json")
	r = tq(t, env, "", "run", "--action", "create", "--collection", s.collection, "--report", rep)
	mustCode(t, r, 0)
	wantCounts(t, r, map[string]int{"created": want["would_create"], "exists": sampleExists, "invalid": sampleInvalid})
	rp = readReportFile(t, rep)
	if rp.DryRun || rp.Requests["triage"]["create_indicator"] < want["would_create"] || rp.Requests["threatq"]["add_attribute"] == 0 {
		t.Errorf("report of the real run: %+v", rp)
	}
	// One job in 16 is timed from sent to answered.
	if lat := rp.JobLatency; rp.Jobs < 16 || lat == nil || lat.Samples != int(rp.Jobs/16) || lat.P50Seconds <= 0 || lat.P99Seconds < lat.P50Seconds || lat.MaxSeconds > rp.Duration {
		t.Errorf("job latency of a run of %d jobs in %.1fs: %+v", rp.Jobs, rp.Duration, lat)
	}

	// Updates: a level Triage does not hold would change; the one it
	// holds would not. Triage is left as it is.
	r = tq(t, env.with("TRIAGE_THREAT_LEVEL", "Benign"), "", "run", "--dry-run", "--action", "update", "--collection", s.collection)
	mustCode(t, r, 0)
	if c := counts(r.stdout); c["would_update"] < want["would_create"] || c["updated"] != 0 || c["created"] != 0 {
		t.Errorf("dry run of an update to Benign: %v", c)
	}
	r = tq(t, env, "", "run", "--dry-run", "--action", "update", "--collection", s.collection)
	mustCode(t, r, 0)
	if c := counts(r.stdout); c["unchanged"] < want["would_create"] || c["updated"] != 0 {
		t.Errorf("dry run of an update to what Triage holds: %v", c)
	}
	created := maps.Clone(before)
	created["Malicious"] += want["would_create"]
	if got := s.triageLevels(t); !maps.Equal(got, created) {
		t.Errorf("Triage holds %v after dry runs of updates; want %v as the create left them", got, created)
	}
	if got := s.attribute(t, ind.ID, mapping.AttrThreatLevel); got != "Malicious" {
		t.Errorf("ThreatQ indicator %d has %s %q after dry runs; want Malicious", ind.ID, mapping.AttrThreatLevel, got)
	}

	// A dry run's id cannot be resumed as a real run: its claims and
	// results are a dry run's.
	r = tq(t, env, "", "run", "--action", "create", "--collection", s.collection, "--run-id", id)
	mustCode(t, r, 1)
	if !strings.Contains(r.stderr, "a dry run") {
		t.Errorf("resuming a dry run as a real one: %v", r)
	}
}

// scrape reads a /metrics page.
func scrape(t *testing.T, addr string) map[string]*dto.MetricFamily {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	mfs, err := metricstest.Parse(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return mfs
}

func TestReplicasDryRunJSONOutputsAndMetrics(t *testing.T) {
	t.Parallel()
	s := startSim(t, sampleSize)
	env := s.env(minimal()).with("NATS_URL", startNATS(t))
	reps := startReplicas(t, env)
	inds := pick(t, s, 3)
	file := exportJSON(t, inds)
	rep := filepath.Join(t.TempDir(), "dry.json")

	before := s.triageLevels(t)
	r := tq(t, env, "", "publish", "--dry-run", "--action", "create", "--file", file, "--wait", "--report", rep)
	mustCode(t, r, 0)
	id := runID(t, r)
	wantCounts(t, r, map[string]int{"would_create": 3, "invalid": 1})
	if got := s.triageLevels(t); !maps.Equal(got, before) {
		t.Errorf("a dry run through the replicas changed Triage: %v, before %v", got, before)
	}
	if rp := readReportFile(t, rep); rp.RunID != id || !rp.DryRun || !maps.Equal(nonZero(rp.Statuses), map[string]int{"would_create": 3, "invalid": 1}) || rp.Requests != nil {
		t.Errorf("report %+v", rp)
	}

	// status --json: one document; complete once write-back settled
	// each result (with nothing).
	var st report
	eventually(t, "status --json says complete", func() bool {
		r := tq(t, env, "", "status", id, "--json")
		mustCode(t, r, 0)
		st = readReport(t, []byte(r.stdout))
		return st.State == "complete"
	})
	if st.RunID != id || !st.DryRun || st.Results != 4 || st.WriteBack.Awaiting != 0 || st.Statuses["would_create"] != 3 || st.Duration != 0 {
		t.Errorf("status --json: %+v", st)
	}

	// The real run, then runs lists both, newest first.
	r = tq(t, env, "", "publish", "--action", "create", "--file", file, "--wait")
	mustCode(t, r, 0)
	real := runID(t, r)
	wantCounts(t, r, map[string]int{"created": 3, "invalid": 1})
	ls := tq(t, env, "", "runs")
	mustCode(t, ls, 0)
	lines := strings.Split(strings.TrimSpace(ls.stdout), "\n")
	if len(lines) != 3 || !strings.HasPrefix(lines[0], real+"  ") || !strings.HasPrefix(lines[1], id+"  ") ||
		!strings.Contains(lines[1], "create (dry run)") || !strings.Contains(lines[0], "created 3, invalid 1") || lines[2] != "2 runs" {
		t.Errorf("runs: %v", ls)
	}
	ls = tq(t, env, "", "runs", "--json", "--limit", "1")
	mustCode(t, ls, 0)
	if rp := readReport(t, []byte(ls.stdout)); rp.RunID != real || rp.DryRun || strings.Count(ls.stdout, "\n") != 1 {
		t.Errorf("runs --json --limit 1: %v", ls)
	}

	// The worker's /metrics: what it did, by family.
	mfs := scrape(t, reps.healthAddr)
	for _, c := range []struct {
		name   string
		labels map[string]string
		want   float64
	}{
		{"tqtriage_http_requests_total", map[string]string{"service": "triage", "operation": "find_indicator", "code": "200"}, 3},
		{"tqtriage_http_requests_total", map[string]string{"service": "triage", "operation": "create_indicator", "code": "201"}, 3},
		{"tqtriage_http_request_duration_seconds", map[string]string{"service": "triage", "operation": "create_indicator"}, 3},
		{"tqtriage_token_refreshes_total", map[string]string{"service": "triage", "outcome": "ok"}, 2}, // the reader's and the writer's
		{"tqtriage_messages_settled_total", map[string]string{"consumer": "tqtriage-workers", "outcome": "would_create"}, 3},
		{"tqtriage_messages_settled_total", map[string]string{"consumer": "tqtriage-workers", "outcome": "created"}, 3},
		{"tqtriage_jobs_in_flight", nil, 0},
		{"tqtriage_consumer_pending", map[string]string{"consumer": "tqtriage-workers"}, 0},
		{"tqtriage_consumer_ack_pending", map[string]string{"consumer": "tqtriage-workers"}, 0},
		{"tqtriage_ready", nil, 1},
	} {
		got := metricstest.Value(mfs, c.name, c.labels)
		if got == nil || *got != c.want {
			v := "absent"
			if got != nil {
				v = fmt.Sprint(*got)
			}
			t.Errorf("%s%v = %s, want %v", c.name, c.labels, v, c.want)
		}
	}
	if metricstest.Value(mfs, "tqtriage_consumer_pending", map[string]string{"consumer": "tqtriage-writeback"}) != nil {
		t.Error("the worker reports the write-back consumer's backlog")
	}
	reps.stop(t)
}
