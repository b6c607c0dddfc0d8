// Package worker decides what becomes of one job: it validates and maps
// the indicator, admits it against the run's objects-per-run cap, calls
// Triage (retrying, within one delivery, what may succeed later), and
// answers with an outcome: a result to store, a failure for the executor to
// retry or give up, or a failed result with a dead letter. Refused
// credentials and 429s are the replica's condition: the job is put off
// without counting and the replica's gate holds its work (gate.go).
//
// It sees a parsed job and returns a bus.Outcome; the executor in package
// bus settles the message. It depends on a narrow Triage interface and a
// narrow claims interface, so its decisions are tested without a server.
package worker

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/rs/zerolog"

	"github.com/tqtriage/tqtriage/bus"
	"github.com/tqtriage/tqtriage/internal/gate"
	"github.com/tqtriage/tqtriage/internal/retry"
	"github.com/tqtriage/tqtriage/mapping"
	"github.com/tqtriage/tqtriage/message"
	"github.com/tqtriage/tqtriage/triage"
)

// Triage is what the worker needs of the Triage client. The client should
// make one attempt per call: the worker retries.
type Triage interface {
	CreateIndicator(ctx context.Context, in triage.NewIndicator) (*triage.Indicator, error)
	UpdateIndicator(ctx context.Context, id, level, source string) (*triage.Indicator, error)
	GetIndicator(ctx context.Context, id string) (*triage.Indicator, error)
	// FindIndicator finds the indicator of a type and value from source
	// ("": any source).
	FindIndicator(ctx context.Context, threatType, value, source string) (*triage.Indicator, error)
}

// Claims admits an indicator into its run's objects-per-run cap.
type Claims interface {
	Claim(ctx context.Context, runID, key string, limit int) (bus.Admission, error)
}

// Defaults of Config fields left zero; the command line shows the same.
const (
	DefaultThreatSource  = "ThreatQ"
	DefaultObjectsPerRun = 10000
	DefaultMaxDeliver    = 5
	DefaultConcurrency   = 16
)

// DefaultRetry is the policy of the Triage calls within one delivery: a
// Retry-After up to 20s is waited out in place; a longer one ends the
// delivery, and the executor delays the redelivery by it.
var DefaultRetry = retry.Policy{MaxAttempts: 3, InitialInterval: 250 * time.Millisecond, MaxInterval: 5 * time.Second, MaxRetryAfter: 20 * time.Second}

// Config is the worker's behaviour; the zero value of each field takes the
// default noted beside it.
type Config struct {
	ThreatLevel   string // default Malicious
	ThreatSource  string // default DefaultThreatSource
	ObjectsPerRun int    // default DefaultObjectsPerRun
	// MaxDeliver is how many deliveries a job gets before a retryable
	// failure becomes final (default DefaultMaxDeliver).
	MaxDeliver int
	// Retry is the policy of the Triage calls within one delivery
	// (default DefaultRetry).
	Retry retry.Policy
	// RedeliveryDelay is the first wait before a job is delivered again
	// after its retries ran out; it doubles with each delivery up to
	// MaxRedeliveryDelay (defaults 5s and 2m).
	RedeliveryDelay    time.Duration
	MaxRedeliveryDelay time.Duration
	// Concurrency is the number of jobs calling Triage at once (default
	// DefaultConcurrency); the replica holds twice as many (inHand).
	Concurrency int
	// MaxPause bounds how long a 429 puts jobs off and pauses the
	// replica (default DefaultMaxPause).
	MaxPause time.Duration
	// Gate, when set, holds the replica's work while Triage refuses its
	// credentials or has asked it to pause (internal/gate).
	Gate *gate.Gate
}

func (c Config) withDefaults() Config {
	if c.ThreatLevel == "" {
		c.ThreatLevel = mapping.LevelMalicious
	}
	if c.ThreatSource == "" {
		c.ThreatSource = DefaultThreatSource
	}
	if c.ObjectsPerRun <= 0 {
		c.ObjectsPerRun = DefaultObjectsPerRun
	}
	if c.MaxDeliver <= 0 {
		c.MaxDeliver = DefaultMaxDeliver
	}
	if c.Retry.MaxAttempts == 0 {
		c.Retry = DefaultRetry
	}
	if c.RedeliveryDelay <= 0 {
		c.RedeliveryDelay = 5 * time.Second
	}
	if c.MaxRedeliveryDelay <= 0 {
		c.MaxRedeliveryDelay = 2 * time.Minute
	}
	if c.Concurrency <= 0 {
		c.Concurrency = DefaultConcurrency
	}
	if c.MaxPause <= 0 {
		c.MaxPause = DefaultMaxPause
	}
	return c
}

// Worker handles jobs. It is safe for concurrent use.
type Worker struct {
	cfg     Config
	triage  Triage
	claims  Claims
	reader  Reader // dry runs read through it alone (dryrun.go)
	onlyDry bool   // real jobs are not this worker's (OnlyDryRuns)
	// calls holds a place for each job calling Triage: Concurrency at
	// once. The executor gives the worker more jobs than that (inHand),
	// so that admitting the next jobs and storing the answers of the last
	// go on while Triage's places are all taken.
	calls chan struct{}
}

// inHand is how many jobs a replica holds for each place it has in
// Triage (WORKER_CONCURRENCY): the others are being decoded, admitted
// against the cap, or answered. Triage never sees more than Concurrency
// of a replica's calls at once.
const inHand = 2

// New returns a worker.
func New(cfg Config, t Triage, c Claims) (*Worker, error) {
	cfg = cfg.withDefaults()
	level, err := mapping.ParseThreatLevel(cfg.ThreatLevel)
	if err != nil {
		return nil, fmt.Errorf("worker: %w", err)
	}
	cfg.ThreatLevel = level
	return &Worker{cfg: cfg, triage: t, claims: c, calls: make(chan struct{}, cfg.Concurrency)}, nil
}

// Consumer is the worker on the jobs consumer, for bus.Serve.
func (w *Worker) Consumer(log zerolog.Logger, m *bus.Metrics) bus.Consumer[message.Job] {
	c := bus.Consumer[message.Job]{
		Durable:     bus.ConsumerWorkers,
		Decode:      message.ParseJob,
		Undecodable: message.DLQInvalid,
		Handle:      w.Handle,
		GiveUp:      w.GiveUp,
		LogFields: func(j message.Job, c zerolog.Context) zerolog.Context {
			return c.Str("run", j.RunID).Str("action", string(j.Action)).Int64("indicator", j.Indicator.ID)
		},
		MaxDeliver:         w.cfg.MaxDeliver,
		RedeliveryDelay:    w.cfg.RedeliveryDelay,
		MaxRedeliveryDelay: w.cfg.MaxRedeliveryDelay,
		Concurrency:        inHand * w.cfg.Concurrency,
		Log:                log,
		Metrics:            m,
	}
	if w.cfg.Gate != nil {
		c.Gate = w.cfg.Gate
	}
	return c
}

// Handle decides what becomes of one job.
func (w *Worker) Handle(ctx context.Context, job message.Job, a bus.Attempt) bus.Outcome {
	if w.onlyDry && !job.DryRun {
		return bus.Snooze(notDryAgain, "a worker that only does dry runs leaves real jobs to others")
	}
	if p := job.Problem(); p != "" {
		return w.answer(ctx, job, a, message.StatusInvalid, p, false, nil)
	}
	ind, err := mapping.Map(job.Indicator.Type, job.Indicator.Value)
	if err != nil {
		return w.answer(ctx, job, a, message.StatusInvalid, err.Error(), false, nil)
	}
	level := w.cfg.ThreatLevel
	if job.ThreatLevel != "" {
		if level, err = mapping.ParseThreatLevel(job.ThreatLevel); err != nil {
			return w.answer(ctx, job, a, message.StatusInvalid, err.Error(), false, nil)
		}
	}
	source := w.cfg.ThreatSource
	if job.ThreatSource != "" {
		source = job.ThreatSource
	}
	if out, held := w.held(); held {
		return out
	}
	if job.DryRun {
		return w.dryRun(ctx, job, a, ind, level, source)
	}

	if out, ok := w.admit(ctx, job, a, job.RunID, ind,
		fmt.Sprintf("the run reached its limit of %d objects per run; this indicator was not sent to Triage", w.cfg.ObjectsPerRun)); !ok {
		return out
	}
	var (
		status message.Status
		found  *triage.Indicator
	)
	if out, ok := w.withTriage(ctx, "Triage call", func(ctx context.Context) error {
		var err error
		status, found, err = w.call(ctx, job, ind, level, source)
		return err
	}); !ok {
		return out
	}
	reason := ""
	if status == message.StatusNotFound {
		reason = "no Triage indicator of this type and value; run update with upsert to create it"
	}
	return w.answer(ctx, job, a, status, reason, true, found)
}

// admit claims ind in the cap of scope (the run, or its dry run's
// claims). ok false: the outcome instead, a skipped result saying refusal
// when the cap is reached, or the failure to decide.
func (w *Worker) admit(ctx context.Context, job message.Job, a bus.Attempt, scope string, ind mapping.Indicator, refusal string) (bus.Outcome, bool) {
	adm, err := w.claims.Claim(ctx, scope, bus.ClaimKey(ind.ThreatType, ind.ThreatValue), w.cfg.ObjectsPerRun)
	if err != nil {
		return bus.Err(fmt.Errorf("objects-per-run admission: %w", err)), false
	}
	if !adm.Admitted {
		return w.answer(ctx, job, a, message.StatusSkipped, refusal, false, nil), false
	}
	return bus.Outcome{}, true
}

// withTriage makes a job's Triage calls (what names them in the log):
// it holds one of the replica's places in Triage while it tries fn under
// the retry policy. ok false: the outcome instead, the job handed back or
// its failure (failure).
func (w *Worker) withTriage(ctx context.Context, what string, fn func(ctx context.Context) error) (bus.Outcome, bool) {
	release, out, ok := w.place(ctx)
	if !ok {
		return out, false
	}
	defer release()
	_, err := retry.Do(ctx, w.cfg.Retry, fn, func(err error, attempt int, wait time.Duration) {
		zerolog.Ctx(ctx).Info().Err(err).Int("try", attempt).Dur("wait", wait).Msg(what + " failed; trying again")
	})
	if err != nil {
		return w.failure(err), false
	}
	return bus.Outcome{}, true
}

// place waits for one of the replica's places in Triage (calls). ok
// false: the outcome instead, when the replica stops before one frees
// (handed back). A pause the gate began meanwhile is waited out by the
// Triage client before its request, as for the jobs already calling:
// putting the job off here would only deliver it again.
func (w *Worker) place(ctx context.Context) (release func(), out bus.Outcome, ok bool) {
	select {
	case w.calls <- struct{}{}:
	case <-ctx.Done():
		return nil, bus.Err(ctx.Err()), false
	}
	return func() { <-w.calls }, bus.Outcome{}, true
}

// GiveUp answers a job whose failure cannot pass, or whose deliveries ran
// out: a failed result, and the job dead-lettered for replay.
func (w *Worker) GiveUp(job message.Job, a bus.Attempt, reason string) bus.Outcome {
	r := message.NewResult(job, message.StatusFailed, reason)
	r.Attempts, r.AnsweredAt = a.N, answeredNow()
	pub, err := resultPublication(job, a, r)
	if err != nil {
		return bus.Err(err)
	}
	return bus.DeadLettered(message.DLQSubject(job.Action), job.RunID, reason, pub)
}

// answer is the outcome of a job that has its result. reached says
// whether the job reached Triage (a result's attempts are 0 when not).
func (w *Worker) answer(ctx context.Context, job message.Job, a bus.Attempt, status message.Status, reason string, reached bool, found *triage.Indicator) bus.Outcome {
	r := message.NewResult(job, status, reason)
	r.AnsweredAt = answeredNow()
	if reached {
		r.Attempts = a.N
	}
	if found != nil {
		r.Triage = triageView(found)
	}
	if found != nil && !job.DryRun { // a dry run writes nothing back
		switch status {
		case message.StatusCreated, message.StatusExists:
			r.Attributes = attributes(mapping.CreateAttributes(found.ID, found.ThreatLevel, found.ThreatSource))
		case message.StatusUpdated:
			r.Attributes = attributes(mapping.UpdateAttributes(found.ThreatLevel, found.ThreatSource))
		}
		if len(r.Attributes) > 0 {
			// What ThreatQ holds of them, so that write-back changes the
			// rows without listing them.
			r.ThreatQAttributes, r.ThreatQKnown = job.ThreatQAttributes, job.ThreatQKnown
		}
	}
	pub, err := resultPublication(job, a, r)
	if err != nil {
		return bus.Err(err)
	}
	logResult(zerolog.Ctx(ctx), r)
	return bus.Done(string(status), pub)
}

// resultPublication is the result of job on its run's subject. Its
// message id names the stored job message it answers, so that a
// redelivery's repeat is dropped while a replayed dead letter (a new
// message) gets an answer of its own.
func resultPublication(job message.Job, a bus.Attempt, r message.Result) (bus.Publication, error) {
	data, err := message.Encode(r)
	if err != nil {
		return bus.Publication{}, fmt.Errorf("encode result: %w", err)
	}
	return bus.Publication{Subject: message.ResultSubject(job.RunID), MsgID: message.ResultMsgID(r.RunID, r.Action, r.Indicator.ID, a.Seq), Data: data}, nil
}

// call makes one try of the job's Triage calls.
func (w *Worker) call(ctx context.Context, job message.Job, ind mapping.Indicator, level, source string) (message.Status, *triage.Indicator, error) {
	if job.Action == message.ActionCreate {
		return w.create(ctx, ind, level, source)
	}
	updated, err := w.update(ctx, job, ind, level, source)
	if errors.Is(err, triage.ErrNotFound) {
		if !job.Upsert {
			return message.StatusNotFound, nil, nil
		}
		return w.create(ctx, ind, level, source)
	}
	if err != nil {
		return "", nil, err
	}
	return message.StatusUpdated, updated, nil
}

// create creates the indicator, or finds it when Triage says it exists:
// running create twice is not an error (the seed's known failure). The one
// found is ours (of this source) when Triage keeps one indicator per
// source; when it keeps one per value, it is the one there, whatever its
// source, answered exists and left unchanged.
func (w *Worker) create(ctx context.Context, ind mapping.Indicator, level, source string) (message.Status, *triage.Indicator, error) {
	created, err := w.triage.CreateIndicator(ctx, triage.NewIndicator{ThreatLevel: level, ThreatType: ind.ThreatType, ThreatValue: ind.ThreatValue, ThreatSource: source})
	if err == nil {
		return message.StatusCreated, created, nil
	}
	if !errors.Is(err, triage.ErrDuplicate) {
		return "", nil, fmt.Errorf("create indicator: %w", err)
	}
	found, err := w.triage.FindIndicator(ctx, ind.ThreatType, ind.ThreatValue, source)
	if errors.Is(err, triage.ErrNotFound) {
		found, err = w.triage.FindIndicator(ctx, ind.ThreatType, ind.ThreatValue, "")
	}
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

// update sets the level and source of our Triage indicator of ind (ours);
// an error matching triage.ErrNotFound when there is none.
func (w *Worker) update(ctx context.Context, job message.Job, ind mapping.Indicator, level, source string) (*triage.Indicator, error) {
	found, _, err := w.ours(ctx, w.triage, job, ind, source)
	if err != nil {
		return nil, err
	}
	return w.put(ctx, found.ID, ind, level, source)
}

// ours finds, through r, our Triage indicator of ind: the one update
// writes to, and a dry run reads (dryrun.go). Ours is, in order:
//
//   - the indicator of the Triage id that ThreatQ holds for this one (its
//     ID attribute, written back at create), while it exists and is of
//     this type and value: read by id rather than looked up (byID);
//   - else the indicator of this type and value whose source is ours: the
//     job's source, the worker's configured one, or the one ThreatQ
//     recorded (the source an earlier update set).
//
// An indicator of another source is not looked for: where Triage keeps
// one per source, with only a foreign one present there is none of ours
// (an error matching triage.ErrNotFound). The id is read before it is
// written to because a job is input: its attributes must not be able to
// point an update at any indicator.
func (w *Worker) ours(ctx context.Context, r Reader, job message.Job, ind mapping.Indicator, source string) (found *triage.Indicator, byID bool, err error) {
	if id := knownTriageID(job); id != "" {
		got, err := r.GetIndicator(ctx, id)
		switch {
		case err == nil && got.ThreatType == ind.ThreatType && got.ThreatValue == ind.ThreatValue:
			return got, true, nil
		case err == nil:
			zerolog.Ctx(ctx).Warn().Str("triage_id", id).Msg("ThreatQ's ID attribute names a Triage indicator of another type or value; looking up this one's")
		case !errors.Is(err, triage.ErrNotFound):
			return nil, false, fmt.Errorf("get indicator %s: %w", id, err)
		}
	}
	sources := ourSources(source, w.cfg.ThreatSource, job.Attribute(mapping.AttrThreatSource))
	for _, src := range sources {
		found, err := r.FindIndicator(ctx, ind.ThreatType, ind.ThreatValue, src)
		if errors.Is(err, triage.ErrNotFound) {
			continue
		}
		if err != nil {
			return nil, false, fmt.Errorf("find indicator: %w", err)
		}
		return found, false, nil
	}
	return nil, false, &triage.Error{Kind: triage.KindNotFound, Method: "GET", Path: "/threat_indicators",
		Messages: []string{"no indicator of this type and value from " + strings.Join(sources, " or ")}}
}

// knownTriageID is the Triage id ThreatQ holds for the job's indicator, if
// it looks like one (a Triage id is a number; anything else is ignored).
func knownTriageID(job message.Job) string {
	id := job.Attribute(mapping.AttrID)
	if id == "" || len(id) > 20 || strings.Trim(id, "0123456789") != "" {
		return ""
	}
	return id
}

// put sets level and source of indicator id. When the change of source
// collides with an indicator of that source already there (Triage keeps
// one per source), that one is ours: its level is set instead.
func (w *Worker) put(ctx context.Context, id string, ind mapping.Indicator, level, source string) (*triage.Indicator, error) {
	updated, err := w.triage.UpdateIndicator(ctx, id, level, source)
	if !errors.Is(err, triage.ErrDuplicate) {
		if err != nil {
			return nil, fmt.Errorf("update indicator %s: %w", id, err)
		}
		return updated, nil
	}
	other, ferr := w.triage.FindIndicator(ctx, ind.ThreatType, ind.ThreatValue, source)
	if ferr != nil {
		return nil, fmt.Errorf("update indicator %s: %w; and looking up the one of source %q: %w", id, err, source, ferr)
	}
	if updated, err = w.triage.UpdateIndicator(ctx, other.ID, level, source); err != nil {
		return nil, fmt.Errorf("update indicator %s: %w", other.ID, err)
	}
	return updated, nil
}

// ourSources are the sources an indicator of ours may have, first the
// one this job sets, without repeats or blanks.
func ourSources(sources ...string) []string {
	var out []string
	for _, s := range sources {
		if s != "" && !slices.Contains(out, s) {
			out = append(out, s)
		}
	}
	return out
}

// answeredNow stamps a result with when it was answered: write-back
// applies the results of one ThreatQ indicator in this order
// (docs/flow.md).
func answeredNow() string { return time.Now().UTC().Format(message.AnsweredAtFormat) }

// retryable marks an error of the worker's own as worth another try.
type retryable struct{ error }

func (retryable) Retryable() bool { return true }
func (e retryable) Unwrap() error { return e.error }

func logResult(log *zerolog.Logger, r message.Result) {
	var ev *zerolog.Event
	switch r.Status {
	case message.StatusInvalid, message.StatusSkipped, message.StatusNotFound:
		ev = log.Info()
	default:
		ev = log.Debug()
	}
	if r.Reason != "" {
		ev = ev.Str("reason", r.Reason)
	}
	if r.Triage != nil {
		ev = ev.Str("triage_id", r.Triage.ID)
	}
	ev.Str("status", string(r.Status)).Msg("job done")
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
