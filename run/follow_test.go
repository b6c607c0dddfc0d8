package run

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tqtriage/tqtriage/bus"
	"github.com/tqtriage/tqtriage/message"
)

// lines collects progress lines and wakes waiters on each.
type lines struct {
	mu      sync.Mutex
	all     []string
	changed chan struct{}
	onWrite func(line string) // called with each line, before Write returns
}

func newLines() *lines { return &lines{changed: make(chan struct{})} }

func (l *lines) Write(p []byte) (int, error) {
	if l.onWrite != nil {
		l.onWrite(string(p))
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.all = append(l.all, string(p))
	close(l.changed)
	l.changed = make(chan struct{})
	return len(p), nil
}

// waitFor returns once a progress line contains want: Follow has then
// judged the run with what that line shows.
func (l *lines) waitFor(t *testing.T, want string) {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		l.mu.Lock()
		for _, s := range l.all {
			if strings.Contains(s, want) {
				l.mu.Unlock()
				return
			}
		}
		ch := l.changed
		l.mu.Unlock()
		select {
		case <-ch:
		case <-deadline:
			t.Fatalf("no progress line with %q; lines: %q", want, l.last())
		}
	}
}

func (l *lines) last() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.all[max(0, len(l.all)-3):]
}

type followed struct {
	tally *Tally
	rec   Record
	err   error
}

// follow runs Follow in the background, with progress on every tick.
func follow(ctx context.Context, b *fakeBus, id string, writtenBack bool) (*lines, <-chan followed) {
	l := newLines()
	done := make(chan followed, 1)
	go func() {
		tl, rec, err := Follow(ctx, b, id, FollowOptions{WrittenBack: writtenBack, Progress: l, Every: time.Millisecond})
		done <- followed{tl, rec, err}
	}()
	return l, done
}

func wait(t *testing.T, done <-chan followed) followed {
	t.Helper()
	select {
	case f := <-done:
		return f
	case <-time.After(10 * time.Second):
		t.Fatal("Follow did not return")
		return followed{}
	}
}

func stillFollowing(t *testing.T, done <-chan followed) {
	t.Helper()
	select {
	case f := <-done:
		t.Fatalf("Follow returned early: %+v", f)
	default:
	}
}

func putRecord(t *testing.T, b *fakeBus, rec Record) {
	t.Helper()
	if err := put(context.Background(), b, rec); err != nil {
		t.Fatal(err)
	}
}

func TestFollowCompletesWhenEveryJobHasAResult(t *testing.T) {
	b := newFakeBus()
	putRecord(t, b, Record{ID: "run-f1", Action: message.ActionCreate, Published: true, Total: 2})
	b.addResult(t, "run-f1", 1, message.StatusCreated)
	l, done := follow(context.Background(), b, "run-f1", false)
	l.waitFor(t, "1/2 jobs (50%")
	l.waitFor(t, ": created 1")
	stillFollowing(t, done)
	b.addResult(t, "run-f1", 2, message.StatusInvalid)
	f := wait(t, done)
	if f.err != nil || f.tally.Done() != 2 || f.tally.Count(message.StatusInvalid) != 1 || f.rec.Total != 2 {
		t.Fatalf("Follow = %+v, done %d; want the run complete with 2 results", f, f.tally.Done())
	}
}

func TestFollowWaitingForWriteBackCompletesOnlyWhenEveryResultHasAReceipt(t *testing.T) {
	b := newFakeBus()
	putRecord(t, b, Record{ID: "run-f2", Action: message.ActionCreate, Published: true, Total: 2})
	r1 := b.addResult(t, "run-f2", 1, message.StatusCreated)
	r2 := b.addResult(t, "run-f2", 2, message.StatusInvalid)
	l, done := follow(context.Background(), b, "run-f2", true)
	l.waitFor(t, "(writing back 2)")
	b.addReceipt(t, "run-f2", 2, r2, message.ReceiptNothing)
	l.waitFor(t, "(writing back 1)")
	stillFollowing(t, done)
	b.addReceipt(t, "run-f2", 1, r1, message.ReceiptWritten)
	f := wait(t, done)
	if f.err != nil || f.tally.AwaitingWriteback() != 0 || f.tally.Done() != 2 {
		t.Fatalf("Follow = %+v; want the run written back", f)
	}
}

func TestFollowIgnoresAnotherRunsReceipts(t *testing.T) {
	b := newFakeBus()
	putRecord(t, b, Record{ID: "run-f3", Action: message.ActionCreate, Published: true, Total: 1})
	b.addResult(t, "run-f3", 1, message.StatusCreated)
	// A receipt for a job whose result this run has not read.
	b.addReceipt(t, "run-f3", 7, 99, message.ReceiptWritten)
	l, done := follow(context.Background(), b, "run-f3", true)
	l.waitFor(t, "(writing back 1)")
	stillFollowing(t, done)
}

// TestFollowInterruptedSaysTheRunGoesOn interrupts Follow (Ctrl-C on
// `publish --wait` or `run`): the error must say that the run goes on and
// how to see it, and match context.Canceled.
//
// The context ends while Follow shows progress, and the reader of the
// results, which ends with the context, has returned before Follow waits
// again: as when the interruption lands while Follow is busy. Its select
// then has two cases ready and picks one at random, so the test tries
// often enough for a wrong pick to show all but certainly.
func TestFollowInterruptedSaysTheRunGoesOn(t *testing.T) {
	const tries = 20
	b := newFakeBus()
	putRecord(t, b, Record{ID: "run-f4", Action: message.ActionCreate, Published: true, Total: 3})
	b.addResult(t, "run-f4", 1, message.StatusCreated)
	wrong := 0
	var last error
	for range tries {
		ctx, cancel := context.WithCancel(context.Background())
		readerEnded := make(chan struct{})
		b.mu.Lock()
		b.onReadEnd = func() { close(readerEnded) }
		b.mu.Unlock()
		var once sync.Once
		l := newLines()
		l.onWrite = func(line string) {
			if strings.Contains(line, "1/3 jobs") {
				once.Do(func() {
					cancel()
					<-readerEnded
					time.Sleep(time.Millisecond) // for the reader's error to reach its channel
				})
			}
		}
		tl, _, err := Follow(ctx, b, "run-f4", FollowOptions{Progress: l, Every: time.Millisecond})
		cancel()
		if tl == nil || tl.Done() != 1 {
			t.Fatalf("tally %+v; want what was read", tl)
		}
		if !errors.Is(err, context.Canceled) || !strings.Contains(err.Error(), "stopped waiting for run run-f4") ||
			!strings.Contains(err.Error(), "tqtriage status run-f4") {
			wrong++
			last = err
		}
	}
	if wrong > 0 {
		t.Fatalf("%d of %d interruptions ended with %q; want one that says the run goes on and how to see it, matching context.Canceled", wrong, tries, last)
	}
}

func TestFollowRereadsARecordNotYetPublishedUntilItIs(t *testing.T) {
	b := newFakeBus()
	putRecord(t, b, Record{ID: "run-f5", Action: message.ActionCreate})
	b.addResult(t, "run-f5", 1, message.StatusCreated)
	b.addResult(t, "run-f5", 2, message.StatusCreated)
	l, done := follow(context.Background(), b, "run-f5", false)
	l.waitFor(t, "2 jobs: created 2 (still publishing)")
	stillFollowing(t, done)
	putRecord(t, b, Record{ID: "run-f5", Action: message.ActionCreate, Published: true, Total: 2})
	f := wait(t, done)
	if f.err != nil || !f.rec.Published || f.rec.Total != 2 {
		t.Fatalf("Follow = %+v; want the published record", f)
	}
}

func TestFollowOfAnUnknownRunIsNotFound(t *testing.T) {
	if _, _, err := Follow(context.Background(), newFakeBus(), "run-none", FollowOptions{}); !errors.Is(err, ErrNotFound) {
		t.Fatalf("error %v; want ErrNotFound", err)
	}
}

func TestFollowReportsTheResultsStreamEnding(t *testing.T) {
	b := newFakeBus()
	putRecord(t, b, Record{ID: "run-f6", Action: message.ActionCreate, Published: true, Total: 2})
	b.readErr = errors.New("nats: connection closed")
	_, done := follow(context.Background(), b, "run-f6", false)
	f := wait(t, done)
	if f.err == nil || !strings.Contains(f.err.Error(), "following run run-f6") || !strings.Contains(f.err.Error(), "connection closed") {
		t.Fatalf("error %v; want the reader's", f.err)
	}
}

func TestFollowShowsProgressInPlaceOnATerminal(t *testing.T) {
	b := newFakeBus()
	putRecord(t, b, Record{ID: "run-f7", Action: message.ActionCreate, Published: true, Total: 1})
	b.addResult(t, "run-f7", 1, message.StatusCreated)
	l := newLines()
	if _, _, err := Follow(context.Background(), b, "run-f7", FollowOptions{Progress: l, Terminal: true, Every: time.Millisecond}); err != nil {
		t.Fatal(err)
	}
	out := strings.Join(l.all, "")
	if !strings.HasPrefix(out, "\r\033[K") || !strings.HasSuffix(out, "] 1/1 100%: created 1\n") {
		t.Fatalf("terminal output %q", out)
	}
}

func TestStatusCountsWhatIsStoredIncludingUnreadableResults(t *testing.T) {
	b := newFakeBus()
	putRecord(t, b, Record{ID: "run-s1", Action: message.ActionCreate, Published: true, Total: 4})
	r1 := b.addResult(t, "run-s1", 1, message.StatusCreated)
	b.addResult(t, "run-s1", 2, message.StatusSkipped)
	b.addStored(bus.Stored{Data: []byte(`{"v":1,"status":"lost"}`)})
	b.addStored(bus.Stored{Data: []byte("not json")})
	b.addReceipt(t, "run-s1", 1, r1, message.ReceiptWritten)
	b.addStored(bus.Stored{Receipt: true, Data: []byte("not json")}) // an unreadable receipt counts for nothing
	tl, rec, err := Status(context.Background(), b, "run-s1")
	if err != nil {
		t.Fatal(err)
	}
	if rec.Total != 4 || tl.Done() != 2 || tl.Unreadable() != 2 || tl.Count(message.StatusSkipped) != 1 || tl.AwaitingWriteback() != 1 {
		t.Fatalf("status: done %d, unreadable %d, counts %v, awaiting %d", tl.Done(), tl.Unreadable(), tl.Counts(), tl.AwaitingWriteback())
	}
	if _, _, err := Status(context.Background(), b, "run-none"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("status of an unknown run: %v; want ErrNotFound", err)
	}
}

func TestFollowCountsAnUnreadableResultAndStillCompletes(t *testing.T) {
	b := newFakeBus()
	putRecord(t, b, Record{ID: "run-f8", Action: message.ActionCreate, Published: true, Total: 1})
	b.addStored(bus.Stored{Data: []byte("{")})
	l, done := follow(context.Background(), b, "run-f8", false)
	l.waitFor(t, "0/1 jobs")
	stillFollowing(t, done)
	b.addResult(t, "run-f8", 1, message.StatusCreated)
	f := wait(t, done)
	if f.err != nil || f.tally.Unreadable() != 1 || f.tally.Done() != 1 {
		t.Fatalf("Follow = %+v; want 1 unreadable and the run complete", f)
	}
}

func TestGetOfAnUnreadableRecordSaysSo(t *testing.T) {
	b := newFakeBus()
	if err := b.PutRunRecord(context.Background(), "run-g1", []byte("{")); err != nil {
		t.Fatal(err)
	}
	if _, err := Get(context.Background(), b, "run-g1"); err == nil || !strings.Contains(err.Error(), "unreadable record") {
		t.Fatalf("error %v", err)
	}
}

func TestHeaderNamesTheRunAndWhatWentWrongPublishing(t *testing.T) {
	h := Header(Record{ID: "run-h1", Action: message.ActionUpdate, Source: "collection abc", SourceName: "Phish", Upsert: true, Rejected: 2, Error: "ThreatQ: 503"})
	for _, want := range []string{"run run-h1: update from collection abc (Phish), upsert", "2 input lines or repeats not queued", "publishing stopped early: ThreatQ: 503"} {
		if !strings.Contains(h, want) {
			t.Errorf("header %q lacks %q", h, want)
		}
	}
}
