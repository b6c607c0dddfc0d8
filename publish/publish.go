// Package publish turns a collection into a run: one job per distinct
// indicator on tqtriage.jobs.<action>, with the contract's Nats-Msg-Id, sent
// asynchronously with a bounded number awaiting acknowledgement, and the run
// recorded where `status` finds it. Wait follows a run's results until every
// job has one.
//
// Indicators come from any iterator: the ThreatQ client's collection
// reader, or an export file. The publisher holds nothing per indicator: the
// stream's duplicate window, not a set in memory, keeps a run to one job
// per indicator.
package publish

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"iter"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/tqtriage/tqtriage/bus"
	"github.com/tqtriage/tqtriage/message"
)

// Bus is what the publisher needs of JetStream.
type Bus interface {
	PublishAsync(subject, msgID string, data []byte, hdr nats.Header) (jetstream.PubAckFuture, error)
	Publish(ctx context.Context, subject, msgID string, data []byte, hdr nats.Header) (*jetstream.PubAck, error)
	PutRun(ctx context.Context, r bus.Run) error
	GetRun(ctx context.Context, id string) (bus.Run, error)
}

// Options describe one run.
type Options struct {
	RunID  string // default: a new id; give an earlier one to resume its publishing
	Action string // create or update
	Upsert bool   // update: create what is absent
	// ThreatLevel and ThreatSource, when set, go in every job; empty ones
	// leave the choice to the workers' configuration.
	ThreatLevel, ThreatSource string
	Source, SourceName        string // for the run record: "collection <hash>", its name
	// MaxInFlight bounds the jobs sent but not yet acknowledged (default 1024).
	MaxInFlight int
}

// Item is one indicator from a source, or an error about one (Skip) or
// about the source (not Skip: publishing stops).
type Item struct {
	Indicator message.Indicator
	Err       error
	Skip      bool // Err concerns this item only; go on
}

// NewRunID returns a run id: sortable by time, unique by its random part.
func NewRunID(now time.Time) string {
	var b [4]byte
	_, _ = rand.Read(b[:])
	return now.UTC().Format("20060102T150405") + "-" + hex.EncodeToString(b[:])
}

// Publish sends the jobs of one run and records it. It returns the run as
// recorded: Total jobs stored, Rejected items (bad lines, repeated
// indicators). On an error the run is recorded with what was sent and the
// error, and the error is returned.
func Publish(ctx context.Context, b Bus, o Options, items iter.Seq[Item], log zerolog.Logger) (bus.Run, error) {
	if o.Action != message.ActionCreate && o.Action != message.ActionUpdate {
		return bus.Run{}, fmt.Errorf("publish: action %q: want create or update", o.Action)
	}
	if o.RunID == "" {
		o.RunID = NewRunID(time.Now())
	}
	if !message.ValidRunID(o.RunID) {
		return bus.Run{}, fmt.Errorf("publish: run id %q: want 1 to 64 letters, digits, '-' or '_'", o.RunID)
	}
	if o.MaxInFlight <= 0 {
		o.MaxInFlight = 1024
	}
	run := bus.Run{ID: o.RunID, Action: o.Action, Source: o.Source, SourceName: o.SourceName, Upsert: o.Upsert, StartedAt: time.Now().UTC()}
	// Resuming a run: the jobs it already has are dropped as repeats by
	// the stream; new ones are numbered after them and added to its total.
	var base bus.Run
	if prev, err := b.GetRun(ctx, o.RunID); err == nil {
		if prev.Action != o.Action {
			return prev, fmt.Errorf("publish: run %s is a %s run; cannot resume it as %s", o.RunID, prev.Action, o.Action)
		}
		base = prev
		run.StartedAt = prev.StartedAt
	} else if !errors.Is(err, bus.ErrRunNotFound) {
		return run, err
	}
	run.Total, run.MaxSeq = base.Total, base.MaxSeq
	if err := b.PutRun(ctx, run); err != nil {
		return run, err
	}
	log = log.With().Str("run", run.ID).Str("action", run.Action).Logger()
	log.Info().Str("source", o.Source).Str("source_name", o.SourceName).Msg("publishing run")

	subject := message.JobSubject(o.Action)
	type sent struct {
		f     jetstream.PubAckFuture
		msgID string
		data  []byte
	}
	inflight := make(chan sent, o.MaxInFlight)
	var stored, dups int64
	collectErr := make(chan error, 1)
	// One goroutine checks every future, in order: a job counts only once
	// the stream has acknowledged it, and a failed send is sent again
	// (synchronously, with the same Nats-Msg-Id, so a repeat is harmless).
	go func() {
		var firstErr error
		for s := range inflight {
			var ack *jetstream.PubAck
			select {
			case ack = <-s.f.Ok():
			case err := <-s.f.Err():
				if firstErr == nil {
					ack, err = resend(ctx, b, subject, s.msgID, s.data)
					if err != nil {
						firstErr = err
					}
				}
			}
			switch {
			case ack == nil:
			case ack.Duplicate:
				dups++
			default:
				stored++
			}
		}
		collectErr <- firstErr
	}()

	var (
		seq      = base.MaxSeq
		rejected int64
		srcErr   error
	)
	for it := range items {
		if ctx.Err() != nil {
			srcErr = ctx.Err()
			break
		}
		if it.Err != nil {
			if !it.Skip {
				srcErr = it.Err
				break
			}
			rejected++
			log.Warn().Err(it.Err).Msg("input skipped")
			continue
		}
		seq++
		job := message.Job{
			V: message.Version, RunID: run.ID, Action: o.Action, Seq: seq,
			Indicator:   it.Indicator,
			ThreatLevel: o.ThreatLevel, ThreatSource: o.ThreatSource, Upsert: o.Upsert,
			ReplyTo: message.ResultSubject(run.ID),
		}
		data, err := json.Marshal(job)
		if err != nil {
			srcErr = err
			break
		}
		msgID := message.MsgID(run.ID, o.Action, it.Indicator.ID)
		f, err := b.PublishAsync(subject, msgID, data, nil)
		if err != nil {
			// Too many stalled, or the connection is gone for now:
			// send this one synchronously (that also waits out a stall).
			ack, err := resend(ctx, b, subject, msgID, data)
			if err != nil {
				srcErr = err
				break
			}
			f = doneFuture{ack}
		}
		inflight <- sent{f, msgID, data}
	}
	close(inflight)
	pubErr := <-collectErr

	now := time.Now().UTC()
	// Repeats of jobs the run had before resuming are not rejections.
	dups = max(0, dups-base.Total)
	run.Total, run.MaxSeq, run.Rejected, run.EndedAt = base.Total+stored, seq, base.Rejected+rejected+dups, &now
	run.Published = true
	err := errors.Join(srcErr, pubErr)
	if err != nil {
		run.Error = err.Error()
	}
	if perr := b.PutRun(context.WithoutCancel(ctx), run); perr != nil {
		err = errors.Join(err, perr)
	}
	ev := log.Info()
	if err != nil {
		ev = log.Error().Err(err)
	}
	ev.Int64("jobs", stored).Int64("repeated", dups).Int64("rejected", rejected).Msg("run published")
	return run, err
}

func resend(ctx context.Context, b Bus, subject, msgID string, data []byte) (*jetstream.PubAck, error) {
	var err error
	for attempt := 0; attempt < 5; attempt++ {
		var ack *jetstream.PubAck
		if ack, err = b.Publish(ctx, subject, msgID, data, nil); err == nil {
			return ack, nil
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(time.Duration(attempt+1) * 500 * time.Millisecond):
		}
	}
	return nil, fmt.Errorf("publish job %s: %w", msgID, err)
}

// doneFuture is a PubAckFuture that has already succeeded.
type doneFuture struct{ ack *jetstream.PubAck }

func (d doneFuture) Ok() <-chan *jetstream.PubAck {
	c := make(chan *jetstream.PubAck, 1)
	c <- d.ack
	return c
}
func (d doneFuture) Err() <-chan error { return make(chan error) }
func (d doneFuture) Msg() *nats.Msg    { return nil }
