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
	configured rate.Limit // 0: no steady limit; with a fleet, the fleet's
	lim        *rate.Limiter
	maxPause   time.Duration // 0: no bound
	onPause    func(asked, pause time.Duration)
	fleet      *FleetRef

	mu          sync.Mutex
	pausedUntil time.Time
	last429     time.Time
	throttled   int64   // 429s seen
	cut         float64 // 1, or less while 429s come: the share of the limit in force
	members     int     // the fleet's size the limit was last set for
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
	t := &Throttle{configured: rate.Limit(perSecond), cut: 1, members: 1}
	if perSecond > 0 {
		t.lim = rate.NewLimiter(t.configured, burst(t.configured))
	}
	for _, o := range opts {
		o(t)
	}
	return t
}

// burst lets a tenth of a second's requests go at once, at least one.
func burst(r rate.Limit) int { return max(1, int(r/10)) }

// setLimitLocked sets the steady rate to this replica's share: the
// configured limit divided among the fleet's members, cut while 429s come.
func (t *Throttle) setLimitLocked(members int) {
	t.members = members
	r := t.configured / rate.Limit(members) * rate.Limit(t.cut)
	t.lim.SetLimit(r)
	t.lim.SetBurst(burst(r))
}

// Wait blocks until a request may go: past any pause (this replica's, or
// one its fleet asked for), then through the rate limit, this replica's
// share of it. It returns ctx's error if ctx ends first.
func (t *Throttle) Wait(ctx context.Context) error {
	f := t.fleet.get()
	for {
		t.mu.Lock()
		var adopted time.Duration
		if f != nil {
			// Another replica's 429 pauses this one too, as if it had
			// met it (the gate then holds off new work).
			if fu := f.PausedUntil(); fu.After(t.pausedUntil) && time.Until(fu) > 0 {
				t.pausedUntil = fu
				adopted = time.Until(fu)
			}
			if t.lim != nil {
				if m := f.Members(); m != t.members {
					t.setLimitLocked(m)
				}
			}
		}
		d := time.Until(t.pausedUntil)
		t.mu.Unlock()
		if adopted > 0 && t.onPause != nil {
			t.onPause(0, adopted)
		}
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
		if t.lim != nil && t.cut < 1 && now.Sub(t.last429) > time.Second {
			t.cut = min(1, t.cut*1.05+0.01)
			t.setLimitLocked(t.members)
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
		t.cut = max(0.01, t.cut*0.7)
		t.setLimitLocked(t.members)
	}
	until := t.pausedUntil
	t.mu.Unlock()
	if f := t.fleet.get(); f != nil && starts {
		// Every replica of the fleet holds the pause: the limit is the
		// API client's, whichever replica met it.
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			_ = f.Pause(ctx, until)
		}()
	}
	if starts && t.onPause != nil {
		t.onPause(asked, pause)
	}
}

// PausedFor is how long the pause that runs has left, this replica's or
// its fleet's (0: none).
func (t *Throttle) PausedFor() time.Duration {
	t.mu.Lock()
	until := t.pausedUntil
	t.mu.Unlock()
	if f := t.fleet.get(); f != nil && f.PausedUntil().After(until) {
		until = f.PausedUntil()
	}
	return max(0, time.Until(until))
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
