package integration

import (
	"context"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tqtriage/tqtriage/bus"
	"github.com/tqtriage/tqtriage/mapping"
	"github.com/tqtriage/tqtriage/message"
	"github.com/tqtriage/tqtriage/pipeline"
	"github.com/tqtriage/tqtriage/run"
	"github.com/tqtriage/tqtriage/threatq/threatqsim"
)

// deadLetters counts the dead letters of a kind.
func deadLetters(t *testing.T, b *bus.Bus, kind message.Letters) int {
	t.Helper()
	n := 0
	if err := b.ListDLQ(context.Background(), kind, func(bus.DeadLetter) bool { n++; return true }); err != nil {
		t.Fatal(err)
	}
	return n
}

// everyResultAtItsFirstDelivery checks that each job of the run has one
// result, of status, reached at its first counted delivery.
func everyResultAtItsFirstDelivery(t *testing.T, b *bus.Bus, runID string, n int, status message.Status) {
	t.Helper()
	perJob := results(t, b, runID)
	if len(perJob) != n {
		t.Fatalf("%d jobs have results; want %d", len(perJob), n)
	}
	for id, rs := range perJob {
		if len(rs) != 1 || rs[0].Status != status || rs[0].Attempts != 1 {
			t.Fatalf("indicator %d: %d results, the first %s after %d counted deliveries; want one %s at the first", id, len(rs), rs[0].Status, rs[0].Attempts, status)
		}
	}
}

// everyResultSpentNoDeliveryOfItsOwn checks that each job of the run has
// one result, of status, reached within two counted deliveries, for runs
// whose replicas close their gate (a refusal, a 429 pause, a restart):
// those spend no delivery, but a message the server sent to the closing
// subscription is counted by nats-server without the replica ever seeing
// it (docs/flow.md, counted and uncounted deliveries). The jobs so counted
// are logged. Before the gate, every such close spent a delivery of each
// job it held, and jobs failed at a limit of one or two.
func everyResultSpentNoDeliveryOfItsOwn(t *testing.T, b *bus.Bus, runID string, n int, status message.Status) {
	t.Helper()
	perJob := results(t, b, runID)
	if len(perJob) != n {
		t.Fatalf("%d jobs have results; want %d", len(perJob), n)
	}
	second := 0
	for id, rs := range perJob {
		if len(rs) != 1 || rs[0].Status != status || rs[0].Attempts > 2 {
			t.Fatalf("indicator %d: %d results, the first %s after %d counted deliveries; want one %s within two", id, len(rs), rs[0].Status, rs[0].Attempts, status)
		}
		if rs[0].Attempts == 2 {
			second++
		}
	}
	t.Logf("%d of %d jobs answered at their second counted delivery (one counted into a closing subscription)", second, n)
}

// TestAWorkerWhoseCredentialsAreRefusedTakesNoJobAndAHealthyOneDoesThemAll
// is the reproduction of a worker started with a wrong
// TRIAGE_CLIENT_SECRET: it failed and dead-lettered every job it took (30
// of 30 within seconds), each spending an objects-per-run admission, and a
// healthy replica beside it got nothing to do. Now it takes no job, and
// the healthy one does them all.
func TestAWorkerWhoseCredentialsAreRefusedTakesNoJobAndAHealthyOneDoesThemAll(t *testing.T) {
	e := newEnv(t)
	e.ackWait = firstDeliveryAckWait
	const n = 30
	bad := e.bus()
	w := e.workerWith(pipeline.TriageSettings{ClientSecret: "not-the-secret"}, bad, workerConfig())
	g := w.Gate()
	serve(t, func(ctx context.Context) error { return pipeline.ServeWorkers(ctx, bad, w, e.log, nil) })
	pub := e.bus()
	rec, err := run.Publish(context.Background(), pub, run.Options{ID: "refused-run", Action: message.ActionCreate}, itemsOf(sampleIndicators("refused", n)), e.log)
	if err != nil {
		t.Fatal(err)
	}
	// Nothing to wait on: the old worker had dead-lettered all 30 by now.
	time.Sleep(2 * time.Second)
	if tl, _, _ := run.Status(context.Background(), pub, rec.ID); tl.Done() != 0 {
		t.Fatalf("the refused replica answered jobs: %s", tl.Line(n))
	}
	if d := deadLetters(t, pub, message.LettersCreate); d != 0 {
		t.Fatalf("%d jobs dead-lettered", d)
	}
	if st := e.triage.Stats(); st.Total()-st.Requests[triageTokenEndpoint] != 0 {
		t.Fatalf("the refused replica sent %d API requests", st.Total()-st.Requests[triageTokenEndpoint])
	}
	if err := g.Ready(); err == nil || !strings.Contains(err.Error(), "invalid_client") {
		t.Fatalf("the refused replica's readiness: %v; want the refusal named", err)
	}
	// No admission was spent: a new indicator takes the run's first slot.
	if adm, err := pub.Claim(context.Background(), rec.ID, "probe", 1000); err != nil || adm.Count != 1 {
		t.Fatalf("admission of a probe: %+v, %v; want the first", adm, err)
	}

	// A healthy replica beside it does every job.
	e.serveWorkers(workerConfig())
	tally := waitStatus(t, pub, rec.ID, time.Minute, func(tl *run.Tally) bool { return tl.Done() == n })
	if tally.Count(message.StatusCreated) != n || e.triage.Len() != n || deadLetters(t, pub, message.LettersCreate) != 0 {
		t.Fatalf("%s; Triage holds %d", tally.Line(n), e.triage.Len())
	}
	everyResultAtItsFirstDelivery(t, pub, rec.ID, n, message.StatusCreated)
}

// TestCredentialsRefusedMidRunPauseTheReplicaAndFailNothing: Triage
// starts refusing the replica's requests, a fresh token or not (its API
// access withdrawn), in the middle of a run. Jobs in hand are put off, the
// replica stops taking jobs, nothing fails or spends a delivery (each job
// has one); when access comes back, the replica resumes by itself.
func TestCredentialsRefusedMidRunPauseTheReplicaAndFailNothing(t *testing.T) {
	for _, status := range []int{401, 403} {
		t.Run(map[int]string{401: "401", 403: "403"}[status], func(t *testing.T) {
			e := newEnv(t)
			e.ackWait = firstDeliveryAckWait
			e.triage.SetLatency(20*time.Millisecond, 0)
			const n = 80
			cfg := withConcurrency(workerConfig(), 8)
			cfg.MaxDeliver = 2
			b := e.serveWorkers(cfg)
			rec, err := run.Publish(context.Background(), b, run.Options{ID: "midrun", Action: message.ActionCreate}, itemsOf(sampleIndicators("midrun", n)), e.log)
			if err != nil {
				t.Fatal(err)
			}
			waitStatus(t, b, rec.ID, time.Minute, func(tl *run.Tally) bool { return tl.Done() >= 10 })
			e.triage.RefuseAPI(status)
			time.Sleep(1500 * time.Millisecond) // the replica meets the refusal, probes, tries again
			mid, _, _ := run.Status(context.Background(), b, rec.ID)
			if mid.Count(message.StatusFailed) != 0 || mid.Done() == n {
				t.Fatalf("while refused: %s; want nothing failed and the run unfinished", mid.Line(n))
			}
			e.triage.RefuseAPI(0)
			tally := waitStatus(t, b, rec.ID, time.Minute, func(tl *run.Tally) bool { return tl.Done() == n })
			if tally.Count(message.StatusCreated) != n || e.triage.Len() != n || deadLetters(t, b, message.LettersCreate) != 0 {
				t.Fatalf("%s; Triage holds %d", tally.Line(n), e.triage.Len())
			}
			everyResultSpentNoDeliveryOfItsOwn(t, b, rec.ID, n, message.StatusCreated)
		})
	}
}

// TestWritebackWhoseCredentialsAreRefusedDeadLettersNothingAndResumes: a
// ThreatQ refusal dead-lettered a result at once. Now write-back holds
// its results until the credentials work again: a secret put right in
// its file (read again for each token), or API access given back.
func TestWritebackWhoseCredentialsAreRefusedDeadLettersNothingAndResumes(t *testing.T) {
	for _, tc := range []struct {
		name        string
		refuse, fix func(e *env, secret *atomic.Value)
	}{
		{"a wrong secret, then the right one", func(_ *env, s *atomic.Value) { s.Store("not-the-secret") }, func(_ *env, s *atomic.Value) { s.Store(threatqsim.DefaultClientSecret) }},
		{"API access withdrawn, then given back", func(e *env, _ *atomic.Value) { e.threatq.RefuseAPI(403) }, func(e *env, _ *atomic.Value) { e.threatq.RefuseAPI(0) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			const n = 10
			ids := e.collection("wq", sampleIndicators("wq", n))
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			items := slices.Collect(e.items(ctx, "wq")) // read before the refusal
			var secret atomic.Value
			secret.Store(threatqsim.DefaultClientSecret)
			tc.refuse(e, &secret)
			wcfg := writerConfig()
			// A second counted delivery dead-letters: one counted
			// failure would. (One, not none: a result the server sends
			// to the pull of a subscription closing as the gate closes
			// is counted though never seen, docs/flow.md. Seen once in
			// seven runs with a limit of 1.)
			wcfg.MaxDeliver = 2
			wr := e.writerWith(pipeline.ThreatQSettings{SecretFunc: func() (string, error) { return secret.Load().(string), nil }}, wcfg)
			b := e.bus()
			o := pipeline.Once{Bus: b, Worker: e.worker(b, workerConfig()), Writer: wr, Log: e.log}
			done := make(chan pipeline.Outcome, 1)
			go func() {
				out, err := o.Run(ctx, run.Options{ID: "wq-run", Action: message.ActionCreate}, slices.Values(items), run.FollowOptions{})
				if err != nil {
					t.Errorf("run: %v", err)
				}
				done <- out
			}()
			waitStatus(t, b, "wq-run", time.Minute, func(tl *run.Tally) bool { return tl.Done() == n })
			time.Sleep(time.Second) // write-back meets the refusal meanwhile
			for _, id := range ids {
				if a := e.threatq.Attributes(id); len(a) != 0 {
					t.Fatalf("attributes written while refused: %v", a)
				}
			}
			if d := deadLetters(t, b, message.LettersWriteback); d != 0 {
				t.Fatalf("%d results dead-lettered while refused", d)
			}
			tc.fix(e, &secret)
			out := <-done
			if out.Failed() || out.Tally.WritebackFailures() != 0 {
				t.Fatalf("%s, write-back failures %d", out.Tally.Line(n), out.Tally.WritebackFailures())
			}
			for _, id := range ids {
				if got := attrs(e.threatq, id); len(got[mapping.AttrThreatLevel]) != 1 {
					t.Fatalf("indicator %d: %v", id, got)
				}
			}
		})
	}
}
