package worker_test

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/tqtriage/tqtriage/bus"
	"github.com/tqtriage/tqtriage/internal/retry"
	"github.com/tqtriage/tqtriage/mapping"
	"github.com/tqtriage/tqtriage/message"
	"github.com/tqtriage/tqtriage/triage"
	"github.com/tqtriage/tqtriage/worker"
)

// The errors the Triage client returns, built as triage.CheckResponse and
// the client's transport path build them.
var (
	errDuplicate = &triage.Error{Kind: triage.KindDuplicate, StatusCode: 422, Method: http.MethodPost, Path: "/threat_indicators",
		Messages: []string{"Threat value has already been taken"}}
	errNotFound = &triage.Error{Kind: triage.KindNotFound, Method: http.MethodGet, Path: "/threat_indicators",
		Messages: []string{`no MD5 indicator with value "x"`}}
)

func serverError(code int, after time.Duration) error {
	return &triage.Error{Kind: triage.KindServer, StatusCode: code, Method: http.MethodPost, Path: "/threat_indicators", RetryAfterDelay: after}
}

func rateLimited(after time.Duration) error {
	return &triage.Error{Kind: triage.KindRateLimited, StatusCode: 429, Method: http.MethodPost, Path: "/threat_indicators", RetryAfterDelay: after}
}

// call is one call the fake Triage received.
type call struct {
	op                  string // create, update, find
	id, level, source   string
	threatType, valueOf string
}

// fakeTriage answers each call with its function (nil: a plain success),
// and records the calls.
type fakeTriage struct {
	mu     sync.Mutex
	calls  []call
	create func(n int, in triage.NewIndicator) (*triage.Indicator, error)
	update func(n int, id, level, source string) (*triage.Indicator, error)
	find   func(n int, threatType, value string) (*triage.Indicator, error)
	get    func(n int, id string) (*triage.Indicator, error)
}

func (f *fakeTriage) record(c call) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, c)
	n := 0
	for _, x := range f.calls {
		if x.op == c.op {
			n++
		}
	}
	return n
}

func (f *fakeTriage) CreateIndicator(_ context.Context, in triage.NewIndicator) (*triage.Indicator, error) {
	n := f.record(call{op: "create", level: in.ThreatLevel, source: in.ThreatSource, threatType: in.ThreatType, valueOf: in.ThreatValue})
	if f.create != nil {
		return f.create(n, in)
	}
	return &triage.Indicator{ID: "100", ThreatLevel: in.ThreatLevel, ThreatType: in.ThreatType, ThreatValue: in.ThreatValue, ThreatSource: in.ThreatSource}, nil
}

func (f *fakeTriage) UpdateIndicator(_ context.Context, id, level, source string) (*triage.Indicator, error) {
	n := f.record(call{op: "update", id: id, level: level, source: source})
	if f.update != nil {
		return f.update(n, id, level, source)
	}
	return &triage.Indicator{ID: id, ThreatLevel: level, ThreatType: "MD5", ThreatValue: md5Value, ThreatSource: source}, nil
}

func (f *fakeTriage) GetIndicator(_ context.Context, id string) (*triage.Indicator, error) {
	n := f.record(call{op: "get", id: id})
	if f.get != nil {
		return f.get(n, id)
	}
	return &triage.Indicator{ID: id, ThreatLevel: "Malicious", ThreatType: "MD5", ThreatValue: md5Value, ThreatSource: "ThreatQ"}, nil
}

func (f *fakeTriage) FindIndicator(_ context.Context, threatType, value, source string) (*triage.Indicator, error) {
	n := f.record(call{op: "find", threatType: threatType, valueOf: value, source: source})
	if f.find != nil {
		return f.find(n, threatType, value)
	}
	return nil, errNotFound
}

func (f *fakeTriage) ops() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []string
	for _, c := range f.calls {
		out = append(out, c.op)
	}
	return out
}

func (f *fakeTriage) last(op string) call {
	f.mu.Lock()
	defer f.mu.Unlock()
	for i := len(f.calls) - 1; i >= 0; i-- {
		if f.calls[i].op == op {
			return f.calls[i]
		}
	}
	return call{}
}

// fakeClaims admits what admit says (nil: everything), and records the
// claims.
type fakeClaims struct {
	mu     sync.Mutex
	claims []string // run/key/limit
	admit  func(runID, key string, limit int) (bus.Admission, error)
}

func (c *fakeClaims) Claim(_ context.Context, runID, key string, limit int) (bus.Admission, error) {
	c.mu.Lock()
	c.claims = append(c.claims, runID+"/"+key)
	c.mu.Unlock()
	if c.admit != nil {
		return c.admit(runID, key, limit)
	}
	return bus.Admission{Admitted: true, Slot: 1, Count: 1}, nil
}

func (c *fakeClaims) count() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.claims)
}

// transientErr is a failure of the bus that says it may pass, as bus's
// own errors do.
type transientErr struct{ error }

func (transientErr) Retryable() bool { return true }
func (e transientErr) Unwrap() error { return e.error }

const (
	md5Value = "d41d8cd98f00b204e9800998ecf8427e"
	runID    = "run-1"
)

// job makes a job as the executor hands it to the worker: through
// message.ParseJob, which fills in the default reply subject.
func job(t *testing.T, action message.Action, typ, value string, edit ...func(*message.Job)) message.Job {
	t.Helper()
	j := message.Job{V: message.Version, RunID: runID, Action: action, Seq: 7, Indicator: message.Indicator{ID: 42, Type: typ, Value: value}}
	for _, e := range edit {
		e(&j)
	}
	data, err := json.Marshal(j)
	if err != nil {
		t.Fatal(err)
	}
	parsed, err := message.ParseJob(message.JobSubject(action), data)
	if err != nil {
		t.Fatalf("test job does not parse: %v", err)
	}
	return parsed
}

var attempt = bus.Attempt{N: 2, Max: 5, Subject: "tqtriage.jobs.create", Seq: 1234}

// noRetry makes one Triage call per delivery, so that an error class
// reaches the outcome as the client returned it.
var noRetry = worker.Config{Retry: retry.None}

func newWorker(t *testing.T, cfg worker.Config, tr worker.Triage, c worker.Claims) *worker.Worker {
	t.Helper()
	w, err := worker.New(cfg, tr, c)
	if err != nil {
		t.Fatal(err)
	}
	return w
}

// result is the one publication of a Done or dead-letter outcome, parsed.
func result(t *testing.T, out bus.Outcome) (bus.Publication, message.Result) {
	t.Helper()
	pubs := out.Publications()
	if len(pubs) != 1 {
		t.Fatalf("outcome %s has %d publications; want one result", out.Kind(), len(pubs))
	}
	r, err := message.ParseResult(pubs[0].Data)
	if err != nil {
		t.Fatalf("published result does not parse: %v\n%s", err, pubs[0].Data)
	}
	return pubs[0], r
}

func TestEachStatusIsAnsweredWithItsResult(t *testing.T) {
	existing := &triage.Indicator{ID: "55", ThreatLevel: mapping.LevelBenign, ThreatType: "MD5", ThreatValue: md5Value, ThreatSource: "Analyst",
		CreatedAt: time.Date(2024, 1, 2, 3, 4, 5, 0, time.UTC)}
	found := func(int, string, string) (*triage.Indicator, error) { return existing, nil }
	createAttrs := func(id, level, source string) []message.Attribute {
		return []message.Attribute{{Name: mapping.AttrID, Value: id}, {Name: mapping.AttrThreatLevel, Value: level}, {Name: mapping.AttrThreatSource, Value: source}}
	}
	for _, tc := range []struct {
		name    string
		job     message.Job
		triage  *fakeTriage
		claims  *fakeClaims
		status  message.Status
		reason  string // a part of it; "" for none
		ops     []string
		claimed bool
		// attempts is the result's Attempts: the delivery's N once
		// Triage was reached, 0 when not.
		attempts int
		triageID string
		attrs    []message.Attribute
	}{{
		name: "created", job: job(t, message.ActionCreate, "MD5", strings.ToUpper(md5Value)),
		triage: &fakeTriage{}, status: message.StatusCreated, ops: []string{"create"}, claimed: true, attempts: 2, triageID: "100",
		attrs: createAttrs("100", mapping.LevelMalicious, worker.DefaultThreatSource),
	}, {
		name: "exists: a duplicate on create is looked up, and its own level and source written back", job: job(t, message.ActionCreate, "MD5", md5Value),
		triage: &fakeTriage{create: func(int, triage.NewIndicator) (*triage.Indicator, error) { return nil, errDuplicate }, find: found},
		status: message.StatusExists, ops: []string{"create", "find"}, claimed: true, attempts: 2, triageID: "55",
		attrs: createAttrs("55", mapping.LevelBenign, "Analyst"),
	}, {
		name: "updated", job: job(t, message.ActionUpdate, "MD5", md5Value),
		triage: &fakeTriage{find: found}, status: message.StatusUpdated, ops: []string{"find", "update"}, claimed: true, attempts: 2, triageID: "55",
		attrs: []message.Attribute{{Name: mapping.AttrThreatLevel, Value: mapping.LevelMalicious}, {Name: mapping.AttrThreatSource, Value: worker.DefaultThreatSource}},
	}, {
		name: "not_found: update without upsert creates nothing", job: job(t, message.ActionUpdate, "MD5", md5Value),
		triage: &fakeTriage{}, status: message.StatusNotFound, reason: "upsert", ops: []string{"find"}, claimed: true, attempts: 2,
	}, {
		name: "upsert creates what update does not find", job: job(t, message.ActionUpdate, "MD5", md5Value, func(j *message.Job) { j.Upsert = true }),
		triage: &fakeTriage{}, status: message.StatusCreated, ops: []string{"find", "create"}, claimed: true, attempts: 2, triageID: "100",
		attrs: createAttrs("100", mapping.LevelMalicious, worker.DefaultThreatSource),
	}, {
		name: "invalid type", job: job(t, message.ActionCreate, "IP Address", "198.51.100.23"),
		triage: &fakeTriage{}, status: message.StatusInvalid, reason: "unsupported type",
	}, {
		name: "invalid value", job: job(t, message.ActionCreate, "MD5", "d41d8cd98f00b204e9800998ecf842"),
		triage: &fakeTriage{}, status: message.StatusInvalid, reason: "MD5",
	}, {
		name: "invalid threat level in the job", job: job(t, message.ActionCreate, "MD5", md5Value, func(j *message.Job) { j.ThreatLevel = "Scary" }),
		triage: &fakeTriage{}, status: message.StatusInvalid, reason: `threat level "Scary"`,
	}, {
		name: "skipped by the cap", job: job(t, message.ActionCreate, "MD5", md5Value),
		triage: &fakeTriage{},
		claims: &fakeClaims{admit: func(string, string, int) (bus.Admission, error) { return bus.Admission{Count: 3}, nil }},
		status: message.StatusSkipped, reason: "limit of 3 objects per run", claimed: true,
	}} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.claims == nil {
				tc.claims = &fakeClaims{}
			}
			w := newWorker(t, worker.Config{Retry: retry.None, ObjectsPerRun: 3}, tc.triage, tc.claims)
			out := w.Handle(context.Background(), tc.job, attempt)
			if out.Kind() != bus.KindDone || out.Label() != string(tc.status) {
				t.Fatalf("outcome %s %q (%v); want done %q", out.Kind(), out.Label(), out.Error(), tc.status)
			}
			pub, r := result(t, out)
			if r.Status != tc.status || r.RunID != runID || r.Action != tc.job.Action || r.Seq != 7 || r.Indicator != tc.job.Indicator {
				t.Errorf("result %+v does not answer job %+v with %s", r, tc.job, tc.status)
			}
			if tc.reason == "" && r.Reason != "" || !strings.Contains(r.Reason, tc.reason) {
				t.Errorf("reason %q; want one containing %q", r.Reason, tc.reason)
			}
			if r.Attempts != tc.attempts {
				t.Errorf("attempts %d; want %d", r.Attempts, tc.attempts)
			}
			if !slices.Equal(tc.triage.ops(), tc.ops) {
				t.Errorf("Triage calls %v; want %v", tc.triage.ops(), tc.ops)
			}
			if got := tc.claims.count() > 0; got != tc.claimed {
				t.Errorf("claimed %v; want %v", got, tc.claimed)
			}
			switch {
			case tc.triageID == "" && r.Triage != nil:
				t.Errorf("result carries Triage's view %+v; want none", r.Triage)
			case tc.triageID != "" && (r.Triage == nil || r.Triage.ID != tc.triageID):
				t.Errorf("result's Triage view %+v; want id %s", r.Triage, tc.triageID)
			}
			if !slices.Equal(r.Attributes, tc.attrs) {
				t.Errorf("attributes %+v; want %+v", r.Attributes, tc.attrs)
			}
			if pub.Subject != message.ResultSubject(runID) {
				t.Errorf("published on %s; want %s", pub.Subject, message.ResultSubject(runID))
			}
			if want := message.ResultMsgID(runID, tc.job.Action, 42, attempt.Seq); pub.MsgID != want {
				t.Errorf("message id %q; want %q", pub.MsgID, want)
			}
		})
	}
}

func TestTriageIsSentTheNormalisedValue(t *testing.T) {
	tr := &fakeTriage{}
	w := newWorker(t, noRetry, tr, &fakeClaims{})
	w.Handle(context.Background(), job(t, message.ActionCreate, "FQDN", "  Mail.Example.ORG "), attempt)
	if c := tr.last("create"); c.threatType != mapping.TriageHostname || c.valueOf != "mail.example.org" {
		t.Fatalf("created %s %q; want Hostname %q", c.threatType, c.valueOf, "mail.example.org")
	}
}

func TestClaimIsOfTheRunAndTheNormalisedIndicatorAgainstTheConfiguredCap(t *testing.T) {
	var got struct {
		run, key string
		limit    int
	}
	claims := &fakeClaims{admit: func(run, key string, limit int) (bus.Admission, error) {
		got.run, got.key, got.limit = run, key, limit
		return bus.Admission{Admitted: true, Slot: 1}, nil
	}}
	w := newWorker(t, worker.Config{Retry: retry.None, ObjectsPerRun: 77}, &fakeTriage{}, claims)
	w.Handle(context.Background(), job(t, message.ActionCreate, "MD5", strings.ToUpper(md5Value)), attempt)
	if want := bus.ClaimKey(mapping.TriageMD5, md5Value); got.run != runID || got.key != want || got.limit != 77 {
		t.Fatalf("claimed %+v; want run %s, key %s, limit 77", got, runID, want)
	}
}

func TestJobOverridesTheConfiguredThreatLevelAndSource(t *testing.T) {
	for _, tc := range []struct {
		name                string
		cfg                 worker.Config
		jobLevel, jobSource string
		level, source       string
	}{
		{"defaults", worker.Config{}, "", "", mapping.LevelMalicious, worker.DefaultThreatSource},
		{"configured", worker.Config{ThreatLevel: "benign", ThreatSource: "Feed"}, "", "", mapping.LevelBenign, "Feed"},
		{"the job's own", worker.Config{ThreatLevel: "benign", ThreatSource: "Feed"}, "SUSPICIOUS", "Analyst", mapping.LevelSuspicious, "Analyst"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, action := range []message.Action{message.ActionCreate, message.ActionUpdate} {
				tr := &fakeTriage{find: func(int, string, string) (*triage.Indicator, error) { return &triage.Indicator{ID: "9"}, nil }}
				cfg := tc.cfg
				cfg.Retry = retry.None
				w := newWorker(t, cfg, tr, &fakeClaims{})
				j := job(t, action, "MD5", md5Value, func(j *message.Job) { j.ThreatLevel, j.ThreatSource = tc.jobLevel, tc.jobSource })
				out := w.Handle(context.Background(), j, attempt)
				if out.Kind() != bus.KindDone {
					t.Fatalf("%s: outcome %s (%v)", action, out.Kind(), out.Error())
				}
				c := tr.last(string(action))
				if c.level != tc.level || c.source != tc.source {
					t.Errorf("%s sent level %q, source %q; want %q, %q", action, c.level, c.source, tc.level, tc.source)
				}
				if action == message.ActionUpdate && c.id != "9" {
					t.Errorf("updated indicator %q; want the one found, 9", c.id)
				}
			}
		})
	}
}

func TestNewRefusesAnUnknownThreatLevel(t *testing.T) {
	if _, err := worker.New(worker.Config{ThreatLevel: "Scary"}, &fakeTriage{}, &fakeClaims{}); err == nil {
		t.Fatal("New accepted the threat level Scary")
	}
}

// TestAForeignReplyToIsAnsweredInvalidOnTheRunsOwnSubject: a job cannot
// send its result into another run; it is answered invalid, in its own
// run, and never reaches Triage.
func TestAForeignReplyToIsAnsweredInvalidOnTheRunsOwnSubject(t *testing.T) {
	tr := &fakeTriage{}
	w := newWorker(t, noRetry, tr, &fakeClaims{})
	j := job(t, message.ActionCreate, "MD5", md5Value, func(j *message.Job) { j.ReplyTo = "tqtriage.results.elsewhere" })
	pub, r := result(t, w.Handle(context.Background(), j, attempt))
	if pub.Subject != message.ResultSubject(runID) || r.Status != message.StatusInvalid || !strings.Contains(r.Reason, "reply_to") {
		t.Fatalf("published %s on %s (%q); want invalid on the run's own subject", r.Status, pub.Subject, r.Reason)
	}
	if ops := tr.ops(); len(ops) != 0 {
		t.Fatalf("Triage calls %v for a job answered invalid", ops)
	}
}

func TestResultMessageIDNamesTheStoredJobItAnswers(t *testing.T) {
	w := newWorker(t, noRetry, &fakeTriage{}, &fakeClaims{})
	j := job(t, message.ActionCreate, "MD5", md5Value)
	first, _ := result(t, w.Handle(context.Background(), j, bus.Attempt{N: 1, Max: 5, Seq: 10}))
	again, _ := result(t, w.Handle(context.Background(), j, bus.Attempt{N: 2, Max: 5, Seq: 10}))
	replayed, _ := result(t, w.Handle(context.Background(), j, bus.Attempt{N: 1, Max: 5, Seq: 99}))
	if first.MsgID != again.MsgID {
		t.Errorf("a redelivery's result has id %q, the first %q: the repeat would be stored twice", again.MsgID, first.MsgID)
	}
	if first.MsgID == replayed.MsgID {
		t.Errorf("a replayed job (a new stored message) has the same result id %q: its answer would be dropped", first.MsgID)
	}
}

// tlsFailure is what http.Client.Do returns for a server whose
// certificate is not trusted: no answer, and none will come by waiting.
var tlsFailure = &url.Error{Op: "Post", URL: "https://triage.example/threat_indicators", Err: x509.UnknownAuthorityError{}}

func TestTriageErrorsReachTheExecutorWithTheirRetryability(t *testing.T) {
	refused := &url.Error{Op: "Post", URL: "https://triage.example/threat_indicators", Err: syscall.ECONNREFUSED}
	for _, tc := range []struct {
		name       string
		triage     *fakeTriage
		retryable  bool
		retryAfter time.Duration
		is         error // the error matches it
	}{
		{"503 with Retry-After", &fakeTriage{create: func(int, triage.NewIndicator) (*triage.Indicator, error) {
			return nil, serverError(503, 7*time.Second)
		}}, true, 7 * time.Second, triage.ErrServer},
		{"500 without Retry-After", &fakeTriage{create: func(int, triage.NewIndicator) (*triage.Indicator, error) {
			return nil, serverError(500, 0)
		}}, true, 0, triage.ErrServer},
		{"422 validation", &fakeTriage{create: func(int, triage.NewIndicator) (*triage.Indicator, error) {
			return nil, &triage.Error{Kind: triage.KindValidation, StatusCode: 422, Method: "POST", Path: "/threat_indicators", Messages: []string{"Threat level is not included in the list"}}
		}}, false, 0, triage.ErrValidation},
		{"400 client error", &fakeTriage{create: func(int, triage.NewIndicator) (*triage.Indicator, error) {
			return nil, &triage.Error{Kind: triage.KindClient, StatusCode: 400, Method: "POST", Path: "/threat_indicators"}
		}}, false, 0, triage.ErrClient},
		{"connection refused", &fakeTriage{create: func(int, triage.NewIndicator) (*triage.Indicator, error) {
			return nil, &triage.Error{Kind: triage.KindTransport, Method: "POST", Path: "/threat_indicators", Err: refused}
		}}, true, 0, syscall.ECONNREFUSED},
		{"untrusted certificate", &fakeTriage{create: func(int, triage.NewIndicator) (*triage.Indicator, error) {
			return nil, &triage.Error{Kind: triage.KindTransport, Method: "POST", Path: "/threat_indicators", Err: tlsFailure}
		}}, false, 0, triage.ErrTransport},
		{"a duplicate that the lookup does not find", &fakeTriage{create: func(int, triage.NewIndicator) (*triage.Indicator, error) {
			return nil, errDuplicate
		}}, true, 0, triage.ErrNotFound},
		{"a duplicate whose lookup fails", &fakeTriage{
			create: func(int, triage.NewIndicator) (*triage.Indicator, error) { return nil, errDuplicate },
			find:   func(int, string, string) (*triage.Indicator, error) { return nil, serverError(502, 0) },
		}, true, 0, triage.ErrServer},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := newWorker(t, noRetry, tc.triage, &fakeClaims{})
			out := w.Handle(context.Background(), job(t, message.ActionCreate, "MD5", md5Value), attempt)
			if out.Kind() != bus.KindError {
				t.Fatalf("outcome %s %q; want an error for the executor", out.Kind(), out.Label())
			}
			err := out.Error()
			if got := retry.IsRetryable(err); got != tc.retryable {
				t.Errorf("retryable %v; want %v (%v)", got, tc.retryable, err)
			}
			after, _ := retry.RetryAfter(err)
			if after != tc.retryAfter {
				t.Errorf("Retry-After %v; want %v", after, tc.retryAfter)
			}
			if !errors.Is(err, tc.is) {
				t.Errorf("error %v does not match %v", err, tc.is)
			}
			if len(out.Publications()) != 0 {
				t.Errorf("an error outcome publishes %d messages", len(out.Publications()))
			}
		})
	}
}

func TestUpdateErrorsReachTheExecutorWithTheirRetryability(t *testing.T) {
	for _, tc := range []struct {
		name      string
		triage    *fakeTriage
		retryable bool
	}{
		{"lookup 503", &fakeTriage{find: func(int, string, string) (*triage.Indicator, error) { return nil, serverError(503, 0) }}, true},
		{"update 503", &fakeTriage{
			find:   func(int, string, string) (*triage.Indicator, error) { return &triage.Indicator{ID: "9"}, nil },
			update: func(int, string, string, string) (*triage.Indicator, error) { return nil, serverError(503, 0) },
		}, true},
		{"update 403", &fakeTriage{
			find: func(int, string, string) (*triage.Indicator, error) { return &triage.Indicator{ID: "9"}, nil },
			update: func(int, string, string, string) (*triage.Indicator, error) {
				return nil, &triage.Error{Kind: triage.KindClient, StatusCode: 403, Method: "PUT", Path: "/threat_indicators/9"}
			},
		}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := newWorker(t, noRetry, tc.triage, &fakeClaims{})
			out := w.Handle(context.Background(), job(t, message.ActionUpdate, "MD5", md5Value), attempt)
			if out.Kind() != bus.KindError || retry.IsRetryable(out.Error()) != tc.retryable {
				t.Fatalf("outcome %s, error %v; want an error with retryable %v", out.Kind(), out.Error(), tc.retryable)
			}
		})
	}
}

// TestAnIndicatorDeletedBetweenLookupAndUpdateIsNotFound: it is not in
// Triage any more, which is what not_found says.
func TestAnIndicatorDeletedBetweenLookupAndUpdateIsNotFound(t *testing.T) {
	tr := &fakeTriage{
		find: func(int, string, string) (*triage.Indicator, error) { return &triage.Indicator{ID: "9"}, nil },
		update: func(int, string, string, string) (*triage.Indicator, error) {
			return nil, &triage.Error{Kind: triage.KindNotFound, StatusCode: 404, Method: "PUT", Path: "/threat_indicators/9"}
		},
	}
	w := newWorker(t, noRetry, tr, &fakeClaims{})
	_, r := result(t, w.Handle(context.Background(), job(t, message.ActionUpdate, "MD5", md5Value), attempt))
	if r.Status != message.StatusNotFound {
		t.Fatalf("status %s; want not_found", r.Status)
	}
}

func TestClaimFailureIsRetryableAndDoesNotReachTriage(t *testing.T) {
	tr := &fakeTriage{}
	claims := &fakeClaims{admit: func(string, string, int) (bus.Admission, error) {
		return bus.Admission{}, transientErr{errors.New("claim run-1: read count: nats: timeout")}
	}}
	w := newWorker(t, noRetry, tr, claims)
	out := w.Handle(context.Background(), job(t, message.ActionCreate, "MD5", md5Value), attempt)
	if out.Kind() != bus.KindError || !retry.IsRetryable(out.Error()) {
		t.Fatalf("outcome %s, error %v; want a retryable error", out.Kind(), out.Error())
	}
	if len(tr.ops()) != 0 {
		t.Fatalf("Triage was called (%v) without an admission", tr.ops())
	}
}

func TestRetryWithinTheDeliveryRetriesA503ThenSucceeds(t *testing.T) {
	tr := &fakeTriage{create: func(n int, in triage.NewIndicator) (*triage.Indicator, error) {
		if n == 1 {
			return nil, serverError(503, 0)
		}
		return &triage.Indicator{ID: "100", ThreatLevel: in.ThreatLevel, ThreatType: in.ThreatType, ThreatValue: in.ThreatValue, ThreatSource: in.ThreatSource}, nil
	}}
	cfg := worker.Config{Retry: retry.Policy{MaxAttempts: 3, InitialInterval: time.Millisecond, MaxInterval: time.Millisecond}}
	w := newWorker(t, cfg, tr, &fakeClaims{})
	out := w.Handle(context.Background(), job(t, message.ActionCreate, "MD5", md5Value), attempt)
	if out.Kind() != bus.KindDone || out.Label() != string(message.StatusCreated) {
		t.Fatalf("outcome %s %q (%v); want created", out.Kind(), out.Label(), out.Error())
	}
	if got := tr.ops(); !slices.Equal(got, []string{"create", "create"}) {
		t.Fatalf("Triage calls %v; want two creates", got)
	}
	if _, r := result(t, out); r.Attempts != attempt.N {
		t.Fatalf("attempts %d; want the delivery's %d, not the calls within it", r.Attempts, attempt.N)
	}
}

func TestRetryWithinTheDeliveryEndsAfterItsAttempts(t *testing.T) {
	tr := &fakeTriage{create: func(int, triage.NewIndicator) (*triage.Indicator, error) { return nil, serverError(503, 0) }}
	cfg := worker.Config{Retry: retry.Policy{MaxAttempts: 3, InitialInterval: time.Millisecond, MaxInterval: time.Millisecond}}
	w := newWorker(t, cfg, tr, &fakeClaims{})
	out := w.Handle(context.Background(), job(t, message.ActionCreate, "MD5", md5Value), attempt)
	if out.Kind() != bus.KindError || !retry.IsRetryable(out.Error()) {
		t.Fatalf("outcome %s (%v); want a retryable error", out.Kind(), out.Error())
	}
	if n := len(tr.ops()); n != 3 {
		t.Fatalf("%d Triage calls; want 3", n)
	}
}

func TestRetryAfterLongerThanTheRetryPolicyAllowsEndsTheDeliveryAtOnce(t *testing.T) {
	tr := &fakeTriage{create: func(int, triage.NewIndicator) (*triage.Indicator, error) { return nil, rateLimited(time.Minute) }}
	cfg := worker.Config{Retry: retry.Policy{MaxAttempts: 3, InitialInterval: time.Millisecond, MaxInterval: time.Millisecond, MaxRetryAfter: time.Second}}
	w := newWorker(t, cfg, tr, &fakeClaims{})
	out := w.Handle(context.Background(), job(t, message.ActionCreate, "MD5", md5Value), attempt)
	if out.Kind() != bus.KindSnooze || out.Delay() != time.Minute {
		t.Fatalf("outcome %s after %v; want the job snoozed for the minute, uncounted", out.Kind(), out.Delay())
	}
	if n := len(tr.ops()); n != 1 {
		t.Fatalf("%d Triage calls; want 1: a minute is the redelivery's to wait, not the handler's", n)
	}
}

func TestGiveUpAnswersAFailedResultAndDeadLettersTheJob(t *testing.T) {
	for _, action := range []message.Action{message.ActionCreate, message.ActionUpdate} {
		t.Run(string(action), func(t *testing.T) {
			w := newWorker(t, noRetry, &fakeTriage{}, &fakeClaims{})
			j := job(t, action, "MD5", md5Value)
			a := bus.Attempt{N: 5, Max: 5, Subject: message.JobSubject(action), Seq: 321}
			out := w.GiveUp(j, a, "gave up after 5 deliveries: triage: POST /threat_indicators: 503 server error")
			if out.Kind() != bus.KindDeadLetter {
				t.Fatalf("outcome %s; want a dead letter", out.Kind())
			}
			if want := "tqtriage.dlq." + string(action); out.DeadLetterSubject() != want {
				t.Errorf("dead letter on %s; want %s", out.DeadLetterSubject(), want)
			}
			if !strings.Contains(out.Reason(), "gave up after 5 deliveries") {
				t.Errorf("dead letter reason %q", out.Reason())
			}
			pub, r := result(t, out)
			if r.Status != message.StatusFailed || r.Attempts != 5 || r.Reason != out.Reason() || r.Indicator.ID != 42 || r.Seq != 7 {
				t.Errorf("failed result %+v", r)
			}
			if len(r.Attributes) != 0 || r.Triage != nil {
				t.Errorf("a failed result carries attributes %v or a Triage view %v", r.Attributes, r.Triage)
			}
			if pub.Subject != message.ResultSubject(runID) || pub.MsgID != message.ResultMsgID(runID, action, 42, 321) {
				t.Errorf("published %s id %s", pub.Subject, pub.MsgID)
			}
		})
	}
}

func TestConsumerRunsTheWorkerOnTheJobsConsumer(t *testing.T) {
	w := newWorker(t, worker.Config{MaxDeliver: 4, RedeliveryDelay: time.Second, MaxRedeliveryDelay: time.Minute, Concurrency: 3}, &fakeTriage{}, &fakeClaims{})
	c := w.Consumer(zerolog.Nop(), nil)
	if c.Durable != bus.ConsumerWorkers || c.Undecodable != message.DLQInvalid || c.MaxDeliver != 4 ||
		c.RedeliveryDelay != time.Second || c.MaxRedeliveryDelay != time.Minute || c.Concurrency != 6 {
		t.Fatalf("consumer %+v; want 6 jobs in hand for 3 places in Triage", c)
	}
	if _, err := c.Decode(message.JobSubject(message.ActionUpdate), []byte(`{"v":1,"run_id":"r","action":"create","indicator":{"id":1}}`)); err == nil {
		t.Fatal("Decode accepted a create job on the update subject")
	}
	out := c.Handle(context.Background(), job(t, message.ActionCreate, "MD5", md5Value), attempt)
	if out.Kind() != bus.KindDone {
		t.Fatalf("the consumer's Handle answered %s", out.Kind())
	}
}

func TestCancelledDeliveryIsAnErrorNotAResult(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	tr := &fakeTriage{create: func(int, triage.NewIndicator) (*triage.Indicator, error) {
		cancel() // the grace period after a shutdown ran out mid-call
		return nil, &triage.Error{Kind: triage.KindTransport, Method: "POST", Path: "/threat_indicators", Err: context.Canceled}
	}}
	cfg := worker.Config{Retry: retry.Policy{MaxAttempts: 3, InitialInterval: time.Millisecond, MaxInterval: time.Millisecond}}
	w := newWorker(t, cfg, tr, &fakeClaims{})
	out := w.Handle(ctx, job(t, message.ActionCreate, "MD5", md5Value), attempt)
	if out.Kind() != bus.KindError || !errors.Is(out.Error(), context.Canceled) {
		t.Fatalf("outcome %s (%v); want an error the executor can tell is the context's", out.Kind(), out.Error())
	}
	if n := len(tr.ops()); n != 1 {
		t.Fatalf("%d Triage calls; a cancelled delivery must not try again", n)
	}
}

// withAttrs gives a job the attributes its ThreatQ indicator holds.
func withAttrs(kv ...string) func(*message.Job) {
	return func(j *message.Job) {
		for i := 0; i+1 < len(kv); i += 2 {
			j.ThreatQAttributes = append(j.ThreatQAttributes, message.Attribute{ID: int64(100 + i), Name: kv[i], Value: kv[i+1]})
		}
	}
}

// TestUpdateTargetsOnlyOurIndicator covers the order in which update finds
// the Triage indicator that is ours, and that it never takes another
// source's.
func TestUpdateTargetsOnlyOurIndicator(t *testing.T) {
	ours := func(id, source string) *triage.Indicator {
		return &triage.Indicator{ID: id, ThreatLevel: "Malicious", ThreatType: "MD5", ThreatValue: md5Value, ThreatSource: source}
	}
	for _, tc := range []struct {
		name    string
		edit    []func(*message.Job)
		triage  *fakeTriage
		status  message.Status
		ops     []string
		sources []string // of the finds, in order
		putIDs  []string // of the updates, in order
	}{
		{
			name: "the Triage id ThreatQ holds is read, then updated, without a lookup",
			edit: []func(*message.Job){withAttrs(mapping.AttrID, "325")}, triage: &fakeTriage{},
			status: message.StatusUpdated, ops: []string{"get", "update"}, putIDs: []string{"325"},
		},
		{
			name: "a Triage id of another type or value (a forged attribute): ours is looked up, the other untouched",
			edit: []func(*message.Job){withAttrs(mapping.AttrID, "666")},
			triage: &fakeTriage{
				get: func(int, string) (*triage.Indicator, error) {
					return &triage.Indicator{ID: "666", ThreatType: "URL", ThreatValue: "https://victim.example/"}, nil
				},
				find: func(int, string, string) (*triage.Indicator, error) { return ours("9", "ThreatQ"), nil },
			},
			status: message.StatusUpdated, ops: []string{"get", "find", "update"}, sources: []string{"ThreatQ"}, putIDs: []string{"9"},
		},
		{
			name:   "a Triage id that is not a number is ignored",
			edit:   []func(*message.Job){withAttrs(mapping.AttrID, "../../system/status")},
			triage: &fakeTriage{find: func(int, string, string) (*triage.Indicator, error) { return ours("9", "ThreatQ"), nil }},
			status: message.StatusUpdated, ops: []string{"find", "update"}, sources: []string{"ThreatQ"}, putIDs: []string{"9"},
		},
		{
			name: "a Triage id that is gone: ours is looked up by source",
			edit: []func(*message.Job){withAttrs(mapping.AttrID, "325")},
			triage: &fakeTriage{
				get: func(int, string) (*triage.Indicator, error) {
					return nil, &triage.Error{Kind: triage.KindNotFound, StatusCode: 404, Method: "GET", Path: "/threat_indicators/325"}
				},
				find: func(int, string, string) (*triage.Indicator, error) { return ours("9", "ThreatQ"), nil },
			},
			status: message.StatusUpdated, ops: []string{"get", "find", "update"}, sources: []string{"ThreatQ"}, putIDs: []string{"9"},
		},
		{
			name:   "only another source's indicator: not found, and it is left alone",
			triage: &fakeTriage{find: func(int, string, string) (*triage.Indicator, error) { return nil, errNotFound }},
			status: message.StatusNotFound, ops: []string{"find"}, sources: []string{"ThreatQ"},
		},
		{
			name: "the job's source, the configured one, and the one ThreatQ recorded are each ours",
			edit: []func(*message.Job){func(j *message.Job) { j.ThreatSource = "SOC feed" }, withAttrs(mapping.AttrThreatSource, "Old feed")},
			triage: &fakeTriage{find: func(n int, _, _ string) (*triage.Indicator, error) {
				if n < 3 {
					return nil, errNotFound
				}
				return ours("12", "Old feed"), nil
			}},
			status: message.StatusUpdated, ops: []string{"find", "find", "find", "update"},
			sources: []string{"SOC feed", "ThreatQ", "Old feed"}, putIDs: []string{"12"},
		},
		{
			name: "a change of source that collides: the indicator of that source is ours, its level is set",
			edit: []func(*message.Job){withAttrs(mapping.AttrID, "325")},
			triage: &fakeTriage{
				update: func(n int, id, level, source string) (*triage.Indicator, error) {
					if id == "325" {
						return nil, &triage.Error{Kind: triage.KindDuplicate, StatusCode: 422, Method: "PUT", Path: "/threat_indicators/325", Messages: []string{"has already been taken"}}
					}
					return ours(id, source), nil
				},
				find: func(int, string, string) (*triage.Indicator, error) { return ours("44", "ThreatQ"), nil },
			},
			status: message.StatusUpdated, ops: []string{"get", "update", "find", "update"}, sources: []string{"ThreatQ"}, putIDs: []string{"325", "44"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := newWorker(t, noRetry, tc.triage, &fakeClaims{})
			_, r := result(t, w.Handle(context.Background(), job(t, message.ActionUpdate, "MD5", md5Value, tc.edit...), attempt))
			if r.Status != tc.status || !slices.Equal(tc.triage.ops(), tc.ops) {
				t.Fatalf("status %s after %v; want %s after %v", r.Status, tc.triage.ops(), tc.status, tc.ops)
			}
			var sources, puts []string
			for _, c := range tc.triage.calls {
				switch c.op {
				case "find":
					sources = append(sources, c.source)
				case "update":
					puts = append(puts, c.id)
				}
			}
			if !slices.Equal(sources, tc.sources) || !slices.Equal(puts, tc.putIDs) {
				t.Fatalf("finds by source %v, updates of %v; want %v and %v", sources, puts, tc.sources, tc.putIDs)
			}
		})
	}
}

// TestCreateAgainFindsOursFirstThenWhateverIsThere: after a duplicate,
// the indicator of our source; where Triage keeps one per value, the one
// there, of another source, left unchanged.
func TestCreateAgainFindsOursFirstThenWhateverIsThere(t *testing.T) {
	foreign := &triage.Indicator{ID: "7", ThreatLevel: "Benign", ThreatType: "MD5", ThreatValue: md5Value, ThreatSource: "Triage-UI"}
	tr := &fakeTriage{
		create: func(int, triage.NewIndicator) (*triage.Indicator, error) { return nil, errDuplicate },
		find: func(n int, _, _ string) (*triage.Indicator, error) {
			if n == 1 {
				return nil, errNotFound
			}
			return foreign, nil
		},
	}
	w := newWorker(t, noRetry, tr, &fakeClaims{})
	_, r := result(t, w.Handle(context.Background(), job(t, message.ActionCreate, "MD5", md5Value), attempt))
	if r.Status != message.StatusExists || r.Triage == nil || r.Triage.ID != "7" || r.Triage.ThreatSource != "Triage-UI" {
		t.Fatalf("result %+v; want exists with the foreign indicator as Triage has it", r)
	}
	if f1, f2 := tr.calls[1], tr.calls[2]; f1.source != "ThreatQ" || f2.source != "" || slices.Contains(tr.ops(), "update") {
		t.Fatalf("lookups by %q then %q, ops %v; want ours first, then any, and no change", f1.source, f2.source, tr.ops())
	}
}

// TestResultsSayWhenTheyWereAnswered: every result, a failed one too,
// carries answered_at, by which write-back orders the results of one
// ThreatQ indicator.
func TestResultsSayWhenTheyWereAnswered(t *testing.T) {
	w := newWorker(t, noRetry, &fakeTriage{}, &fakeClaims{})
	before := time.Now()
	_, created := result(t, w.Handle(context.Background(), job(t, message.ActionCreate, "MD5", md5Value), attempt))
	_, invalid := result(t, w.Handle(context.Background(), job(t, message.ActionCreate, "IP Address", "10.0.0.1"), attempt))
	_, failed := result(t, w.GiveUp(job(t, message.ActionCreate, "MD5", md5Value), attempt, "no"))
	after := time.Now()
	var prev time.Time
	for _, r := range []message.Result{created, invalid, failed} {
		at, ok := r.Answered()
		if !ok || at.Location() != time.UTC || at.Before(before.Truncate(time.Microsecond)) || at.After(after) || at.Before(prev) {
			t.Fatalf("%s answered_at %q", r.Status, r.AnsweredAt)
		}
		prev = at
	}
}

// TestTriageSeesAtMostConcurrencyCallsAtOnce: the replica holds twice
// WORKER_CONCURRENCY jobs, so that admissions and answers go on beside
// the calls, but Triage never sees more than WORKER_CONCURRENCY of them at
// once; the others wait for a place, and a job whose replica stops while
// it waits is handed back.
func TestTriageSeesAtMostConcurrencyCallsAtOnce(t *testing.T) {
	const places = 3
	var now, most atomic.Int32
	release := make(chan struct{})
	tr := &fakeTriage{create: func(_ int, in triage.NewIndicator) (*triage.Indicator, error) {
		n := now.Add(1)
		defer now.Add(-1)
		for {
			m := most.Load()
			if n <= m || most.CompareAndSwap(m, n) {
				break
			}
		}
		<-release
		return &triage.Indicator{ID: "1", ThreatType: in.ThreatType, ThreatValue: in.ThreatValue}, nil
	}}
	w := newWorker(t, worker.Config{Concurrency: places}, tr, &fakeClaims{})
	jobs := 2 * places
	outs := make(chan bus.Outcome, jobs+1)
	for i := range jobs {
		go func() {
			j := job(t, message.ActionCreate, "MD5", fmt.Sprintf("%032x", i))
			outs <- w.Handle(context.Background(), j, attempt)
		}()
	}
	deadline := time.Now().Add(5 * time.Second)
	for now.Load() < places && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	time.Sleep(50 * time.Millisecond) // room for a fourth call, if one could start
	if most.Load() != places {
		t.Fatalf("%d calls at once; want %d", most.Load(), places)
	}
	// One more job, whose replica stops while it waits for a place.
	ctx, cancel := context.WithCancel(context.Background())
	go func() { outs <- w.Handle(ctx, job(t, message.ActionCreate, "MD5", strings.Repeat("e", 32)), attempt) }()
	time.Sleep(20 * time.Millisecond)
	cancel()
	if out := <-outs; out.Kind() != bus.KindError || !errors.Is(out.Error(), context.Canceled) {
		t.Fatalf("the job that waited: %s %v; want its context's end, for the executor to hand it back", out.Kind(), out.Error())
	}
	close(release)
	for range jobs {
		if out := <-outs; out.Label() != string(message.StatusCreated) {
			t.Fatalf("outcome %s %s", out.Kind(), out.Label())
		}
	}
	if most.Load() != places {
		t.Fatalf("%d calls at once; want %d", most.Load(), places)
	}
}
