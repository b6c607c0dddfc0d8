package bus

import (
	"context"
	"strings"
	"testing"

	"github.com/tqtriage/tqtriage/message"
)

// TestAnswersTheServerRefusesForGoodAreFinal: an answer the server can
// never take (over its maximum payload, on a subject it refuses) used to
// be handed back for ever. Now the message's answer becomes its give-up;
// when even that cannot be stored, the message is dead-lettered alone; in
// every case it is acknowledged at once.
func TestAnswersTheServerRefusesForGoodAreFinal(t *testing.T) {
	b := connect(t, startServer(t))
	ctx := context.Background()
	huge := make([]byte, 2<<20)

	t.Run("the answer is refused: the give-up is stored instead", func(t *testing.T) {
		var g giveUps
		e := newExecutor(b, testConsumer(&g, nil))
		m := newMsg("tqtriage.jobs.create", "job-p1", 301, 1)
		settleAt(e, ctx, m, m.md, at(1), Done("created", Publication{Subject: testResults, MsgID: "big", Data: huge}))
		if s := m.waitSettled(t); s != "ack" {
			t.Fatalf("settled %q; want ack", s)
		}
		reason, _, n := g.last()
		if n != 1 || !strings.Contains(reason, "the answer could not be stored") || !strings.Contains(reason, "maximum payload") {
			t.Fatalf("give-up %d times, reason %q", n, reason)
		}
		if r := stored(t, b, b.results, testResults); r == nil || string(r.Data) != "failed job-p1" {
			t.Fatalf("stored answer %v; want the give-up's", r)
		}
	})

	t.Run("the give-up is refused too: the message is dead-lettered alone", func(t *testing.T) {
		c := testConsumer(&giveUps{}, nil)
		c.GiveUp = func(v string, a Attempt, reason string) Outcome {
			return DeadLettered(testDLQ, testRun, reason, Publication{Subject: "tqtriage.results.bad subject", Data: []byte("x")})
		}
		e := newExecutor(b, c)
		m := newMsg("tqtriage.jobs.create", "job-p2", 302, 1)
		settleAt(e, ctx, m, m.md, at(1), Done("created", Publication{Subject: testResults, MsgID: "big2", Data: huge}))
		if s := m.waitSettled(t); s != "ack" {
			t.Fatalf("settled %q; want ack", s)
		}
		var found bool
		for _, d := range deadLetters(t, b, message.LettersCreate) {
			if string(d.Data) == "job-p2" && strings.Contains(d.Reason, "the answer could not be stored") {
				found = true
			}
		}
		if !found {
			t.Fatal("no dead letter of the message")
		}
	})

	t.Run("a dead letter too large for the server is cut to fit, and says so", func(t *testing.T) {
		e := newExecutor(b, testConsumer(&giveUps{}, nil))
		big := strings.Repeat("j", int(b.nc.MaxPayload())-100)
		m := newMsg("tqtriage.jobs.create", big, 303, 1)
		long := strings.Repeat("reason\r\n", 1000)
		settleAt(e, ctx, m, m.md, at(1), DeadLettered(testDLQ, testRun, long))
		if s := m.waitSettled(t); s != "ack" {
			t.Fatalf("settled %q; want ack", s)
		}
		var d *DeadLetter
		for _, l := range deadLetters(t, b, message.LettersCreate) {
			if l.Seq > 0 && strings.HasPrefix(string(l.Data), "jjj") {
				d = &l
			}
		}
		if d == nil || !d.Truncated || len(d.Data) >= len(big) || len(d.Reason) > maxReasonBytes || strings.ContainsAny(d.Reason, "\r\n") {
			t.Fatalf("dead letter %+v; want it cut, marked, with a bounded one-line reason", d)
		}
	})
}
