package bus

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/tqtriage/tqtriage/internal/retry"
)

// TestAppliedIsCompareAndSet: two processes read an indicator's entry;
// the first to store wins, the second is told to read again, whether the
// entry was absent or at a revision.
func TestAppliedIsCompareAndSet(t *testing.T) {
	s := startServer(t)
	a, b := connect(t, s), connect(t, s)
	ctx := context.Background()
	t1 := time.Date(2026, 11, 27, 10, 25, 41, 123456789, time.UTC)
	t2 := t1.Add(time.Nanosecond)

	got, rev, err := a.LastApplied(ctx, 42)
	if err != nil || got != nil || rev != 0 {
		t.Fatalf("absent entry: %v %d %v", got, rev, err)
	}
	if err := a.SetApplied(ctx, 42, Applied{"Threat Level": t1}, 0); err != nil {
		t.Fatal(err)
	}
	if err := b.SetApplied(ctx, 42, Applied{"Threat Level": t2}, 0); !errors.Is(err, ErrAppliedChanged) {
		t.Fatalf("a second create: %v", err)
	}
	got, rev, err = b.LastApplied(ctx, 42)
	if err != nil || !got["Threat Level"].Equal(t1) || rev == 0 {
		t.Fatalf("entry %v rev %d %v; want the first time, to the nanosecond", got, rev, err)
	}
	if err := b.SetApplied(ctx, 42, Applied{"Threat Level": t2, "ID": t2}, rev); err != nil {
		t.Fatal(err)
	}
	if err := a.SetApplied(ctx, 42, Applied{"Threat Level": t1}, rev); !errors.Is(err, ErrAppliedChanged) {
		t.Fatalf("an update at a stale revision: %v", err)
	}
	got, _, _ = a.LastApplied(ctx, 42)
	if len(got) != 2 || !got["ID"].Equal(t2) {
		t.Fatalf("entry %v", got)
	}
	// Another indicator is another key.
	if got, rev, err := a.LastApplied(ctx, 43); got != nil || rev != 0 || err != nil {
		t.Fatalf("indicator 43: %v %d %v", got, rev, err)
	}
}

// TestAnUnreadableAppliedEntryIsReplaced: an entry that does not parse is
// none, at its revision, so that the next store replaces it.
func TestAnUnreadableAppliedEntryIsReplaced(t *testing.T) {
	s := startServer(t)
	b := connect(t, s)
	ctx := context.Background()
	if _, err := b.applied.Put(ctx, appliedKey(7), []byte("not json")); err != nil {
		t.Fatal(err)
	}
	got, rev, err := b.LastApplied(ctx, 7)
	if err != nil || got != nil || rev == 0 {
		t.Fatalf("%v %d %v", got, rev, err)
	}
	if err := b.SetApplied(ctx, 7, Applied{"ID": time.Now()}, rev); err != nil {
		t.Fatal(err)
	}
	e, err := b.applied.Get(ctx, appliedKey(7))
	if err != nil || e.Operation() != jetstream.KeyValuePut {
		t.Fatal(err)
	}
}

// Seen in a container test: a NATS node stopped during a run, the
// write-back order entry of one indicator was not stored within the
// client's 5 s, and its result was dead-lettered on its first delivery:
// the client's deadline read as the caller's. A request NATS does not
// answer is worth another delivery, so long as the caller has not ended.
func TestARequestNATSDoesNotAnswerIsTriedAgain(t *testing.T) {
	s := startServer(t)
	b := connect(t, s)
	s.Shutdown()
	s.WaitForShutdown()

	// The handler's context has no deadline: nats.go gives each request 5 s.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	// The caller's own deadline passes: not retried, the caller ended.
	short, cancelShort := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancelShort()

	type call struct {
		name string
		do   func(context.Context) error
	}
	calls := []call{
		{"read the order entry", func(ctx context.Context) error { _, _, err := b.LastApplied(ctx, 42); return err }},
		{"store the order entry", func(ctx context.Context) error { return b.SetApplied(ctx, 42, Applied{"ID": time.Now()}, 0) }},
		{"publish", func(ctx context.Context) error {
			_, err := b.Publish(ctx, Publication{Subject: "tqtriage.results.run-1", Data: []byte("{}")})
			return err
		}},
	}
	var wg sync.WaitGroup
	for _, c := range calls {
		wg.Go(func() {
			err := c.do(ctx)
			if err == nil || !retry.IsRetryable(err) {
				t.Errorf("%s, NATS away: %v; want an error worth another delivery", c.name, err)
			}
			err = c.do(short)
			if err == nil || retry.IsRetryable(err) || !errors.Is(err, context.DeadlineExceeded) {
				t.Errorf("%s, the caller's deadline passed: %v; want the caller's deadline, not retried", c.name, err)
			}
		})
	}
	wg.Wait()
}
