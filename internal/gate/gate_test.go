package gate

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"
)

// refusal is an error that says the credentials were refused.
type refusal struct{ msg string }

func (r refusal) Error() string { return r.msg }
func (refusal) Refused() bool   { return true }

// logBuf collects log lines.
type logBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuf) count(s string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Count(l.b.String(), s)
}

// probe answers err() and counts its calls.
type probe struct {
	calls atomic.Int64
	mu    sync.Mutex
	err   error
}

func (p *probe) set(err error) { p.mu.Lock(); p.err = err; p.mu.Unlock() }
func (p *probe) fn(context.Context) error {
	p.calls.Add(1)
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.err
}

func newGate(t *testing.T, p *probe, cfg Config) (*Gate, *logBuf) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	var buf logBuf
	cfg.Service, cfg.Probe, cfg.Log = "Triage", p.fn, zerolog.New(&buf)
	return New(ctx, cfg), &buf
}

func waitOpen(t *testing.T, g *Gate) <-chan struct{} {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ch, err := g.Wait(ctx)
	if err != nil {
		t.Fatalf("the gate did not open: %v", err)
	}
	return ch
}

func TestClosedUntilTheFirstTokenThenOpen(t *testing.T) {
	p := &probe{}
	p.set(refusal{"401 invalid_client"})
	g, logs := newGate(t, p, Config{Retry: 20 * time.Millisecond, MaxRetry: 40 * time.Millisecond})
	if err := g.Started(context.Background()); err == nil {
		t.Fatal("the first probe was refused, Started says nil")
	}
	if err := g.Ready(); err == nil || !strings.Contains(err.Error(), "Triage refused the credentials: 401 invalid_client") {
		t.Fatalf("ready: %v; want the refusal named", err)
	}
	if d, why := g.Hold(); d != DefaultHold || !strings.Contains(why, "invalid_client") {
		t.Fatalf("hold %v %q", d, why)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	if _, err := g.Wait(ctx); err == nil {
		t.Fatal("Wait returned while the credentials are refused")
	}
	cancel()
	p.set(nil) // the secret was put right
	waitOpen(t, g)
	if err := g.Ready(); err != nil {
		t.Fatalf("ready after a token: %v", err)
	}
	if p.calls.Load() < 2 || logs.count(`"level":"error"`) != 1 || logs.count("credentials accepted again") != 1 {
		t.Fatalf("%d probes; logs:\n%s", p.calls.Load(), logs.b.String())
	}
}

func TestARefusalClosesTheGateLogsOnceAMinuteAndReopensByItself(t *testing.T) {
	p := &probe{}
	g, logs := newGate(t, p, Config{Retry: 10 * time.Millisecond, MaxRetry: 20 * time.Millisecond})
	shut := waitOpen(t, g)
	if logs.count("access token obtained") != 1 {
		t.Fatalf("no log of the first token:\n%s", logs.b.String())
	}
	p.set(refusal{"401 invalid_client"})
	for range 50 { // every job in flight reports it
		g.Refuse(refusal{"401 after a fresh token"})
	}
	select {
	case <-shut:
	default:
		t.Fatal("a refusal did not end the admission")
	}
	// Probes fail for a while: one error logged, not one per job or probe.
	for p.calls.Load() < 6 {
		time.Sleep(5 * time.Millisecond)
	}
	if n := logs.count(`"level":"error"`); n != 1 {
		t.Fatalf("%d error logs; want 1 within the minute:\n%s", n, logs.b.String())
	}
	p.set(nil)
	waitOpen(t, g)
	if logs.count("credentials accepted again") != 1 {
		t.Fatalf("the recovery is not logged:\n%s", logs.b.String())
	}
}

func TestAGateRefusedAgainSoonAfterOpeningBacksOffFurther(t *testing.T) {
	p := &probe{}
	g, logs := newGate(t, p, Config{Retry: 10 * time.Millisecond, MaxRetry: time.Hour})
	waitOpen(t, g)
	var waits []time.Duration
	for range 4 {
		g.Refuse(refusal{"403 after a fresh token"}) // the token is granted, the API refuses it
		g.mu.Lock()
		waits = append(waits, g.backoffLocked())
		g.mu.Unlock()
		waitOpen(t, g)
	}
	for i := 1; i < len(waits); i++ {
		if waits[i] <= waits[i-1] {
			t.Fatalf("backoff %v: want it to grow while the gate keeps closing at once", waits)
		}
	}
	if n := logs.count(`"level":"error"`); n != 1 {
		t.Fatalf("%d error logs; want the refusal that goes on logged once:\n%s", n, logs.b.String())
	}
}

func TestAPauseHoldsWorkWithoutMakingTheReplicaUnready(t *testing.T) {
	p := &probe{}
	g, _ := newGate(t, p, Config{})
	shut := waitOpen(t, g)
	g.Pause(150*time.Millisecond, "Triage answered 429")
	g.Pause(10*time.Millisecond, "Triage answered 429") // shorter: the running pause stands
	select {
	case <-shut:
	default:
		t.Fatal("a pause did not end the admission")
	}
	if err := g.Ready(); err != nil {
		t.Fatalf("ready during a pause: %v", err)
	}
	if d, why := g.Hold(); d <= 0 || d > 150*time.Millisecond || !strings.Contains(why, "pause") {
		t.Fatalf("hold %v %q", d, why)
	}
	start := time.Now()
	waitOpen(t, g)
	if el := time.Since(start); el < 100*time.Millisecond {
		t.Fatalf("admitted again after %v; want the pause kept", el)
	}
}

func TestRefusedReadsTheChain(t *testing.T) {
	if !Refused(errors.Join(errors.New("create indicator"), refusal{"x"})) || Refused(errors.New("plain")) || Refused(nil) {
		t.Fatal("Refused does not read the error chain")
	}
}

// limited is a 429 as the clients return it: a sentinel in its chain and
// the Retry-After it asked for.
type limited struct{ after time.Duration }

var errLimited = errors.New("rate limited")

func (l limited) Error() string             { return "429" }
func (l limited) Is(target error) bool      { return target == errLimited }
func (l limited) RetryAfter() time.Duration { return l.after }

func TestConditionTellsTheReplicasFromTheMessages(t *testing.T) {
	// Without a gate: a refusal holds the message DefaultHold; a 429 its
	// Retry-After, the redelivery delay without one, at most the maximum.
	cases := []struct {
		err    error
		d      time.Duration
		ok     bool
		reason string
	}{
		{refusal{"invalid_client"}, DefaultHold, true, "Triage refused the credentials"},
		{limited{2 * time.Second}, 2 * time.Second, true, "Triage answered 429"},
		{limited{0}, 3 * time.Second, true, "Triage answered 429"},
		{limited{time.Hour}, 10 * time.Second, true, "Triage answered 429"},
		{errors.New("500 internal server error"), 0, false, ""},
	}
	for _, c := range cases {
		d, why, ok := Condition(nil, "Triage", c.err, errLimited, 3*time.Second, 10*time.Second)
		if d != c.d || ok != c.ok || !strings.HasPrefix(why, c.reason) {
			t.Errorf("%v: %v %q %v; want %v, a reason starting %q, %v", c.err, d, why, ok, c.d, c.reason, c.ok)
		}
	}
	var none *Gate
	if d, why := none.Holding(); d != 0 || why != "" {
		t.Errorf("no gate holds %v %q", d, why)
	}

	// With a gate: a 429 pauses it, a refusal closes it, and what it
	// holds is the gate's.
	g, _ := newGate(t, &probe{}, Config{})
	waitOpen(t, g)
	if d, _, _ := Condition(g, "Triage", limited{time.Hour}, errLimited, time.Second, 200*time.Millisecond); d != 200*time.Millisecond {
		t.Fatalf("a 429 held %v; want the maximum", d)
	}
	if d, why := g.Holding(); d <= 0 || !strings.Contains(why, "pause") {
		t.Fatalf("after a 429 the gate holds %v %q; want the pause", d, why)
	}
	if _, why, _ := Condition(g, "Triage", refusal{"invalid_client"}, errLimited, time.Second, time.Second); !strings.Contains(why, "refused") {
		t.Fatalf("a refusal held for %q", why)
	}
	if g.Ready() == nil {
		t.Fatal("a refusal left the replica ready")
	}
}
