package integration

import (
	"bytes"
	"context"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/tqtriage/tqtriage/internal/retry"
	"github.com/tqtriage/tqtriage/mapping"
	"github.com/tqtriage/tqtriage/message"
	"github.com/tqtriage/tqtriage/pipeline"
	"github.com/tqtriage/tqtriage/run"
	"github.com/tqtriage/tqtriage/triage/triagesim"
)

// TestALongRateLimitWindowFailsNoJobAndSpendsNoDelivery is the
// reproduction of Triage answering 429 with Retry-After: 30 for 70 s, on a
// run of 200 with WORKER_MAX_DELIVER=2: four jobs failed, one "gave up
// after 2 deliveries", three at their first attempt with "context deadline
// exceeded (Client.Timeout exceeded while awaiting headers)" (the pause ran
// inside the request's timeout), two of which Triage had created. Scaled
// to a test's time: Retry-After 5 s for 9 s, a request timeout of 4 s
// (long enough that a machine loaded by the rest of the suite does not time
// a request out on its own), Retry-After waited in place up to 4 s. Now no
// job fails and each is answered at its first counted delivery.
func TestALongRateLimitWindowFailsNoJobAndSpendsNoDelivery(t *testing.T) {
	e := newEnv(t)
	e.ackWait = firstDeliveryAckWait
	const n = 200
	e.collection("window", sampleIndicators("window", n))
	b := e.bus()
	cfg := withConcurrency(workerConfig(), 16)
	cfg.MaxDeliver = 2
	cfg.Retry.MaxRetryAfter = 4 * time.Second
	w := e.workerWith(pipeline.TriageSettings{Timeout: 4 * time.Second}, b, cfg)
	o := pipeline.Once{Bus: b, Worker: w, Writer: e.writer(), Log: e.log}
	e.triage.ThrottleFor(9*time.Second, 5*time.Second)
	start := time.Now()
	out := e.run(o, message.ActionCreate, "window", run.Options{ID: "window-run"})
	st := e.triage.Stats()
	t.Logf("%s in %v; %d requests answered 429", out.Tally.Line(n), time.Since(start).Round(time.Millisecond), st.RateLimited)
	if out.Failed() || out.Tally.Count(message.StatusCreated) != n || e.triage.Len() != n {
		t.Fatalf("%s; Triage holds %d", out.Tally.Line(n), e.triage.Len())
	}
	if st.RateLimited == 0 || time.Since(start) < 9*time.Second {
		t.Fatal("the run did not meet the window; the test proved nothing")
	}
	everyResultSpentNoDeliveryOfItsOwn(t, b, "window-run", n, message.StatusCreated)
}

// syncLog is a log destination the test reads.
type syncLog struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *syncLog) Write(p []byte) (int, error) { l.mu.Lock(); defer l.mu.Unlock(); return l.b.Write(p) }
func (l *syncLog) String() string              { l.mu.Lock(); defer l.mu.Unlock(); return l.b.String() }

// TestARetryAfterBeyondTheMaximumPausesOnlyTheMaximum: Triage asks for an
// hour; the replica pauses TRIAGE_MAX_PAUSE (here 1 s), asks again, says
// so in its log, and the run ends long before the hour with nothing failed.
func TestARetryAfterBeyondTheMaximumPausesOnlyTheMaximum(t *testing.T) {
	e := newEnv(t)
	e.ackWait = firstDeliveryAckWait
	const n = 20
	e.collection("hour", sampleIndicators("hour", n))
	var logs syncLog
	b := e.bus()
	cfg := workerConfig()
	cfg.MaxDeliver, cfg.MaxPause = 2, time.Second
	w, err := pipeline.NewWorker(t.Context(), pipeline.TriageSettings{BaseURL: e.tURL, ClientID: triagesim.DefaultClientID,
		ClientSecret: triagesim.DefaultClientSecret, MaxPause: time.Second, Log: zerolog.New(&logs)}, cfg, b)
	if err != nil {
		t.Fatal(err)
	}
	o := pipeline.Once{Bus: b, Worker: w, Writer: e.writer(), Log: e.log}
	e.triage.ThrottleFor(2*time.Second, time.Hour)
	start := time.Now()
	out := e.run(o, message.ActionCreate, "hour", run.Options{ID: "hour-run"})
	if out.Failed() || out.Tally.Count(message.StatusCreated) != n {
		t.Fatalf("%s", out.Tally.Line(n))
	}
	if took := time.Since(start); took > 30*time.Second {
		t.Fatalf("the run took %v: the hour was not clamped", took)
	}
	if !strings.Contains(logs.String(), "longer pause than TRIAGE_MAX_PAUSE allows") || !strings.Contains(logs.String(), `"retry_after":3600000`) {
		t.Fatalf("the clamping is not logged:\n%s", logs.String())
	}
	everyResultSpentNoDeliveryOfItsOwn(t, b, "hour-run", n, message.StatusCreated)
}

// TestAThreatQRateLimitDeadLettersNothing: ThreatQ answers 429 for a while
// with a Retry-After longer than write-back waits in place; the results
// are put off uncounted (two counted deliveries allowed here), none is
// dead-lettered, and all are written once the window ends.
func TestAThreatQRateLimitDeadLettersNothing(t *testing.T) {
	e := newEnv(t)
	// Few counted deliveries allowed: a loaded machine must not see a
	// result's ack wait run out on its own.
	e.ackWait = firstDeliveryAckWait
	const n = 20
	ids := e.collection("tq429", sampleIndicators("tq429", n))
	wcfg := writerConfig()
	wcfg.MaxDeliver = 2 // one may be counted into a closing subscription (docs/flow.md)
	wcfg.Retry = retry.Policy{MaxAttempts: 2, InitialInterval: 5 * time.Millisecond, MaxInterval: 20 * time.Millisecond, MaxRetryAfter: time.Second}
	b := e.bus()
	o := pipeline.Once{Bus: b, Worker: e.worker(b, workerConfig()), Writer: e.writerWith(pipeline.ThreatQSettings{}, wcfg), Log: e.log}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	items := slices.Collect(e.items(ctx, "tq429")) // read before the window
	e.threatq.ThrottleFor(4*time.Second, 2*time.Second)
	out, err := o.Run(ctx, run.Options{ID: "tq429-run", Action: message.ActionCreate}, slices.Values(items), run.FollowOptions{})
	if err != nil || out.Failed() || out.Tally.WritebackFailures() != 0 || deadLetters(t, b, message.LettersWriteback) != 0 {
		t.Fatalf("run: %v, %s, write-back failures %d", err, out.Tally.Line(n), out.Tally.WritebackFailures())
	}
	for _, id := range ids {
		if got := attrs(e.threatq, id); len(got[mapping.AttrThreatLevel]) != 1 {
			t.Fatalf("indicator %d: %v", id, got)
		}
	}
	if e.threatq.Counts().InjectedFailures == 0 {
		t.Fatal("write-back met no 429; the test proved nothing")
	}
}

// TestRollingRestartsSpendNoDelivery: a worker replica stopped mid-run
// hands back what it had buffered and what its grace period cut short,
// uncounted. Before, with one delivery allowed per job, four restarts in
// a row failed jobs ("delivered 2 times without an answer"). One
// delivery may still count: a message the server sends to the pull
// request of a subscription just closing is "not delivered" and sent
// again at once, but nats-server counts that first delivery all the same
// (its decDeliveryCount cannot undo a first delivery), and the replica
// never saw it to record it. So two deliveries are allowed here, and no
// job may spend more than one counted delivery on four restarts.
func TestRollingRestartsSpendNoDelivery(t *testing.T) {
	e := newEnv(t)
	e.ackWait = firstDeliveryAckWait
	e.triage.SetLatency(30*time.Millisecond, 0)
	const n = 200
	cfg := withConcurrency(workerConfig(), 8)
	cfg.MaxDeliver = 2
	pub := e.bus()
	rec, err := run.Publish(context.Background(), pub, run.Options{ID: "rolling", Action: message.ActionCreate}, itemsOf(sampleIndicators("rolling", n)), e.log)
	if err != nil {
		t.Fatal(err)
	}
	for i := 1; i <= 4; i++ {
		b := e.bus()
		w := e.worker(b, cfg)
		ctx, stop := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- pipeline.ServeWorkers(ctx, b, w, e.log, nil) }()
		waitStatus(t, pub, rec.ID, time.Minute, func(tl *run.Tally) bool { return tl.Done() >= i*n/5 })
		stop() // SIGTERM
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
	e.serveWorkers(cfg)
	tally := waitStatus(t, pub, rec.ID, time.Minute, func(tl *run.Tally) bool { return tl.Done() == n })
	if tally.Count(message.StatusCreated) != n || e.triage.Len() != n || deadLetters(t, pub, message.LettersCreate) != 0 {
		var b strings.Builder
		tally.Summary(&b, "rolling", n)
		t.Fatalf("%s; Triage holds %d", b.String(), e.triage.Len())
	}
	everyResultSpentNoDeliveryOfItsOwn(t, pub, rec.ID, n, message.StatusCreated)
}
