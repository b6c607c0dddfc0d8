package integration

import (
	"context"
	"iter"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/tqtriage/tqtriage/bus"
	"github.com/tqtriage/tqtriage/internal/retry"
	"github.com/tqtriage/tqtriage/mapping"
	"github.com/tqtriage/tqtriage/message"
	"github.com/tqtriage/tqtriage/pipeline"
	"github.com/tqtriage/tqtriage/run"
	"github.com/tqtriage/tqtriage/threatq/threatqsim"
	"github.com/tqtriage/tqtriage/writeback"
)

// itemsWithIDs is a source of seeded ThreatQ indicators by their ids,
// without reading the collection through ThreatQ.
func itemsWithIDs(ids []int64, inds []threatqsim.SeedIndicator) iter.Seq[run.Item] {
	return func(yield func(run.Item) bool) {
		for i, s := range inds {
			if !yield(run.Item{Indicator: message.Indicator{ID: ids[i], Type: s.Type, Value: s.Value}}) {
				return
			}
		}
	}
}

// TestSlowThreatQIsWrittenOnceADelivery: ThreatQ answers each request
// more slowly than the write-back consumer's ack wait (2 s here): one
// result's write takes more than two ack waits. The executor's heartbeat
// keeps the delivery: no second delivery writes the same result at the
// same time (each indicator gets exactly one add of its three attributes,
// one row per name, one receipt per result).
func TestSlowThreatQIsWrittenOnceADelivery(t *testing.T) {
	e := newEnv(t)
	inds := sampleIndicators("slow", 4)
	ids := e.collection("slow", inds)
	o := e.once(workerConfig())
	e.threatq.SetLatency(2*ackWait + ackWait/4)

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	out, err := o.Run(ctx, run.Options{Action: message.ActionCreate}, itemsWithIDs(ids, inds), run.FollowOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if out.Failed() || out.Tally.Count(message.StatusCreated) != len(inds) || out.Tally.AwaitingWriteback() != 0 {
		t.Fatalf("run: %s", out.Tally.Line(out.Record.Total))
	}
	for _, id := range ids {
		if n := e.threatq.Writes(id); n != 1 {
			t.Errorf("indicator %d: %d attribute writes; want one add of its 3 attributes", id, n)
		}
		got := attrs(e.threatq, id)
		for _, name := range []string{mapping.AttrID, mapping.AttrThreatLevel, mapping.AttrThreatSource} {
			if len(got[name]) != 1 {
				t.Errorf("indicator %d: %q has %d rows: %v", id, name, len(got[name]), got)
			}
		}
	}
	receipts := 0
	err = o.Bus.ReadRun(context.Background(), out.Record.ID, false, func(s bus.Stored) bool {
		if s.Receipt {
			receipts++
		}
		return true
	})
	if err != nil || receipts != len(inds) {
		t.Fatalf("%d receipts (%v); want one per result", receipts, err)
	}
}

// writerGivingUpAfter is the env's writer with a delivery limit of n.
func (e *env) writerGivingUpAfter(n int) *writeback.Writer {
	e.t.Helper()
	tq, err := pipeline.NewThreatQ(context.Background(), pipeline.ThreatQSettings{BaseURL: e.qURL, ClientID: threatqsim.DefaultClientID, ClientSecret: threatqsim.DefaultClientSecret}, retry.None)
	if err != nil {
		e.t.Fatal(err)
	}
	return writeback.New(writeback.Config{
		Retry:           retry.Policy{MaxAttempts: 1},
		RedeliveryDelay: 20 * time.Millisecond, MaxRedeliveryDelay: 50 * time.Millisecond, MaxDeliver: n,
	}, tq)
}

// publish publishes a run of the items on pub.
func publish(t *testing.T, e *env, pub *bus.Bus, o run.Options, items iter.Seq[run.Item]) run.Record {
	t.Helper()
	rec, err := run.Publish(context.Background(), pub, o, items, e.log)
	if err != nil {
		t.Fatal(err)
	}
	return rec
}

// TestAnOlderRunRetriedLateNeverOverwritesANewerOne: an update run sets
// Benign, but ThreatQ fails for its indicators until write-back gives up
// on them (dead letters). A newer run sets Suspicious and is written. Then
// the older run's results come back (an operator replays write-back's dead
// letters): they are older than what the newer run wrote, so ThreatQ keeps
// Suspicious, and the older run counts them as superseded, settled and not
// failed.
func TestAnOlderRunRetriedLateNeverOverwritesANewerOne(t *testing.T) {
	e := newEnv(t)
	const n = 6
	inds := sampleIndicators("order", n)
	ids := e.collection("order", inds)
	items := itemsWithIDs(ids, inds)
	e.serveWorkers(withConcurrency(workerConfig(), 4))
	wb, wr := e.bus(), e.writerGivingUpAfter(2)
	serve(t, func(ctx context.Context) error { return pipeline.ServeWriteback(ctx, wb, wr, e.log, nil) })
	pub := e.bus()
	writtenBack := func(tl *run.Tally) bool { return tl.Done() == n && tl.AwaitingWriteback() == 0 }

	created := publish(t, e, pub, run.Options{Action: message.ActionCreate}, items)
	waitStatus(t, pub, created.ID, time.Minute, writtenBack)

	for _, id := range ids {
		e.threatq.FailIndicator(id, http.StatusServiceUnavailable)
	}
	older := publish(t, e, pub, run.Options{Action: message.ActionUpdate, ThreatLevel: "Benign"}, items)
	waitStatus(t, pub, older.ID, time.Minute, func(tl *run.Tally) bool { return writtenBack(tl) && tl.WritebackFailures() == n })
	for _, id := range ids {
		e.threatq.FailIndicator(id, 0)
	}

	newer := publish(t, e, pub, run.Options{Action: message.ActionUpdate, ThreatLevel: "Suspicious"}, items)
	waitStatus(t, pub, newer.ID, time.Minute, func(tl *run.Tally) bool { return writtenBack(tl) && tl.WritebackFailures() == 0 })

	count, err := pub.Replay(context.Background(), message.LettersWriteback, nil)
	if err != nil || count.Replayed != n {
		t.Fatalf("replayed %+v, %v", count, err)
	}
	tl := waitStatus(t, pub, older.ID, time.Minute, func(tl *run.Tally) bool { return writtenBack(tl) && tl.Superseded() == n })
	if tl.WritebackFailures() != 0 || tl.Failed(older) {
		t.Fatalf("older run after the replay: %d write-back failures, failed %v", tl.WritebackFailures(), tl.Failed(older))
	}
	for _, id := range ids {
		got := attrs(e.threatq, id)
		if lv := got[mapping.AttrThreatLevel]; len(lv) != 1 || lv[0] != "Suspicious" {
			t.Fatalf("indicator %d: Threat Level %v; want the newer run's Suspicious", id, lv)
		}
		if len(got[mapping.AttrID]) != 1 {
			t.Fatalf("indicator %d: %v", id, got)
		}
	}
	var b strings.Builder
	tl.Summary(&b, run.Header(older), older.Total)
	if !strings.Contains(b.String(), "superseded  6 ") {
		t.Fatalf("summary does not show the stale write-backs:\n%s", b.String())
	}
}

// TestAnotherRunsResultStillRetriedDoesNotHoldUpARun: ThreatQ keeps
// failing for one indicator of an earlier run, whose result write-back
// keeps retrying; a new `run` completes all the same, judged by its own
// results and receipts. The earlier run completes once ThreatQ recovers.
func TestAnotherRunsResultStillRetriedDoesNotHoldUpARun(t *testing.T) {
	e := newEnv(t)
	stuck := sampleIndicators("stuck", 1)
	stuckIDs := e.collection("stuck", stuck)
	e.collection("fresh", sampleIndicators("fresh", 20))
	e.threatq.FailIndicator(stuckIDs[0], http.StatusServiceUnavailable)

	o := e.once(workerConfig())
	e.serveWorkers(workerConfig())
	wb := e.bus()
	serve(t, func(ctx context.Context) error { return pipeline.ServeWriteback(ctx, wb, e.writer(), e.log, nil) })
	earlier := publish(t, e, o.Bus, run.Options{Action: message.ActionCreate}, itemsWithIDs(stuckIDs, stuck))
	waitStatus(t, o.Bus, earlier.ID, time.Minute, func(tl *run.Tally) bool { return tl.Done() == 1 })
	for e.threatq.Counts().InjectedFailures < 2 {
		time.Sleep(20 * time.Millisecond) // write-back is retrying the earlier result
	}

	out := e.run(o, message.ActionCreate, "fresh", run.Options{})
	if out.Failed() || out.Tally.Count(message.StatusCreated) != 20 || out.Tally.AwaitingWriteback() != 0 {
		t.Fatalf("new run: %s", out.Tally.Line(out.Record.Total))
	}
	tl, _, err := run.Status(context.Background(), o.Bus, earlier.ID)
	if err != nil || tl.AwaitingWriteback() != 1 {
		t.Fatalf("the earlier run: awaiting %d (%v); want its one result still being retried", tl.AwaitingWriteback(), err)
	}

	e.threatq.FailIndicator(stuckIDs[0], 0)
	waitStatus(t, o.Bus, earlier.ID, time.Minute, func(tl *run.Tally) bool { return tl.AwaitingWriteback() == 0 && tl.WritebackFailures() == 0 })
}
