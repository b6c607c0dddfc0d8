package worker_test

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/tqtriage/tqtriage/bus"
	"github.com/tqtriage/tqtriage/internal/gate"
	"github.com/tqtriage/tqtriage/message"
	"github.com/tqtriage/tqtriage/triage"
	"github.com/tqtriage/tqtriage/worker"
)

// openGate is a gate that has its token and does not probe again within
// a test.
func openGate(t *testing.T) *gate.Gate {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	g := gate.New(ctx, gate.Config{Service: "Triage", Probe: func(context.Context) error { return nil }, Retry: time.Hour, MaxRetry: time.Hour})
	if err := g.Started(ctx); err != nil {
		t.Fatal(err)
	}
	return g
}

// TestRefusedCredentialsPutJobsOffAndCloseTheGate: a refusal is the
// replica's condition. The job that met it is snoozed (uncounted), never
// failed; the gate closes; the jobs after it are put off before they are
// admitted to the cap or sent.
func TestRefusedCredentialsPutJobsOffAndCloseTheGate(t *testing.T) {
	for _, tc := range []struct {
		name string
		err  error
	}{
		{"the token endpoint refuses the client", &triage.Error{Kind: triage.KindUnauthorized, StatusCode: 401, Method: http.MethodPost, Path: triage.TokenPath, Messages: []string{"invalid_client: Client authentication failed"}}},
		{"the grant is refused", &triage.Error{Kind: triage.KindUnauthorized, StatusCode: 400, Method: http.MethodPost, Path: triage.TokenPath, Messages: []string{"invalid_grant"}}},
		{"401 after a fresh token", &triage.Error{Kind: triage.KindUnauthorized, StatusCode: 401, Method: http.MethodPost, Path: "/threat_indicators"}},
		{"403 after a fresh token", &triage.Error{Kind: triage.KindForbidden, StatusCode: 403, Method: http.MethodPost, Path: "/threat_indicators"}},
		{"the token endpoint is not where it should be", &triage.Error{Kind: triage.KindNotFound, StatusCode: 404, Method: http.MethodPost, Path: triage.TokenPath}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := openGate(t)
			tr := &fakeTriage{create: func(int, triage.NewIndicator) (*triage.Indicator, error) { return nil, tc.err }}
			claims := &fakeClaims{}
			w := newWorker(t, worker.Config{Retry: noRetry.Retry, Gate: g}, tr, claims)
			out := w.Handle(context.Background(), job(t, message.ActionCreate, "MD5", md5Value), attempt)
			if out.Kind() != bus.KindSnooze || out.Delay() <= 0 || !strings.Contains(out.Reason(), "refused the credentials") {
				t.Fatalf("outcome %s after %v (%q); want the job snoozed, naming the refusal", out.Kind(), out.Delay(), out.Reason())
			}
			if err := g.Ready(); err == nil || !strings.Contains(err.Error(), tc.err.Error()) {
				t.Fatalf("gate ready: %v; want not ready, naming %v", err, tc.err)
			}
			out = w.Handle(context.Background(), job(t, message.ActionCreate, "SHA-256", strings.Repeat("ab", 32)), attempt)
			if out.Kind() != bus.KindSnooze {
				t.Fatalf("the next job: outcome %s; want it put off", out.Kind())
			}
			if n := len(tr.ops()); n != 1 || len(claims.claims) != 1 {
				t.Fatalf("%d Triage calls and %d claims; want 1 each: the job after the refusal reaches neither", n, len(claims.claims))
			}
		})
	}
}

// TestRateLimitsSnoozeForRetryAfterWithinTheMaximum: a 429 that the
// delivery's retries could not wait out puts the job off for Retry-After
// (at most MaxPause; without one, the redelivery delay) and pauses the
// replica; it never spends a delivery.
func TestRateLimitsSnoozeForRetryAfterWithinTheMaximum(t *testing.T) {
	for _, tc := range []struct {
		name       string
		retryAfter time.Duration
		want       time.Duration
	}{
		{"30 s", 30 * time.Second, 30 * time.Second},
		{"an hour, clamped", time.Hour, 2 * time.Minute},
		{"none", 0, 7 * time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := openGate(t)
			tr := &fakeTriage{create: func(int, triage.NewIndicator) (*triage.Indicator, error) { return nil, rateLimited(tc.retryAfter) }}
			claims := &fakeClaims{}
			w := newWorker(t, worker.Config{Retry: noRetry.Retry, Gate: g, MaxPause: 2 * time.Minute, RedeliveryDelay: 7 * time.Second}, tr, claims)
			out := w.Handle(context.Background(), job(t, message.ActionCreate, "MD5", md5Value), bus.Attempt{N: 5, Max: 5, Seq: 1})
			if out.Kind() != bus.KindSnooze || out.Delay() != tc.want {
				t.Fatalf("outcome %s after %v on the last delivery; want snoozed for %v", out.Kind(), out.Delay(), tc.want)
			}
			if err := g.Ready(); err != nil {
				t.Fatalf("a pause made the replica not ready: %v", err)
			}
			if d, _ := g.Hold(); d <= 0 || d > tc.want {
				t.Fatalf("the replica holds jobs for %v; want up to %v", d, tc.want)
			}
			out = w.Handle(context.Background(), job(t, message.ActionCreate, "SHA-256", strings.Repeat("ab", 32)), attempt)
			if out.Kind() != bus.KindSnooze || len(tr.ops()) != 1 || len(claims.claims) != 1 {
				t.Fatalf("during the pause the next job was %s after %d calls and %d claims; want put off before both", out.Kind(), len(tr.ops()), len(claims.claims))
			}
		})
	}
}
