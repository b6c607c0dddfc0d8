package run

import (
	"context"
	"encoding/json"
	"errors"
	"sync"
	"testing"

	"github.com/tqtriage/tqtriage/bus"
	"github.com/tqtriage/tqtriage/message"
)

// fakeBus is run.Bus in memory: a jobs stream that drops a repeated
// Nats-Msg-Id as JetStream's duplicate window does, the runs bucket, and a
// run's results and receipts for ReadRun.
type fakeBus struct {
	mu      sync.Mutex
	changed chan struct{} // closed and replaced on every change

	records map[string][]byte
	ids     map[string]bool // message ids stored
	jobs    []message.Job   // stored, in order
	seq     uint64

	// failAsyncOnce: the first asynchronous publish of these message
	// ids fails (a lost acknowledgement); the resend succeeds.
	failAsyncOnce map[string]bool
	// refuseAsync: PublishAsync itself refuses these message ids (too
	// many stalled), so that the job is sent synchronously.
	refuseAsync map[string]bool
	// hold: futures resolve only on a token from gate.
	hold bool
	gate chan struct{}
	// outstanding counts futures made and not yet resolved.
	outstanding, maxOutstanding int
	asyncCalls, syncCalls       int
	// publishErr, when set, answers a synchronous publish instead.
	publishErr func(p bus.Publication) error

	// stored is what ReadRun reads; readErr ends a following ReadRun.
	stored  []bus.Stored
	readErr error
	// onReadEnd, when set, is called as a following ReadRun returns.
	onReadEnd func()
}

func newFakeBus() *fakeBus {
	return &fakeBus{changed: make(chan struct{}), records: map[string][]byte{}, ids: map[string]bool{},
		failAsyncOnce: map[string]bool{}, refuseAsync: map[string]bool{}, gate: make(chan struct{})}
}

// change runs f under the lock and wakes whoever waits on a change.
func (b *fakeBus) change(f func()) {
	b.mu.Lock()
	defer b.mu.Unlock()
	f()
	close(b.changed)
	b.changed = make(chan struct{})
}

// store keeps p unless its message id was stored before.
func (b *fakeBus) store(p bus.Publication) bus.PubAck {
	if p.MsgID != "" && b.ids[p.MsgID] {
		return bus.PubAck{Seq: b.seq, Duplicate: true}
	}
	b.ids[p.MsgID] = true
	var j message.Job
	if err := json.Unmarshal(p.Data, &j); err != nil {
		panic(err)
	}
	if want := message.JobSubject(j.Action); j.DryRun {
		if p.Subject != message.DryRunJobSubject(j.Action) {
			panic("dry-run job published on " + p.Subject)
		}
	} else if p.Subject != want {
		panic("job published on " + p.Subject)
	}
	b.jobs = append(b.jobs, j)
	b.seq++
	return bus.PubAck{Seq: b.seq}
}

var errLostAck = errors.New("nats: timeout waiting for the acknowledgement")

type fakeFuture struct {
	b    *fakeBus
	p    bus.Publication
	fail bool
}

func (f fakeFuture) Wait(ctx context.Context) (bus.PubAck, error) {
	if f.b.hold {
		select {
		case <-f.b.gate:
		case <-ctx.Done():
			return bus.PubAck{}, ctx.Err()
		}
	}
	var ack bus.PubAck
	f.b.change(func() {
		f.b.outstanding--
		if !f.fail {
			ack = f.b.store(f.p)
		}
	})
	if f.fail {
		return bus.PubAck{}, errLostAck
	}
	return ack, nil
}

func (b *fakeBus) PublishAsync(p bus.Publication) (bus.Future, error) {
	var f fakeFuture
	var err error
	b.change(func() {
		b.asyncCalls++
		if b.refuseAsync[p.MsgID] {
			err = errors.New("nats: stalled with too many outstanding async published messages")
			return
		}
		f = fakeFuture{b: b, p: p, fail: b.failAsyncOnce[p.MsgID]}
		delete(b.failAsyncOnce, p.MsgID)
		b.outstanding++
		b.maxOutstanding = max(b.maxOutstanding, b.outstanding)
	})
	if err != nil {
		return nil, err
	}
	return f, nil
}

func (b *fakeBus) Publish(_ context.Context, p bus.Publication) (bus.PubAck, error) {
	var ack bus.PubAck
	var err error
	b.change(func() {
		b.syncCalls++
		if b.publishErr != nil {
			if err = b.publishErr(p); err != nil {
				return
			}
		}
		ack = b.store(p)
	})
	return ack, err
}

func (b *fakeBus) PutRunRecord(_ context.Context, id string, data []byte) error {
	if err := message.CheckRunID(id); err != nil {
		return err
	}
	b.change(func() { b.records[id] = append([]byte(nil), data...) })
	return nil
}

func (b *fakeBus) GetRunRecord(_ context.Context, id string) ([]byte, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	data, ok := b.records[id]
	if !ok {
		return nil, bus.ErrRunNotFound
	}
	return data, nil
}

// ReadRun reads what is stored, in order; following, it waits for more
// until fn says stop, ctx ends or readErr is set.
func (b *fakeBus) ReadRun(ctx context.Context, _ string, follow bool, fn func(bus.Stored) bool) error {
	b.mu.Lock()
	end := b.onReadEnd
	b.mu.Unlock()
	if follow && end != nil {
		defer end()
	}
	for i := 0; ; i++ {
		b.mu.Lock()
		for i >= len(b.stored) {
			if !follow {
				b.mu.Unlock()
				return nil
			}
			if b.readErr != nil {
				err := b.readErr
				b.mu.Unlock()
				return err
			}
			ch := b.changed
			b.mu.Unlock()
			select {
			case <-ch:
			case <-ctx.Done():
				return ctx.Err()
			}
			b.mu.Lock()
		}
		s := b.stored[i]
		b.mu.Unlock()
		if !fn(s) {
			return nil
		}
	}
}

// record is the run's record as stored.
func (b *fakeBus) record(t *testing.T, id string) Record {
	t.Helper()
	rec, err := Get(context.Background(), b, id)
	if err != nil {
		t.Fatal(err)
	}
	return rec
}

func (b *fakeBus) storedJobs() []message.Job {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]message.Job(nil), b.jobs...)
}

// addResult stores a result of job seq (indicator 100+seq) of run.
func (b *fakeBus) addResult(t *testing.T, run string, seq int64, s message.Status) uint64 {
	t.Helper()
	data, err := json.Marshal(message.Result{V: message.Version, RunID: run, Action: message.ActionCreate, Seq: seq,
		Indicator: message.Indicator{ID: 100 + seq, Type: "MD5", Value: "x"}, Status: s})
	if err != nil {
		t.Fatal(err)
	}
	return b.addStored(bus.Stored{Data: data})
}

// addReceipt stores write-back's receipt of job seq's result at resultSeq.
func (b *fakeBus) addReceipt(t *testing.T, run string, seq int64, resultSeq uint64, o message.ReceiptOutcome) {
	t.Helper()
	data, err := json.Marshal(message.Receipt{V: message.Version, RunID: run, Seq: seq, Indicator: 100 + seq, Result: resultSeq, Outcome: o})
	if err != nil {
		t.Fatal(err)
	}
	b.addStored(bus.Stored{Receipt: true, Data: data})
}

func (b *fakeBus) addStored(s bus.Stored) uint64 {
	b.change(func() {
		b.seq++
		s.Seq = b.seq
		b.stored = append(b.stored, s)
	})
	return s.Seq
}

// RunIDs makes fakeBus a Lister.
func (b *fakeBus) RunIDs(context.Context) ([]string, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	var ids []string
	for id := range b.records {
		ids = append(ids, id)
	}
	return ids, nil
}

// addResultOf stores r as a result.
func (b *fakeBus) addResultOf(t *testing.T, r message.Result) uint64 {
	t.Helper()
	data, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	return b.addStored(bus.Stored{Data: data})
}
