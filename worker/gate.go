package worker

import (
	"time"

	"github.com/tqtriage/tqtriage/bus"
	"github.com/tqtriage/tqtriage/internal/gate"
	"github.com/tqtriage/tqtriage/triage"
)

// Refused credentials and rate limits are the replica's condition, not
// the job's (docs/flow.md): a job that meets one is put off without
// counting (bus.Snooze), never failed, and the gate stops the replica
// taking more until it can work again.

// DefaultMaxPause bounds how long a 429 pauses the replica, whatever its
// Retry-After asks for (TRIAGE_MAX_PAUSE).
const DefaultMaxPause = 5 * time.Minute

// Gate is the worker's gate (nil: none).
func (w *Worker) Gate() *gate.Gate { return w.cfg.Gate }

// held is the outcome of a job met while the gate is closed: put off
// before it is admitted to the cap or sent, so that it spends nothing.
func (w *Worker) held() (bus.Outcome, bool) {
	if d, why := w.cfg.Gate.Holding(); d > 0 {
		return bus.Snooze(d, why), true
	}
	return bus.Outcome{}, false
}

// failure is the outcome of a job whose Triage calls ended in err: the
// executor's to resolve, unless err is the replica's condition.
func (w *Worker) failure(err error) bus.Outcome {
	if d, why, ok := gate.Condition(w.cfg.Gate, "Triage", err, triage.ErrRateLimited, w.cfg.RedeliveryDelay, w.cfg.MaxPause); ok {
		return bus.Snooze(d, why)
	}
	return bus.Err(err)
}
