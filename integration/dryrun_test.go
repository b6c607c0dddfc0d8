package integration

import (
	"context"
	"testing"
	"time"

	"github.com/tqtriage/tqtriage/bus"
	"github.com/tqtriage/tqtriage/internal/retry"
	"github.com/tqtriage/tqtriage/mapping"
	"github.com/tqtriage/tqtriage/message"
	"github.com/tqtriage/tqtriage/pipeline"
	"github.com/tqtriage/tqtriage/run"
	"github.com/tqtriage/tqtriage/threatq/threatqsim"
	"github.com/tqtriage/tqtriage/triage/triagesim"
	"github.com/tqtriage/tqtriage/worker"
	"github.com/tqtriage/tqtriage/writeback"
)

// dryOnce is the pipeline `run --dry-run` assembles: every client built
// read-only, worker and write-back taking dry runs alone.
func (e *env) dryOnce(cfg worker.Config) pipeline.Once {
	e.t.Helper()
	b := e.bus()
	w, err := pipeline.NewWorker(context.Background(), pipeline.TriageSettings{BaseURL: e.tURL, ClientID: triagesim.DefaultClientID, ClientSecret: triagesim.DefaultClientSecret, ReadOnly: true}, cfg, b)
	if err != nil {
		e.t.Fatal(err)
	}
	tq, err := pipeline.NewThreatQ(context.Background(), pipeline.ThreatQSettings{BaseURL: e.qURL, ClientID: threatqsim.DefaultClientID, ClientSecret: threatqsim.DefaultClientSecret, ReadOnly: true}, retry.None)
	if err != nil {
		e.t.Fatal(err)
	}
	return pipeline.Once{Bus: b, Worker: w, Writer: writeback.New(writeback.Config{OnlyDryRuns: true}, tq), Log: e.log}
}

func TestDryRunsWriteNothingAnywhereAndForetellTheRun(t *testing.T) {
	e := newEnv(t)
	inds := sampleIndicators("dry", 20)
	ids := e.collection("d1", inds)
	// One job at a time, so that the cap admits the first 15 in order
	// (the five already in Triage among them) in every run.
	cfg := withConcurrency(workerConfig(), 1)
	cfg.ObjectsPerRun = 15
	o := e.once(cfg)
	// NewWorker's reader: a shared fleet worker answers dry runs too.
	w, err := pipeline.NewWorker(context.Background(), pipeline.TriageSettings{BaseURL: e.tURL, ClientID: triagesim.DefaultClientID, ClientSecret: triagesim.DefaultClientSecret}, cfg, o.Bus)
	if err != nil {
		t.Fatal(err)
	}
	o.Worker = w
	// Five of them are in Triage already, one at another level.
	for i, ind := range inds[:5] {
		m, err := mapping.Map(ind.Type, ind.Value)
		if err != nil {
			t.Fatal(err)
		}
		level := "Malicious"
		if i == 0 {
			level = "Benign"
		}
		if _, err := e.triage.Seed(triagesim.Indicator{ThreatLevel: level, ThreatType: m.ThreatType, ThreatValue: m.ThreatValue, ThreatSource: worker.DefaultThreatSource}); err != nil {
			t.Fatal(err)
		}
	}
	tBefore, qBefore := e.triage.Stats(), e.threatq.Counts()

	dry := e.run(o, message.ActionCreate, "d1", run.Options{DryRun: true})
	if dry.Failed() || !dry.Record.DryRun || dry.Tally.Count(message.StatusWouldCreate) != 10 || dry.Tally.Count(message.StatusExists) != 5 || dry.Tally.Count(message.StatusSkipped) != 5 {
		t.Fatalf("dry run of create: %s", dry.Tally.Line(dry.Record.Total))
	}
	upd := e.run(e.dryOnce(cfg), message.ActionUpdate, "d1", run.Options{DryRun: true, Upsert: true})
	if upd.Failed() || upd.Tally.Count(message.StatusUnchanged) != 4 || upd.Tally.Count(message.StatusWouldUpdate) != 1 || upd.Tally.Count(message.StatusWouldCreate) != 10 {
		t.Fatalf("dry run of update with upsert, all clients read-only: %s", upd.Tally.Line(upd.Record.Total))
	}

	tAfter, qAfter := e.triage.Stats(), e.threatq.Counts()
	if tAfter.Creates != tBefore.Creates || tAfter.Updates != tBefore.Updates || e.triage.Len() != 5 {
		t.Errorf("dry runs wrote to Triage: creates %d → %d, updates %d → %d, %d indicators", tBefore.Creates, tAfter.Creates, tBefore.Updates, tAfter.Updates, e.triage.Len())
	}
	if qAfter.AttributeAdds != qBefore.AttributeAdds || qAfter.AttributeChanges != qBefore.AttributeChanges || qAfter.AttributeDeletes != qBefore.AttributeDeletes {
		t.Errorf("dry runs wrote to ThreatQ: %+v → %+v", qBefore, qAfter)
	}
	for _, id := range ids {
		if got := attrs(e.threatq, id); len(got) != 0 {
			t.Fatalf("ThreatQ indicator %d carries %v after dry runs", id, got)
		}
	}

	// The dry run's claims are its own: the real run's cap is whole.
	real := e.run(o, message.ActionCreate, "d1", run.Options{})
	if real.Tally.Count(message.StatusCreated)+real.Tally.Count(message.StatusExists) != 15 || real.Tally.Count(message.StatusCreated) != dry.Tally.Count(message.StatusWouldCreate) {
		t.Fatalf("the real run after the dry run: %s; the dry run said %s", real.Tally.Line(real.Record.Total), dry.Tally.Line(dry.Record.Total))
	}
	adm, err := o.Bus.Claim(context.Background(), dry.Record.ID, bus.ClaimKey("MD5", "not-claimed-by-the-dry-run"), 15)
	if err != nil || !adm.Admitted || adm.Slot != 1 {
		t.Fatalf("a real claim under the dry run's id: %+v, %v; want the first place", adm, err)
	}
}

func TestADryRunProcessLeavesRealJobsForOthers(t *testing.T) {
	e := newEnv(t)
	inds := sampleIndicators("leave", 3)
	e.collection("l1", inds)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	// A real run's jobs wait, with no worker yet.
	b := e.bus()
	real, err := run.Publish(ctx, b, run.Options{Action: message.ActionCreate}, e.items(ctx, "l1"), e.log)
	if err != nil {
		t.Fatal(err)
	}
	dry := e.run(e.dryOnce(workerConfig()), message.ActionCreate, "l1", run.Options{DryRun: true})
	if dry.Failed() || dry.Tally.Count(message.StatusWouldCreate) != 3 {
		t.Fatalf("dry run: %s", dry.Tally.Line(dry.Record.Total))
	}
	tally, _, err := run.Status(ctx, b, real.ID)
	if err != nil || tally.Done() != 0 || e.triage.Len() != 0 {
		t.Fatalf("the real run's jobs were worked by a dry-run process: %v, %d results, Triage holds %d", err, tally.Done(), e.triage.Len())
	}
	// A worker that may write takes them.
	e.serveWorkers(workerConfig())
	waitStatus(t, b, real.ID, 30*time.Second, func(t *run.Tally) bool { return t.Count(message.StatusCreated) == 3 })
}
