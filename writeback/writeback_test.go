package writeback_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/tqtriage/tqtriage/bus"
	"github.com/tqtriage/tqtriage/internal/retry"
	"github.com/tqtriage/tqtriage/message"
	"github.com/tqtriage/tqtriage/threatq"
	"github.com/tqtriage/tqtriage/writeback"
)

// fakeThreatQ answers SetAttributes with set (nil: success) and records
// the calls.
type fakeThreatQ struct {
	known [][]threatq.AttributeRow // the rows of each SetAttributesKnown
	mu    sync.Mutex
	calls []setCall
	set   func(n int) error
}

type setCall struct {
	id    int64
	attrs []threatq.Attribute
}

func (f *fakeThreatQ) SetAttributes(_ context.Context, id int64, attrs []threatq.Attribute) error {
	f.mu.Lock()
	f.calls = append(f.calls, setCall{id, attrs})
	n := len(f.calls)
	f.mu.Unlock()
	if f.set != nil {
		return f.set(n)
	}
	return nil
}

// SetAttributesKnown records the rows it was given, and writes as
// SetAttributes does.
func (f *fakeThreatQ) SetAttributesKnown(ctx context.Context, id int64, attrs []threatq.Attribute, rows []threatq.AttributeRow) error {
	f.mu.Lock()
	f.known = append(f.known, rows)
	f.mu.Unlock()
	return f.SetAttributes(ctx, id, attrs)
}

func (f *fakeThreatQ) count() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.calls)
}

// setFailure is how threatq.Client.SetAttributes reports a failed write:
// its *threatq.Error, wrapped with the indicator.
func setFailure(e *threatq.Error) error {
	return fmt.Errorf("set attributes of indicator %d: %w", 42, errors.Join(e))
}

const runID = "run-1"

var attempt = bus.Attempt{N: 3, Max: 2000, Subject: message.ResultSubject(runID), Seq: 777}

func created() message.Result {
	return message.Result{V: message.Version, RunID: runID, Action: message.ActionCreate, Seq: 7,
		Indicator: message.Indicator{ID: 42, Type: "MD5", Value: "d41d8cd98f00b204e9800998ecf8427e"},
		Status:    message.StatusCreated, Attempts: 1,
		Attributes: []message.Attribute{{Name: "ID", Value: "100"}, {Name: "Threat Level", Value: "Malicious"}, {Name: "Threat Source", Value: "ThreatQ"}}}
}

// receipt is the one publication of an outcome, checked as a receipt of
// the result stored at attempt.Seq.
func receipt(t *testing.T, out bus.Outcome, r message.Result) message.Receipt {
	t.Helper()
	pubs := out.Publications()
	if len(pubs) != 1 {
		t.Fatalf("outcome %s has %d publications; want one receipt", out.Kind(), len(pubs))
	}
	p := pubs[0]
	if p.Subject != message.ReceiptSubject(r.RunID) || p.MsgID != message.ReceiptMsgID(attempt.Seq) {
		t.Errorf("receipt published on %s id %s; want %s id %s", p.Subject, p.MsgID, message.ReceiptSubject(r.RunID), message.ReceiptMsgID(attempt.Seq))
	}
	rc, err := message.ParseReceipt(p.Data)
	if err != nil {
		t.Fatalf("receipt does not parse: %v\n%s", err, p.Data)
	}
	if rc.RunID != r.RunID || rc.Seq != r.Seq || rc.Indicator != r.Indicator.ID || rc.Result != attempt.Seq {
		t.Errorf("receipt %+v does not name result %d of job %d, indicator %d", rc, attempt.Seq, r.Seq, r.Indicator.ID)
	}
	return rc
}

func TestResultWithoutAttributesGetsANothingReceiptAndNoWrite(t *testing.T) {
	for _, s := range []message.Status{message.StatusNotFound, message.StatusInvalid, message.StatusSkipped, message.StatusFailed} {
		t.Run(string(s), func(t *testing.T) {
			tq := &fakeThreatQ{}
			r := created()
			r.Status, r.Attributes = s, nil
			out := writeback.New(writeback.Config{}, tq).Handle(context.Background(), r, attempt)
			if out.Kind() != bus.KindDone || out.Label() != "nothing" {
				t.Fatalf("outcome %s %q; want done \"nothing\"", out.Kind(), out.Label())
			}
			if rc := receipt(t, out, r); rc.Outcome != message.ReceiptNothing || rc.Reason != "" {
				t.Errorf("receipt %+v; want nothing", rc)
			}
			if tq.count() != 0 {
				t.Errorf("ThreatQ was written %d times", tq.count())
			}
		})
	}
}

func TestAttributesAreWrittenAndReceipted(t *testing.T) {
	tq := &fakeThreatQ{}
	r := created()
	out := writeback.New(writeback.Config{}, tq).Handle(context.Background(), r, attempt)
	if out.Kind() != bus.KindDone || out.Label() != "written" {
		t.Fatalf("outcome %s %q (%v); want done \"written\"", out.Kind(), out.Label(), out.Error())
	}
	if rc := receipt(t, out, r); rc.Outcome != message.ReceiptWritten {
		t.Errorf("receipt outcome %q; want written", rc.Outcome)
	}
	want := []threatq.Attribute{{Name: "ID", Value: "100"}, {Name: "Threat Level", Value: "Malicious"}, {Name: "Threat Source", Value: "ThreatQ"}}
	if len(tq.calls) != 1 || tq.calls[0].id != 42 || !slices.Equal(tq.calls[0].attrs, want) {
		t.Fatalf("ThreatQ calls %+v; want one write of %v on indicator 42", tq.calls, want)
	}
}

func TestResultWithoutAnIndicatorIDIsDeadLetteredWithAReceipt(t *testing.T) {
	tq := &fakeThreatQ{}
	r := created()
	r.Indicator.ID = 0
	out := writeback.New(writeback.Config{}, tq).Handle(context.Background(), r, attempt)
	if out.Kind() != bus.KindDeadLetter || out.DeadLetterSubject() != message.DLQWriteback {
		t.Fatalf("outcome %s on %q; want a dead letter on %s", out.Kind(), out.DeadLetterSubject(), message.DLQWriteback)
	}
	if !strings.Contains(out.Reason(), "no ThreatQ indicator id") {
		t.Errorf("reason %q", out.Reason())
	}
	if rc := receipt(t, out, r); rc.Outcome != message.ReceiptDeadLettered || rc.Reason != out.Reason() {
		t.Errorf("receipt %+v; want dead_lettered with the reason", rc)
	}
	if tq.count() != 0 {
		t.Errorf("ThreatQ was written %d times for an indicator without id", tq.count())
	}
}

func TestSetAttributesFailuresReachTheExecutorWithTheirRetryability(t *testing.T) {
	path := "/api/indicators/42/attributes"
	for _, tc := range []struct {
		name       string
		err        error
		retryable  bool
		retryAfter time.Duration
	}{
		{"503 with Retry-After", setFailure(&threatq.Error{StatusCode: 503, Method: http.MethodGet, Path: path, RetryAfterDelay: 9 * time.Second}), true, 9 * time.Second},
		{"408", setFailure(&threatq.Error{StatusCode: 408, Method: http.MethodPost, Path: path}), true, 0},
		{"connection reset", setFailure(&threatq.Error{Method: http.MethodGet, Path: path, Err: &url.Error{Op: "Get", URL: "https://tq.example" + path, Err: syscall.ECONNRESET}}), true, 0},
		{"400", setFailure(&threatq.Error{StatusCode: 400, Method: http.MethodPut, Path: path + "/5"}), false, 0},
		{"404: no such indicator", setFailure(&threatq.Error{StatusCode: 404, Method: http.MethodGet, Path: path}), false, 0},
		{"501", setFailure(&threatq.Error{StatusCode: 501, Method: http.MethodPost, Path: path}), false, 0},
		{"refused before sending", fmt.Errorf("set attributes of indicator 42: %w: an attribute has no name", threatq.ErrInvalidArgument), false, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tq := &fakeThreatQ{set: func(int) error { return tc.err }}
			out := writeback.New(writeback.Config{Retry: retry.None}, tq).Handle(context.Background(), created(), attempt)
			if out.Kind() != bus.KindError {
				t.Fatalf("outcome %s; want an error for the executor", out.Kind())
			}
			if got := retry.IsRetryable(out.Error()); got != tc.retryable {
				t.Errorf("retryable %v; want %v (%v)", got, tc.retryable, out.Error())
			}
			if after, _ := retry.RetryAfter(out.Error()); after != tc.retryAfter {
				t.Errorf("Retry-After %v; want %v", after, tc.retryAfter)
			}
			if len(out.Publications()) != 0 {
				t.Errorf("an error publishes %d messages: a receipt before the write", len(out.Publications()))
			}
		})
	}
}

func TestRetryWithinTheDeliveryRetriesA503ThenWrites(t *testing.T) {
	tq := &fakeThreatQ{set: func(n int) error {
		if n == 1 {
			return setFailure(&threatq.Error{StatusCode: 503, Method: http.MethodGet, Path: "/api/indicators/42/attributes"})
		}
		return nil
	}}
	w := writeback.New(writeback.Config{Retry: retry.Policy{MaxAttempts: 3, InitialInterval: time.Millisecond, MaxInterval: time.Millisecond}}, tq)
	out := w.Handle(context.Background(), created(), attempt)
	if out.Kind() != bus.KindDone || out.Label() != "written" || tq.count() != 2 {
		t.Fatalf("outcome %s %q after %d writes; want written after 2", out.Kind(), out.Label(), tq.count())
	}
}

func TestGiveUpDeadLettersTheResultWithADeadLetteredReceipt(t *testing.T) {
	r := created()
	reason := "gave up after 2000 deliveries: threatq: GET /api/indicators/42/attributes: 503 Service Unavailable"
	out := writeback.New(writeback.Config{}, &fakeThreatQ{}).GiveUp(r, attempt, reason)
	if out.Kind() != bus.KindDeadLetter || out.DeadLetterSubject() != message.DLQWriteback || out.Reason() != reason {
		t.Fatalf("outcome %s on %q, reason %q; want a dead letter on %s", out.Kind(), out.DeadLetterSubject(), out.Reason(), message.DLQWriteback)
	}
	if rc := receipt(t, out, r); rc.Outcome != message.ReceiptDeadLettered || rc.Reason != reason {
		t.Errorf("receipt %+v; want dead_lettered with the reason", rc)
	}
}

func TestConsumerRunsTheWriterOnTheWritebackConsumer(t *testing.T) {
	c := writeback.New(writeback.Config{}, &fakeThreatQ{}).Consumer(zerolog.Nop(), nil)
	if c.Durable != bus.ConsumerWriteback || c.Undecodable != message.DLQWriteback || c.MaxDeliver != 2000 ||
		c.RedeliveryDelay != 2*time.Second || c.MaxRedeliveryDelay != time.Minute || c.Concurrency != writeback.DefaultConcurrency {
		t.Fatalf("consumer %+v; want the documented defaults", c)
	}
	if _, err := c.Decode(message.ResultSubject(runID), []byte(`{"v":1,"run_id":"run-1","status":"lost"}`)); err == nil {
		t.Fatal("Decode accepted a result of an unknown status")
	}
	r, err := c.Decode(message.ResultSubject(runID), []byte(`{"v":1,"run_id":"run-1","action":"create","indicator":{"id":42},"status":"invalid","reason":"x"}`))
	if err != nil || r.Indicator.ID != 42 {
		t.Fatalf("Decode = %+v, %v", r, err)
	}
}

func TestDryRunResultsAreSettledWithoutAWrite(t *testing.T) {
	tq := &fakeThreatQ{}
	r := created()
	r.Status, r.DryRun = message.StatusExists, true // attributes and all: nothing is written for a dry run
	out := writeback.New(writeback.Config{}, tq).Handle(context.Background(), r, attempt)
	if out.Kind() != bus.KindDone || out.Label() != "dry_run" {
		t.Fatalf("outcome %s %q; want done \"dry_run\"", out.Kind(), out.Label())
	}
	if rc := receipt(t, out, r); rc.Outcome != message.ReceiptNothing {
		t.Errorf("receipt %+v; want nothing", rc)
	}
	if tq.count() != 0 {
		t.Errorf("ThreatQ was written %d times for a dry run", tq.count())
	}

	// A writer of dry runs only leaves real results to others, untouched.
	only := writeback.New(writeback.Config{OnlyDryRuns: true}, tq)
	if out := only.Handle(context.Background(), created(), attempt); out.Kind() != bus.KindSnooze || tq.count() != 0 {
		t.Fatalf("a real result to a dry-run writer: %s, %d writes", out.Kind(), tq.count())
	}
	if out := only.Handle(context.Background(), r, attempt); out.Label() != "dry_run" {
		t.Fatalf("a dry-run result to a dry-run writer: %s", out.Label())
	}
}

// TestKnownRowsSpareTheListingUnlessAnEarlierWriteIsMissing: the rows the
// run read go to ThreatQ with the write, unless a result of the indicator
// wrote an attribute since that the read does not show.
func TestKnownRowsSpareTheListingUnlessAnEarlierWriteIsMissing(t *testing.T) {
	res := message.Result{V: 1, RunID: "r", Action: message.ActionUpdate, Indicator: message.Indicator{ID: 9}, Status: message.StatusUpdated,
		Attributes:        []message.Attribute{{Name: "Threat Level", Value: "Benign"}},
		ThreatQAttributes: []message.Attribute{{ID: 41, Name: "Threat Level", Value: "Malicious"}}, ThreatQKnown: true}
	rows, ok := writeback.KnownRowsFor(res, nil)
	if !ok || len(rows) != 1 || rows[0].ID != 41 {
		t.Fatalf("rows %v, %v; want the one read", rows, ok)
	}
	if _, ok := writeback.KnownRowsFor(res, []string{"Threat Level"}); !ok {
		t.Fatal("an earlier write the read shows was not believed")
	}
	if _, ok := writeback.KnownRowsFor(res, []string{"ID"}); ok {
		t.Fatal("an earlier write of ID the read does not show was ignored")
	}
	res.ThreatQKnown = false
	if _, ok := writeback.KnownRowsFor(res, nil); ok {
		t.Fatal("rows were used from a job that did not read them")
	}
	tq := &fakeThreatQ{}
	w := writeback.New(writeback.Config{Retry: retry.None}, tq)
	res.ThreatQKnown = true
	out := w.Handle(context.Background(), res, bus.Attempt{N: 1, Max: 5, Seq: 3})
	if out.Kind() != bus.KindDone || len(tq.known) != 1 || len(tq.known[0]) != 1 {
		t.Fatalf("outcome %s, known writes %v; want one write with the rows read", out.Kind(), tq.known)
	}
}
