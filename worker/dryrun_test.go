package worker_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"

	"github.com/tqtriage/tqtriage/bus"
	"github.com/tqtriage/tqtriage/internal/httpclient"
	"github.com/tqtriage/tqtriage/mapping"
	"github.com/tqtriage/tqtriage/message"
	"github.com/tqtriage/tqtriage/triage"
	"github.com/tqtriage/tqtriage/worker"
)

// dryJob is job on the dry-run subject, as a publisher of a dry run sends
// it.
func dryJob(t *testing.T, action message.Action, typ, value string, edit ...func(*message.Job)) message.Job {
	t.Helper()
	j := job(t, action, typ, value, edit...)
	if !j.DryRun {
		data, _ := message.Encode(j)
		var err error
		if j, err = message.ParseJob(message.DryRunJobSubject(action), data); err != nil {
			t.Fatal(err)
		}
	}
	if !j.DryRun {
		t.Fatal("a job on the dry-run subject is not a dry run")
	}
	return j
}

// fakeReader is a Triage that keeps one indicator per type, value and
// source, for reads.
type fakeReader struct {
	mu    sync.Mutex
	inds  []triage.Indicator
	calls []string
	fail  error
}

func (f *fakeReader) GetIndicator(_ context.Context, id string) (*triage.Indicator, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, "get "+id)
	if f.fail != nil {
		return nil, f.fail
	}
	for _, in := range f.inds {
		if in.ID == id {
			return &in, nil
		}
	}
	return nil, errNotFound
}

func (f *fakeReader) FindIndicator(_ context.Context, typ, value, source string) (*triage.Indicator, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, "find "+source)
	if f.fail != nil {
		return nil, f.fail
	}
	for _, in := range f.inds {
		if in.ThreatType == typ && in.ThreatValue == value && (source == "" || in.ThreatSource == source) {
			return &in, nil
		}
	}
	return nil, errNotFound
}

func TestDryRunAnswersWhatWouldHappenFromReadsAlone(t *testing.T) {
	ind := func(id, level, source string) triage.Indicator {
		return triage.Indicator{ID: id, ThreatLevel: level, ThreatType: "MD5", ThreatValue: md5Value, ThreatSource: source}
	}
	knowsID := func(id string) func(*message.Job) {
		return func(j *message.Job) { j.ThreatQAttributes = []message.Attribute{{Name: mapping.AttrID, Value: id}} }
	}
	for _, tc := range []struct {
		name     string
		job      message.Job
		triage   []triage.Indicator
		admit    bool
		status   message.Status
		reason   string
		triageID string
		calls    string
	}{
		{"create of an absent indicator would create it", dryJob(t, message.ActionCreate, "MD5", md5Value), nil, true,
			message.StatusWouldCreate, "would create it at level Malicious", "", "find ThreatQ"},
		{"create beside another source's would create ours (one per source)", dryJob(t, message.ActionCreate, "MD5", md5Value), []triage.Indicator{ind("9", "Benign", "Analyst")}, true,
			message.StatusWouldCreate, "from ThreatQ", "", "find ThreatQ"},
		{"create of ours finds it", dryJob(t, message.ActionCreate, "MD5", md5Value), []triage.Indicator{ind("9", "Benign", "Analyst"), ind("55", "Benign", "ThreatQ")}, true,
			message.StatusExists, "", "55", "find ThreatQ"},
		{"update of ours at another level", dryJob(t, message.ActionUpdate, "MD5", md5Value), []triage.Indicator{ind("55", "Benign", "ThreatQ")}, true,
			message.StatusWouldUpdate, "would set level Benign → Malicious of Triage indicator 55", "55", "find ThreatQ"},
		{"update to what ours holds changes nothing", dryJob(t, message.ActionUpdate, "MD5", md5Value), []triage.Indicator{ind("55", "malicious", "ThreatQ")}, true,
			message.StatusUnchanged, "", "55", "find ThreatQ"},
		{"update never targets another source's", dryJob(t, message.ActionUpdate, "MD5", md5Value), []triage.Indicator{ind("9", "Benign", "Analyst")}, true,
			message.StatusNotFound, "from ThreatQ; an update would change nothing", "", "find ThreatQ"},
		{"upsert beside another source's would create ours", dryJob(t, message.ActionUpdate, "MD5", md5Value, func(j *message.Job) { j.Upsert = true }), []triage.Indicator{ind("9", "Benign", "Analyst")}, true,
			message.StatusWouldCreate, "would create", "", "find ThreatQ"},
		{"update by the id ThreatQ holds, without a lookup", dryJob(t, message.ActionUpdate, "MD5", md5Value, knowsID("55")), []triage.Indicator{ind("55", "Suspicious", "ThreatQ")}, true,
			message.StatusWouldUpdate, "level Suspicious → Malicious", "55", "get 55"},
		{"an id of another value is not believed", dryJob(t, message.ActionUpdate, "MD5", md5Value, knowsID("7")),
			[]triage.Indicator{{ID: "7", ThreatType: "MD5", ThreatValue: "0cc175b9c0f1b6a831c399e269772661", ThreatSource: "ThreatQ"}, ind("55", "Malicious", "ThreatQ")}, true,
			message.StatusUnchanged, "", "55", "get 7, find ThreatQ"},
		{"an id gone is looked up", dryJob(t, message.ActionUpdate, "MD5", md5Value, knowsID("1")), nil, true,
			message.StatusNotFound, "", "", "get 1, find ThreatQ"},
		{"a new source that collides targets the one of that source", dryJob(t, message.ActionUpdate, "MD5", md5Value, knowsID("55"), func(j *message.Job) { j.ThreatSource = "SOC" }),
			[]triage.Indicator{ind("55", "Malicious", "ThreatQ"), ind("60", "Malicious", "SOC")}, true,
			message.StatusUnchanged, "", "60", "get 55, find SOC"},
		{"a new source that does not collide would be set", dryJob(t, message.ActionUpdate, "MD5", md5Value, knowsID("55"), func(j *message.Job) { j.ThreatSource = "SOC" }),
			[]triage.Indicator{ind("55", "Malicious", "ThreatQ")}, true,
			message.StatusWouldUpdate, "source ThreatQ → SOC", "55", "get 55, find SOC"},
		{"the job's own level counts", dryJob(t, message.ActionUpdate, "MD5", md5Value, func(j *message.Job) { j.ThreatLevel = "benign" }), []triage.Indicator{ind("55", "Benign", "ThreatQ")}, true,
			message.StatusUnchanged, "", "55", "find ThreatQ"},
		{"over the cap", dryJob(t, message.ActionCreate, "MD5", md5Value), nil, false, message.StatusSkipped, "would reach its limit", "", ""},
		{"invalid", dryJob(t, message.ActionCreate, "MD5", "not-an-md5"), nil, true, message.StatusInvalid, "MD5", "", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			writer := &fakeTriage{}
			reader := &fakeReader{inds: tc.triage}
			claims := &fakeClaims{admit: func(runID, _ string, _ int) (bus.Admission, error) {
				if runID != bus.DryRunScope(tc.job.RunID) {
					t.Errorf("a dry run claimed under %q, a real run's admissions", runID)
				}
				return bus.Admission{Admitted: tc.admit, Count: 3}, nil
			}}
			w := newWorker(t, noRetry, writer, claims).WithReader(reader)
			out := w.Handle(context.Background(), tc.job, attempt)
			if out.Kind() != bus.KindDone {
				t.Fatalf("outcome %s (%v), want done", out.Kind(), out.Error())
			}
			_, r := result(t, out)
			if r.Status != tc.status || !strings.Contains(r.Reason, tc.reason) || !r.DryRun {
				t.Errorf("result %s %q (dry run %v), want %s with %q", r.Status, r.Reason, r.DryRun, tc.status, tc.reason)
			}
			if len(r.Attributes) != 0 {
				t.Errorf("a dry-run result carries attributes to write back: %v", r.Attributes)
			}
			if tc.triageID != "" && (r.Triage == nil || r.Triage.ID != tc.triageID) {
				t.Errorf("result shows Triage's indicator %+v, want id %s", r.Triage, tc.triageID)
			}
			if got := strings.Join(reader.calls, ", "); got != tc.calls {
				t.Errorf("reads %q, want %q", got, tc.calls)
			}
			if len(writer.ops()) > 0 {
				t.Errorf("a dry run called the worker's own client: %v", writer.ops())
			}
		})
	}
}

func TestDryRunReadFailuresAndMissingReaderFailTheJob(t *testing.T) {
	j := dryJob(t, message.ActionCreate, "MD5", md5Value)
	// A worker without a reader cannot answer: not retryable here.
	out := newWorker(t, noRetry, &fakeTriage{}, &fakeClaims{}).Handle(context.Background(), j, attempt)
	if out.Kind() != bus.KindError || !strings.Contains(out.Error().Error(), "read-only") {
		t.Fatalf("without a reader: %s %v", out.Kind(), out.Error())
	}
	// A read that fails is an error for the executor, like a real run's.
	reader := &fakeReader{fail: serverError(503, 0)}
	out = newWorker(t, noRetry, &fakeTriage{}, &fakeClaims{}).WithReader(reader).Handle(context.Background(), j, attempt)
	if out.Kind() != bus.KindError {
		t.Fatalf("a failed read: %s, want an error", out.Kind())
	}
	// Given up, it is a failed dry-run result.
	gave := newWorker(t, noRetry, &fakeTriage{}, &fakeClaims{}).GiveUp(j, attempt, "gave up")
	if _, r := result(t, gave); r.Status != message.StatusFailed || !r.DryRun {
		t.Fatalf("given up: %s dry %v", r.Status, r.DryRun)
	}
}

// Through a client built read-only, a dry run that called a write by
// mistake would be refused before the request left: the refusal is final.
func TestReadOnlyRefusalIsNotRetried(t *testing.T) {
	err := &triage.Error{Kind: triage.KindTransport, Method: "POST", Path: "/threat_indicators", Err: httpclient.ErrReadOnly}
	if !errors.Is(err, httpclient.ErrReadOnly) || err.Retryable() {
		t.Fatalf("a read-only refusal: retryable %v", err.Retryable())
	}
}

func TestAWorkerOfDryRunsOnlyLeavesRealJobs(t *testing.T) {
	tr := &fakeTriage{}
	w := newWorker(t, noRetry, tr, &fakeClaims{}).WithReader(&fakeReader{}).OnlyDryRuns()
	out := w.Handle(context.Background(), job(t, message.ActionCreate, "MD5", md5Value), attempt)
	if out.Kind() != bus.KindSnooze || len(tr.ops()) > 0 {
		t.Fatalf("a real job: %s, calls %v; want snoozed untouched", out.Kind(), tr.ops())
	}
	out = w.Handle(context.Background(), dryJob(t, message.ActionCreate, "MD5", md5Value), attempt)
	if _, r := result(t, out); r.Status != message.StatusWouldCreate {
		t.Fatalf("a dry-run job: %s", r.Status)
	}
}

// The Triage client is a Reader.
var _ worker.Reader = (*triage.Client)(nil)
