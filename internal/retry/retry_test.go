package retry

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"
)

type testErr struct {
	retry bool
	after time.Duration
}

func (e testErr) Error() string             { return fmt.Sprintf("test error retry=%v after=%v", e.retry, e.after) }
func (e testErr) Retryable() bool           { return e.retry }
func (e testErr) RetryAfter() time.Duration { return e.after }

var fast = Policy{MaxAttempts: 4, InitialInterval: time.Millisecond, MaxInterval: 2 * time.Millisecond}

func TestDoRetriesRetryableUntilSuccess(t *testing.T) {
	calls := 0
	n, err := Do(context.Background(), fast, func(context.Context) error {
		calls++
		if calls < 3 {
			return fmt.Errorf("wrapped: %w", testErr{retry: true})
		}
		return nil
	}, nil)
	if err != nil || n != 3 || calls != 3 {
		t.Fatalf("got attempts=%d calls=%d err=%v, want 3, 3, nil", n, calls, err)
	}
}

func TestDoNeverRetriesPermanent(t *testing.T) {
	calls := 0
	perm := testErr{retry: false}
	n, err := Do(context.Background(), fast, func(context.Context) error { calls++; return perm }, nil)
	if calls != 1 || n != 1 || !errors.Is(err, perm) {
		t.Fatalf("got attempts=%d calls=%d err=%v, want one attempt and the error", n, calls, err)
	}
}

func TestDoStopsAfterMaxAttempts(t *testing.T) {
	calls := 0
	var notified []int
	n, err := Do(context.Background(), fast, func(context.Context) error { calls++; return testErr{retry: true} },
		func(_ error, attempt int, _ time.Duration) { notified = append(notified, attempt) })
	if calls != 4 || n != 4 || !IsRetryable(err) {
		t.Fatalf("got attempts=%d calls=%d err=%v, want 4 attempts ending in the retryable error", n, calls, err)
	}
	if fmt.Sprint(notified) != "[1 2 3]" {
		t.Fatalf("notified for attempts %v, want [1 2 3]", notified)
	}
}

func TestDoWaitsAtLeastRetryAfter(t *testing.T) {
	calls := 0
	start := time.Now()
	_, err := Do(context.Background(), fast, func(context.Context) error {
		calls++
		if calls == 1 {
			return testErr{retry: true, after: 150 * time.Millisecond}
		}
		return nil
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if waited := time.Since(start); waited < 150*time.Millisecond {
		t.Fatalf("waited %v, want at least the 150ms Retry-After", waited)
	}
}

func TestDoHandsBackRetryAfterLongerThanPolicy(t *testing.T) {
	p := fast
	p.MaxRetryAfter = 50 * time.Millisecond
	calls := 0
	start := time.Now()
	_, err := Do(context.Background(), p, func(context.Context) error { calls++; return testErr{retry: true, after: time.Hour} }, nil)
	if calls != 1 || time.Since(start) > time.Second {
		t.Fatalf("calls=%d after %v: a Retry-After beyond the policy must end the retries at once", calls, time.Since(start))
	}
	if d, ok := RetryAfter(err); !ok || d != time.Hour {
		t.Fatalf("RetryAfter(err) = %v, %v; the caller needs the server's delay", d, ok)
	}
}

func TestDoEndsWithContext(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Millisecond)
	defer cancel()
	p := Policy{MaxAttempts: 1000, InitialInterval: 10 * time.Millisecond, MaxInterval: 10 * time.Millisecond}
	_, err := Do(ctx, p, func(context.Context) error { return testErr{retry: true} }, nil)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want it to carry the context's end", err)
	}
	var te testErr
	if !errors.As(err, &te) {
		t.Fatalf("err = %v, want the last real error kept too", err)
	}
}

// cause is a retryable error around a cause, as the clients' errors are.
type cause struct{ err error }

func (c cause) Error() string   { return "call failed: " + c.err.Error() }
func (c cause) Unwrap() error   { return c.err }
func (c cause) Retryable() bool { return true }

func TestIsRetryableRefusesOnlyTheCallersContext(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { <-r.Context().Done() }))
	defer srv.Close()
	_, timeout := (&http.Client{Timeout: 20 * time.Millisecond}).Get(srv.URL)
	if !errors.Is(timeout, context.DeadlineExceeded) {
		t.Fatalf("client timeout %v: this test wants one that matches context.DeadlineExceeded", timeout)
	}
	cases := []struct {
		name string
		err  error
		want bool
	}{
		{"the client's own timeout", cause{timeout}, true},
		{"the caller's deadline", cause{fmt.Errorf("create: %w", context.DeadlineExceeded)}, false},
		{"the caller's cancellation", cause{context.Canceled}, false},
		{"the last error joined with the caller's deadline", errors.Join(cause{errors.New("503")}, context.DeadlineExceeded), false},
		{"an error that does not say", errors.New("boom"), false},
		{"nil", nil, false},
	}
	for _, tc := range cases {
		if got := IsRetryable(tc.err); got != tc.want {
			t.Errorf("%s: IsRetryable(%v) = %v, want %v", tc.name, tc.err, got, tc.want)
		}
	}
}

func TestDoubling(t *testing.T) {
	for n, want := range map[int]time.Duration{0: time.Second, 1: time.Second, 2: 2 * time.Second, 3: 4 * time.Second, 4: 5 * time.Second, 100: 5 * time.Second} {
		if got := Doubling(time.Second, 5*time.Second, n); got != want {
			t.Errorf("Doubling(1s, 5s, %d) = %v; want %v", n, got, want)
		}
	}
}
