package integration

import (
	"context"
	"encoding/json"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tqtriage/tqtriage/bus"
	"github.com/tqtriage/tqtriage/mapping"
	"github.com/tqtriage/tqtriage/message"
	"github.com/tqtriage/tqtriage/pipeline"
	"github.com/tqtriage/tqtriage/run"
	"github.com/tqtriage/tqtriage/triage"
	"github.com/tqtriage/tqtriage/worker"
)

// TestCapIsExactWithThreePoolsSharingARun publishes a run of 500 distinct
// indicators (the last 100 as a third party would, without seq) against a
// cap of 200, and lets three worker pools, each with its own connection
// and Triage client, share it: exactly 200 reach Triage.
func TestCapIsExactWithThreePoolsSharingARun(t *testing.T) {
	e := newEnv(t)
	const total, limit = 500, 200
	cfg := withConcurrency(workerConfig(), 8)
	cfg.ObjectsPerRun = limit
	for i := 0; i < 3; i++ {
		e.serveWorkers(cfg)
	}
	pub := e.bus()
	inds := sampleIndicators("cap", total)
	rec, err := run.Publish(context.Background(), pub, run.Options{ID: "cap-run", Action: message.ActionCreate}, itemsOf(inds[:total-100]), e.log)
	if err != nil {
		t.Fatal(err)
	}
	for i, s := range inds[total-100:] {
		job := message.Job{V: 1, RunID: rec.ID, Action: message.ActionCreate,
			Indicator: message.Indicator{ID: int64(total - 100 + i + 1), Type: s.Type, Value: s.Value}}
		data, _ := json.Marshal(job)
		if _, err := pub.Publish(context.Background(), bus.Publication{Subject: message.JobSubject(message.ActionCreate), Data: data}); err != nil {
			t.Fatal(err)
		}
	}
	tally := waitStatus(t, pub, rec.ID, time.Minute, func(tl *run.Tally) bool { return tl.Done() == total })
	if c, s := tally.Count(message.StatusCreated), tally.Count(message.StatusSkipped); c != limit || s != total-limit {
		t.Fatalf("created %d, skipped %d; want exactly %d and %d", c, s, limit, total-limit)
	}
	if n := e.triage.Len(); n != limit {
		t.Fatalf("Triage holds %d indicators; want exactly %d", n, limit)
	}
	if st := e.triage.Stats(); st.Creates != limit || st.Duplicates != 0 {
		t.Fatalf("Triage got %d creates, %d duplicates; want %d, 0", st.Creates, st.Duplicates, limit)
	}
}

// stopAfterTriage wraps a Triage client: once armed, the first successful
// create stops the worker right there, as a process killed between the
// Triage call and the acknowledgement of its job.
type stopAfterTriage struct {
	worker.Triage
	armed atomic.Bool
	stop  func()
	hit   chan struct{}
}

func (s *stopAfterTriage) CreateIndicator(ctx context.Context, in triage.NewIndicator) (*triage.Indicator, error) {
	ind, err := s.Triage.CreateIndicator(ctx, in)
	if err == nil && s.armed.CompareAndSwap(true, false) {
		s.stop()
		close(s.hit)
		<-ctx.Done() // never returns an answer: the process is gone
		return nil, ctx.Err()
	}
	return ind, err
}

// crashAfterResult is a first replica that takes one job, stores its
// result and dies before acknowledging it: a consumer of its own on the
// workers' durable, closed without an Ack.
func crashAfterResult(t *testing.T, e *env, w *worker.Worker) {
	t.Helper()
	nc, err := nats.Connect(e.srv.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cons, err := js.Consumer(ctx, bus.StreamJobs, bus.ConsumerWorkers)
	if err != nil {
		t.Fatal(err)
	}
	batch, err := cons.Fetch(1, jetstream.FetchMaxWait(20*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	m, ok := <-batch.Messages()
	if !ok {
		t.Fatalf("the first replica got no job: %v", batch.Error())
	}
	job, err := message.ParseJob(m.Subject(), m.Data())
	if err != nil {
		t.Fatal(err)
	}
	md, err := m.Metadata()
	if err != nil {
		t.Fatal(err)
	}
	// A replica takes work once it holds a token.
	if g := w.Gate(); g != nil {
		if err := g.Started(ctx); err != nil {
			t.Fatal(err)
		}
	}
	out := w.Handle(ctx, job, bus.Attempt{N: 1, Max: 5, Subject: m.Subject(), Seq: md.Sequence.Stream})
	if out.Kind() != bus.KindDone || len(out.Publications()) != 1 {
		t.Fatalf("first replica's outcome: %v", out.Kind())
	}
	b := e.bus()
	for _, p := range out.Publications() {
		if _, err := b.Publish(ctx, p); err != nil {
			t.Fatal(err)
		}
	}
}

func TestRedeliveryAfterAWorkerStopsCreatesNoSecondIndicatorOrResult(t *testing.T) {
	for _, tc := range []struct {
		name string
		// afterResult: the first worker stores its result and dies
		// before acknowledging; else it dies right after Triage answered.
		afterResult bool
	}{
		{name: "between Triage call and result"},
		{name: "between result and acknowledgement", afterResult: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			pub := e.bus()
			item := sampleIndicators("crash", 1)[0]
			job := message.Job{V: 1, RunID: "crash-run", Action: message.ActionCreate, Seq: 1,
				Indicator: message.Indicator{ID: 77, Type: item.Type, Value: item.Value}, ReplyTo: message.ResultSubject("crash-run")}
			data, _ := json.Marshal(job)
			if _, err := pub.Publish(context.Background(), bus.Publication{Subject: message.JobSubject(job.Action), MsgID: message.MsgID(job.RunID, job.Action, 77), Data: data}); err != nil {
				t.Fatal(err)
			}
			rec, _ := json.Marshal(run.Record{ID: job.RunID, Action: job.Action, Total: 1, Published: true})
			if err := pub.PutRunRecord(context.Background(), job.RunID, rec); err != nil {
				t.Fatal(err)
			}

			if tc.afterResult {
				b1 := e.bus()
				crashAfterResult(t, e, e.worker(b1, workerConfig()))
			} else {
				b1 := e.bus()
				pctx, stopFirst := context.WithCancel(context.Background())
				s := &stopAfterTriage{Triage: e.triageClient(0), hit: make(chan struct{}), stop: stopFirst}
				s.armed.Store(true)
				w, err := worker.New(workerConfig(), s, b1)
				if err != nil {
					t.Fatal(err)
				}
				c := w.Consumer(e.log, nil)
				c.Concurrency, c.Grace = 1, time.Millisecond
				done := make(chan error, 1)
				go func() { done <- bus.Serve(pctx, b1, c) }()
				select {
				case <-s.hit:
				case <-time.After(30 * time.Second):
					t.Fatal("the first worker never reached the crash point")
				}
				stopFirst()
				b1.Close() // the process is gone: its connection with it
				<-done
			}

			// A second replica takes the job once its ack wait runs out.
			b2 := e.serveWorkers(withConcurrency(workerConfig(), 4))
			waitJobsSettled(t, pub)

			if n := e.triage.Len(); n != 1 {
				t.Fatalf("Triage holds %d indicators; want 1", n)
			}
			rs := results(t, b2, job.RunID)[77]
			if len(rs) != 1 {
				t.Fatalf("%d results stored for the job; want exactly one: %+v", len(rs), rs)
			}
			want := message.StatusExists // the first worker's answer was lost with it
			if tc.afterResult {
				want = message.StatusCreated // the first worker's result was stored; the repeat was dropped
			}
			if rs[0].Status != want || rs[0].Triage == nil {
				t.Fatalf("result %+v; want %s with the Triage indicator", rs[0], want)
			}
		})
	}
}

func TestTriageFailingForAWhileIsRetriedThenSucceeds(t *testing.T) {
	e := newEnv(t)
	e.collection("f1", sampleIndicators("flaky", 12))
	o := e.once(workerConfig())
	// 40 failures in a row: more than one delivery's tries of the
	// first jobs, fewer than all their deliveries.
	e.triage.FailNext(40, 503)
	out := e.run(o, message.ActionCreate, "f1", run.Options{})
	if out.Failed() || out.Tally.Count(message.StatusCreated) != 12 {
		t.Fatalf("%s; want all 12 created despite the failures", out.Tally.Line(out.Record.Total))
	}
	if st := e.triage.Stats(); st.ServerErrors != 40 || e.triage.Len() != 12 {
		t.Fatalf("Triage answered %d 5xx and holds %d; want 40 and 12", st.ServerErrors, e.triage.Len())
	}
	var maxAttempts int
	for _, rs := range results(t, o.Bus, out.Record.ID) {
		maxAttempts = max(maxAttempts, rs[0].Attempts)
	}
	if maxAttempts < 2 {
		t.Fatalf("no result reports more than one attempt")
	}
}

func TestTriageFailingForGoodIsFailedAndDeadLetteredThenReplayed(t *testing.T) {
	e := newEnv(t)
	e.collection("f2", sampleIndicators("down", 6))
	cfg := workerConfig()
	cfg.MaxDeliver = 3
	o := e.once(cfg)
	e.triage.SetFailureRate(1)
	out := e.run(o, message.ActionCreate, "f2", run.Options{})
	if !out.Failed() || out.Tally.Count(message.StatusFailed) != 6 {
		t.Fatalf("%s; want all 6 failed", out.Tally.Line(out.Record.Total))
	}
	for _, rs := range results(t, o.Bus, out.Record.ID) {
		if rs[0].Reason == "" || rs[0].Attempts != 3 {
			t.Fatalf("failed result %+v; want a reason and 3 deliveries", rs[0])
		}
	}
	var letters []bus.DeadLetter
	if err := o.Bus.ListDLQ(context.Background(), message.LettersCreate, func(d bus.DeadLetter) bool {
		letters = append(letters, d)
		return true
	}); err != nil {
		t.Fatal(err)
	}
	if len(letters) != 6 || letters[0].Reason == "" || letters[0].RunID != out.Record.ID {
		t.Fatalf("%d dead letters (first %+v); want 6 with reason and run", len(letters), letters)
	}

	// Triage is back: replay the dead letters.
	e.triage.SetFailureRate(0)
	serve(t, func(ctx context.Context) error { return pipeline.ServeWorkers(ctx, o.Bus, o.Worker, e.log, nil) })
	n, err := o.Bus.Replay(context.Background(), message.LettersCreate, nil)
	if err != nil || n.Replayed != 6 || n.Skipped != 0 {
		t.Fatalf("replayed %+v, err %v; want 6", n, err)
	}
	tally := waitStatus(t, o.Bus, out.Record.ID, time.Minute, func(tl *run.Tally) bool {
		return tl.Count(message.StatusCreated) == 6
	})
	if tally.Count(message.StatusFailed) != 0 || tally.Done() != 6 || e.triage.Len() != 6 {
		t.Fatalf("after replay: %s, Triage holds %d", tally.Line(6), e.triage.Len())
	}
	left := 0
	_ = o.Bus.ListDLQ(context.Background(), message.LettersCreate, func(bus.DeadLetter) bool { left++; return true })
	if left != 0 {
		t.Fatalf("%d dead letters left after a successful replay", left)
	}
}

func TestPermanentTriageErrorFailsAtOnce(t *testing.T) {
	e := newEnv(t)
	e.collection("f3", sampleIndicators("perm", 3))
	o := e.once(workerConfig())
	// (Not a 401 or 403: those are the replica's credentials, which
	// pause it rather than fail its jobs; see credentials_test.go.)
	e.triage.FailNext(1000, 400)
	out := e.run(o, message.ActionCreate, "f3", run.Options{})
	if out.Tally.Count(message.StatusFailed) != 3 {
		t.Fatalf("%s; want 3 failed", out.Tally.Line(3))
	}
	if st := e.triage.Stats(); st.Total()-st.Requests[triageTokenEndpoint] != 3 {
		t.Fatalf("Triage received %d API requests; a permanent error must not be retried (want 3)", st.Total()-st.Requests[triageTokenEndpoint])
	}
}

const triageTokenEndpoint = "POST /oauth/token"

func TestUnparseableJobIsDeadLetteredAndAcknowledged(t *testing.T) {
	e := newEnv(t)
	b := e.serveWorkers(withConcurrency(workerConfig(), 4))
	bad := map[string]string{
		"not JSON":        "this is not a job",
		"wrong version":   `{"v":2,"run_id":"r","action":"create","indicator":{"id":1,"type":"MD5","value":"x"}}`,
		"no indicator id": `{"v":1,"run_id":"r","action":"create","indicator":{"type":"MD5","value":"x"}}`,
		"action mismatch": `{"v":1,"run_id":"r","action":"update","indicator":{"id":1,"type":"MD5","value":"x"}}`,
	}
	for _, raw := range bad {
		if _, err := b.Publish(context.Background(), bus.Publication{Subject: message.JobSubject(message.ActionCreate), Data: []byte(raw)}); err != nil {
			t.Fatal(err)
		}
	}
	waitJobsSettled(t, b)
	got := map[string]string{}
	if err := b.ListDLQ(context.Background(), message.LettersInvalid, func(d bus.DeadLetter) bool {
		got[string(d.Data)] = d.Reason
		return true
	}); err != nil {
		t.Fatal(err)
	}
	for name, raw := range bad {
		if reason, ok := got[raw]; !ok || reason == "" {
			t.Errorf("%s: dead letter %q with reason %q missing", name, raw, reason)
		}
	}
	st, err := b.ConsumerState(context.Background(), bus.ConsumerWorkers)
	if err != nil || st.AckPending != 0 || st.Pending != 0 {
		t.Fatalf("consumer still holds jobs: %+v, %v", st, err)
	}
}

func TestThreatQOutageDelaysWritebackAndLosesNothing(t *testing.T) {
	e := newEnv(t)
	ids := e.collection("q1", sampleIndicators("outage", 10))
	o := e.once(workerConfig())
	e.threatq.SetDown(true)
	type res struct {
		out pipeline.Outcome
		err error
	}
	done := make(chan res, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	items := e.items(ctx, "q1")
	// The collection is read before the outage begins; the outage then
	// hits write-back only.
	var buf []run.Item
	e.threatq.SetDown(false)
	for it := range items {
		buf = append(buf, it)
	}
	e.threatq.SetDown(true)
	go func() {
		out, err := o.Run(ctx, run.Options{Action: message.ActionCreate, ID: "outage-run"}, slices.Values(buf), run.FollowOptions{})
		done <- res{out, err}
	}()
	// Every job gets its result while ThreatQ is down …
	waitStatus(t, o.Bus, "outage-run", time.Minute, func(tl *run.Tally) bool { return tl.Done() == 10 })
	time.Sleep(500 * time.Millisecond) // some write-back attempts fail meanwhile
	select {
	case r := <-done:
		t.Fatalf("run returned during the outage: %+v, %v", r.out.Tally, r.err)
	default:
	}
	for _, id := range ids {
		if a := e.threatq.Attributes(id); len(a) != 0 {
			t.Fatalf("attributes written during the outage: %v", a)
		}
	}
	// … and the attributes arrive once it is back.
	e.threatq.SetDown(false)
	r := <-done
	if r.err != nil || r.out.Failed() {
		t.Fatalf("run: %v, %s, write-back failures %d", r.err, r.out.Tally.Line(10), r.out.Tally.WritebackFailures())
	}
	for _, id := range ids {
		got := attrs(e.threatq, id)
		if len(got[mapping.AttrID]) != 1 || len(got[mapping.AttrThreatLevel]) != 1 || len(got[mapping.AttrThreatSource]) != 1 {
			t.Fatalf("indicator %d after the outage: %v", id, got)
		}
	}
	if c := e.threatq.Counts(); c.InjectedFailures == 0 {
		t.Fatal("no write-back attempt met the outage; the test proved nothing")
	}
}

func TestShutdownMidRunLosesNothing(t *testing.T) {
	e := newEnv(t)
	e.triage.SetLatency(50*time.Millisecond, 0)
	const total = 60
	b := e.bus()
	w := e.worker(b, withConcurrency(workerConfig(), 8))
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- pipeline.ServeWorkers(ctx, b, w, e.log, nil) }()
	rec, err := run.Publish(context.Background(), b, run.Options{ID: "stop-run", Action: message.ActionCreate}, itemsOf(sampleIndicators("stop", total)), e.log)
	if err != nil {
		t.Fatal(err)
	}
	waitStatus(t, b, rec.ID, time.Minute, func(tl *run.Tally) bool { return tl.Done() >= 10 })
	stop() // SIGTERM
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("worker did not stop")
	}
	mid, _, _ := run.Status(context.Background(), b, rec.ID)
	if mid.Done() == total {
		t.Fatal("the run finished before the stop; the test proved nothing")
	}
	// Another replica finishes the run: every job exactly one result.
	b2 := e.serveWorkers(withConcurrency(workerConfig(), 8))
	tally := waitStatus(t, b2, rec.ID, time.Minute, func(tl *run.Tally) bool { return tl.Done() == total })
	waitJobsSettled(t, b2)
	if tally.Count(message.StatusCreated) != total || e.triage.Len() != total {
		t.Fatalf("%s; Triage holds %d", tally.Line(total), e.triage.Len())
	}
	perJob := results(t, b2, rec.ID)
	for id, rs := range perJob {
		if len(rs) != 1 {
			t.Fatalf("indicator %d has %d results", id, len(rs))
		}
	}
	if len(perJob) != total {
		t.Fatalf("%d jobs have results; want %d", len(perJob), total)
	}
}
