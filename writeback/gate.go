package writeback

import (
	"errors"
	"time"

	"github.com/tqtriage/tqtriage/bus"
	"github.com/tqtriage/tqtriage/internal/gate"
	"github.com/tqtriage/tqtriage/internal/retry"
	"github.com/tqtriage/tqtriage/threatq"
)

// Refused credentials and rate limits are the replica's condition, not
// the result's (docs/flow.md): a result that meets one is put off without
// counting (bus.Snooze), never dead-lettered, and the gate stops the
// replica taking more until it can write again.

// DefaultMaxPause bounds how long a 429 pauses the replica, whatever its
// Retry-After asks for (THREATQ_MAX_PAUSE).
const DefaultMaxPause = 5 * time.Minute

// held is the outcome of a result met while the gate is closed.
func (w *Writer) held() (bus.Outcome, bool) {
	if w.cfg.Gate == nil {
		return bus.Outcome{}, false
	}
	d, why := w.cfg.Gate.Hold()
	if d <= 0 {
		return bus.Outcome{}, false
	}
	return bus.Snooze(d, why), true
}

// failure is the outcome of a result whose write ended in err: the
// executor's to resolve, unless err is the replica's condition.
func (w *Writer) failure(err error) bus.Outcome {
	switch {
	case gate.Refused(err):
		d, why := gate.DefaultHold, "ThreatQ refused the credentials: "+err.Error()
		if g := w.cfg.Gate; g != nil {
			g.Refuse(err)
			d, why = g.Hold()
		}
		return bus.Snooze(d, why)
	case errors.Is(err, threatq.ErrRateLimited):
		d, _ := retry.RetryAfter(err)
		if d <= 0 {
			d = w.cfg.RedeliveryDelay
		}
		d = min(d, w.cfg.MaxPause)
		if g := w.cfg.Gate; g != nil {
			g.Pause(d, "ThreatQ answered 429")
		}
		return bus.Snooze(d, "ThreatQ answered 429: "+err.Error())
	}
	return bus.Err(err)
}
