package integration

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/tqtriage/tqtriage/bus"
	"github.com/tqtriage/tqtriage/bus/bustest"
	"github.com/tqtriage/tqtriage/message"
	"github.com/tqtriage/tqtriage/pipeline"
	"github.com/tqtriage/tqtriage/run"
)

// TestAMissingPermissionFailsWithinSecondsNamingIt: on a fresh server,
// a viewer (status) may not create the topology; it says so, naming the
// refused API call, within seconds rather than after a long timeout.
func TestAMissingPermissionFailsWithinSecondsNamingIt(t *testing.T) {
	_, url := bustest.Secured(t)
	start := time.Now()
	_, err := bus.Connect(context.Background(), bus.Config{URL: url("viewer"), Role: bus.RoleViewer}, zerolog.Nop())
	took := time.Since(start)
	if err == nil || !strings.Contains(err.Error(), `$JS.API.STREAM.CREATE.TQTRIAGE_RESULTS`) || !strings.Contains(err.Error(), "tqtriage setup") {
		t.Fatalf("viewer on a fresh server: %v; want the refused permission named and setup suggested", err)
	}
	if took > 10*time.Second {
		t.Fatalf("the refusal took %v; want a few seconds", took)
	}
}

// TestEveryRoleWorksWithItsOwnUserAndNoMore runs the whole flow with one
// NATS user per role, as deployments/nats/permissions.conf grants them:
// an operator sets up, a publisher publishes and follows, a worker and a
// write-back replica do their work, a viewer reads status and dead
// letters, an operator replays. Then each is refused what is not its own.
func TestEveryRoleWorksWithItsOwnUserAndNoMore(t *testing.T) {
	e := newEnv(t)
	_, url := bustest.Secured(t)
	as := func(role bus.Role) *bus.Bus {
		t.Helper()
		b, err := bus.Connect(context.Background(), bus.Config{URL: url(string(role)), Role: role, AckWait: ackWait}, e.log)
		if err != nil {
			t.Fatalf("%s: %v", role, err)
		}
		t.Cleanup(b.Close)
		return b
	}
	op := as(bus.RoleOperator)
	if err := op.Setup(context.Background()); err != nil {
		t.Fatal(err)
	}

	wb := as(bus.RoleWorker)
	w := e.worker(wb, withConcurrency(workerConfig(), 4))
	serve(t, func(ctx context.Context) error { return pipeline.ServeWorkers(ctx, wb, w, e.log, nil) })
	bb := as(bus.RoleWriteback)
	wr := e.writer()
	serve(t, func(ctx context.Context) error { return pipeline.ServeWriteback(ctx, bb, wr, e.log, nil) })

	pub := as(bus.RolePublisher)
	ids := e.collection("perm", sampleIndicators("perm", 8))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	rec, err := run.Publish(ctx, pub, run.Options{Action: message.ActionCreate}, e.items(ctx, "perm"), e.log)
	if err != nil {
		t.Fatal(err)
	}
	tally, _, err := run.Follow(ctx, pub, rec.ID, run.FollowOptions{WrittenBack: true})
	if err != nil || tally.Count(message.StatusCreated) != 8 || len(e.threatq.Attributes(ids[0])) == 0 {
		t.Fatalf("publisher's run: %v, %s", err, tally.Line(8))
	}

	// A dry run, through the same users: its jobs on their own subject,
	// its claims under its own scope, its results settled by write-back.
	dry, err := run.Publish(ctx, pub, run.Options{Action: message.ActionCreate, DryRun: true}, e.items(ctx, "perm"), e.log)
	if err != nil {
		t.Fatal(err)
	}
	if tally, _, err := run.Follow(ctx, pub, dry.ID, run.FollowOptions{WrittenBack: true}); err != nil || tally.Count(message.StatusExists) != 8 {
		t.Fatalf("publisher's dry run: %v, %s", err, tally.Line(8))
	}
	// Each replica reads its own consumer's backlog for /metrics.
	if _, err := wb.ConsumerState(ctx, bus.ConsumerWorkers); err != nil {
		t.Errorf("worker reading its consumer's state: %v", err)
	}
	if _, err := bb.ConsumerState(ctx, bus.ConsumerWriteback); err != nil {
		t.Errorf("write-back reading its consumer's state: %v", err)
	}

	// A failed job, for the viewer to list and the operator to replay.
	e.triage.SetFailureRate(1)
	bad, err := run.Publish(ctx, pub, run.Options{Action: message.ActionCreate}, itemsOf(sampleIndicators("perm-fail", 1)), e.log)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := run.Follow(ctx, pub, bad.ID, run.FollowOptions{}); err != nil {
		t.Fatal(err)
	}
	viewer := as(bus.RoleViewer)
	if tl, _, err := run.Status(ctx, viewer, rec.ID); err != nil || tl.Count(message.StatusCreated) != 8 {
		t.Fatalf("viewer's status: %v", err)
	}
	if recs, err := run.Recent(ctx, viewer, 10); err != nil || len(recs) != 3 {
		t.Fatalf("viewer's runs: %d, %v; want the three", len(recs), err)
	}
	letters := 0
	if err := viewer.ListDLQ(ctx, "", func(bus.DeadLetter) bool { letters++; return true }); err != nil || letters != 1 {
		t.Fatalf("viewer's dlq list: %d letters, %v; want 1", letters, err)
	}
	e.triage.SetFailureRate(0)
	if n, err := op.Replay(ctx, "", nil); err != nil || n.Replayed != 1 {
		t.Fatalf("operator's replay: %+v, %v", n, err)
	}
	waitStatus(t, viewer, bad.ID, time.Minute, func(tl *run.Tally) bool { return tl.Count(message.StatusCreated) == 1 })

	// What each role may not do, tried with a plain client of its user.
	job, _ := json.Marshal(message.Job{V: 1, RunID: "forged", Action: message.ActionCreate, Indicator: message.Indicator{ID: 1, Type: "MD5", Value: "x"}})
	for _, c := range []struct {
		role bus.Role
		what string
		try  func(ctx context.Context, nc *nats.Conn, js jetstream.JetStream) error
	}{
		{bus.RoleWorker, "publish a job", publishTo(message.JobSubject(message.ActionCreate), job)},
		{bus.RoleWorker, "purge a stream", func(ctx context.Context, _ *nats.Conn, js jetstream.JetStream) error {
			return js.DeleteStream(ctx, bus.StreamResults)
		}},
		{bus.RoleWorker, "pull from write-back's consumer", pullFrom(bus.StreamResults, bus.ConsumerWriteback)},
		{bus.RoleWriteback, "publish a job", publishTo(message.JobSubject(message.ActionUpdate), job)},
		{bus.RoleWriteback, "delete a message", deleteMsg(bus.StreamResults)},
		{bus.RolePublisher, "pull from write-back's consumer", pullFrom(bus.StreamResults, bus.ConsumerWriteback)},
		{bus.RolePublisher, "pull from the workers' consumer", pullFrom(bus.StreamJobs, bus.ConsumerWorkers)},
		{bus.RolePublisher, "delete a message", deleteMsg(bus.StreamResults)},
		{bus.RolePublisher, "publish a result", publishTo(message.ResultSubject(rec.ID), []byte(`{}`))},
		{bus.RoleViewer, "publish a job", publishTo(message.JobSubject(message.ActionCreate), job)},
		{bus.RoleViewer, "replay a dead letter", publishTo(message.JobSubject(message.ActionCreate), job)},
		{bus.RoleViewer, "purge the dead letters", func(ctx context.Context, _ *nats.Conn, js jetstream.JetStream) error {
			s, err := js.Stream(ctx, bus.StreamDLQ)
			if err != nil {
				return err
			}
			return s.Purge(ctx)
		}},
	} {
		// The role's own inbox, so that a refusal is of the act itself.
		nc, err := nats.Connect(url(string(c.role)), nats.CustomInboxPrefix(bus.InboxPrefix(c.role)),
			nats.ErrorHandler(func(*nats.Conn, *nats.Subscription, error) {})) // the refusals are expected
		if err != nil {
			t.Fatal(err)
		}
		js, _ := jetstream.New(nc)
		tctx, tcancel := context.WithTimeout(ctx, 2*time.Second)
		err = c.try(tctx, nc, js)
		tcancel()
		if err == nil {
			t.Errorf("%s may %s; want it refused", c.role, c.what)
		}
		nc.Close()
	}
	// No user reads the answers meant for another's inbox.
	nc, err := nats.Connect(url("viewer"), nats.CustomInboxPrefix(bus.InboxPrefix(bus.RoleViewer)))
	if err != nil {
		t.Fatal(err)
	}
	refused := make(chan error, 1)
	nc.SetErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) { refused <- err })
	if _, err := nc.Subscribe(bus.InboxPrefix(bus.RolePublisher)+".>", func(*nats.Msg) {}); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-refused:
		if !strings.Contains(err.Error(), "Permissions Violation for Subscription") {
			t.Fatalf("viewer subscribing to the publisher's inbox: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a viewer may read the publisher's inbox")
	}
	nc.Close()
	if tl, _, _ := run.Status(ctx, viewer, rec.ID); tl.Done() != 8 {
		t.Fatalf("after the refused attempts the run shows %s", tl.Line(8))
	}
}

func publishTo(subject string, data []byte) func(context.Context, *nats.Conn, jetstream.JetStream) error {
	return func(ctx context.Context, _ *nats.Conn, js jetstream.JetStream) error {
		_, err := js.Publish(ctx, subject, data)
		return err
	}
}

func pullFrom(stream, consumer string) func(context.Context, *nats.Conn, jetstream.JetStream) error {
	return func(_ context.Context, nc *nats.Conn, _ jetstream.JetStream) error {
		// The raw pull request, as a client that bypasses the info call
		// would send it.
		_, err := nc.Request("$JS.API.CONSUMER.MSG.NEXT."+stream+"."+consumer, []byte(`{"batch":1,"no_wait":true}`), 2*time.Second)
		return err
	}
}

func deleteMsg(stream string) func(context.Context, *nats.Conn, jetstream.JetStream) error {
	return func(_ context.Context, nc *nats.Conn, _ jetstream.JetStream) error {
		_, err := nc.Request("$JS.API.STREAM.MSG.DELETE."+stream, []byte(`{"seq":1}`), 2*time.Second)
		return err
	}
}
