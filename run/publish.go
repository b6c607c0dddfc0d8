package run

import (
	"context"
	"errors"
	"fmt"
	"iter"
	"time"

	"github.com/rs/zerolog"

	"github.com/tqtriage/tqtriage/bus"
	"github.com/tqtriage/tqtriage/message"
)

// DefaultMaxInFlight bounds the jobs sent but not yet acknowledged.
const DefaultMaxInFlight = 1024

// Options describe one run.
type Options struct {
	ID     string         // default: a new id; give an earlier one to resume its publishing
	Action message.Action // create or update
	Upsert bool           // update: create what is absent
	// DryRun publishes jobs that ask what they would do, on
	// message.DryRunJobSubject: workers read Triage and write nothing.
	DryRun bool
	// ThreatLevel and ThreatSource, when set, go in every job; empty ones
	// leave the choice to the workers' configuration.
	ThreatLevel, ThreatSource string
	Source, SourceName        string // for the record: "collection <hash>", its name
	// MaxInFlight bounds the jobs sent but not yet acknowledged (default
	// DefaultMaxInFlight).
	MaxInFlight int
	// Ahead, with Answered (how many of the run's jobs have a result so
	// far), keeps publishing at most Ahead jobs ahead of the answers: a
	// run worked in the same process then holds a bounded queue, not the
	// whole collection. 0: no bound (the queue is the point of a
	// publisher of its own).
	Ahead    int
	Answered func() int64
	// Latency, when set, samples when jobs are sent (a Follow beside or
	// after it, given the same one, notes when they are answered).
	Latency *Latency
}

// Item is one indicator from a source, or an error about one (Skip) or
// about the source (not Skip: publishing stops).
type Item struct {
	Indicator message.Indicator
	// Attributes are what ThreatQ holds already of the attributes
	// tqtriage writes (the job's threatq_attributes); Known says the source
	// read them (then none is an answer, not a silence).
	Attributes []message.Attribute
	Known      bool
	Err        error
	Skip       bool // Err concerns this item only; go on
}

// Publish sends the jobs of one run, one per indicator on
// tqtriage.jobs.<action> with the contract's Nats-Msg-Id, and records it.
// It holds nothing per indicator: the stream's duplicate window, not a set
// in memory, keeps a run to one job per indicator. It returns the run as
// recorded: Total jobs stored, Rejected items (bad lines, repeated
// indicators). On an error the run is recorded with what was sent and the
// error, and the error is returned.
func Publish(ctx context.Context, b Bus, o Options, items iter.Seq[Item], log zerolog.Logger) (Record, error) {
	rec, base, err := begin(ctx, b, &o)
	if err != nil {
		return rec, err
	}
	log = log.With().Str("run", rec.ID).Str("action", string(rec.Action)).Logger()
	log.Info().Str("source", o.Source).Str("source_name", o.SourceName).Msg("publishing run")

	acks := newAckCollector(ctx, b, o.MaxInFlight)
	sent := send(ctx, b, o, rec.ID, base.MaxSeq, items, acks, log)
	stored, dups, pubErr := acks.wait()

	now := time.Now().UTC()
	// Repeats of jobs the run had before resuming are not rejections.
	dups = max(0, dups-base.Total)
	rec.Total, rec.MaxSeq, rec.Rejected, rec.EndedAt = base.Total+stored, sent.seq, base.Rejected+sent.rejected+dups, &now
	rec.Published = true
	err = errors.Join(sent.err, pubErr)
	if err != nil {
		rec.Error = err.Error()
	}
	if perr := put(context.WithoutCancel(ctx), b, rec); perr != nil {
		err = errors.Join(err, perr)
	}
	ev := log.Info()
	if err != nil {
		ev = log.Error().Err(err)
	}
	ev.Int64("jobs", stored).Int64("repeated", dups).Int64("rejected", sent.rejected).Msg("run published")
	return rec, err
}

// begin checks o and records the run as started. Resuming a run: the jobs
// it already has are dropped as repeats by the stream; new ones are
// numbered after them and added to its total (base).
func begin(ctx context.Context, b Bus, o *Options) (rec, base Record, err error) {
	if _, err := message.ParseAction(string(o.Action)); err != nil {
		return rec, base, fmt.Errorf("publish: %w", err)
	}
	if o.ID == "" {
		o.ID = NewID(time.Now())
	}
	if err := message.CheckRunID(o.ID); err != nil {
		return rec, base, fmt.Errorf("publish: %w", err)
	}
	if o.MaxInFlight <= 0 {
		o.MaxInFlight = DefaultMaxInFlight
	}
	rec = Record{ID: o.ID, Action: o.Action, Source: o.Source, SourceName: o.SourceName, Upsert: o.Upsert, DryRun: o.DryRun, StartedAt: time.Now().UTC()}
	switch prev, err := Get(ctx, b, o.ID); {
	case err == nil:
		if prev.Action != o.Action {
			return prev, base, fmt.Errorf("publish: run %s is a %s run; cannot resume it as %s", o.ID, prev.Action, o.Action)
		}
		if prev.DryRun != o.DryRun {
			// Its jobs' message ids would drop the other kind's as
			// repeats, and its results would be counted as theirs.
			return prev, base, fmt.Errorf("publish: run %s is %s; cannot resume it as %s", o.ID, dryWord(prev.DryRun), dryWord(o.DryRun))
		}
		base = prev
		rec.StartedAt = prev.StartedAt
	case !errors.Is(err, ErrNotFound):
		return rec, base, err
	}
	rec.Total, rec.MaxSeq = base.Total, base.MaxSeq
	return rec, base, put(ctx, b, rec)
}

// sendResult is what send got through.
type sendResult struct {
	seq      int64 // the last seq given
	rejected int64
	err      error // the source's, or a send that could not be made
}

// send publishes a job per item, numbering them after seq.
func send(ctx context.Context, b Bus, o Options, runID string, seq int64, items iter.Seq[Item], acks *ackCollector, log zerolog.Logger) sendResult {
	defer acks.close()
	res := sendResult{seq: seq}
	subject := message.JobSubject(o.Action)
	if o.DryRun {
		subject = message.DryRunJobSubject(o.Action)
	}
	for it := range items {
		if err := waitAhead(ctx, o, res.seq-seq); err != nil {
			res.err = err
			break
		}
		if it.Err != nil {
			if !it.Skip {
				res.err = it.Err
				break
			}
			res.rejected++
			log.Warn().Err(it.Err).Msg("input skipped")
			continue
		}
		if why := overLimit(it.Indicator); why != "" {
			res.rejected++
			log.Warn().Int64("indicator", it.Indicator.ID).Str("reason", why).Msg("input skipped")
			continue
		}
		res.seq++
		job := message.Job{
			V: message.Version, RunID: runID, Action: o.Action, Seq: res.seq,
			Indicator:   it.Indicator,
			ThreatLevel: o.ThreatLevel, ThreatSource: o.ThreatSource, Upsert: o.Upsert,
			ReplyTo:           message.ResultSubject(runID),
			ThreatQAttributes: it.Attributes, ThreatQKnown: it.Known,
			DryRun: o.DryRun,
		}
		data, err := message.Encode(job)
		if err != nil {
			res.err = err
			break
		}
		p := bus.Publication{Subject: subject, MsgID: message.MsgID(runID, o.Action, it.Indicator.ID), Data: data}
		f, err := b.PublishAsync(p)
		if err != nil {
			// Too many stalled, or the connection is gone for now:
			// send this one synchronously (that also waits out a stall).
			ack, err := resend(ctx, b, p)
			if err != nil {
				res.err = err
				break
			}
			f = doneFuture{ack}
		}
		acks.add(p, f)
		o.Latency.Sent(res.seq, time.Now())
	}
	return res
}

// waitAhead waits while sent jobs are more than o.Ahead beyond the
// answered ones.
func waitAhead(ctx context.Context, o Options, sent int64) error {
	for o.Ahead > 0 && o.Answered != nil && sent-o.Answered() > int64(o.Ahead) {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(2 * time.Millisecond):
		}
	}
	return ctx.Err()
}

// overLimit says why an indicator cannot become a job: no worker would
// take a value or type longer than a job may carry.
func overLimit(in message.Indicator) string {
	switch {
	case len(in.Value) > message.MaxValueBytes:
		return fmt.Sprintf("the value is %d bytes long; at most %d are accepted", len(in.Value), message.MaxValueBytes)
	case len(in.Type) > message.MaxTypeBytes:
		return fmt.Sprintf("the type is %d bytes long; at most %d are accepted", len(in.Type), message.MaxTypeBytes)
	}
	return ""
}

// ackCollector checks every future, in order, in one goroutine: a job
// counts only once the stream has acknowledged it, and a failed send is
// sent again (synchronously, with the same Nats-Msg-Id, so a repeat is
// harmless). Its channel bounds the jobs in flight.
type ackCollector struct {
	inflight     chan pending
	done         chan struct{}
	stored, dups int64
	err          error
}

type pending struct {
	p bus.Publication
	f bus.Future
}

func newAckCollector(ctx context.Context, b Bus, maxInFlight int) *ackCollector {
	c := &ackCollector{inflight: make(chan pending, maxInFlight), done: make(chan struct{})}
	go func() {
		defer close(c.done)
		for s := range c.inflight {
			ack, err := s.f.Wait(ctx)
			if err != nil {
				if c.err != nil {
					continue
				}
				if ack, err = resend(ctx, b, s.p); err != nil {
					c.err = err
					continue
				}
			}
			if ack.Duplicate {
				c.dups++
			} else {
				c.stored++
			}
		}
	}()
	return c
}

func (c *ackCollector) add(p bus.Publication, f bus.Future) { c.inflight <- pending{p, f} }
func (c *ackCollector) close()                              { close(c.inflight) }

// wait returns the jobs stored, the repeats dropped, and the first send
// that failed for good.
func (c *ackCollector) wait() (stored, dups int64, err error) {
	<-c.done
	return c.stored, c.dups, c.err
}

func resend(ctx context.Context, b Bus, p bus.Publication) (bus.PubAck, error) {
	var err error
	for attempt := 0; attempt < 5; attempt++ {
		var ack bus.PubAck
		if ack, err = b.Publish(ctx, p); err == nil {
			return ack, nil
		}
		select {
		case <-ctx.Done():
			return bus.PubAck{}, ctx.Err()
		case <-time.After(time.Duration(attempt+1) * 500 * time.Millisecond):
		}
	}
	return bus.PubAck{}, fmt.Errorf("publish job %s: %w", p.MsgID, err)
}

// doneFuture is a Future that has already succeeded.
type doneFuture struct{ ack bus.PubAck }

func (d doneFuture) Wait(context.Context) (bus.PubAck, error) { return d.ack, nil }

func dryWord(dry bool) string {
	if dry {
		return "a dry run"
	}
	return "a real run"
}
