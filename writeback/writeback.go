// Package writeback turns results into ThreatQ attributes: for each stored
// result with attributes, it sets them on the result's ThreatQ indicator,
// one value per name (package threatq does the list/change/add). Results
// without attributes (invalid, skipped, failed, not_found) write nothing.
//
// A ThreatQ outage delays write-back and loses nothing: a result is
// acknowledged only once its attributes are written, and redelivered with a
// growing delay until then, up to a bound after which it is dead-lettered on
// tqtriage.dlq.writeback for replay. It runs on its own consumer, so it
// never holds up the workers.
package writeback

import (
	"context"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/tqtriage/tqtriage/bus"
	"github.com/tqtriage/tqtriage/internal/retry"
	"github.com/tqtriage/tqtriage/message"
	"github.com/tqtriage/tqtriage/threatq"
)

// ThreatQ is what write-back needs of the ThreatQ client.
type ThreatQ interface {
	SetAttributes(ctx context.Context, indicatorID int64, attrs []threatq.Attribute) error
}

// Bus is what write-back needs of JetStream.
type Bus interface {
	DeadLetterMsg(ctx context.Context, subject, msgID string, data []byte, hdr nats.Header) error
}

// Config shapes write-back; zero values take the defaults noted.
type Config struct {
	// Retry is the policy within one delivery (default 3 attempts).
	Retry retry.Policy
	// RedeliveryDelay doubles per delivery up to MaxRedeliveryDelay
	// (defaults 2s and 1m) while ThreatQ cannot be written.
	RedeliveryDelay    time.Duration
	MaxRedeliveryDelay time.Duration
	// MaxDeliver bounds the deliveries of one result before it is
	// dead-lettered (default 2000: about 33 hours of outage at the
	// maximum delay).
	MaxDeliver int
}

func (c Config) withDefaults() Config {
	if c.Retry.MaxAttempts == 0 {
		c.Retry = retry.Policy{MaxAttempts: 3, InitialInterval: 250 * time.Millisecond, MaxInterval: 5 * time.Second, MaxRetryAfter: 20 * time.Second}
	}
	if c.RedeliveryDelay <= 0 {
		c.RedeliveryDelay = 2 * time.Second
	}
	if c.MaxRedeliveryDelay <= 0 {
		c.MaxRedeliveryDelay = time.Minute
	}
	if c.MaxDeliver <= 0 {
		c.MaxDeliver = 2000
	}
	return c
}

// Writer handles results; safe for concurrent use.
type Writer struct {
	cfg     Config
	tq      ThreatQ
	bus     Bus
	log     zerolog.Logger
	written *prometheus.CounterVec
}

// New returns a writer. The ThreatQ client should not retry by itself
// (retry.None): the writer retries and counts. reg may be nil.
func New(cfg Config, tq ThreatQ, b Bus, log zerolog.Logger, reg prometheus.Registerer) *Writer {
	w := &Writer{cfg: cfg.withDefaults(), tq: tq, bus: b, log: log}
	w.written = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "tqtriage_writeback_total", Help: "Results handled by write-back, by outcome.",
	}, []string{"outcome"})
	if reg != nil {
		reg.MustRegister(w.written)
	}
	return w
}

// Handle writes one result's attributes and settles its message.
func (w *Writer) Handle(ctx context.Context, m jetstream.Msg) {
	md, err := m.Metadata()
	if err != nil {
		w.log.Error().Err(err).Msg("result without JetStream metadata ignored")
		return
	}
	deliveries := int(md.NumDelivered)
	log := w.log.With().Uint64("result_seq", md.Sequence.Stream).Int("attempt", deliveries).Logger()

	r, err := message.ParseResult(m.Data())
	if err != nil {
		w.deadLetter(ctx, m, md, "", err.Error(), log)
		return
	}
	log = log.With().Str("run", r.RunID).Str("action", r.Action).Int64("indicator", r.Indicator.ID).Logger()
	if len(r.Attributes) == 0 {
		w.ack(m, log)
		w.written.WithLabelValues("nothing").Inc()
		return
	}
	if r.Indicator.ID <= 0 {
		w.deadLetter(ctx, m, md, r.RunID, "the result names no ThreatQ indicator id", log)
		return
	}
	attrs := make([]threatq.Attribute, len(r.Attributes))
	for i, a := range r.Attributes {
		attrs[i] = threatq.Attribute{Name: a.Name, Value: a.Value}
	}
	_, err = retry.Do(ctx, w.cfg.Retry, func(ctx context.Context) error {
		return w.tq.SetAttributes(ctx, r.Indicator.ID, attrs)
	}, func(err error, attempt int, wait time.Duration) {
		log.Info().Err(err).Int("try", attempt).Dur("wait", wait).Msg("ThreatQ write failed; trying again")
	})
	switch {
	case err == nil:
		w.ack(m, log)
		w.written.WithLabelValues("written").Inc()
		log.Debug().Int("attributes", len(attrs)).Msg("attributes written")
	case ctx.Err() != nil:
		_ = m.Nak()
	case retry.IsRetryable(err) && deliveries < w.cfg.MaxDeliver:
		d := w.delay(deliveries)
		if after, ok := retry.RetryAfter(err); ok && after > d {
			d = after
		}
		log.Warn().Err(err).Dur("redeliver_in", d).Msg("ThreatQ write failed; the result will be delivered again")
		_ = m.NakWithDelay(d)
		w.written.WithLabelValues("redelivered").Inc()
	default:
		reason := err.Error()
		if retry.IsRetryable(err) {
			reason = fmt.Sprintf("gave up after %d deliveries: %s", deliveries, reason)
		}
		w.deadLetter(ctx, m, md, r.RunID, reason, log)
	}
}

func (w *Writer) delay(deliveries int) time.Duration {
	return retry.Doubling(w.cfg.RedeliveryDelay, w.cfg.MaxRedeliveryDelay, deliveries)
}

func (w *Writer) ack(m jetstream.Msg, log zerolog.Logger) {
	if err := m.Ack(); err != nil {
		log.Warn().Err(err).Msg("could not acknowledge a result; writing it again is harmless")
	}
}

// deadLetter stores the result on tqtriage.dlq.writeback, then
// acknowledges it; if the dead letter cannot be stored, the result stays.
func (w *Writer) deadLetter(ctx context.Context, m jetstream.Msg, md *jetstream.MsgMetadata, runID, reason string, log zerolog.Logger) {
	h := bus.DeadLetterHeader(m, md, runID, reason)
	id := bus.DeadLetterID(md)
	if err := w.bus.DeadLetterMsg(ctx, message.DLQWriteback, id, m.Data(), h); err != nil {
		log.Error().Err(err).Msg("could not dead-letter a write-back; the result will be delivered again")
		_ = m.NakWithDelay(w.delay(int(md.NumDelivered)))
		return
	}
	w.ack(m, log)
	w.written.WithLabelValues("dead_lettered").Inc()
	log.Error().Str("reason", reason).Msg("write-back dead-lettered")
}
