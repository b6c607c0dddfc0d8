// Package worker turns jobs into Triage calls and results.
//
// Handle is the executor: for one delivered job it parses, validates and
// maps the indicator, admits it against the run's objects-per-run cap, calls
// Triage (retrying what may succeed later while keeping the job's ack
// deadline alive), and then decides, in one place, the job's fate: a result
// published and the job acknowledged once the result is stored; a delayed
// redelivery; or a failed result with a dead letter. Nothing else in the
// program acknowledges a job.
//
// The worker depends on a narrow Triage interface and a narrow Bus
// interface; the NATS wiring is package bus, the HTTP side package triage.
package worker

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/tqtriage/tqtriage/bus"
	"github.com/tqtriage/tqtriage/internal/retry"
	"github.com/tqtriage/tqtriage/mapping"
	"github.com/tqtriage/tqtriage/message"
	"github.com/tqtriage/tqtriage/triage"
)

// Triage is what the worker needs of the Triage client.
type Triage interface {
	CreateIndicator(ctx context.Context, in triage.NewIndicator) (*triage.Indicator, error)
	UpdateIndicator(ctx context.Context, id, level, source string) (*triage.Indicator, error)
	FindIndicator(ctx context.Context, threatType, value string) (*triage.Indicator, error)
}

// Bus is what the worker needs of JetStream.
type Bus interface {
	Claim(ctx context.Context, runID, key string, limit int) (bus.Admission, error)
	PublishAsync(subject, msgID string, data []byte, hdr nats.Header) (jetstream.PubAckFuture, error)
	DeadLetterMsg(ctx context.Context, subject, msgID string, data []byte, hdr nats.Header) error
}

// Config is the worker's behaviour; the zero value of each field takes the
// default noted beside it.
type Config struct {
	ThreatLevel   string // default Malicious
	ThreatSource  string // default ThreatQ
	ObjectsPerRun int    // default 10000
	// MaxDeliver is how many deliveries a job gets before a retryable
	// failure becomes final (default 5).
	MaxDeliver int
	// Retry is the policy of the Triage calls within one delivery
	// (default 3 attempts, 250ms to 5s, Retry-After up to 20s honoured
	// in place; a longer one is handed to a delayed redelivery).
	Retry retry.Policy
	// RedeliveryDelay is the first wait before a job is delivered again
	// after its retries ran out; it doubles with each delivery up to
	// MaxRedeliveryDelay (defaults 5s and 2m).
	RedeliveryDelay    time.Duration
	MaxRedeliveryDelay time.Duration
	// AckWait is the consumer's ack deadline (default 30s); a job that
	// takes longer than a third of it reports progress.
	AckWait time.Duration
}

func (c Config) withDefaults() Config {
	if c.ThreatLevel == "" {
		c.ThreatLevel = mapping.LevelMalicious
	}
	if c.ThreatSource == "" {
		c.ThreatSource = "ThreatQ"
	}
	if c.ObjectsPerRun <= 0 {
		c.ObjectsPerRun = 10000
	}
	if c.MaxDeliver <= 0 {
		c.MaxDeliver = 5
	}
	if c.Retry.MaxAttempts == 0 {
		c.Retry = retry.Policy{MaxAttempts: 3, InitialInterval: 250 * time.Millisecond, MaxInterval: 5 * time.Second, MaxRetryAfter: 20 * time.Second}
	}
	if c.RedeliveryDelay <= 0 {
		c.RedeliveryDelay = 5 * time.Second
	}
	if c.MaxRedeliveryDelay <= 0 {
		c.MaxRedeliveryDelay = 2 * time.Minute
	}
	if c.AckWait <= 0 {
		c.AckWait = 30 * time.Second
	}
	return c
}

// Worker handles jobs. It is safe for concurrent use by the consuming pool.
type Worker struct {
	cfg     Config
	triage  Triage
	bus     Bus
	log     zerolog.Logger
	metrics *Metrics

	// pending tracks acknowledgements waiting on a result's PubAck, so
	// that a shutdown does not close the connection under them.
	pending sync.WaitGroup
}

// New returns a worker. The Triage client should not retry by itself
// (give it retry.None): the worker retries, so that it can count attempts
// and keep the job's ack deadline alive. metrics may be nil.
func New(cfg Config, t Triage, b Bus, log zerolog.Logger, m *Metrics) (*Worker, error) {
	cfg = cfg.withDefaults()
	level, err := mapping.ParseThreatLevel(cfg.ThreatLevel)
	if err != nil {
		return nil, fmt.Errorf("worker: %w", err)
	}
	cfg.ThreatLevel = level
	return &Worker{cfg: cfg, triage: t, bus: b, log: log, metrics: m}, nil
}

// Wait blocks until every result published so far has been stored or has
// failed, and its job settled.
func (w *Worker) Wait() { w.pending.Wait() }

// outcome is what processing a job came to; settle acts on it.
type outcome struct {
	result     *message.Result // publish it, then acknowledge
	deadLetter string          // also dead-letter the job, with this reason
	retryAfter time.Duration   // no result: deliver the job again after this
	handBack   bool            // no result: shutting down; deliver again now
}

// Handle works on one delivered job and settles it. It never panics out:
// a panic is logged and the job handed back for a delayed redelivery.
func (w *Worker) Handle(ctx context.Context, m jetstream.Msg) {
	start := time.Now()
	md, err := m.Metadata()
	if err != nil {
		// Not a JetStream message: nothing to acknowledge.
		w.log.Error().Err(err).Str("subject", m.Subject()).Msg("message without JetStream metadata ignored")
		return
	}
	deliveries := int(md.NumDelivered)
	log := w.log.With().Uint64("stream_seq", md.Sequence.Stream).Int("attempt", deliveries).Logger()
	defer func() {
		if p := recover(); p != nil {
			log.Error().Interface("panic", p).Msg("job handler panicked; the job will be delivered again")
			_ = m.NakWithDelay(w.redeliveryDelay(deliveries))
		}
	}()

	job, err := message.ParseJob(m.Subject(), m.Data())
	if err != nil {
		w.deadLetterUnparseable(ctx, m, md, err, log)
		return
	}
	log = log.With().Str("run", job.RunID).Str("action", job.Action).Int64("indicator", job.Indicator.ID).Logger()
	ctx = log.WithContext(ctx)

	// The ack deadline runs while the job waits on Triage: report
	// progress so the server does not hand it to another replica.
	progress := newHeartbeat(m, w.cfg.AckWait/3)
	out := w.process(ctx, job, deliveries)
	progress.stop()

	w.settle(ctx, m, md, job, out, log)
	if w.metrics != nil {
		w.metrics.observe(job.Action, out, time.Since(start))
	}
}

// process decides what becomes of a parsed job.
func (w *Worker) process(ctx context.Context, job message.Job, deliveries int) outcome {
	ind, err := mapping.Map(job.Indicator.Type, job.Indicator.Value)
	if err != nil {
		return w.final(job, message.StatusInvalid, err.Error(), 0)
	}
	level := w.cfg.ThreatLevel
	if job.ThreatLevel != "" {
		if level, err = mapping.ParseThreatLevel(job.ThreatLevel); err != nil {
			return w.final(job, message.StatusInvalid, err.Error(), 0)
		}
	}
	source := w.cfg.ThreatSource
	if job.ThreatSource != "" {
		source = job.ThreatSource
	}
	if deliveries > w.cfg.MaxDeliver {
		// Delivered past the limit without an answer (a worker died
		// on it each time): stop here rather than call Triage again.
		r := message.NewResult(job, message.StatusFailed, fmt.Sprintf("delivered %d times without an answer (limit %d)", deliveries, w.cfg.MaxDeliver))
		r.Attempts = deliveries
		return outcome{result: &r, deadLetter: r.Reason}
	}

	adm, err := w.bus.Claim(ctx, job.RunID, bus.ClaimKey(ind.ThreatType, ind.ThreatValue), w.cfg.ObjectsPerRun)
	if err != nil {
		return w.retryOrFail(ctx, job, deliveries, fmt.Errorf("objects-per-run admission: %w", err))
	}
	if !adm.Admitted {
		return w.final(job, message.StatusSkipped,
			fmt.Sprintf("the run reached its limit of %d objects per run; this indicator was not sent to Triage", w.cfg.ObjectsPerRun), 0)
	}

	var (
		status message.Status
		found  *triage.Indicator
	)
	_, err = retry.Do(ctx, w.cfg.Retry, func(ctx context.Context) error {
		var err error
		status, found, err = w.call(ctx, job, ind, level, source)
		return err
	}, func(err error, attempt int, wait time.Duration) {
		zerolog.Ctx(ctx).Info().Err(err).Int("try", attempt).Dur("wait", wait).Msg("Triage call failed; trying again")
		if w.metrics != nil {
			w.metrics.retries.Inc()
		}
	})
	if err != nil {
		return w.retryOrFail(ctx, job, deliveries, err)
	}
	r := message.NewResult(job, status, "")
	r.Attempts = deliveries
	if found != nil {
		r.Triage = triageView(found)
		switch status {
		case message.StatusCreated, message.StatusExists:
			r.Attributes = attributes(mapping.CreateAttributes(found.ID, found.ThreatLevel, found.ThreatSource))
		case message.StatusUpdated:
			r.Attributes = attributes(mapping.UpdateAttributes(found.ThreatLevel, found.ThreatSource))
		}
	}
	if status == message.StatusNotFound {
		r.Reason = "no Triage indicator of this type and value; run update with upsert to create it"
	}
	return outcome{result: &r}
}

// call makes one try of the job's Triage calls.
func (w *Worker) call(ctx context.Context, job message.Job, ind mapping.Indicator, level, source string) (message.Status, *triage.Indicator, error) {
	switch job.Action {
	case message.ActionCreate:
		return w.create(ctx, ind, level, source)
	default:
		found, err := w.triage.FindIndicator(ctx, ind.ThreatType, ind.ThreatValue)
		if errors.Is(err, triage.ErrNotFound) {
			if !job.Upsert {
				return message.StatusNotFound, nil, nil
			}
			return w.create(ctx, ind, level, source)
		}
		if err != nil {
			return "", nil, fmt.Errorf("find indicator: %w", err)
		}
		updated, err := w.triage.UpdateIndicator(ctx, found.ID, level, source)
		if err != nil {
			return "", nil, fmt.Errorf("update indicator %s: %w", found.ID, err)
		}
		return message.StatusUpdated, updated, nil
	}
}

// create creates the indicator, or finds it when Triage says it exists:
// running create twice is not an error (the seed's known failure).
func (w *Worker) create(ctx context.Context, ind mapping.Indicator, level, source string) (message.Status, *triage.Indicator, error) {
	created, err := w.triage.CreateIndicator(ctx, triage.NewIndicator{ThreatLevel: level, ThreatType: ind.ThreatType, ThreatValue: ind.ThreatValue, ThreatSource: source})
	if err == nil {
		return message.StatusCreated, created, nil
	}
	if !errors.Is(err, triage.ErrDuplicate) {
		return "", nil, fmt.Errorf("create indicator: %w", err)
	}
	found, err := w.triage.FindIndicator(ctx, ind.ThreatType, ind.ThreatValue)
	if err != nil {
		if errors.Is(err, triage.ErrNotFound) {
			// Triage said it exists, then did not find it (deleted in
			// between, or not yet visible): worth another try.
			return "", nil, retryable{fmt.Errorf("Triage reported a duplicate but lists no such indicator: %w", err)}
		}
		return "", nil, fmt.Errorf("look up existing indicator: %w", err)
	}
	return message.StatusExists, found, nil
}

// retryable marks an error of the worker's own as worth another try.
type retryable struct{ error }

func (retryable) Retryable() bool { return true }
func (e retryable) Unwrap() error { return e.error }

// retryOrFail turns an error into a delayed redelivery while deliveries
// remain and the error may pass, and into a failed result otherwise.
func (w *Worker) retryOrFail(ctx context.Context, job message.Job, deliveries int, err error) outcome {
	if ctx.Err() != nil {
		return outcome{handBack: true}
	}
	transient := retry.IsRetryable(err) || !isFromTriage(err)
	if transient && deliveries < w.cfg.MaxDeliver {
		d := w.redeliveryDelay(deliveries)
		if after, ok := retry.RetryAfter(err); ok && after > d {
			d = after
		}
		zerolog.Ctx(ctx).Warn().Err(err).Dur("redeliver_in", d).Msg("job will be delivered again")
		return outcome{retryAfter: d}
	}
	reason := err.Error()
	if transient {
		reason = fmt.Sprintf("gave up after %d deliveries: %s", deliveries, reason)
	}
	r := message.NewResult(job, message.StatusFailed, reason)
	r.Attempts = deliveries
	return outcome{result: &r, deadLetter: reason}
}

// isFromTriage reports whether err is an answer (or a failed call) of the
// Triage client; other errors (the bus, the context) are the worker's own
// trouble and never make a job fail for good before its deliveries run out.
func isFromTriage(err error) bool {
	var te *triage.Error
	return errors.As(err, &te)
}

func (w *Worker) final(job message.Job, status message.Status, reason string, attempts int) outcome {
	r := message.NewResult(job, status, reason)
	r.Attempts = attempts
	return outcome{result: &r}
}

func (w *Worker) redeliveryDelay(deliveries int) time.Duration {
	return retry.Doubling(w.cfg.RedeliveryDelay, w.cfg.MaxRedeliveryDelay, deliveries)
}

func triageView(t *triage.Indicator) *message.TriageIndicator {
	v := &message.TriageIndicator{ID: t.ID, ThreatLevel: t.ThreatLevel, ThreatType: t.ThreatType, ThreatValue: t.ThreatValue, ThreatSource: t.ThreatSource}
	if !t.CreatedAt.IsZero() {
		v.CreatedAt = t.CreatedAt.UTC().Format(triage.TimeFormat)
	}
	if !t.UpdatedAt.IsZero() {
		v.UpdatedAt = t.UpdatedAt.UTC().Format(triage.TimeFormat)
	}
	return v
}

func attributes(in []mapping.Attribute) []message.Attribute {
	out := make([]message.Attribute, len(in))
	for i, a := range in {
		out[i] = message.Attribute{Name: a.Name, Value: a.Value}
	}
	return out
}
