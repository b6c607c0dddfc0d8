package bus

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"
)

// testGate is a Gate the test opens and closes.
type testGate struct {
	mu     sync.Mutex
	open   bool
	shut   chan struct{} // closed when the gate closes
	opened chan struct{} // closed when it opens
}

func newTestGate(open bool) *testGate {
	return &testGate{open: open, shut: make(chan struct{}), opened: make(chan struct{})}
}

func (g *testGate) Wait(ctx context.Context) (<-chan struct{}, error) {
	for {
		g.mu.Lock()
		if g.open {
			ch := g.shut
			g.mu.Unlock()
			return ch, nil
		}
		ch := g.opened
		g.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

func (g *testGate) set(open bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.open == open {
		return
	}
	g.open = open
	if open {
		close(g.opened)
		g.opened = make(chan struct{})
	} else {
		close(g.shut)
		g.shut = make(chan struct{})
	}
}

func ackPending(t *testing.T, b *Bus) int {
	t.Helper()
	st, err := b.ConsumerState(context.Background(), ConsumerWorkers)
	if err != nil {
		t.Fatal(err)
	}
	return st.AckPending
}

func TestServeTakesNothingWhileItsGateIsClosed(t *testing.T) {
	b := serverBus(t, Config{})
	var g giveUps
	var mu sync.Mutex
	calls := 0
	c := testConsumer(&g, func(_ context.Context, v string, _ Attempt) Outcome {
		mu.Lock()
		calls++
		mu.Unlock()
		return Done("created")
	})
	gate := newTestGate(false)
	c.Gate = gate
	for i := range 3 {
		publishJob(t, b, fmt.Sprintf("job-%d", i))
	}
	serve(t, b, c)
	// Nothing to wait on: proving that nothing is pulled takes a while.
	time.Sleep(300 * time.Millisecond)
	mu.Lock()
	n := calls
	mu.Unlock()
	if n != 0 || ackPending(t, b) != 0 {
		t.Fatalf("a closed gate: %d handled, %d delivered; want none", n, ackPending(t, b))
	}
	gate.set(true)
	waitFor(t, "the jobs to be done once the gate opens", func() bool { return jobsLeft(t, b) == 0 })
}

// TestServeHandsBackWhatWasBufferedWhenItsGateCloses: every handler is
// busy and the client has more messages buffered when the gate closes.
// The buffered ones go back at once (not after the 30 s ack wait), and
// uncounted: another replica takes them at their first counted delivery
// while the busy handlers still run.
func TestServeHandsBackWhatWasBufferedWhenItsGateCloses(t *testing.T) {
	b := serverBus(t, Config{})
	var g giveUps
	const jobs, concurrency = 40, 8
	release := make(chan struct{})
	var releaseOnce sync.Once
	free := func() { releaseOnce.Do(func() { close(release) }) }
	defer free()
	var mu sync.Mutex
	calls, held := 0, 0
	c := testConsumer(&g, func(ctx context.Context, v string, a Attempt) Outcome {
		mu.Lock()
		calls++
		hold := calls%2 == 1 // every other one keeps its handler
		if hold {
			held++
		}
		mu.Unlock()
		if hold {
			<-release
		}
		return Done("created")
	})
	c.Concurrency = concurrency
	gate := newTestGate(true)
	c.Gate = gate
	for i := range jobs {
		publishJob(t, b, fmt.Sprintf("job-%d", i))
	}
	serve(t, b, c)
	waitFor(t, "every handler busy and messages buffered beyond them", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return held == concurrency && ackPending(t, b) > concurrency
	})
	gate.set(false)

	// Another replica takes the rest, each at its first counted delivery,
	// well within the ack wait: those buffered were handed back.
	var others []Attempt
	c2 := testConsumer(&g, func(_ context.Context, _ string, a Attempt) Outcome {
		mu.Lock()
		others = append(others, a)
		mu.Unlock()
		return Done("created")
	})
	b2, err := Connect(context.Background(), Config{URL: b.nc.ConnectedUrl()}, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b2.Close)
	start := time.Now()
	serve(t, b2, c2)
	waitFor(t, "every job but the busy ones done", func() bool { return jobsLeft(t, b) == concurrency })
	if took := time.Since(start); took > 10*time.Second {
		t.Errorf("the rest took %v: the buffered messages waited for their ack wait", took)
	}
	mu.Lock()
	if len(others) == 0 {
		t.Error("the other replica took nothing")
	}
	for _, a := range others {
		if a.N != 1 {
			t.Errorf("a message handed back when the gate closed came back as attempt %d; want 1", a.N)
		}
	}
	mu.Unlock()
	free()
	waitFor(t, "every job done", func() bool { return jobsLeft(t, b) == 0 })
	if _, _, n := g.last(); n != 0 {
		t.Fatalf("%d messages given up", n)
	}
}
