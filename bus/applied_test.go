package bus

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
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
