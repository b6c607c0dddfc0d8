// Package throttle paces the requests one process sends to a server: an
// optional steady rate (a token bucket from golang.org/x/time/rate) and a
// pause that every request honours once the server has answered 429, for
// its Retry-After (or a short default), at most MaxPause. While 429s keep
// coming the rate is cut, and it creeps back to the configured one once
// they stop, so a replica that was told to slow down does slow down instead
// of retrying into the limit.
//
// A client calls Wait before it sends a request and Observe on the answer.
// Both sit outside the HTTP request: a pause of minutes must not run inside
// a request's timeout (a request that waited out its timeout in a pause
// would fail without having been sent). The interface is these two methods
// so that another pacer (one budget for a whole fleet) can take its place.
package throttle

import (
	"context"
	"net/http"
	"sync"
	"time"

	"golang.org/x/time/rate"

	"github.com/tqtriage/tqtriage/internal/httpclient"
)

// DefaultPause is how long requests pause after a 429 without Retry-After.
const DefaultPause = time.Second

// Throttle is safe for concurrent use.
type Throttle struct {
	configured rate.Limit // 0: no steady limit
	lim        *rate.Limiter
	maxPause   time.Duration // 0: no bound
	onPause    func(asked, pause time.Duration)

	mu          sync.Mutex
	pausedUntil time.Time
	last429     time.Time
	throttled   int64 // 429s seen
}

// Option shapes a Throttle.
type Option func(*Throttle)

// MaxPause bounds the pause a 429 starts, whatever its Retry-After asks
// for (0: no bound). A server that asks for an hour is asked again after
// d; if it still answers 429, the pause starts again.
func MaxPause(d time.Duration) Option { return func(t *Throttle) { t.maxPause = d } }

// OnPause is told when a 429 starts a pause (not when it extends one that
// runs): what the server asked for (0: no Retry-After) and how long the
// pause is, shorter than asked when MaxPause clamped it. It runs on the
// goroutine that observed the answer and must not block.
func OnPause(f func(asked, pause time.Duration)) Option { return func(t *Throttle) { t.onPause = f } }

// New returns a throttle of perSecond requests a second (0: no steady
// limit; 429s still pause it).
func New(perSecond float64, opts ...Option) *Throttle {
	t := &Throttle{configured: rate.Limit(perSecond)}
	if perSecond > 0 {
		burst := int(perSecond / 10)
		if burst < 1 {
			burst = 1
		}
		t.lim = rate.NewLimiter(t.configured, burst)
	}
	for _, o := range opts {
		o(t)
	}
	return t
}

// Wait blocks until a request may go: past any pause, then through the
// rate limit. It returns ctx's error if ctx ends first.
func (t *Throttle) Wait(ctx context.Context) error {
	for {
		t.mu.Lock()
		d := time.Until(t.pausedUntil)
		t.mu.Unlock()
		if d <= 0 {
			break
		}
		timer := time.NewTimer(d)
		select {
		case <-ctx.Done():
			timer.Stop()
			return ctx.Err()
		case <-timer.C:
		}
	}
	if t.lim == nil {
		return nil
	}
	return t.lim.Wait(ctx)
}

// Observe learns from a response: a 429 pauses every request and cuts the
// rate; other answers let the rate recover.
func (t *Throttle) Observe(resp *http.Response) {
	now := time.Now()
	t.mu.Lock()
	if resp.StatusCode != http.StatusTooManyRequests {
		if t.lim != nil && t.lim.Limit() < t.configured && now.Sub(t.last429) > time.Second {
			t.lim.SetLimit(min(t.configured, t.lim.Limit()*1.05+0.1))
		}
		t.mu.Unlock()
		return
	}
	t.throttled++
	t.last429 = now
	asked := httpclient.RetryAfter(resp.Header.Get("Retry-After"), now)
	pause := asked
	if pause <= 0 {
		pause = DefaultPause
	}
	if t.maxPause > 0 {
		pause = min(pause, t.maxPause)
	}
	starts := !now.Before(t.pausedUntil)
	if until := now.Add(pause); until.After(t.pausedUntil) {
		t.pausedUntil = until
	}
	if t.lim != nil {
		t.lim.SetLimit(max(t.configured/100, t.lim.Limit()*0.7))
	}
	t.mu.Unlock()
	if starts && t.onPause != nil {
		t.onPause(asked, pause)
	}
}

// PausedFor is how long the pause that runs has left (0: none).
func (t *Throttle) PausedFor() time.Duration {
	t.mu.Lock()
	defer t.mu.Unlock()
	return max(0, time.Until(t.pausedUntil))
}

// Throttled is the number of 429 answers seen.
func (t *Throttle) Throttled() int64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.throttled
}

// Limit is the current steady rate (0 when there is none).
func (t *Throttle) Limit() float64 {
	if t.lim == nil {
		return 0
	}
	return float64(t.lim.Limit())
}
