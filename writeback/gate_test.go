package writeback_test

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/tqtriage/tqtriage/bus"
	"github.com/tqtriage/tqtriage/internal/gate"
	"github.com/tqtriage/tqtriage/internal/retry"
	"github.com/tqtriage/tqtriage/threatq"
	"github.com/tqtriage/tqtriage/writeback"
)

func openGate(t *testing.T) *gate.Gate {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	g := gate.New(ctx, gate.Config{Service: "ThreatQ", Probe: func(context.Context) error { return nil }, Retry: time.Hour, MaxRetry: time.Hour})
	if err := g.Started(ctx); err != nil {
		t.Fatal(err)
	}
	return g
}

// TestRefusalsAndRateLimitsPutResultsOffAndHoldTheReplica: neither a
// refusal of the credentials nor a 429 dead-letters a result or spends
// its deliveries; the first closes the gate, the second pauses it, and
// the next result is put off without a write.
func TestRefusalsAndRateLimitsPutResultsOffAndHoldTheReplica(t *testing.T) {
	path := "/api/indicators/42/attributes"
	for _, tc := range []struct {
		name      string
		err       error
		snooze    time.Duration // 0: the gate's hold
		ready     bool          // the replica still ready after it
		reasonHas string
	}{
		{"the token endpoint refuses the client", &threatq.Error{StatusCode: 401, Method: http.MethodPost, Path: "/api/token", Err: threatq.ErrAuthentication}, 0, false, "refused the credentials"},
		{"401 after a fresh token", setFailure(&threatq.Error{StatusCode: 401, Method: http.MethodGet, Path: path}), 0, false, "refused the credentials"},
		{"403 after a fresh token", setFailure(&threatq.Error{StatusCode: 403, Method: http.MethodPost, Path: path}), 0, false, "refused the credentials"},
		{"429 for 40 s", setFailure(&threatq.Error{StatusCode: 429, Method: http.MethodPost, Path: path, RetryAfterDelay: 40 * time.Second}), 40 * time.Second, true, "429"},
		{"429 for an hour, clamped", setFailure(&threatq.Error{StatusCode: 429, Method: http.MethodPost, Path: path, RetryAfterDelay: time.Hour}), 3 * time.Minute, true, "429"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := openGate(t)
			tq := &fakeThreatQ{set: func(int) error { return tc.err }}
			w := writeback.New(writeback.Config{Retry: retry.None, Gate: g, MaxPause: 3 * time.Minute}, tq)
			out := w.Handle(context.Background(), created(), bus.Attempt{N: 2000, Max: 2000, Seq: 9})
			if out.Kind() != bus.KindSnooze || !strings.Contains(out.Reason(), tc.reasonHas) || (tc.snooze > 0 && out.Delay() != tc.snooze) {
				t.Fatalf("outcome %s after %v (%q) on the last delivery; want snoozed (%v), naming %q", out.Kind(), out.Delay(), out.Reason(), tc.snooze, tc.reasonHas)
			}
			if err := g.Ready(); (err == nil) != tc.ready {
				t.Fatalf("ready: %v; want ready %v", err, tc.ready)
			}
			out = w.Handle(context.Background(), created(), attempt)
			if out.Kind() != bus.KindSnooze || tq.count() != 1 {
				t.Fatalf("the next result: %s after %d writes; want it put off without a write", out.Kind(), tq.count())
			}
		})
	}
	if !errors.Is(setFailure(&threatq.Error{StatusCode: 429}), threatq.ErrRateLimited) {
		t.Fatal("a wrapped 429 does not match ErrRateLimited")
	}
}
