package main

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tqtriage/tqtriage/bus"
	"github.com/tqtriage/tqtriage/message"
	"github.com/tqtriage/tqtriage/run"
)

// TestPasswordsInAddressesAreNeverPrinted: an operator who puts a
// password in a base URL or in NATS_URL finds it in no error or log line
// (tq fails the test on the secret anywhere in the output).
func TestPasswordsInAddressesAreNeverPrinted(t *testing.T) {
	for _, c := range []struct {
		args []string
		env  vars
	}{
		{[]string{"worker"}, minimal().with("NATS_URL", "nats://127.0.0.1:1",
			"TRIAGE_BASE_URL", "https://admin:"+testSecret+"@triage.example.com/", "TRIAGE_CLIENT_ID", "id", "TRIAGE_CLIENT_SECRET", "x")},
		{[]string{"worker"}, minimal().with("NATS_URL", "nats://127.0.0.1:1",
			"TRIAGE_BASE_URL", "ftp://admin:"+testSecret+"@triage.example.com/", "TRIAGE_CLIENT_ID", "id", "TRIAGE_CLIENT_SECRET", "x")},
		{[]string{"writeback"}, minimal().with("NATS_URL", "nats://127.0.0.1:1",
			"THREATQ_BASE_URL", "https://admin:"+testSecret+"@threatq.example.com", "THREATQ_CLIENT_ID", "id", "THREATQ_CLIENT_SECRET", "x")},
		{[]string{"status", "some-run"}, minimal().with("NATS_URL", "nats://admin:"+testSecret+"@127.0.0.1:1")},
	} {
		r := tq(t, c.env, "", c.args...)
		if r.code == 0 {
			t.Errorf("want a failure: %v", r)
		}
		if strings.Contains(r.stderr, "@") && !strings.Contains(r.stderr, "***@") {
			t.Errorf("an address with user information is printed unredacted: %v", r)
		}
	}
}

// rawConn is a plain client of the test's NATS server, as a third party
// would use it.
func rawConn(t *testing.T, url string) (*nats.Conn, jetstream.JetStream) {
	t.Helper()
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return nc, js
}

// topology makes the streams, as `setup` would.
func topology(t *testing.T, url string) {
	t.Helper()
	mustCode(t, tq(t, minimal().with("NATS_URL", url), "", "setup"), 0)
}

func deadLetter(t *testing.T, js jetstream.JetStream, subject string, hdr map[string]string, data []byte) {
	t.Helper()
	m := nats.NewMsg(subject)
	for k, v := range hdr {
		m.Header.Set(k, v)
	}
	m.Data = data
	if _, err := js.PublishMsg(context.Background(), m); err != nil {
		t.Fatal(err)
	}
}

// TestDeadLetterListEscapesWhatCouldRewriteTheTerminal: a dead letter's
// data and reason are the publisher's bytes; printed raw, escape
// sequences in them would clear the screen or move the cursor.
func TestDeadLetterListEscapesWhatCouldRewriteTheTerminal(t *testing.T) {
	url := startNATS(t)
	topology(t, url)
	_, js := rawConn(t, url)
	deadLetter(t, js, message.DLQInvalid, map[string]string{message.HeaderReason: "not JSON \x1b]0;owned\x07", message.HeaderSubject: "tqtriage.jobs.create"},
		[]byte("\x1b[2J\x1b[Hgotcha\r\nfake line\u202e"))
	r := tq(t, minimal().with("NATS_URL", url), "", "dlq", "list")
	mustCode(t, r, 0)
	if strings.ContainsAny(r.stdout, "\x1b\x07\r") || strings.Contains(r.stdout, "\u202e") {
		t.Fatalf("dlq list printed control characters raw:\n%q", r.stdout)
	}
	if !strings.Contains(r.stdout, `\x1b[2J`) || !strings.Contains(r.stdout, `\u202e`) {
		t.Fatalf("dlq list hides what the letter holds:\n%s", r.stdout)
	}

	// As JSON for scripts: one object a line, escaped, meaning the bytes.
	r = tq(t, minimal().with("NATS_URL", url), "", "dlq", "list", "--json")
	mustCode(t, r, 0)
	if strings.ContainsAny(r.stdout, "\x1b\x07\r") || strings.Contains(r.stdout, "\u202e") || strings.Count(r.stdout, "\n") != 1 {
		t.Fatalf("dlq list --json printed control characters raw, or not one line:\n%q", r.stdout)
	}
	var d struct {
		Subject, Reason, Source, Data string
		Size                          int
	}
	if err := json.Unmarshal([]byte(r.stdout), &d); err != nil {
		t.Fatalf("dlq list --json: %v\n%s", err, r.stdout)
	}
	if d.Subject != message.DLQInvalid || d.Reason != "not JSON \x1b]0;owned\x07" || d.Data != "\x1b[2J\x1b[Hgotcha\r\nfake line\u202e" || d.Source != "tqtriage.jobs.create" {
		t.Fatalf("dlq list --json says %+v", d)
	}
}

// TestReplayBelievesOnlySubjectsALetterCanComeFrom: a letter whose header
// names the JetStream API as its source once purged the results stream
// with the operator's credentials, and stopped the replay of all others.
// Now it is reported and skipped, the genuine letter is replayed, and the
// exit code says that one was skipped.
func TestReplayBelievesOnlySubjectsALetterCanComeFrom(t *testing.T) {
	url := startNATS(t)
	topology(t, url)
	_, js := rawConn(t, url)
	for i := range 3 {
		if _, err := js.Publish(context.Background(), message.ResultSubject("other-run"), []byte(`{"n":`+string(rune('0'+i))+`}`)); err != nil {
			t.Fatal(err)
		}
	}
	deadLetter(t, js, message.DLQSubject(message.ActionCreate), map[string]string{
		message.HeaderReason: "forged", message.HeaderSubject: "$JS.API.STREAM.PURGE." + bus.StreamResults}, []byte(`{}`))
	job, _ := json.Marshal(message.Job{V: 1, RunID: "r1", Action: message.ActionCreate, Seq: 1, Indicator: message.Indicator{ID: 5, Type: "MD5", Value: strings.Repeat("a", 32)}})
	deadLetter(t, js, message.DLQSubject(message.ActionCreate), map[string]string{
		message.HeaderReason: "Triage was down", message.HeaderSubject: message.JobSubject(message.ActionCreate), message.HeaderRunID: "r1"}, job)

	r := tq(t, minimal().with("NATS_URL", url), "", "dlq", "replay")
	mustCode(t, r, 1)
	if !strings.Contains(r.stdout, "replayed 1 dead letters") || !strings.Contains(r.stdout, "skipped 1") || !strings.Contains(r.stderr, "PURGE") {
		t.Fatalf("replay: %v", r)
	}
	s, err := js.Stream(context.Background(), bus.StreamResults)
	if err != nil {
		t.Fatal(err)
	}
	if n := s.CachedInfo().State.Msgs; n != 3 {
		t.Fatalf("the results stream holds %d messages after the replay; want its 3", n)
	}
	jobs, _ := js.Stream(context.Background(), bus.StreamJobs)
	if n := jobs.CachedInfo().State.Msgs; n != 1 {
		t.Fatalf("%d jobs after the replay; want the genuine one", n)
	}
}

// TestStatusLeavesNoConsumersBehind: each status or --wait once left a
// consumer on the server for five minutes.
func TestStatusLeavesNoConsumersBehind(t *testing.T) {
	url := startNATS(t)
	topology(t, url)
	nc, js := rawConn(t, url)
	rec, _ := json.Marshal(run.Record{ID: "r-status", Action: message.ActionCreate, Total: 1, Published: true, StartedAt: time.Now()})
	kv, err := js.KeyValue(context.Background(), bus.BucketRuns)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Put(context.Background(), "r-status", rec); err != nil {
		t.Fatal(err)
	}
	res, _ := json.Marshal(message.Result{V: 1, RunID: "r-status", Action: message.ActionCreate, Seq: 1, Indicator: message.Indicator{ID: 1}, Status: message.StatusCreated})
	if err := nc.Publish(message.ResultSubject("r-status"), res); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		mustCode(t, tq(t, minimal().with("NATS_URL", url), "", "status", "r-status"), 0)
	}
	s, err := js.Stream(context.Background(), bus.StreamResults)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if info.State.Consumers != 1 {
		t.Fatalf("%d consumers on %s after three status calls; want write-back's alone", info.State.Consumers, bus.StreamResults)
	}
}

func TestSetupIsIdempotentAndSaysTheLimits(t *testing.T) {
	url := startNATS(t)
	env := minimal().with("NATS_URL", url)
	for range 2 {
		r := tq(t, env, "", "setup", "--jobs-max-msgs", "5000", "--dlq-max-bytes", "64MiB")
		mustCode(t, r, 0)
		if !strings.Contains(r.stdout, "at most 5000 messages") || !strings.Contains(r.stdout, "64MiB") {
			t.Fatalf("setup: %v", r)
		}
	}
	r := tq(t, env, "", "setup", "--jobs-max-bytes", "12XB")
	mustCode(t, r, 2)
	if !strings.Contains(r.stderr, "--jobs-max-bytes ($TQTRIAGE_JOBS_MAX_BYTES)") {
		t.Fatalf("a bad size: %v", r)
	}
	_, js := rawConn(t, url)
	s, err := js.Stream(context.Background(), bus.StreamJobs)
	if err != nil {
		t.Fatal(err)
	}
	if c := s.CachedInfo().Config; c.MaxMsgs != 5000 || c.Discard != jetstream.DiscardNew || c.MaxMsgSize != message.MaxJobBytes {
		t.Fatalf("jobs stream: max %d, discard %v, max size %d", c.MaxMsgs, c.Discard, c.MaxMsgSize)
	}
}
