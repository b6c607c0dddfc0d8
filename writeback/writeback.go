// Package writeback turns results into ThreatQ attributes: for each stored
// result with attributes, it sets them on the result's ThreatQ indicator,
// one value per name (package threatq does the list/change/add). Results
// without attributes (invalid, skipped, failed, not_found) and a dry run's
// results write nothing.
// Every result it settles gets a receipt (message.Receipt), by which a run
// knows that it is written back.
//
// A ThreatQ outage delays write-back and loses nothing: the executor in
// package bus redelivers a result with a growing delay until it is written,
// up to a bound after which it is dead-lettered on tqtriage.dlq.writeback
// for replay. Refused credentials and 429s are the replica's condition:
// the result is put off without counting and the replica's gate holds its
// work (gate.go). It runs on its own consumer, so it never holds up the
// workers.
package writeback

import (
	"context"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"

	"github.com/tqtriage/tqtriage/bus"
	"github.com/tqtriage/tqtriage/internal/gate"
	"github.com/tqtriage/tqtriage/internal/retry"
	"github.com/tqtriage/tqtriage/message"
	"github.com/tqtriage/tqtriage/threatq"
)

// ThreatQ is what write-back needs of the ThreatQ client.
type ThreatQ interface {
	SetAttributes(ctx context.Context, indicatorID int64, attrs []threatq.Attribute) error
	// SetAttributesKnown is SetAttributes with the rows as a run read
	// them, instead of listing them first.
	SetAttributesKnown(ctx context.Context, indicatorID int64, attrs []threatq.Attribute, rows []threatq.AttributeRow) error
}

// DefaultConcurrency is the number of results written at once.
const DefaultConcurrency = 8

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
	// Concurrency is the number of results at once (default DefaultConcurrency).
	Concurrency int
	// OnlyDryRuns: this writer settles dry runs' results alone (`run
	// --dry-run`, whose ThreatQ client is read-only); a real result is
	// snoozed for another writer.
	OnlyDryRuns bool
	// MaxPause bounds how long a 429 puts results off and pauses the
	// replica (default DefaultMaxPause).
	MaxPause time.Duration
	// Gate, when set, holds the replica's work while ThreatQ refuses its
	// credentials or has asked it to pause (internal/gate).
	Gate *gate.Gate
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
	if c.Concurrency <= 0 {
		c.Concurrency = DefaultConcurrency
	}
	if c.MaxPause <= 0 {
		c.MaxPause = DefaultMaxPause
	}
	return c
}

// Writer handles results; safe for concurrent use.
type Writer struct {
	cfg Config
	tq  ThreatQ
	ord atomic.Pointer[ordering] // nil: no order kept (see KeepOrder)
}

// New returns a writer. The ThreatQ client should not retry by itself
// (retry.None): the writer retries and counts.
func New(cfg Config, tq ThreatQ) *Writer {
	return &Writer{cfg: cfg.withDefaults(), tq: tq}
}

// Consumer is the writer on the results consumer, for bus.Serve.
func (w *Writer) Consumer(log zerolog.Logger, m *bus.Metrics) bus.Consumer[message.Result] {
	c := bus.Consumer[message.Result]{
		Durable:     bus.ConsumerWriteback,
		Decode:      func(_ string, data []byte) (message.Result, error) { return message.ParseResult(data) },
		Undecodable: message.DLQWriteback,
		Handle:      w.Handle,
		GiveUp:      w.GiveUp,
		LogFields: func(r message.Result, c zerolog.Context) zerolog.Context {
			return c.Str("run", r.RunID).Str("action", string(r.Action)).Int64("indicator", r.Indicator.ID)
		},
		MaxDeliver:         w.cfg.MaxDeliver,
		RedeliveryDelay:    w.cfg.RedeliveryDelay,
		MaxRedeliveryDelay: w.cfg.MaxRedeliveryDelay,
		Concurrency:        w.cfg.Concurrency,
		Log:                log,
		Metrics:            m,
	}
	if w.cfg.Gate != nil {
		c.Gate = w.cfg.Gate
	}
	return c
}

// Handle writes one result's attributes.
func (w *Writer) Handle(ctx context.Context, r message.Result, a bus.Attempt) bus.Outcome {
	if r.DryRun {
		// What a dry run would do is not written anywhere; the receipt
		// lets its run complete.
		return bus.Done("dry_run", receipt(r, a, message.ReceiptNothing, ""))
	}
	if w.cfg.OnlyDryRuns {
		return bus.Snooze(15*time.Second, "a write-back that only settles dry runs leaves real results to others")
	}
	if len(r.Attributes) == 0 {
		return bus.Done("nothing", receipt(r, a, message.ReceiptNothing, ""))
	}
	if r.Indicator.ID <= 0 {
		return w.GiveUp(r, a, "the result names no ThreatQ indicator id")
	}
	if out, held := w.held(); held {
		return out
	}
	attrs := make([]threatq.Attribute, len(r.Attributes))
	for i, at := range r.Attributes {
		attrs[i] = threatq.Attribute{Name: at.Name, Value: at.Value}
	}
	// Older than what a later result wrote: leave it (order.go).
	attrs, kept, written, release, stop := w.inOrder(ctx, r, a, attrs)
	if stop != nil {
		return *stop
	}
	defer release()
	rows, known := knownRows(r, written)
	_, err := retry.Do(ctx, w.cfg.Retry, func(ctx context.Context) error {
		if known {
			return w.tq.SetAttributesKnown(ctx, r.Indicator.ID, attrs, rows)
		}
		return w.tq.SetAttributes(ctx, r.Indicator.ID, attrs)
	}, func(err error, attempt int, wait time.Duration) {
		zerolog.Ctx(ctx).Info().Err(err).Int("try", attempt).Dur("wait", wait).Msg("ThreatQ write failed; trying again")
	})
	if err != nil {
		return w.failure(err)
	}
	zerolog.Ctx(ctx).Debug().Int("attributes", len(attrs)).Msg("attributes written")
	return bus.Done("written", receipt(r, a, message.ReceiptWritten, kept))
}

// knownRows are the rows ThreatQ held of the attributes to write, as the
// run read them, when they can be believed: read at all, and showing every
// attribute an earlier result of this indicator wrote (one written after
// the read, by a run that overlapped, would be missing: then the rows are
// listed again rather than a second row added).
func knownRows(r message.Result, written []string) ([]threatq.AttributeRow, bool) {
	if !r.ThreatQKnown {
		return nil, false
	}
	rows := make([]threatq.AttributeRow, 0, len(r.ThreatQAttributes))
	have := make(map[string]bool, len(r.ThreatQAttributes))
	for _, a := range r.ThreatQAttributes {
		if a.ID <= 0 {
			return nil, false
		}
		rows = append(rows, threatq.AttributeRow{ID: a.ID, Name: a.Name, Value: a.Value})
		have[a.Name] = true
	}
	for _, name := range written {
		if !have[name] {
			return nil, false
		}
	}
	return rows, true
}

// GiveUp dead-letters a result that could not be written, for replay.
func (w *Writer) GiveUp(r message.Result, a bus.Attempt, reason string) bus.Outcome {
	return bus.DeadLettered(message.DLQWriteback, r.RunID, reason, receipt(r, a, message.ReceiptDeadLettered, reason))
}

// receipt tells the result's run that write-back settled it.
func receipt(r message.Result, a bus.Attempt, outcome message.ReceiptOutcome, reason string) bus.Publication {
	data, _ := message.Encode(message.Receipt{ // plain strings and numbers: cannot fail
		V: message.Version, RunID: r.RunID, Seq: r.Seq, Indicator: r.Indicator.ID,
		Result: a.Seq, Outcome: outcome, Reason: reason,
	})
	return bus.Publication{Subject: message.ReceiptSubject(r.RunID), MsgID: message.ReceiptMsgID(a.Seq), Data: data}
}
