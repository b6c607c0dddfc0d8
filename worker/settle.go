package worker

import (
	"context"
	"encoding/json"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/tqtriage/tqtriage/bus"
	"github.com/tqtriage/tqtriage/message"
)

// settle carries out an outcome. It is the only place that acknowledges,
// delays or hands back a job; the order is what keeps the promise "exactly
// one result per job, nothing lost": a dead letter is stored before the
// failed result, the result is stored before the job is acknowledged, and
// whatever cannot be stored leaves the job unacknowledged for another try.
func (w *Worker) settle(ctx context.Context, m jetstream.Msg, md *jetstream.MsgMetadata, job message.Job, out outcome, log zerolog.Logger) {
	switch {
	case out.handBack:
		_ = m.Nak()
		return
	case out.result == nil:
		if err := m.NakWithDelay(out.retryAfter); err != nil {
			log.Warn().Err(err).Msg("could not delay the job; it returns after the ack wait")
		}
		return
	}
	r := out.result
	if out.deadLetter != "" {
		hdr := bus.DeadLetterHeader(m, md, job.RunID, out.deadLetter)
		if err := w.bus.DeadLetterMsg(ctx, message.DLQSubject(job.Action), bus.DeadLetterID(md), m.Data(), hdr); err != nil {
			log.Error().Err(err).Msg("could not store the dead letter; the job will be delivered again")
			_ = m.NakWithDelay(w.redeliveryDelay(int(md.NumDelivered)))
			return
		}
	}
	data, err := json.Marshal(r)
	if err != nil { // cannot happen with these types; never lose the job over it
		log.Error().Err(err).Msg("could not encode the result")
		_ = m.NakWithDelay(w.redeliveryDelay(int(md.NumDelivered)))
		return
	}
	msgID := m.Headers().Get(jetstream.MsgIDHeader)
	if msgID == "" {
		msgID = message.MsgID(job.RunID, job.Action, job.Indicator.ID)
	}
	f, err := w.bus.PublishAsync(job.ReplyTo, msgID, data, nil)
	if err != nil {
		log.Error().Err(err).Msg("could not publish the result; the job will be delivered again")
		_ = m.NakWithDelay(time.Second)
		return
	}
	logResult(log, r, out.deadLetter != "")
	// The job's slot is free now; its acknowledgement waits for the
	// result's, off the slot (NATS.md: this is worth ~10% of throughput).
	w.pending.Add(1)
	go func() {
		defer w.pending.Done()
		select {
		case <-f.Ok():
			if err := m.Ack(); err != nil {
				log.Warn().Err(err).Msg("could not acknowledge the job; a redelivery will repeat its stored result harmlessly")
			}
		case err := <-f.Err():
			log.Error().Err(err).Msg("the result was not stored; the job will be delivered again")
			_ = m.NakWithDelay(time.Second)
		}
	}()
}

func logResult(log zerolog.Logger, r *message.Result, deadLettered bool) {
	var ev *zerolog.Event
	switch r.Status {
	case message.StatusFailed:
		ev = log.Error()
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
	ev.Str("status", string(r.Status)).Bool("dead_lettered", deadLettered).Msg("job done")
}

// deadLetterUnparseable stores a job that cannot be read on
// tqtriage.dlq.invalid, raw bytes and reason, then acknowledges it: it is
// never retried, and never dropped silently.
func (w *Worker) deadLetterUnparseable(ctx context.Context, m jetstream.Msg, md *jetstream.MsgMetadata, perr error, log zerolog.Logger) {
	hdr := bus.DeadLetterHeader(m, md, "", perr.Error())
	if err := w.bus.DeadLetterMsg(ctx, message.DLQInvalid, bus.DeadLetterID(md), m.Data(), hdr); err != nil {
		log.Error().Err(err).Msg("could not store an unparseable job as a dead letter; it will be delivered again")
		_ = m.NakWithDelay(w.redeliveryDelay(int(md.NumDelivered)))
		return
	}
	if err := m.Ack(); err != nil {
		log.Warn().Err(err).Msg("could not acknowledge an unparseable job after dead-lettering it")
	}
	log.Warn().Str("reason", perr.Error()).Str("subject", m.Subject()).Msg("unparseable job dead-lettered")
	if w.metrics != nil {
		w.metrics.deadLetters.WithLabelValues(message.DLQInvalid).Inc()
	}
}

// heartbeat tells the server a job is still being worked on, every
// interval, until stopped.
type heartbeat struct {
	mu      sync.Mutex
	t       *time.Timer
	stopped bool
}

func newHeartbeat(m jetstream.Msg, every time.Duration) *heartbeat {
	h := &heartbeat{}
	h.t = time.AfterFunc(every, func() {
		_ = m.InProgress()
		h.mu.Lock()
		defer h.mu.Unlock()
		if !h.stopped {
			h.t.Reset(every)
		}
	})
	return h
}

func (h *heartbeat) stop() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.stopped = true
	h.t.Stop()
}
