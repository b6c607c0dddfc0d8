// Package throttle paces the requests one process sends to a server: an
// optional steady rate (a token bucket from golang.org/x/time/rate) and a
// pause that every request honours once the server has answered 429, for
// its Retry-After (or a short default). While 429s keep coming the rate is
// cut, and it creeps back to the configured one once they stop, so a
// replica that was told to slow down does slow down instead of retrying
// into the limit.
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

	mu          sync.Mutex
	pausedUntil time.Time
	last429     time.Time
	throttled   int64 // 429s seen
}

// New returns a throttle of perSecond requests a second (0: no steady
// limit; 429s still pause it).
func New(perSecond float64) *Throttle {
	t := &Throttle{configured: rate.Limit(perSecond)}
	if perSecond > 0 {
		burst := int(perSecond / 10)
		if burst < 1 {
			burst = 1
		}
		t.lim = rate.NewLimiter(t.configured, burst)
	}
	return t
}

// Wait blocks until a request may go: past any pause, then through the
// rate limit.
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
	defer t.mu.Unlock()
	if resp.StatusCode != http.StatusTooManyRequests {
		if t.lim != nil && t.lim.Limit() < t.configured && now.Sub(t.last429) > time.Second {
			t.lim.SetLimit(min(t.configured, t.lim.Limit()*1.05+0.1))
		}
		return
	}
	t.throttled++
	t.last429 = now
	pause := httpclient.RetryAfter(resp.Header.Get("Retry-After"), now)
	if pause <= 0 {
		pause = DefaultPause
	}
	if until := now.Add(pause); until.After(t.pausedUntil) {
		t.pausedUntil = until
	}
	if t.lim != nil {
		t.lim.SetLimit(max(t.configured/100, t.lim.Limit()*0.7))
	}
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

// Transport wraps base so that every request waits on t and every response
// is observed.
func (t *Throttle) Transport(base http.RoundTripper) http.RoundTripper {
	return roundTripper{t: t, base: base}
}

type roundTripper struct {
	t    *Throttle
	base http.RoundTripper
}

func (rt roundTripper) RoundTrip(req *http.Request) (*http.Response, error) {
	if err := rt.t.Wait(req.Context()); err != nil {
		if req.Body != nil {
			req.Body.Close()
		}
		return nil, err
	}
	resp, err := rt.base.RoundTrip(req)
	if err == nil {
		rt.t.Observe(resp)
	}
	return resp, err
}
