package writeback

import (
	"time"

	"github.com/tqtriage/tqtriage/bus"
	"github.com/tqtriage/tqtriage/internal/gate"
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
	if d, why := w.cfg.Gate.Holding(); d > 0 {
		return bus.Snooze(d, why), true
	}
	return bus.Outcome{}, false
}

// failure is the outcome of a result whose write ended in err: the
// executor's to resolve, unless err is the replica's condition.
func (w *Writer) failure(err error) bus.Outcome {
	if d, why, ok := gate.Condition(w.cfg.Gate, "ThreatQ", err, threatq.ErrRateLimited, w.cfg.RedeliveryDelay, w.cfg.MaxPause); ok {
		return bus.Snooze(d, why)
	}
	return bus.Err(err)
}
