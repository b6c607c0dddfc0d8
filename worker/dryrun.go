package worker

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/tqtriage/tqtriage/bus"
	"github.com/tqtriage/tqtriage/mapping"
	"github.com/tqtriage/tqtriage/message"
	"github.com/tqtriage/tqtriage/triage"
)

// Reader is all a dry run may ask of Triage: reads.
type Reader interface {
	GetIndicator(ctx context.Context, id string) (*triage.Indicator, error)
	// FindIndicator finds the indicator of a type and value from source
	// ("": any source).
	FindIndicator(ctx context.Context, threatType, value, source string) (*triage.Indicator, error)
}

// WithReader gives the worker the Triage client its dry runs read
// through, and returns it; call it before the worker serves. Build that
// client read-only (pipeline.NewWorker does): then no code path of a dry
// run can write to Triage, whatever it calls. A worker without a reader
// answers dry-run jobs failed, with the reason.
func (w *Worker) WithReader(r Reader) *Worker {
	w.reader = r
	return w
}

// OnlyDryRuns makes the worker take dry-run jobs alone, and returns it: a
// real job is snoozed, for a worker that may write to take. `run
// --dry-run` builds its worker so, with read-only clients only.
func (w *Worker) OnlyDryRuns() *Worker {
	w.onlyDry = true
	return w
}

// notDryAgain is how long a worker that only does dry runs leaves a real
// job before it may take it again (another replica takes it meanwhile).
const notDryAgain = 15 * time.Second

// errNoReader fails a dry-run job on a worker that cannot read Triage
// without being able to write: not retryable on this replica.
var errNoReader = errors.New("this worker has no read-only Triage client for dry runs")

// dryRun answers what the job would do, from reads alone: would_create,
// would_update, unchanged, exists, not_found, or skipped by the cap, which
// a dry run counts under claims of its own (bus.DryRunScope), so that it
// never spends a real run's admissions. Invalid jobs were answered before.
func (w *Worker) dryRun(ctx context.Context, job message.Job, a bus.Attempt, ind mapping.Indicator, level, source string) bus.Outcome {
	if w.reader == nil {
		return bus.Err(errNoReader)
	}
	if out, ok := w.admit(ctx, job, a, bus.DryRunScope(job.RunID), ind,
		fmt.Sprintf("the run would reach its limit of %d objects per run; this indicator would not be sent to Triage", w.cfg.ObjectsPerRun)); !ok {
		return out
	}
	var (
		status message.Status
		reason string
		found  *triage.Indicator
	)
	if out, ok := w.withTriage(ctx, "Triage read", func(ctx context.Context) error {
		var err error
		status, reason, found, err = w.plan(ctx, job, ind, level, source)
		return err
	}); !ok {
		return out
	}
	return w.answer(ctx, job, a, status, reason, true, found)
}

// plan is one try of the reads that tell what the job would do. It
// follows the rules create and update follow (docs/flow.md), reading where
// they would write.
func (w *Worker) plan(ctx context.Context, job message.Job, ind mapping.Indicator, level, source string) (message.Status, string, *triage.Indicator, error) {
	if job.Action == message.ActionCreate {
		// Create would be answered duplicate by an indicator of ours;
		// Triage keeps one indicator per source, so one of another
		// source does not stop it.
		found, err := w.reader.FindIndicator(ctx, ind.ThreatType, ind.ThreatValue, source)
		switch {
		case errors.Is(err, triage.ErrNotFound):
			return message.StatusWouldCreate, wouldCreate(level, source), nil, nil
		case err != nil:
			return "", "", nil, fmt.Errorf("find indicator: %w", err)
		}
		return message.StatusExists, "", found, nil
	}
	target, err := w.target(ctx, job, ind, source)
	switch {
	case errors.Is(err, triage.ErrNotFound) && job.Upsert:
		return message.StatusWouldCreate, wouldCreate(level, source), nil, nil
	case errors.Is(err, triage.ErrNotFound):
		return message.StatusNotFound, "no Triage indicator of this type and value from " + strings.Join(ourSources(source, w.cfg.ThreatSource, job.Attribute(mapping.AttrThreatSource)), " or ") +
			"; an update would change nothing (upsert would create it)", nil, nil
	case err != nil:
		return "", "", nil, err
	}
	var changes []string
	if !strings.EqualFold(target.ThreatLevel, level) {
		changes = append(changes, fmt.Sprintf("level %s → %s", target.ThreatLevel, level))
	}
	if target.ThreatSource != source {
		changes = append(changes, fmt.Sprintf("source %s → %s", target.ThreatSource, source))
	}
	if len(changes) == 0 {
		return message.StatusUnchanged, "", target, nil
	}
	return message.StatusWouldUpdate, "would set " + strings.Join(changes, ", ") + " of Triage indicator " + target.ID, target, nil
}

// target is the indicator update would write to: ours, found as update
// finds it; and, when that is the one of the id ThreatQ holds, of another
// source, and one of the new source is there, that one (update's put
// would meet the collision and write to it).
func (w *Worker) target(ctx context.Context, job message.Job, ind mapping.Indicator, source string) (*triage.Indicator, error) {
	found, byID, err := w.ours(ctx, w.reader, job, ind, source)
	if err != nil || !byID || found.ThreatSource == source {
		return found, err
	}
	other, err := w.reader.FindIndicator(ctx, ind.ThreatType, ind.ThreatValue, source)
	switch {
	case err == nil:
		return other, nil
	case errors.Is(err, triage.ErrNotFound):
		return found, nil
	}
	return nil, fmt.Errorf("find indicator: %w", err)
}

func wouldCreate(level, source string) string {
	return fmt.Sprintf("no Triage indicator of this type and value from %s; would create it at level %s", source, level)
}
