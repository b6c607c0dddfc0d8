package writeback_test

import (
	"context"
	"errors"
	"maps"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tqtriage/tqtriage/bus"
	"github.com/tqtriage/tqtriage/internal/retry"
	"github.com/tqtriage/tqtriage/message"
	"github.com/tqtriage/tqtriage/threatq"
	"github.com/tqtriage/tqtriage/writeback"
)

// fakeOrder is an in-memory bus.Applied per indicator with revisions, as
// the bucket keeps them. beforeSet, when set, runs before each
// compare-and-set (another replica storing meanwhile).
type fakeOrder struct {
	mu        sync.Mutex
	entries   map[int64]bus.Applied
	revs      map[int64]uint64
	sets      int
	reads     int
	readErr   error
	beforeSet func(o *fakeOrder, id int64)
}

func newOrder() *fakeOrder {
	return &fakeOrder{entries: map[int64]bus.Applied{}, revs: map[int64]uint64{}}
}

func (o *fakeOrder) LastApplied(_ context.Context, id int64) (bus.Applied, uint64, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.reads++
	if o.readErr != nil {
		return nil, 0, o.readErr
	}
	return maps.Clone(o.entries[id]), o.revs[id], nil
}

func (o *fakeOrder) SetApplied(_ context.Context, id int64, a bus.Applied, rev uint64) error {
	if o.beforeSet != nil {
		o.beforeSet(o, id)
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.revs[id] != rev {
		return bus.ErrAppliedChanged
	}
	o.put(id, a)
	o.sets++
	return nil
}

// put stores an entry as another replica would (call with mu held, or
// before the writer runs).
func (o *fakeOrder) put(id int64, a bus.Applied) {
	o.entries[id] = maps.Clone(a)
	o.revs[id]++
}

func (o *fakeOrder) get(id int64) bus.Applied {
	o.mu.Lock()
	defer o.mu.Unlock()
	return maps.Clone(o.entries[id])
}

var t0 = time.Date(2026, 11, 27, 10, 0, 0, 0, time.UTC)

// answered is created() as answered at t.
func answered(t time.Time) message.Result {
	r := created()
	r.AnsweredAt = t.Format(message.AnsweredAtFormat)
	return r
}

func ordered(tq writeback.ThreatQ, o writeback.Order) *writeback.Writer {
	w := writeback.New(writeback.Config{Retry: retry.None}, tq)
	w.KeepOrder(o)
	return w
}

func names(c setCall) string {
	var out []string
	for _, a := range c.attrs {
		out = append(out, a.Name)
	}
	return strings.Join(out, ",")
}

func TestAnOlderResultIsStaleAndWritesNothing(t *testing.T) {
	tq, o := &fakeThreatQ{}, newOrder()
	w := ordered(tq, o)
	newer, older := answered(t0.Add(time.Minute)), answered(t0)
	if out := w.Handle(context.Background(), newer, attempt); out.Kind() != bus.KindDone || out.Label() != "written" {
		t.Fatalf("newer: %s %s", out.Kind(), out.Label())
	}
	out := w.Handle(context.Background(), older, attempt)
	if out.Kind() != bus.KindDone || out.Label() != "stale" {
		t.Fatalf("older: %s %s; want done, stale", out.Kind(), out.Label())
	}
	rc := receipt(t, out, older)
	if rc.Outcome != message.ReceiptStale || !strings.Contains(rc.Reason, "answered 2026-11-27T10:00:00Z; a result answered later was already written to ID, Threat Level, Threat Source") {
		t.Fatalf("receipt %+v", rc)
	}
	if n := tq.count(); n != 1 {
		t.Fatalf("%d writes; want only the newer result's", n)
	}
	if got := o.get(42); len(got) != 3 || !got["ID"].Equal(t0.Add(time.Minute)) {
		t.Fatalf("entry %v; want the newer time for each name", got)
	}
}

// TestAnIndicatorReadWithoutOurAttributesIsNotLookedUp: a result whose
// run read the indicator with none of the attributes it writes creates
// the indicator's entry without reading it first. Where an entry is there
// after all (a run that overlapped wrote since the read), the create
// fails, the entry is read, and the order holds.
func TestAnIndicatorReadWithoutOurAttributesIsNotLookedUp(t *testing.T) {
	fresh := func(at time.Time) message.Result {
		r := answered(at)
		r.ThreatQKnown = true
		r.ThreatQAttributes = []message.Attribute{{ID: 9, Name: "Country", Value: "US"}}
		return r
	}
	tq, o := &fakeThreatQ{}, newOrder()
	w := ordered(tq, o)
	if out := w.Handle(context.Background(), fresh(t0), attempt); out.Label() != "written" {
		t.Fatalf("first: %s", out.Label())
	}
	if o.reads != 0 || o.sets != 1 {
		t.Fatalf("first: %d reads, %d sets; want the entry created unread", o.reads, o.sets)
	}

	// Written meanwhile by a result answered later: this one is stale.
	o.put(43, bus.Applied{"ID": t0.Add(time.Minute), "Threat Level": t0.Add(time.Minute), "Threat Source": t0.Add(time.Minute)})
	older := fresh(t0)
	older.Indicator.ID = 43
	out := w.Handle(context.Background(), older, attempt)
	if out.Label() != "stale" || o.reads != 1 || tq.count() != 1 {
		t.Fatalf("overlapped: %s, %d reads, %d writes; want stale after one read", out.Label(), o.reads, tq.count())
	}

	// A run that read one of the attributes reads the entry first.
	seen := fresh(t0.Add(2 * time.Minute))
	seen.ThreatQAttributes = append(seen.ThreatQAttributes, message.Attribute{ID: 10, Name: "Threat Level", Value: "Benign"})
	if out := w.Handle(context.Background(), seen, attempt); out.Label() != "written" || o.reads != 2 {
		t.Fatalf("read before: %s, %d reads", out.Label(), o.reads)
	}
}

// TestOnlyTheAttributesALaterResultWroteAreLeft: a create answered before
// an update, written after it, still writes its ID (the update has none),
// and leaves level and source as the update set them.
func TestOnlyTheAttributesALaterResultWroteAreLeft(t *testing.T) {
	tq, o := &fakeThreatQ{}, newOrder()
	o.put(42, bus.Applied{"Threat Level": t0.Add(time.Minute), "Threat Source": t0.Add(time.Minute)})
	out := ordered(tq, o).Handle(context.Background(), answered(t0), attempt)
	if out.Label() != "written" || tq.count() != 1 || names(tq.calls[0]) != "ID" {
		t.Fatalf("%s, writes %+v", out.Label(), tq.calls)
	}
	rc := receipt(t, out, created())
	if rc.Outcome != message.ReceiptWritten || rc.Reason != "left Threat Level, Threat Source as a result answered later wrote them" {
		t.Fatalf("receipt %+v", rc)
	}
	if got := o.get(42); !got["ID"].Equal(t0) || !got["Threat Level"].Equal(t0.Add(time.Minute)) {
		t.Fatalf("entry %v", got)
	}
}

// TestAResultWhoseWriteFailedIsWrittenWhenRetried: its time is recorded
// before the write; on the retry that time is its own (equal), not stale.
func TestAResultWhoseWriteFailedIsWrittenWhenRetried(t *testing.T) {
	tq, o := &fakeThreatQ{set: func(n int) error {
		if n == 1 {
			return transient{errors.New("ThreatQ went away")}
		}
		return nil
	}}, newOrder()
	w := ordered(tq, o)
	r := answered(t0)
	if out := w.Handle(context.Background(), r, attempt); out.Kind() != bus.KindError || !retry.IsRetryable(out.Error()) {
		t.Fatalf("first delivery: %s %v", out.Kind(), out.Error())
	}
	out := w.Handle(context.Background(), r, attempt)
	if out.Label() != "written" || tq.count() != 2 || names(tq.calls[1]) != "ID,Threat Level,Threat Source" {
		t.Fatalf("retry: %s %+v", out.Label(), tq.calls)
	}
	if o.sets != 1 {
		t.Fatalf("%d stores; the retry finds its own time and stores nothing", o.sets)
	}
	// An older result that comes meanwhile is stale.
	if out := w.Handle(context.Background(), answered(t0.Add(-time.Second)), attempt); out.Label() != "stale" {
		t.Fatalf("older: %s", out.Label())
	}
}

type transient struct{ error }

func (transient) Retryable() bool { return true }

// TestTheOrderIsDecidedAgainWhenAnotherReplicaStoresFirst: between the
// read and the compare-and-set another replica records a later result;
// the write-back reads again and finds itself stale.
func TestTheOrderIsDecidedAgainWhenAnotherReplicaStoresFirst(t *testing.T) {
	tq, o := &fakeThreatQ{}, newOrder()
	var once sync.Once
	o.beforeSet = func(o *fakeOrder, id int64) {
		once.Do(func() {
			o.mu.Lock()
			o.put(id, bus.Applied{"ID": t0.Add(time.Hour), "Threat Level": t0.Add(time.Hour), "Threat Source": t0.Add(time.Hour)})
			o.mu.Unlock()
		})
	}
	out := ordered(tq, o).Handle(context.Background(), answered(t0), attempt)
	if out.Label() != "stale" || tq.count() != 0 {
		t.Fatalf("%s after %d writes; want stale, none", out.Label(), tq.count())
	}
}

func TestUndecidableOrderIsRetryable(t *testing.T) {
	t.Run("the bucket cannot be read", func(t *testing.T) {
		tq, o := &fakeThreatQ{}, newOrder()
		o.readErr = transient{errors.New("nats: timeout")}
		out := ordered(tq, o).Handle(context.Background(), answered(t0), attempt)
		if out.Kind() != bus.KindError || !retry.IsRetryable(out.Error()) || tq.count() != 0 {
			t.Fatalf("%s %v", out.Kind(), out.Error())
		}
	})
	t.Run("other replicas keep changing the entry", func(t *testing.T) {
		tq, o := &fakeThreatQ{}, newOrder()
		o.beforeSet = func(o *fakeOrder, id int64) {
			o.mu.Lock()
			o.put(id, bus.Applied{"Other": t0})
			o.mu.Unlock()
		}
		out := ordered(tq, o).Handle(context.Background(), answered(t0), attempt)
		if out.Kind() != bus.KindError || !retry.IsRetryable(out.Error()) || !strings.Contains(out.Error().Error(), "changed 8 times") || tq.count() != 0 {
			t.Fatalf("%s %v", out.Kind(), out.Error())
		}
	})
}

// TestWhenAResultWasAnswered: without answered_at (an older worker), the
// time it was stored; an answered_at more than a minute after it was
// stored is not believed.
func TestWhenAResultWasAnswered(t *testing.T) {
	stored := attempt
	stored.Stored = t0
	for _, tc := range []struct {
		name       string
		answeredAt string
		want       time.Time
	}{
		{"answered_at", t0.Add(-time.Hour).Format(message.AnsweredAtFormat), t0.Add(-time.Hour)},
		{"none: when stored", "", t0},
		{"unreadable: when stored", "an hour ago", t0},
		{"a worker's clock a little ahead", t0.Add(30 * time.Second).Format(message.AnsweredAtFormat), t0.Add(30 * time.Second)},
		{"far in the future: when stored", "2099-01-01T00:00:00Z", t0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := newOrder()
			r := created()
			r.AnsweredAt = tc.answeredAt
			if out := ordered(&fakeThreatQ{}, o).Handle(context.Background(), r, stored); out.Label() != "written" {
				t.Fatalf("%s", out.Label())
			}
			if got := o.get(42)["ID"]; !got.Equal(tc.want) {
				t.Fatalf("recorded %v; want %v", got, tc.want)
			}
		})
	}
}

// TestResultsOfOneIndicatorAreWrittenOneAtATimeInAReplica: two results of
// one indicator handled at once do not write at once; another indicator's
// is not held up.
func TestResultsOfOneIndicatorAreWrittenOneAtATimeInAReplica(t *testing.T) {
	var inFlight, most atomic.Int64
	release := make(chan struct{})
	entered := make(chan int64, 4)
	tq := &blockingThreatQ{enter: func(id int64) {
		n := inFlight.Add(1)
		for m := most.Load(); n > m && !most.CompareAndSwap(m, n); m = most.Load() {
		}
		entered <- id
		<-release
		inFlight.Add(-1)
	}}
	w := ordered(tq, newOrder())
	other := answered(t0)
	other.Indicator.ID = 43
	var wg sync.WaitGroup
	for _, r := range []message.Result{answered(t0), answered(t0.Add(time.Second)), other} {
		wg.Add(1)
		go func() { defer wg.Done(); w.Handle(context.Background(), r, attempt) }()
	}
	got := map[int64]int{<-entered: 1}
	got[<-entered]++
	if got[42] != 1 || got[43] != 1 {
		t.Fatalf("writing at once: %v; want one of indicator 42 and the one of 43", got)
	}
	close(release)
	wg.Wait()
	if most.Load() != 2 {
		t.Fatalf("at most %d writes at once", most.Load())
	}
	for len(entered) > 0 { // the second result of 42, unless it was stale
		<-entered
	}

	// A handler waiting for the indicator's lock ends with its context.
	hold := make(chan struct{})
	tq.enter = func(id int64) { entered <- id; <-hold }
	done := make(chan struct{})
	go func() { defer close(done); w.Handle(context.Background(), answered(t0.Add(time.Hour)), attempt) }()
	<-entered // it holds the lock, writing
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if out := w.Handle(ctx, answered(t0.Add(2*time.Hour)), attempt); out.Kind() != bus.KindError || !errors.Is(out.Error(), context.Canceled) {
		t.Fatalf("%s %v", out.Kind(), out.Error())
	}
	close(hold)
	<-done
}

type blockingThreatQ struct{ enter func(id int64) }

func (b *blockingThreatQ) SetAttributes(_ context.Context, id int64, _ []threatq.Attribute) error {
	b.enter(id)
	return nil
}

func (b *blockingThreatQ) SetAttributesKnown(ctx context.Context, id int64, attrs []threatq.Attribute, _ []threatq.AttributeRow) error {
	return b.SetAttributes(ctx, id, attrs)
}
