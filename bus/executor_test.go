package bus

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/tqtriage/tqtriage/message"
)

// fakeMsg is a delivered JetStream message whose settlement is recorded:
// the executor sees nothing else of JetStream's consumer side.
type fakeMsg struct {
	subject string
	data    []byte
	hdr     nats.Header
	md      *jetstream.MsgMetadata // nil: not a JetStream message

	// onSettle, when set, runs inside Ack, Nak, NakWithDelay and Term,
	// before they return: to see what the stream holds at that moment.
	onSettle func(what string)

	mu       sync.Mutex
	settles  []string        // "ack", "nak", "nak 5s", "term"
	progress int             // InProgress calls
	settled  chan string     // each settlement, as it happens
	working  chan struct{}   // each InProgress, as it happens (never blocks)
	delays   []time.Duration // of NakWithDelay
}

func newMsg(subject string, data string, seq, delivered uint64) *fakeMsg {
	return &fakeMsg{
		subject: subject, data: []byte(data),
		hdr: nats.Header{jetstream.MsgIDHeader: []string{"orig/" + fmt.Sprint(seq)}},
		md: &jetstream.MsgMetadata{
			Sequence:     jetstream.SequencePair{Stream: seq, Consumer: seq},
			NumDelivered: delivered, Stream: StreamJobs, Consumer: ConsumerWorkers,
			Timestamp: time.Now(),
		},
		settled: make(chan string, 16),
		working: make(chan struct{}, 1),
	}
}

func (m *fakeMsg) Metadata() (*jetstream.MsgMetadata, error) {
	if m.md == nil {
		return nil, jetstream.ErrNotJSMessage
	}
	md := *m.md
	return &md, nil
}
func (m *fakeMsg) Data() []byte                       { return m.data }
func (m *fakeMsg) Headers() nats.Header               { return m.hdr }
func (m *fakeMsg) Subject() string                    { return m.subject }
func (m *fakeMsg) Reply() string                      { return "" }
func (m *fakeMsg) Ack() error                         { return m.settle("ack") }
func (m *fakeMsg) DoubleAck(context.Context) error    { return m.settle("ack") }
func (m *fakeMsg) Nak() error                         { return m.settle("nak") }
func (m *fakeMsg) Term() error                        { return m.settle("term") }
func (m *fakeMsg) TermWithReason(string) error        { return m.settle("term") }
func (m *fakeMsg) NakWithDelay(d time.Duration) error { return m.settleDelay(d) }

func (m *fakeMsg) InProgress() error {
	m.mu.Lock()
	m.progress++
	m.mu.Unlock()
	select {
	case m.working <- struct{}{}:
	default:
	}
	return nil
}

func (m *fakeMsg) settleDelay(d time.Duration) error {
	m.mu.Lock()
	m.delays = append(m.delays, d)
	m.mu.Unlock()
	return m.settle("nak " + d.String())
}

func (m *fakeMsg) settle(what string) error {
	if m.onSettle != nil {
		m.onSettle(what)
	}
	m.mu.Lock()
	m.settles = append(m.settles, what)
	m.mu.Unlock()
	m.settled <- what
	return nil
}

// waitSettled returns the message's first settlement, waiting for it
// (an acknowledgement after publications comes from a goroutine).
func (m *fakeMsg) waitSettled(t *testing.T) string {
	t.Helper()
	select {
	case s := <-m.settled:
		return s
	case <-time.After(10 * time.Second):
		t.Fatal("the message was never settled")
		return ""
	}
}

func (m *fakeMsg) all() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]string(nil), m.settles...)
}

// giveUps records what a test consumer's GiveUp was told.
type giveUps struct {
	mu      sync.Mutex
	reasons []string
	at      []Attempt
}

func (g *giveUps) add(a Attempt, reason string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.reasons = append(g.reasons, reason)
	g.at = append(g.at, a)
}

func (g *giveUps) last() (string, Attempt, int) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if len(g.reasons) == 0 {
		return "", Attempt{}, 0
	}
	return g.reasons[len(g.reasons)-1], g.at[len(g.at)-1], len(g.reasons)
}

const (
	testRun     = "run-x"
	testDLQ     = "tqtriage.dlq.create"
	testResults = "tqtriage.results." + testRun
)

var errUndecodable = errors.New("not a job: empty")

// testConsumer decodes any non-empty message as its text and hands it to
// handle; GiveUp dead-letters it with a failed "result" on testResults.
func testConsumer(g *giveUps, handle func(ctx context.Context, v string, a Attempt) Outcome) Consumer[string] {
	return Consumer[string]{
		Durable: ConsumerWorkers,
		Decode: func(_ string, data []byte) (string, error) {
			if len(data) == 0 {
				return "", errUndecodable
			}
			return string(data), nil
		},
		Undecodable: message.DLQInvalid,
		Handle:      handle,
		GiveUp: func(v string, a Attempt, reason string) Outcome {
			g.add(a, reason)
			return DeadLettered(testDLQ, testRun, reason, Publication{Subject: testResults, MsgID: "failed/" + v, Data: []byte("failed " + v)})
		},
		MaxDeliver:      5,
		RedeliveryDelay: time.Second, MaxRedeliveryDelay: 10 * time.Second,
		Concurrency: 4, Grace: time.Second,
	}
}

// retryableErr is a failure that may pass, with an optional Retry-After.
type retryableErr struct{ after time.Duration }

func (e retryableErr) Error() string             { return fmt.Sprintf("503 (retry after %s)", e.after) }
func (retryableErr) Retryable() bool             { return true }
func (e retryableErr) RetryAfter() time.Duration { return e.after }

func decideOnce(c Consumer[string], ctx context.Context, m *fakeMsg, a Attempt) Outcome {
	e := &executor[string]{c: c, every: time.Hour, log: zerolog.Nop()}
	return e.decide(ctx, &delivery[string]{m: m, a: a, log: zerolog.Nop()})
}

// settleAt settles out for message m (decoded as its data) at attempt a.
func settleAt(e *executor[string], ctx context.Context, m jetstream.Msg, md *jetstream.MsgMetadata, a Attempt, out Outcome) {
	e.settle(ctx, &delivery[string]{m: m, md: md, a: a, v: string(m.Data()), decoded: true, log: zerolog.Nop()}, out)
}

func at(n int) Attempt { return Attempt{N: n, Max: 5, Subject: "tqtriage.jobs.create", Seq: 9} }

// TestDecide covers every way decide turns a delivery into an outcome,
// without a server: what it returns is what settle will do.
func TestDecide(t *testing.T) {
	cancelled, cancel := context.WithCancel(context.Background())
	cancel()
	plain := errors.New("422 validation failed")
	for _, tc := range []struct {
		name    string
		ctx     context.Context
		data    string
		a       Attempt
		handle  func(ctx context.Context, v string, a Attempt) Outcome
		kind    Kind
		delay   time.Duration // of a retry or snooze
		giveUp  string        // the reason GiveUp was told (a part); "" when not called
		handled bool
	}{{
		name: "undecodable is dead-lettered on Undecodable", data: "", a: at(1),
		kind: KindDeadLetter,
	}, {
		name: "delivered beyond the limit is given up unseen", data: "job", a: at(6),
		kind: KindDeadLetter, giveUp: "delivered 6 times without an answer (limit 5)",
	}, {
		name: "retryable error with deliveries left is retried after the doubling delay", data: "job", a: at(3),
		handle: func(context.Context, string, Attempt) Outcome { return Err(retryableErr{}) },
		kind:   KindRetry, delay: 4 * time.Second, handled: true,
	}, {
		name: "the doubling delay stops at its maximum", data: "job", a: Attempt{N: 9, Max: 20},
		handle: func(context.Context, string, Attempt) Outcome { return Err(retryableErr{}) },
		kind:   KindRetry, delay: 10 * time.Second, handled: true,
	}, {
		name: "a longer Retry-After wins over the doubling delay", data: "job", a: at(1),
		handle: func(context.Context, string, Attempt) Outcome { return Err(retryableErr{after: 45 * time.Second}) },
		kind:   KindRetry, delay: 45 * time.Second, handled: true,
	}, {
		name: "a shorter Retry-After does not shorten the doubling delay", data: "job", a: at(2),
		handle: func(context.Context, string, Attempt) Outcome { return Err(retryableErr{after: time.Millisecond}) },
		kind:   KindRetry, delay: 2 * time.Second, handled: true,
	}, {
		name: "retryable error on the last delivery is given up", data: "job", a: at(5),
		handle: func(context.Context, string, Attempt) Outcome { return Err(retryableErr{}) },
		kind:   KindDeadLetter, giveUp: "gave up after 5 deliveries: 503", handled: true,
	}, {
		name: "error that is not retryable is given up at once", data: "job", a: at(1),
		handle: func(context.Context, string, Attempt) Outcome { return Err(plain) },
		kind:   KindDeadLetter, giveUp: plain.Error(), handled: true,
	}, {
		name: "error after the context ended is handed back", ctx: cancelled, data: "job", a: at(5),
		handle: func(ctx context.Context, _ string, _ Attempt) Outcome { return Err(ctx.Err()) },
		kind:   KindHandBack, handled: true,
	}, {
		name: "a retryable error after the context ended is handed back, not retried", ctx: cancelled, data: "job", a: at(2),
		handle: func(context.Context, string, Attempt) Outcome { return Err(retryableErr{}) },
		kind:   KindHandBack, handled: true,
	}, {
		name: "a panicking handler is retried like a retryable error", data: "job", a: at(2),
		handle: func(context.Context, string, Attempt) Outcome { panic("nil map") },
		kind:   KindRetry, delay: 2 * time.Second, handled: true,
	}, {
		name: "a panicking handler on the last delivery is given up", data: "job", a: at(5),
		handle: func(context.Context, string, Attempt) Outcome { panic("nil map") },
		kind:   KindDeadLetter, giveUp: "gave up after 5 deliveries: handler panicked: nil map", handled: true,
	}, {
		name: "snooze passes through", data: "job", a: at(2),
		handle: func(context.Context, string, Attempt) Outcome { return Snooze(3*time.Second, "rate limited") },
		kind:   KindSnooze, delay: 3 * time.Second, handled: true,
	}, {
		name: "done passes through", data: "job", a: at(1),
		handle: func(context.Context, string, Attempt) Outcome { return Done("created") },
		kind:   KindDone, handled: true,
	}, {
		name: "hand back passes through", data: "job", a: at(1),
		handle: func(context.Context, string, Attempt) Outcome { return HandBack() },
		kind:   KindHandBack, handled: true,
	}} {
		t.Run(tc.name, func(t *testing.T) {
			var g giveUps
			handled := false
			var seen Attempt
			c := testConsumer(&g, func(ctx context.Context, v string, a Attempt) Outcome {
				handled, seen = true, a
				if v != "job" {
					t.Errorf("handler got %q", v)
				}
				return tc.handle(ctx, v, a)
			})
			ctx := tc.ctx
			if ctx == nil {
				ctx = context.Background()
			}
			out := decideOnce(c, ctx, newMsg("tqtriage.jobs.create", tc.data, 9, 1), tc.a)
			if out.Kind() != tc.kind {
				t.Fatalf("outcome %s (%v); want %s", out.Kind(), out.Error(), tc.kind)
			}
			if handled != tc.handled {
				t.Errorf("handler called %v; want %v", handled, tc.handled)
			}
			if handled && seen != tc.a {
				t.Errorf("handler saw %+v; want %+v", seen, tc.a)
			}
			if (tc.kind == KindRetry || tc.kind == KindSnooze) && out.Delay() != tc.delay {
				t.Errorf("delay %v; want %v", out.Delay(), tc.delay)
			}
			reason, a, n := g.last()
			switch {
			case tc.giveUp == "" && n > 0:
				t.Errorf("GiveUp called (%q); want not", reason)
			case tc.giveUp != "" && (n != 1 || !strings.Contains(reason, tc.giveUp)):
				t.Errorf("GiveUp told %q (%d times); want %q once", reason, n, tc.giveUp)
			case tc.giveUp != "" && a != tc.a:
				t.Errorf("GiveUp saw %+v; want %+v", a, tc.a)
			}
			if tc.giveUp != "" && (out.DeadLetterSubject() != testDLQ || out.Reason() != reason) {
				t.Errorf("given up to %s (%q); want the consumer's GiveUp", out.DeadLetterSubject(), out.Reason())
			}
		})
	}
}

func TestUndecodableIsDeadLetteredWithTheDecodeError(t *testing.T) {
	var g giveUps
	out := decideOnce(testConsumer(&g, nil), context.Background(), newMsg("tqtriage.jobs.create", "", 9, 1), at(1))
	if out.Kind() != KindDeadLetter || out.DeadLetterSubject() != message.DLQInvalid || out.Reason() != errUndecodable.Error() {
		t.Fatalf("outcome %s on %s (%q); want a dead letter on %s with the decode error", out.Kind(), out.DeadLetterSubject(), out.Reason(), message.DLQInvalid)
	}
	if _, _, n := g.last(); n != 0 {
		t.Fatal("GiveUp was asked about a message that did not decode")
	}
}

func TestPanickingDecodeIsRetried(t *testing.T) {
	var g giveUps
	c := testConsumer(&g, nil)
	c.Decode = func(string, []byte) (string, error) { panic("decoder bug") }
	out := decideOnce(c, context.Background(), newMsg("tqtriage.jobs.create", "job", 9, 1), at(1))
	if out.Kind() != KindRetry || out.Delay() != time.Second || !strings.Contains(out.Error().Error(), "decoder bug") {
		t.Fatalf("outcome %s after %v (%v); want a retry after 1s", out.Kind(), out.Delay(), out.Error())
	}
}

func TestOutcomeLabels(t *testing.T) {
	for out, want := range map[*Outcome]string{
		ptr(Done("created")):                 "created",
		ptr(DeadLettered("s", "", "r")):      "dead_lettered",
		ptr(retryAfter(time.Second, nil)):    "redelivered",
		ptr(Snooze(time.Second, "why")):      "snoozed",
		ptr(HandBack()):                      "handed_back",
		ptr(Err(errors.New("not resolved"))): "error",
	} {
		if out.Label() != want {
			t.Errorf("%s labelled %q; want %q", out.Kind(), out.Label(), want)
		}
	}
	if s := Kind(99).String(); s != "kind(99)" {
		t.Errorf("Kind(99) = %q", s)
	}
}

func ptr[T any](v T) *T { return &v }

// serverBus is a Bus on an embedded server of the test's own.
func serverBus(t *testing.T, cfg Config) *Bus {
	t.Helper()
	s := startServer(t)
	cfg.URL = s.ClientURL()
	b, err := Connect(context.Background(), cfg, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.Close)
	return b
}

func newExecutor(b *Bus, c Consumer[string]) *executor[string] {
	return &executor[string]{b: b, c: c, every: time.Hour, log: zerolog.Nop()}
}

// stored is the last message stored on subject, or nil.
func stored(t *testing.T, b *Bus, s jetstream.Stream, subject string) *jetstream.RawStreamMsg {
	t.Helper()
	m, err := s.GetLastMsgForSubject(context.Background(), subject)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func deadLetters(t *testing.T, b *Bus, kind message.Letters) []DeadLetter {
	t.Helper()
	var out []DeadLetter
	if err := b.ListDLQ(context.Background(), kind, func(d DeadLetter) bool { out = append(out, d); return true }); err != nil {
		t.Fatal(err)
	}
	return out
}

func TestSettle(t *testing.T) {
	b := serverBus(t, Config{})
	ctx := context.Background()
	var g giveUps
	e := newExecutor(b, testConsumer(&g, nil))

	t.Run("done stores its publications, then acknowledges", func(t *testing.T) {
		m := newMsg("tqtriage.jobs.create", "job-1", 101, 1)
		subj := message.ResultSubject("run-done")
		var atAck *jetstream.RawStreamMsg
		m.onSettle = func(string) { atAck = stored(t, b, b.results, subj) }
		settleAt(e, ctx, m, m.md, at(1), Done("created", Publication{Subject: subj, MsgID: "r/1", Data: []byte("result-1")}))
		if s := m.waitSettled(t); s != "ack" {
			t.Fatalf("settled %q; want ack", s)
		}
		if atAck == nil || string(atAck.Data) != "result-1" || atAck.Header.Get(jetstream.MsgIDHeader) != "r/1" {
			t.Fatalf("when acknowledged, the stream held %+v; want the result with its message id", atAck)
		}
	})

	t.Run("done without publications acknowledges at once", func(t *testing.T) {
		m := newMsg("tqtriage.jobs.create", "job-2", 102, 1)
		settleAt(e, ctx, m, m.md, at(1), Done("nothing"))
		if got := m.all(); len(got) != 1 || got[0] != "ack" {
			t.Fatalf("settled %v; want one ack, before settle returned", got)
		}
	})

	t.Run("dead letter is stored with its headers, then the publications, then the ack", func(t *testing.T) {
		m := newMsg("tqtriage.jobs.create", `{"job":3}`, 103, 4)
		subj := message.ResultSubject("run-dead")
		var lettersAtAck []DeadLetter
		var resultAtAck *jetstream.RawStreamMsg
		m.onSettle = func(string) {
			lettersAtAck = deadLetters(t, b, message.LettersCreate)
			resultAtAck = stored(t, b, b.results, subj)
		}
		out := DeadLettered(testDLQ, "run-dead", "gave up after 5 deliveries: 503", Publication{Subject: subj, MsgID: "failed/3", Data: []byte("failed")})
		settleAt(e, ctx, m, m.md, at(5), out)
		if s := m.waitSettled(t); s != "ack" {
			t.Fatalf("settled %q; want ack", s)
		}
		if len(lettersAtAck) != 1 || resultAtAck == nil {
			t.Fatalf("when acknowledged: %d dead letters, result %v; want both stored", len(lettersAtAck), resultAtAck)
		}
		d := lettersAtAck[0]
		want := DeadLetter{Subject: testDLQ, Reason: "gave up after 5 deliveries: 503", Source: "tqtriage.jobs.create", RunID: "run-dead",
			Deliveries: "4", MsgID: "orig/103", Data: []byte(`{"job":3}`)}
		if d.Subject != want.Subject || d.Reason != want.Reason || d.Source != want.Source || d.RunID != want.RunID ||
			d.Deliveries != want.Deliveries || d.MsgID != want.MsgID || string(d.Data) != string(want.Data) {
			t.Fatalf("dead letter %+v; want %+v", d, want)
		}

		// A crash after storing the dead letter, before the ack: the
		// redelivery's dead letter is dropped as a repeat.
		again := newMsg("tqtriage.jobs.create", `{"job":3}`, 103, 5)
		settleAt(e, ctx, again, again.md, at(5), out)
		if s := again.waitSettled(t); s != "ack" {
			t.Fatalf("repeat settled %q; want ack", s)
		}
		if n := len(deadLetters(t, b, message.LettersCreate)); n != 1 {
			t.Fatalf("%d dead letters after a repeat; want 1", n)
		}
	})

	t.Run("a dead letter that cannot be stored leaves the message for a delayed redelivery, its publications unsent", func(t *testing.T) {
		m := newMsg("tqtriage.jobs.create", "job-4", 104, 2)
		subj := message.ResultSubject("run-nowhere")
		settleAt(e, ctx, m, m.md, at(2), DeadLettered("tqtriage.nowhere", testRun, "r", Publication{Subject: subj, Data: []byte("failed")}))
		if s := m.waitSettled(t); s != "nak 2s" {
			t.Fatalf("settled %q; want a nak after the doubling delay (2s)", s)
		}
		if r := stored(t, b, b.results, subj); r != nil {
			t.Fatal("a failed result was stored without its dead letter")
		}
	})

	t.Run("a publication that cannot be stored leaves the message for redelivery", func(t *testing.T) {
		m := newMsg("tqtriage.jobs.create", "job-5", 105, 1)
		settleAt(e, ctx, m, m.md, at(1), Done("created", Publication{Subject: "tqtriage.nowhere", Data: []byte("x")}))
		if s := m.waitSettled(t); s != "nak 1s" {
			t.Fatalf("settled %q; want a delayed nak", s)
		}
	})

	t.Run("retry naks with its delay and counts", func(t *testing.T) {
		m := newMsg("tqtriage.jobs.create", "job-6", 106, 1)
		settleAt(e, ctx, m, m.md, at(1), retryAfter(7*time.Second, errors.New("503")))
		if got := m.all(); len(got) != 1 || got[0] != "nak 7s" {
			t.Fatalf("settled %v; want one nak after 7s", got)
		}
		m.md.NumDelivered = 2
		if n := b.countedDeliveries(ctx, ConsumerWorkers, m.md); n != 2 {
			t.Fatalf("the redelivery after a retry counts as %d; want 2", n)
		}
	})

	t.Run("snooze naks with its delay and does not count", func(t *testing.T) {
		m := newMsg("tqtriage.jobs.create", "job-7", 107, 1)
		settleAt(e, ctx, m, m.md, at(1), Snooze(3*time.Second, "rate limited"))
		if got := m.all(); len(got) != 1 || got[0] != "nak 3s" {
			t.Fatalf("settled %v; want one nak after 3s", got)
		}
		m.md.NumDelivered = 2
		if n := b.countedDeliveries(ctx, ConsumerWorkers, m.md); n != 1 {
			t.Fatalf("the delivery after a snooze counts as %d; want 1", n)
		}
	})

	t.Run("hand back naks at once and does not count", func(t *testing.T) {
		m := newMsg("tqtriage.jobs.create", "job-8", 108, 1)
		settleAt(e, ctx, m, nil, Attempt{}, HandBack()) // handed back unseen while draining: no metadata read yet
		if got := m.all(); len(got) != 1 || got[0] != "nak" {
			t.Fatalf("settled %v; want one nak", got)
		}
		m.md.NumDelivered = 2
		if n := b.countedDeliveries(ctx, ConsumerWorkers, m.md); n != 1 {
			t.Fatalf("the delivery after a hand-back counts as %d; want 1", n)
		}
	})

	t.Run("an unknown outcome is redelivered", func(t *testing.T) {
		m := newMsg("tqtriage.jobs.create", "job-9", 109, 1)
		settleAt(e, ctx, m, m.md, at(1), Outcome{kind: Kind(42)})
		if got := m.all(); len(got) != 1 || got[0] != "nak 1s" {
			t.Fatalf("settled %v; want a delayed nak", got)
		}
	})
}

func TestUncountedDeliveriesAccumulateAndAreKeptPerConsumer(t *testing.T) {
	b := serverBus(t, Config{})
	ctx := context.Background()
	m := newMsg("tqtriage.jobs.create", "job", 5, 1)
	for i := 0; i < 3; i++ {
		b.markUncounted(ctx, ConsumerWorkers, m, m.md)
	}
	md := *m.md
	md.NumDelivered = 5
	if n := b.countedDeliveries(ctx, ConsumerWorkers, &md); n != 2 {
		t.Fatalf("5 deliveries, 3 uncounted: counted %d; want 2", n)
	}
	if n := b.countedDeliveries(ctx, ConsumerWriteback, &md); n != 5 {
		t.Fatalf("another consumer's message at the same sequence counted %d; want all 5", n)
	}
	md.NumDelivered = 0
	if n := b.countedDeliveries(ctx, ConsumerWorkers, &md); n != 1 {
		t.Fatalf("a first delivery counted %d; want 1", n)
	}
}

func TestDeliver(t *testing.T) {
	b := serverBus(t, Config{})

	t.Run("a handler cut short by the end of grace hands back, and the delivery does not count", func(t *testing.T) {
		var g giveUps
		var seen []int
		release := make(chan struct{})
		e := newExecutor(b, testConsumer(&g, func(ctx context.Context, _ string, a Attempt) Outcome {
			seen = append(seen, a.N)
			select {
			case <-release:
				return Done("created")
			case <-ctx.Done():
				return Err(fmt.Errorf("create indicator: %w", ctx.Err()))
			}
		}))
		ctx, cancel := context.WithCancel(context.Background())
		cancel() // as Serve cancels the handlers' context when the grace period runs out
		first := newMsg("tqtriage.jobs.create", "job", 201, 1)
		e.deliver(ctx, first)
		if got := first.all(); len(got) != 1 || got[0] != "nak" {
			t.Fatalf("settled %v; want a hand-back (nak)", got)
		}
		close(release)
		second := newMsg("tqtriage.jobs.create", "job", 201, 2)
		e.deliver(context.Background(), second)
		if len(seen) != 2 || seen[1] != 1 {
			t.Fatalf("the handler saw attempts %v; want [1 1]: a hand-back must not spend a delivery", seen)
		}
	})

	t.Run("snoozed twice, then done: every delivery is the first", func(t *testing.T) {
		var g giveUps
		var seen []int
		e := newExecutor(b, testConsumer(&g, func(_ context.Context, _ string, a Attempt) Outcome {
			seen = append(seen, a.N)
			if len(seen) < 3 {
				return Snooze(time.Millisecond, "rate limited")
			}
			return Done("created")
		}))
		for n := uint64(1); n <= 3; n++ {
			m := newMsg("tqtriage.jobs.create", "job", 202, n)
			e.deliver(context.Background(), m)
			if s := m.waitSettled(t); n < 3 && s != "nak 1ms" || n == 3 && s != "ack" {
				t.Fatalf("delivery %d settled %q", n, s)
			}
		}
		if fmt.Sprint(seen) != "[1 1 1]" {
			t.Fatalf("the handler saw attempts %v; want [1 1 1]", seen)
		}
	})

	t.Run("a panicking handler's delivery counts", func(t *testing.T) {
		var g giveUps
		var seen []int
		e := newExecutor(b, testConsumer(&g, func(_ context.Context, _ string, a Attempt) Outcome {
			seen = append(seen, a.N)
			if len(seen) == 1 {
				panic("boom")
			}
			return Done("created")
		}))
		first := newMsg("tqtriage.jobs.create", "job", 203, 1)
		e.deliver(context.Background(), first)
		if s := first.waitSettled(t); s != "nak 1s" {
			t.Fatalf("panicking delivery settled %q; want a nak after the first delay", s)
		}
		second := newMsg("tqtriage.jobs.create", "job", 203, 2)
		e.deliver(context.Background(), second)
		if fmt.Sprint(seen) != "[1 2]" {
			t.Fatalf("the handler saw attempts %v; want [1 2]", seen)
		}
	})

	t.Run("a retryable error is redelivered after the doubling delay or the longer Retry-After", func(t *testing.T) {
		for _, tc := range []struct {
			after     time.Duration
			delivered uint64
			want      string
		}{
			{0, 1, "nak 1s"},
			{0, 3, "nak 4s"},
			{45 * time.Second, 2, "nak 45s"},
		} {
			var g giveUps
			e := newExecutor(b, testConsumer(&g, func(context.Context, string, Attempt) Outcome { return Err(retryableErr{after: tc.after}) }))
			m := newMsg("tqtriage.jobs.create", "job", 208+tc.delivered, tc.delivered)
			e.deliver(context.Background(), m)
			if s := m.waitSettled(t); s != tc.want {
				t.Errorf("delivery %d with Retry-After %v settled %q; want %q", tc.delivered, tc.after, s, tc.want)
			}
		}
	})

	t.Run("a delivery past the limit is given up without the handler", func(t *testing.T) {
		var g giveUps
		called := false
		e := newExecutor(b, testConsumer(&g, func(context.Context, string, Attempt) Outcome { called = true; return Done("x") }))
		m := newMsg("tqtriage.jobs.create", "job", 204, 6)
		e.deliver(context.Background(), m)
		if s := m.waitSettled(t); s != "ack" || called {
			t.Fatalf("settled %q, handler called %v; want a dead letter and an ack, unseen", s, called)
		}
		if reason, a, _ := g.last(); a.N != 6 || !strings.Contains(reason, "without an answer") {
			t.Fatalf("GiveUp told %q at %+v", reason, a)
		}
	})

	t.Run("a message without JetStream metadata is left alone", func(t *testing.T) {
		var g giveUps
		e := newExecutor(b, testConsumer(&g, func(context.Context, string, Attempt) Outcome { t.Error("handled"); return Done("x") }))
		m := newMsg("tqtriage.jobs.create", "job", 205, 1)
		m.md = nil
		e.deliver(context.Background(), m)
		if got := m.all(); len(got) != 0 {
			t.Fatalf("settled %v; want nothing", got)
		}
	})

	t.Run("the heartbeat reports progress while the handler works", func(t *testing.T) {
		var g giveUps
		m := newMsg("tqtriage.jobs.create", "job", 206, 1)
		e := newExecutor(b, testConsumer(&g, func(ctx context.Context, _ string, _ Attempt) Outcome {
			select {
			case <-m.working: // the heartbeat's first InProgress
				return Done("created")
			case <-time.After(10 * time.Second):
				return Err(errors.New("no heartbeat within 10s"))
			}
		}))
		e.every = time.Millisecond
		e.deliver(context.Background(), m)
		if s := m.waitSettled(t); s != "ack" {
			t.Fatalf("settled %q; want ack after a heartbeat", s)
		}
	})

	t.Run("settlement is counted in the metrics", func(t *testing.T) {
		var g giveUps
		reg := prometheus.NewRegistry()
		c := testConsumer(&g, func(context.Context, string, Attempt) Outcome { return Err(errors.New("permanent")) })
		c.Metrics = NewMetrics(reg)
		e := newExecutor(b, c)
		m := newMsg("tqtriage.jobs.create", "job", 207, 1)
		e.deliver(context.Background(), m)
		m.waitSettled(t)
		got := gathered(t, reg)
		if got["tqtriage_messages_settled_total{consumer=tqtriage-workers,outcome=dead_lettered}"] != 1 ||
			got["tqtriage_dead_letters_total{subject="+testDLQ+"}"] != 1 {
			t.Fatalf("metrics %v", got)
		}
	})
}

// gathered flattens reg's counters into "name{label=value,...}" → value.
func gathered(t *testing.T, reg *prometheus.Registry) map[string]float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			var labels []string
			for _, l := range m.GetLabel() {
				labels = append(labels, l.GetName()+"="+l.GetValue())
			}
			if m.GetCounter() != nil {
				out[mf.GetName()+"{"+strings.Join(labels, ",")+"}"] = m.GetCounter().GetValue()
			}
		}
	}
	return out
}

func TestServeRefusesAnIncompleteConsumer(t *testing.T) {
	var g giveUps
	full := testConsumer(&g, func(context.Context, string, Attempt) Outcome { return Done("x") })
	for name, edit := range map[string]func(*Consumer[string]){
		"no Decode":             func(c *Consumer[string]) { c.Decode = nil },
		"no Handle":             func(c *Consumer[string]) { c.Handle = nil },
		"no GiveUp":             func(c *Consumer[string]) { c.GiveUp = nil },
		"no Undecodable":        func(c *Consumer[string]) { c.Undecodable = "" },
		"no MaxDeliver":         func(c *Consumer[string]) { c.MaxDeliver = 0 },
		"no RedeliveryDelay":    func(c *Consumer[string]) { c.RedeliveryDelay = 0 },
		"no MaxRedeliveryDelay": func(c *Consumer[string]) { c.MaxRedeliveryDelay = 0 },
		"an unknown durable":    func(c *Consumer[string]) { c.Durable = "nobody" },
	} {
		c := full
		edit(&c)
		var b *Bus
		if name == "an unknown durable" {
			b = &Bus{}
		}
		if err := Serve(context.Background(), b, c); err == nil {
			t.Errorf("%s: Serve accepted the consumer", name)
		}
	}
}

// publishJob stores a job message for the workers' consumer.
func publishJob(t *testing.T, b *Bus, data string) uint64 {
	t.Helper()
	ack, err := b.Publish(context.Background(), Publication{Subject: message.JobSubject(message.ActionCreate), Data: []byte(data)})
	if err != nil {
		t.Fatal(err)
	}
	return ack.Seq
}

// serve runs Serve until the returned stop is called; stop waits for it
// to return and fails the test on its error.
func serve(t *testing.T, b *Bus, c Consumer[string]) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Serve(ctx, b, c) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("Serve: %v", err)
				}
			case <-time.After(15 * time.Second):
				t.Error("Serve did not return after its context ended")
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

// waitFor polls cond until it holds (a server's state, which has no
// event to wait on), failing after a bound.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func jobsLeft(t *testing.T, b *Bus) uint64 {
	t.Helper()
	n, err := b.JobsWaiting(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func TestServeSnoozedTwiceThenDoneSeesTheFirstAttemptEachTime(t *testing.T) {
	b := serverBus(t, Config{})
	var g giveUps
	attempts := make(chan Attempt, 10)
	c := testConsumer(&g, func(_ context.Context, v string, a Attempt) Outcome {
		attempts <- a
		if len(attempts) < 3 {
			return Snooze(10*time.Millisecond, "rate limited")
		}
		return Done("created", Publication{Subject: testResults, MsgID: "done/" + v, Data: []byte("done " + v)})
	})
	seq := publishJob(t, b, "job-e2e")
	stop := serve(t, b, c)
	waitFor(t, "the job to be acknowledged", func() bool { return jobsLeft(t, b) == 0 })
	stop()
	close(attempts)
	var got []Attempt
	for a := range attempts {
		got = append(got, a)
	}
	if len(got) != 3 {
		t.Fatalf("%d deliveries; want 3", len(got))
	}
	for i, a := range got {
		if a.N != 1 || a.Max != 5 || a.Seq != seq || a.Subject != message.JobSubject(message.ActionCreate) {
			t.Errorf("delivery %d: %+v; want attempt 1 of 5 of the message at %d", i+1, a, seq)
		}
		// When it was stored is the stream's, the same for every delivery.
		if a.Stored.IsZero() || time.Since(a.Stored) > time.Minute || !a.Stored.Equal(got[0].Stored) {
			t.Errorf("delivery %d: stored at %v; the first at %v", i+1, a.Stored, got[0].Stored)
		}
	}
	if m := stored(t, b, b.results, testResults); m == nil || string(m.Data) != "done job-e2e" {
		t.Fatalf("result stored: %v", m)
	}
}

func TestServeHandsBackOnShutdownWithoutSpendingADelivery(t *testing.T) {
	b := serverBus(t, Config{})
	var g giveUps
	started := make(chan Attempt, 1)
	c := testConsumer(&g, func(ctx context.Context, _ string, a Attempt) Outcome {
		started <- a
		<-ctx.Done() // outlasts the grace period
		return Err(ctx.Err())
	})
	c.Grace = 20 * time.Millisecond
	publishJob(t, b, "job-shutdown")
	stop := serve(t, b, c)
	if a := <-started; a.N != 1 {
		t.Fatalf("first delivery is attempt %d", a.N)
	}
	stop()

	again := make(chan Attempt, 1)
	c.Handle = func(_ context.Context, _ string, a Attempt) Outcome {
		again <- a
		return Done("created")
	}
	serve(t, b, c)
	select {
	case a := <-again:
		if a.N != 1 {
			t.Fatalf("after a hand-back on shutdown the job is attempt %d; want 1", a.N)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the handed-back job was not delivered again")
	}
	if _, _, n := g.last(); n != 0 {
		t.Fatal("a job handed back on shutdown was given up")
	}
}

func TestServeHeartbeatKeepsAHandlerOutlastingAckWait(t *testing.T) {
	const ackWait = 500 * time.Millisecond
	b := serverBus(t, Config{AckWait: ackWait})
	var g giveUps
	var mu sync.Mutex
	calls := 0
	release := make(chan struct{})
	var releaseOnce sync.Once
	free := func() { releaseOnce.Do(func() { close(release) }) }
	defer free() // also when the test fails, so that Serve can stop
	c := testConsumer(&g, func(context.Context, string, Attempt) Outcome {
		mu.Lock()
		calls++
		mu.Unlock()
		<-release
		return Done("created")
	})
	publishJob(t, b, "job-slow")
	stop := serve(t, b, c)
	waitFor(t, "the job to be taken", func() bool { mu.Lock(); defer mu.Unlock(); return calls == 1 })
	// Without progress reports the server would deliver the job again
	// after ackWait, to another free handler; proving that it does not
	// takes waiting several ack waits.
	time.Sleep(3 * ackWait)
	cons, err := b.jobs.Consumer(context.Background(), ConsumerWorkers)
	if err != nil {
		t.Fatal(err)
	}
	info, err := cons.Info(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	n := calls
	mu.Unlock()
	if n != 1 || info.NumRedelivered != 0 {
		t.Fatalf("after 3 ack waits: %d handler calls, %d redelivered; want 1 and 0", n, info.NumRedelivered)
	}
	free()
	waitFor(t, "the job to be acknowledged", func() bool { return jobsLeft(t, b) == 0 })
	stop()
}

// TestHeartbeatThatFiresAtOnceDoesNotRaceItsConstructor: the heartbeat's
// timer may fire before newHeartbeat has stored it; run with -race.
func TestHeartbeatThatFiresAtOnceDoesNotRaceItsConstructor(t *testing.T) {
	m := newMsg("tqtriage.jobs.create", "job", 1, 1)
	h := newHeartbeat(m, time.Nanosecond)
	<-m.working
	<-m.working // a second beat: the timer was reset
	h.stop()
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.progress < 2 {
		t.Fatalf("%d progress reports; want at least 2", m.progress)
	}
}
