// Package retry runs an operation again after errors that say they are
// retryable, with exponential backoff and jitter (cenkalti/backoff/v4), and
// waits at least as long as a server's Retry-After when the error carries one.
// It decides nothing about status codes: the clients' error types do, through
// the Retryable and RetryAfter methods below.
package retry

import (
	"context"
	"errors"
	"time"

	"github.com/cenkalti/backoff/v4"

	"github.com/tqtriage/tqtriage/internal/httpclient"
)

// Policy bounds the retries of one operation. The zero value is usable and
// means the defaults noted on each field.
type Policy struct {
	// MaxAttempts is the total number of tries, the first included
	// (default 5; 1 means no retry).
	MaxAttempts int
	// InitialInterval is the first backoff wait (default 200ms).
	InitialInterval time.Duration
	// MaxInterval caps one exponential wait (default 10s). A server's
	// Retry-After may ask for more; see MaxRetryAfter.
	MaxInterval time.Duration
	// MaxElapsed caps the time spent in retries (0: only attempts and the
	// context bound it).
	MaxElapsed time.Duration
	// MaxRetryAfter is the longest Retry-After honoured by sleeping here
	// (default 60s). A longer one ends the retries and returns the error, so
	// that the caller can hand the wait elsewhere (a delayed redelivery).
	MaxRetryAfter time.Duration
}

// None is a policy of exactly one attempt.
var None = Policy{MaxAttempts: 1}

func (p Policy) withDefaults() Policy {
	if p.MaxAttempts <= 0 {
		p.MaxAttempts = 5
	}
	if p.InitialInterval <= 0 {
		p.InitialInterval = 200 * time.Millisecond
	}
	if p.MaxInterval <= 0 {
		p.MaxInterval = 10 * time.Second
	}
	if p.MaxRetryAfter <= 0 {
		p.MaxRetryAfter = 60 * time.Second
	}
	return p
}

// IsRetryable reports whether err, or an error it wraps, says that the same
// request may succeed later (a Retryable() bool method that returns true).
// The caller's own context ending is never retryable; a client's timeout,
// which also matches context.DeadlineExceeded, is not the caller's and is
// left to the error to judge (httpclient.CallerEnded tells them apart).
func IsRetryable(err error) bool {
	if err == nil || httpclient.CallerEnded(err) {
		return false
	}
	var r interface{ Retryable() bool }
	return errors.As(err, &r) && r.Retryable()
}

// RetryAfter returns the delay a server asked for, when err carries one
// (a RetryAfter() time.Duration method with a positive result).
func RetryAfter(err error) (time.Duration, bool) {
	var r interface{ RetryAfter() time.Duration }
	if errors.As(err, &r) {
		if d := r.RetryAfter(); d > 0 {
			return d, true
		}
	}
	return 0, false
}

// Notify is told about each failed attempt that will be tried again, with
// the attempt's number (1-based) and the wait before the next one.
type Notify func(err error, attempt int, wait time.Duration)

// Do runs op until it succeeds, returns an error that is not retryable, the
// policy runs out or ctx ends. It returns the number of attempts made and
// the last error (unwrapped from backoff's Permanent).
func Do(ctx context.Context, p Policy, op func(ctx context.Context) error, notify Notify) (int, error) {
	p = p.withDefaults()
	exp := backoff.NewExponentialBackOff(
		backoff.WithInitialInterval(p.InitialInterval),
		backoff.WithMaxInterval(p.MaxInterval),
		backoff.WithMaxElapsedTime(p.MaxElapsed),
	)
	b := &serverAware{BackOff: backoff.WithContext(backoff.WithMaxRetries(exp, uint64(p.MaxAttempts-1)), ctx), maxAfter: p.MaxRetryAfter}

	attempts := 0
	err := backoff.RetryNotify(func() error {
		attempts++
		err := op(ctx)
		if err == nil {
			return nil
		}
		b.last = err
		if !IsRetryable(err) {
			return backoff.Permanent(err)
		}
		return err
	}, b, func(err error, wait time.Duration) {
		if notify != nil {
			notify(err, attempts, wait)
		}
	})
	if err == nil {
		return attempts, nil
	}
	// backoff returns ctx.Err() when the context ends during a wait; the
	// caller learns more from the last real error, with the cause joined.
	if ctx.Err() != nil && b.last != nil && !errors.Is(b.last, ctx.Err()) {
		return attempts, errors.Join(b.last, ctx.Err())
	}
	return attempts, err
}

// serverAware makes the exponential backoff wait at least the Retry-After of
// the last error, and stop when that is longer than the policy allows.
type serverAware struct {
	backoff.BackOff
	last     error
	maxAfter time.Duration
}

func (s *serverAware) NextBackOff() time.Duration {
	next := s.BackOff.NextBackOff()
	if next == backoff.Stop {
		return backoff.Stop
	}
	if after, ok := RetryAfter(s.last); ok {
		if after > s.maxAfter {
			return backoff.Stop
		}
		if after > next {
			return after
		}
	}
	return next
}

// Doubling is the wait before try n (1-based) of a schedule that starts at
// first and doubles up to most: for redeliveries, whose count the message
// carries, where no BackOff object lives between tries.
func Doubling(first, most time.Duration, n int) time.Duration {
	d := first
	for i := 1; i < n && d < most; i++ {
		d *= 2
	}
	return min(d, most)
}
