package bus_test

import (
	"context"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/tqtriage/tqtriage/bus"
	"github.com/tqtriage/tqtriage/bus/bustest"
)

func waitFor(t *testing.T, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within 10s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestFleetMembersSeeEachOtherComeAndGoAndShareAPause runs three workers'
// memberships with the worker's own NATS permissions.
func TestFleetMembersSeeEachOtherComeAndGoAndShareAPause(t *testing.T) {
	_, url := bustest.Secured(t)
	op, err := bus.Connect(context.Background(), bus.Config{URL: url("operator")}, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	defer op.Close()
	if err := op.Setup(context.Background()); err != nil {
		t.Fatal(err)
	}
	join := func() *bus.Fleet {
		t.Helper()
		b, err := bus.Connect(context.Background(), bus.Config{URL: url("worker"), Role: bus.RoleWorker}, zerolog.Nop())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(b.Close)
		f, err := b.JoinFleet(context.Background(), "triage")
		if err != nil {
			t.Fatal(err)
		}
		return f
	}
	a := join()
	if n := a.Members(); n != 1 {
		t.Fatalf("alone: %d members", n)
	}
	b, c := join(), join()
	// A newcomer knows the members already there when it has joined.
	if n := c.Members(); n != 3 {
		t.Fatalf("the third member sees %d at once; want 3", n)
	}
	waitFor(t, "the first member sees three", func() bool { return a.Members() == 3 })

	until := time.Now().Add(30 * time.Second).Truncate(time.Millisecond)
	if err := b.Pause(context.Background(), until); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the others share the pause", func() bool { return a.PausedUntil().Equal(until) && c.PausedUntil().Equal(until) })

	changed := a.Changed()
	c.Leave()
	waitFor(t, "a member that leaves is counted gone", func() bool { return a.Members() == 2 && b.Members() == 2 })
	select {
	case <-changed:
	default:
		t.Fatal("the change of members was not signalled")
	}
	b.Leave()
	a.Leave()
}
