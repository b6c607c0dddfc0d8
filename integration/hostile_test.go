package integration

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
	"github.com/tqtriage/tqtriage/threatq/threatqsim"
)

// Reproductions of what an untrusted publisher could do to the fleet,
// each on a real JetStream server (at its default 1 MiB payload limit).

// publishRaw stores a job as a third-party tool would: any bytes, no
// message id.
func publishRaw(t *testing.T, b *bus.Bus, subject string, data []byte) {
	t.Helper()
	if _, err := b.Publish(context.Background(), bus.Publication{Subject: subject, Data: data}); err != nil {
		t.Fatal(err)
	}
}

func jobJSON(t *testing.T, j message.Job, extra string) []byte {
	t.Helper()
	data, err := json.Marshal(j)
	if err != nil {
		t.Fatal(err)
	}
	if extra != "" {
		data = append(data[:len(data)-1], []byte(","+extra+"}")...)
	}
	return data
}

// TestALongReplyToDoesNotKillTheWorker: a reply_to of 5,000 characters
// once made the result's publish exceed the server's control line, closing
// the worker's connection for good (and the next replica's, in turn). Now
// it is answered invalid in its own run, and the worker goes on.
func TestALongReplyToDoesNotKillTheWorker(t *testing.T) {
	e := newEnv(t)
	b := e.serveWorkers(withConcurrency(workerConfig(), 4))
	pub := e.bus()
	long := message.Job{V: 1, RunID: "long-reply", Action: message.ActionCreate, Seq: 1,
		Indicator: message.Indicator{ID: 1, Type: "MD5", Value: sampleIndicators("lr", 1)[0].Value},
		ReplyTo:   message.ResultsPrefix + strings.Repeat("x", 5000)}
	publishRaw(t, pub, message.JobSubject(message.ActionCreate), jobJSON(t, long, ""))
	ok := message.Job{V: 1, RunID: "long-reply", Action: message.ActionCreate, Seq: 2,
		Indicator: message.Indicator{ID: 2, Type: "MD5", Value: sampleIndicators("lr-ok", 1)[0].Value}}
	publishRaw(t, pub, message.JobSubject(message.ActionCreate), jobJSON(t, ok, ""))
	waitJobsSettled(t, pub)
	rs := results(t, b, "long-reply")
	if len(rs[1]) != 1 || rs[1][0].Status != message.StatusInvalid || !strings.Contains(rs[1][0].Reason, "reply_to") {
		t.Fatalf("long reply_to: %+v; want one invalid result naming reply_to", rs[1])
	}
	if len(rs[2]) != 1 || rs[2][0].Status != message.StatusCreated {
		t.Fatalf("the next job: %+v; want created by the same, living worker", rs[2])
	}
	if !b.Connected() {
		t.Fatal("the worker's connection is gone")
	}
}

// TestAForgedJobCannotRewriteAnotherRun: a job of run "attacker" that
// names the victim's results as its reply_to is answered in its own run;
// and a job reusing the victim's run id without a message id does not
// suppress the victim's genuine result as a duplicate.
func TestAForgedJobCannotRewriteAnotherRun(t *testing.T) {
	e := newEnv(t)
	e.serveWorkers(withConcurrency(workerConfig(), 4))
	pub := e.bus()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	// The forgery comes first: same run id, indicator id and action as
	// the victim's job, no Nats-Msg-Id.
	victimID := "victim-run"
	ind := sampleIndicators("victim", 1)[0]
	forged := message.Job{V: 1, RunID: victimID, Action: message.ActionCreate, Indicator: message.Indicator{ID: 1, Type: "Bogus", Value: "x"}}
	publishRaw(t, pub, message.JobSubject(message.ActionCreate), jobJSON(t, forged, ""))
	waitJobsSettled(t, pub)
	rec, err := run.Publish(ctx, pub, run.Options{ID: victimID, Action: message.ActionCreate},
		itemsOf([]threatqsim.SeedIndicator{{Type: ind.Type, Value: ind.Value}}), e.log)
	if err != nil {
		t.Fatal(err)
	}
	waitJobsSettled(t, pub)
	var genuine int
	for _, r := range results(t, pub, rec.ID)[1] {
		if r.Status == message.StatusCreated {
			genuine++
		}
	}
	if genuine != 1 {
		t.Fatalf("the victim's genuine result was suppressed: %+v", results(t, pub, rec.ID)[1])
	}

	// The attacker's own run answers on its own subject only.
	attack := message.Job{V: 1, RunID: "attacker", Action: message.ActionCreate, Seq: 1,
		Indicator: message.Indicator{ID: 1, Type: "Bogus", Value: "x"}, ReplyTo: message.ResultSubject(victimID)}
	before := results(t, pub, victimID)
	publishRaw(t, pub, message.JobSubject(message.ActionCreate), jobJSON(t, attack, ""))
	waitJobsSettled(t, pub)
	if after := results(t, pub, victimID); len(after[1]) != len(before[1]) {
		t.Fatalf("the attacker's job answered into the victim's run: %+v", after[1])
	}
	if rs := results(t, pub, "attacker"); len(rs[1]) != 1 || rs[1][0].Status != message.StatusInvalid {
		t.Fatalf("the attacker's job: %+v; want one invalid answer in its own run", rs[1])
	}
}

// TestAHugeSeqDoesNotExhaustMemory: a job with seq 4,000,000,000,000 on an
// existing run's id once made status, publish --wait and run die out of
// memory in the tally, for as long as the results were kept.
func TestAHugeSeqDoesNotExhaustMemory(t *testing.T) {
	e := newEnv(t)
	e.serveWorkers(withConcurrency(workerConfig(), 4))
	pub := e.bus()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	rec, err := run.Publish(ctx, pub, run.Options{ID: "big-seq", Action: message.ActionCreate}, itemsOf(sampleIndicators("bs", 3)), e.log)
	if err != nil {
		t.Fatal(err)
	}
	huge := message.Job{V: 1, RunID: rec.ID, Action: message.ActionCreate, Seq: 4_000_000_000_000,
		Indicator: message.Indicator{ID: 99, Type: "MD5", Value: sampleIndicators("bs-huge", 1)[0].Value}}
	publishRaw(t, pub, message.JobSubject(message.ActionCreate), jobJSON(t, huge, ""))
	// A result with such a seq, as a forged one would be.
	r := message.Result{V: 1, RunID: rec.ID, Action: message.ActionCreate, Seq: 3_999_999_999_999, Indicator: message.Indicator{ID: 98}, Status: message.StatusCreated}
	data, _ := json.Marshal(r)
	publishRaw(t, pub, message.ResultSubject(rec.ID), data)
	waitJobsSettled(t, pub)
	tally, _, err := run.Status(ctx, pub, rec.ID)
	if err != nil || tally.Done() != 3 || tally.Count(message.StatusCreated) != 3 || tally.Count(message.StatusInvalid) != 0 || tally.Apart() != 2 {
		t.Fatalf("status: %v, %s, apart %d; want the 3 jobs created, the huge-seq job invalid and counted apart, the forged result apart", err, tally.Line(rec.Total), tally.Apart())
	}
	if _, _, err := run.Follow(ctx, pub, rec.ID, run.FollowOptions{}); err != nil {
		t.Fatal(err)
	}
}

// TestPoisonMessagesEndAtOnceWithoutLooping: a reply_to holding a newline,
// a value that would make a result over the server's maximum payload, and
// garbage close to 1 MiB were each handed back for ever, calling Triage
// on every try. Now each is settled on its first delivery, without Triage.
func TestPoisonMessagesEndAtOnceWithoutLooping(t *testing.T) {
	e := newEnv(t)
	b := e.serveWorkers(withConcurrency(workerConfig(), 4))
	pub := e.bus()
	newline := message.Job{V: 1, RunID: "poison", Action: message.ActionCreate, Seq: 1,
		Indicator: message.Indicator{ID: 1, Type: "URL", Value: "https://poison.example.com/a"}, ReplyTo: "tqtriage.results.poison\n"}
	publishRaw(t, pub, message.JobSubject(message.ActionCreate), jobJSON(t, newline, ""))
	lt := message.Job{V: 1, RunID: "poison", Action: message.ActionCreate, Seq: 2,
		Indicator: message.Indicator{ID: 2, Type: "URL", Value: "https://poison.example.com/" + strings.Repeat("<", 200_000)}}
	ltData, _ := message.Encode(lt) // 200 KB, as a publisher without HTML escaping sends it
	garbage := []byte(strings.Repeat("\x00garbage", (1<<20-4096)/8))

	// The jobs stream refuses both at publish, with a clear error ...
	for _, data := range [][]byte{ltData, garbage} {
		_, err := pub.Publish(context.Background(), bus.Publication{Subject: message.JobSubject(message.ActionCreate), Data: data})
		if err == nil || !strings.Contains(err.Error(), "message size exceeds maximum") {
			t.Fatalf("a job of %d bytes: %v; want it refused by the stream's limit", len(data), err)
		}
	}
	// ... and a stream made before that limit existed lets them through
	// to the worker, which must settle them at once all the same.
	liftJobSizeLimit(t, e)
	publishRaw(t, pub, message.JobSubject(message.ActionCreate), ltData)
	publishRaw(t, pub, message.JobSubject(message.ActionCreate), garbage)
	waitJobsSettled(t, pub)

	rs := results(t, b, "poison")
	if len(rs[1]) != 1 || rs[1][0].Status != message.StatusInvalid {
		t.Fatalf("reply_to with a newline: %+v; want one invalid result", rs[1])
	}
	var letters []bus.DeadLetter
	if err := b.ListDLQ(context.Background(), message.LettersInvalid, func(d bus.DeadLetter) bool { letters = append(letters, d); return true }); err != nil {
		t.Fatal(err)
	}
	if len(letters) != 2 {
		t.Fatalf("%d dead letters on %s; want the over-long job and the garbage", len(letters), message.DLQInvalid)
	}
	for _, d := range letters {
		if !strings.Contains(d.Reason, "at most 65536") || len(d.Data) > 1<<20 {
			t.Errorf("dead letter %d: reason %q, %d bytes", d.Seq, d.Reason, len(d.Data))
		}
	}
	// The replica's token, obtained at its start, is the only request.
	if st := e.triage.Stats(); st.Total()-st.Requests[triageTokenEndpoint] != 0 {
		t.Fatalf("Triage received %d API requests for poison jobs; want none", st.Total()-st.Requests[triageTokenEndpoint])
	}
	if st, err := b.ConsumerState(context.Background(), bus.ConsumerWorkers); err != nil || st.AckPending != 0 {
		t.Fatalf("jobs still held: %+v, %v", st, err)
	}
}

// liftJobSizeLimit removes the jobs stream's message size limit, as a
// stream made by an older version would have none.
func liftJobSizeLimit(t *testing.T, e *env) {
	t.Helper()
	nc, err := nats.Connect(e.srv.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	s, err := js.Stream(context.Background(), bus.StreamJobs)
	if err != nil {
		t.Fatal(err)
	}
	cfg := s.CachedInfo().Config
	cfg.MaxMsgSize = -1
	if _, err := js.UpdateStream(context.Background(), cfg); err != nil {
		t.Fatal(err)
	}
}
