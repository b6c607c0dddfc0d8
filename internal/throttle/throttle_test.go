package throttle

import (
	"context"
	"net/http"
	"sync"
	"testing"
	"time"
)

func TestRateIsCapped(t *testing.T) {
	th := New(50)
	start := time.Now()
	for i := 0; i < 30; i++ {
		if err := th.Wait(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	// 30 requests at 50/s with a burst of 5 take at least (30-5)/50 s.
	if el := time.Since(start); el < 450*time.Millisecond {
		t.Fatalf("30 requests at 50/s took %v; the limit did not hold", el)
	}
}

func tooMany(retryAfter string) *http.Response {
	h := http.Header{}
	if retryAfter != "" {
		h.Set("Retry-After", retryAfter)
	}
	return &http.Response{StatusCode: http.StatusTooManyRequests, Header: h}
}

func Test429PausesEveryRequestAndCutsTheRate(t *testing.T) {
	th := New(100)
	th.Observe(tooMany("1"))
	if th.Throttled() != 1 {
		t.Fatalf("throttled %d", th.Throttled())
	}
	if th.Limit() >= 100 {
		t.Fatalf("rate %v after a 429; want it cut below 100", th.Limit())
	}
	start := time.Now()
	if err := th.Wait(context.Background()); err != nil {
		t.Fatal(err)
	}
	if el := time.Since(start); el < 900*time.Millisecond {
		t.Fatalf("next request went after %v; want the 1s Retry-After honoured", el)
	}
}

func TestWaitEndsWithContext(t *testing.T) {
	th := New(0)
	th.Observe(tooMany("60"))
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if err := th.Wait(ctx); err == nil {
		t.Fatal("Wait returned during a 60s pause")
	}
}

func TestMaxPauseClampsALongRetryAfterAndSaysSoOnce(t *testing.T) {
	type pause struct{ asked, used time.Duration }
	var told []pause
	th := New(0, MaxPause(300*time.Millisecond), OnPause(func(asked, used time.Duration) { told = append(told, pause{asked, used}) }))
	th.Observe(tooMany("3600"))
	th.Observe(tooMany("3600")) // extends the pause that runs: not told again
	if len(told) != 1 || told[0] != (pause{time.Hour, 300 * time.Millisecond}) {
		t.Fatalf("told %v; want one pause of 300ms for the hour asked", told)
	}
	if d := th.PausedFor(); d <= 0 || d > 300*time.Millisecond {
		t.Fatalf("paused for %v; want at most the 300ms bound", d)
	}
	start := time.Now()
	if err := th.Wait(context.Background()); err != nil {
		t.Fatal(err)
	}
	if el := time.Since(start); el > 2*time.Second {
		t.Fatalf("waited %v; the bound did not hold", el)
	}
	// A pause that has ended is a new one.
	th.Observe(tooMany(""))
	if len(told) != 2 || told[1] != (pause{0, 300 * time.Millisecond}) {
		t.Fatalf("told %v; want a second pause, of the default within the bound, for a 429 without Retry-After", told)
	}
}

type fakeFleet struct {
	mu      sync.Mutex
	members int
	paused  time.Time
	asked   []time.Time
}

func (f *fakeFleet) Members() int { f.mu.Lock(); defer f.mu.Unlock(); return f.members }
func (f *fakeFleet) PausedUntil() time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.paused
}
func (f *fakeFleet) Pause(_ context.Context, until time.Time) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.asked = append(f.asked, until)
	return nil
}

// TestAFleetSharesOneLimitAndItsPauses: with a fleet of two, each takes
// half the limit; a pause another member asks for holds here too; a 429
// met here is asked of all.
func TestAFleetSharesOneLimitAndItsPauses(t *testing.T) {
	f := &fakeFleet{members: 2}
	var ref FleetRef
	var pauses []time.Duration
	var mu sync.Mutex
	th := New(100, Shared(&ref), OnPause(func(_, d time.Duration) { mu.Lock(); pauses = append(pauses, d); mu.Unlock() }))
	ref.Set(f)
	if err := th.Wait(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := th.Limit(); got != 50 {
		t.Fatalf("a member of two takes %v of 100 a second; want 50", got)
	}
	f.mu.Lock()
	f.members = 4
	f.mu.Unlock()
	_ = th.Wait(context.Background())
	if got := th.Limit(); got != 25 {
		t.Fatalf("a member of four takes %v; want 25", got)
	}

	f.mu.Lock()
	f.paused = time.Now().Add(300 * time.Millisecond)
	f.mu.Unlock()
	start := time.Now()
	if err := th.Wait(context.Background()); err != nil {
		t.Fatal(err)
	}
	if waited := time.Since(start); waited < 250*time.Millisecond {
		t.Fatalf("waited %v through another member's pause of 300ms", waited)
	}
	mu.Lock()
	n := len(pauses)
	mu.Unlock()
	if n != 1 {
		t.Fatalf("%d pauses told; want the fleet's one", n)
	}

	th.Observe(&http.Response{StatusCode: http.StatusTooManyRequests, Header: http.Header{"Retry-After": {"2"}}})
	deadline := time.Now().Add(5 * time.Second)
	for {
		f.mu.Lock()
		asked := len(f.asked)
		f.mu.Unlock()
		if asked == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("a 429 met here was not asked of the fleet")
		}
		time.Sleep(10 * time.Millisecond)
	}
}
