// Package gate holds a replica's work while it cannot do any: until it
// has obtained an access token, while the remote service refuses its
// credentials, and while the service has asked it to pause (a 429's
// Retry-After). Those are the replica's condition, not a job's: a job
// that meets them is put off without counting against its deliveries,
// and the replica stops taking more (bus.Consumer's Gate), says it is not
// ready (Ready), and resumes by itself.
//
// While the credentials are refused, the gate probes with backoff (a
// fresh token, the secret read anew) and opens when a probe succeeds. It
// logs the refusal as an error when it begins and then at most once per
// LogEvery, never once per job.
package gate

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"github.com/tqtriage/tqtriage/internal/retry"
)

// Defaults of Config fields left zero.
const (
	DefaultRetry    = time.Second
	DefaultMaxRetry = time.Minute
	DefaultLogEvery = time.Minute
	// DefaultHold is how long a job in hand is put off while the
	// credentials are refused: the replica pulls no more meanwhile, so
	// another replica whose credentials work takes it then.
	DefaultHold  = time.Second
	probeTimeout = 30 * time.Second
)

// Refused reports whether err says that the credentials were refused (a
// Refused() bool method returning true somewhere in its chain; the
// errors of packages triage and threatq have one).
func Refused(err error) bool {
	var r interface{ Refused() bool }
	return errors.As(err, &r) && r.Refused()
}

// errNoToken is the reason of a gate that has not yet probed.
var errNoToken = errors.New("no access token yet")

// Config shapes a Gate.
type Config struct {
	// Service names the remote service in reasons and logs ("Triage").
	Service string
	// Probe obtains a fresh access token (reading the secret anew); nil
	// opens the gate. It is called at once by New, then with backoff
	// while the gate is refused.
	Probe func(ctx context.Context) error
	// Retry is the wait before the first probe after a refusal; it
	// doubles with each failed probe up to MaxRetry (defaults
	// DefaultRetry, DefaultMaxRetry). A gate that closes again soon
	// after a probe opened it (the service grants tokens but refuses
	// requests) goes on doubling rather than start over.
	Retry, MaxRetry time.Duration
	// LogEvery bounds the error logs of a refusal (default DefaultLogEvery).
	LogEvery time.Duration
	// Hold is how long Hold puts a job off while refused (default DefaultHold).
	Hold time.Duration
	Log  zerolog.Logger
}

// Gate is safe for concurrent use.
type Gate struct {
	cfg Config
	log zerolog.Logger
	now func() time.Time

	wake chan struct{} // tells the prober that the gate was refused

	mu          sync.Mutex
	refused     error // nil: the credentials work
	since       time.Time
	pausedUntil time.Time
	shut        chan struct{} // closed when admitting ends; then replaced
	opened      chan struct{} // closed when the credentials work again; then replaced
	failures    int           // failed probes (and quick re-closings) in a row
	openedAt    time.Time
	lastLog     time.Time
	probed      chan struct{} // closed after the first probe
	firstErr    error
}

// New returns a gate, closed until its first probe, which it starts at
// once; it probes until ctx ends.
func New(ctx context.Context, cfg Config) *Gate {
	if cfg.Retry <= 0 {
		cfg.Retry = DefaultRetry
	}
	if cfg.MaxRetry <= 0 {
		cfg.MaxRetry = DefaultMaxRetry
	}
	if cfg.LogEvery <= 0 {
		cfg.LogEvery = DefaultLogEvery
	}
	if cfg.Hold <= 0 {
		cfg.Hold = DefaultHold
	}
	g := &Gate{
		cfg: cfg, log: cfg.Log.With().Str("service", cfg.Service).Logger(), now: time.Now,
		wake: make(chan struct{}, 1), refused: errNoToken, shut: make(chan struct{}), opened: make(chan struct{}),
		probed: make(chan struct{}),
	}
	g.since = g.now()
	go g.probe(ctx)
	return g
}

// admitting reports whether work may be taken at now.
func (g *Gate) admittingLocked(now time.Time) bool {
	return g.refused == nil && !now.Before(g.pausedUntil)
}

// endLocked ends an admission: whoever holds its channel stops taking work.
func (g *Gate) endLocked() {
	close(g.shut)
	g.shut = make(chan struct{})
}

// Wait returns once the replica may take work, with a channel that is
// closed when it may no longer (the credentials refused, a pause begun);
// or ctx's error. It is bus.Gate.
func (g *Gate) Wait(ctx context.Context) (<-chan struct{}, error) {
	for {
		g.mu.Lock()
		now := g.now()
		if g.admittingLocked(now) {
			ch := g.shut
			g.mu.Unlock()
			return ch, nil
		}
		opened := g.opened
		var timer *time.Timer
		var expired <-chan time.Time
		if g.refused == nil {
			timer = time.NewTimer(g.pausedUntil.Sub(now))
			expired = timer.C
		}
		g.mu.Unlock()
		select {
		case <-opened:
		case <-expired:
		case <-ctx.Done():
			if timer != nil {
				timer.Stop()
			}
			return nil, ctx.Err()
		}
		if timer != nil {
			timer.Stop()
		}
	}
}

// Ready says why the replica cannot work, nil when it can: no token yet,
// or the credentials refused. A pause is not unreadiness: the replica
// works again by itself within it.
func (g *Gate) Ready() error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.refused == nil {
		return nil
	}
	return g.reasonLocked()
}

func (g *Gate) reasonLocked() error {
	switch {
	case g.refused == errNoToken:
		return fmt.Errorf("%s: %w", g.cfg.Service, errNoToken)
	case Refused(g.refused):
		return fmt.Errorf("%s refused the credentials: %w", g.cfg.Service, g.refused)
	}
	return fmt.Errorf("%s: no access token: %w", g.cfg.Service, g.refused)
}

// Hold says how long to put off a job in hand and why, or 0 when the
// replica may work on it.
func (g *Gate) Hold() (time.Duration, string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.refused != nil {
		return g.cfg.Hold, g.reasonLocked().Error()
	}
	if d := g.pausedUntil.Sub(g.now()); d > 0 {
		return d, g.cfg.Service + " asked this replica to pause"
	}
	return 0, ""
}

// Started waits for the first probe and returns its error (nil: a token
// was obtained), or ctx's.
func (g *Gate) Started(ctx context.Context) error {
	select {
	case <-g.probed:
		return g.firstErr
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Refuse closes the gate because err, a refusal of the credentials, met
// a job: the replica takes no work until a probe succeeds.
func (g *Gate) Refuse(err error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.refused != nil {
		return
	}
	now := g.now()
	if now.Sub(g.openedAt) >= g.cfg.MaxRetry {
		g.failures = 0 // it worked for a while: back off from the start
	} else {
		g.failures++ // opened by a probe, refused again at once
	}
	was := g.admittingLocked(now)
	g.refused, g.since = err, now
	if was {
		g.endLocked()
	}
	// A refusal after a good while is news; one soon after a probe
	// reopened the gate is the same refusal going on.
	g.logRefusalLocked(now, g.failures == 0)
	select {
	case g.wake <- struct{}{}:
	default:
	}
}

// Pause holds the taking of work for d (the service's Retry-After,
// already bounded by the caller), or longer when a pause running ends
// later.
func (g *Gate) Pause(d time.Duration, why string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	now := g.now()
	until := now.Add(d)
	if !until.After(g.pausedUntil) {
		return
	}
	was := g.admittingLocked(now)
	g.pausedUntil = until
	if was {
		g.endLocked()
		g.log.Debug().Dur("pause", d).Str("reason", why).Msg("taking no new work until the pause ends")
	}
}

// logRefusalLocked logs the refusal as an error, at most once per
// LogEvery (first: it has just begun).
func (g *Gate) logRefusalLocked(now time.Time, first bool) {
	if !first && now.Sub(g.lastLog) < g.cfg.LogEvery {
		return
	}
	g.lastLog = now
	ev := g.log.Error()
	if g.refused == errNoToken || !Refused(g.refused) {
		ev = g.log.Warn()
	}
	ev.Err(g.refused).Dur("for", now.Sub(g.since).Round(time.Second)).Dur("next_try_in", g.backoffLocked()).
		Msg(g.cfg.Service + ": no usable credentials; this replica takes no work and reports not ready until a new token is granted")
}

func (g *Gate) backoffLocked() time.Duration {
	return retry.Doubling(g.cfg.Retry, g.cfg.MaxRetry, g.failures)
}

// probe obtains a token at once, then, whenever the gate is refused,
// again with backoff until one is granted, until ctx ends.
func (g *Gate) probe(ctx context.Context) {
	wait := time.Duration(0)
	for {
		if wait > 0 {
			t := time.NewTimer(wait)
			select {
			case <-t.C:
			case <-ctx.Done():
				t.Stop()
				return
			}
		}
		pctx, cancel := context.WithTimeout(ctx, probeTimeout)
		err := g.cfg.Probe(pctx)
		cancel()
		if ctx.Err() != nil {
			return
		}
		if wait = g.result(err); wait > 0 {
			continue
		}
		select {
		case <-g.wake:
			g.mu.Lock()
			wait = g.backoffLocked()
			g.mu.Unlock()
		case <-ctx.Done():
			return
		}
	}
}

// result records a probe's outcome and returns the wait before the next
// one (0: none needed, the gate is open).
func (g *Gate) result(err error) time.Duration {
	g.mu.Lock()
	defer g.mu.Unlock()
	now := g.now()
	select {
	case <-g.probed:
	default:
		g.firstErr = err
		close(g.probed)
	}
	if err != nil {
		first := g.refused == errNoToken && g.lastLog.IsZero()
		g.refused = err
		g.failures++
		g.logRefusalLocked(now, first)
		return g.backoffLocked()
	}
	if g.refused != nil {
		if g.refused == errNoToken && g.lastLog.IsZero() {
			g.log.Info().Msg(g.cfg.Service + ": access token obtained; taking work")
		} else {
			g.log.Info().Dur("after", now.Sub(g.since).Round(time.Second)).Msg(g.cfg.Service + ": credentials accepted again; taking work")
		}
		g.refused = nil
		g.openedAt = now
		close(g.opened)
		g.opened = make(chan struct{})
	}
	// Drain a wake-up that raced with this probe: the gate is open.
	select {
	case <-g.wake:
	default:
	}
	return 0
}

// Holding is Hold of a gate that may be nil (a replica without one): how
// long a message met now is put off, and why; 0 when it may go on.
func (g *Gate) Holding() (time.Duration, string) {
	if g == nil {
		return 0, ""
	}
	return g.Hold()
}

// Condition says whether err, the failure of a call to service, is the
// replica's condition rather than the message's, and for how long the
// message is then put off (uncounted), and why:
//   - refused credentials close g (when there is one) and hold it for
//     the gate's wait (DefaultHold without a gate);
//   - rateLimited (the client's 429 error) pauses g for the error's
//     Retry-After (redelivery when it has none), at most maxPause.
//
// Anything else is the message's: ok is false.
func Condition(g *Gate, service string, err, rateLimited error, redelivery, maxPause time.Duration) (d time.Duration, why string, ok bool) {
	switch {
	case Refused(err):
		d, why = DefaultHold, service+" refused the credentials: "+err.Error()
		if g != nil {
			g.Refuse(err)
			d, why = g.Hold()
		}
		return d, why, true
	case errors.Is(err, rateLimited):
		d, _ = retry.RetryAfter(err)
		if d <= 0 {
			d = redelivery
		}
		d = min(d, maxPause)
		if g != nil {
			g.Pause(d, service+" answered 429")
		}
		return d, service + " answered 429: " + err.Error(), true
	}
	return 0, "", false
}
