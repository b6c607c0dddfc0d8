package bus

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
	"unicode"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tqtriage/tqtriage/internal/termsafe"
	"github.com/tqtriage/tqtriage/message"
)

// DeadLetter is one message of the dead-letter stream. Its fields come
// from its headers, which are input like any other: replay checks them.
type DeadLetter struct {
	Seq     uint64 // stream sequence: the handle for replay and delete
	Subject string // tqtriage.dlq.<action|invalid|writeback>
	Time    time.Time
	Reason  string // why it was dead-lettered
	Source  string // the subject it was consumed from
	RunID   string // its run, when known
	// Deliveries is how often it had been delivered, as recorded.
	Deliveries string
	MsgID      string // the original message's Nats-Msg-Id
	// Truncated: Data is the start of a message too large to keep whole.
	Truncated bool
	Data      []byte // the job (or result) as it was, byte for byte
}

// Bounds on what a dead letter's headers carry.
const (
	maxReasonBytes = 1024
	maxMsgIDBytes  = 256
	// deadLetterSlack is kept free of a dead letter's data, for its
	// headers and the protocol around them.
	deadLetterSlack = 8 << 10
)

// deadLetterHeader describes a delivered message for the dead-letter
// stream: why, where it came from (so replay can send it back), how often
// it was delivered, its run and its original Nats-Msg-Id. Values are
// bounded and on one line, whatever the message and its error said.
func deadLetterHeader(m jetstream.Msg, md *jetstream.MsgMetadata, runID, reason string) nats.Header {
	h := nats.Header{}
	h.Set(message.HeaderReason, headerValue(reason, maxReasonBytes))
	h.Set(message.HeaderSubject, m.Subject())
	if md != nil {
		h.Set(message.HeaderDeliveries, strconv.FormatUint(md.NumDelivered, 10))
	}
	if runID != "" {
		h.Set(message.HeaderRunID, runID)
	}
	if id := m.Headers().Get(jetstream.MsgIDHeader); id != "" {
		h.Set(message.HeaderMsgID, headerValue(id, maxMsgIDBytes))
	}
	return h
}

// headerValue is s on one line of printable text, at most n bytes.
func headerValue(s string, n int) string {
	return termsafe.Clip(strings.Map(func(r rune) rune {
		if unicode.IsControl(r) {
			return ' '
		}
		return r
	}, strings.ToValidUTF8(s, "?")), n)
}

// storeDeadLetter stores m on subject with the headers of
// deadLetterHeader, and waits for the stream to have it. Data that would
// not fit in one message is cut to fit, and the original size is said in a
// header: a message too large is still dead-lettered, never lost or looped.
func (b *Bus) storeDeadLetter(ctx context.Context, m jetstream.Msg, md *jetstream.MsgMetadata, subject, runID, reason string) error {
	hdr := deadLetterHeader(m, md, runID, reason)
	data := m.Data()
	if limit := int(b.nc.MaxPayload()) - deadLetterSlack; limit > 0 && len(data) > limit {
		hdr.Set(message.HeaderTruncated, strconv.Itoa(len(data)))
		data = data[:limit]
	}
	_, err := b.publish(ctx, Publication{Subject: subject, MsgID: deadLetterID(md), Data: data}, hdr)
	return err
}

// deadLetterID is the Nats-Msg-Id of a delivered message's dead letter: one
// per stored message, so a repeat after a crash is dropped, but a replayed
// message that fails again is dead-lettered again.
func deadLetterID(md *jetstream.MsgMetadata) string {
	if md == nil {
		return ""
	}
	return "dlq/" + md.Stream + "/" + strconv.FormatUint(md.Sequence.Stream, 10)
}

func deadLetterOf(m jetstream.Msg, md *jetstream.MsgMetadata) DeadLetter {
	h := m.Headers()
	return DeadLetter{
		Seq: md.Sequence.Stream, Subject: m.Subject(), Time: md.Timestamp, Data: m.Data(),
		Reason: h.Get(message.HeaderReason), Source: h.Get(message.HeaderSubject), RunID: h.Get(message.HeaderRunID),
		Deliveries: h.Get(message.HeaderDeliveries), MsgID: h.Get(message.HeaderMsgID),
		Truncated: h.Get(message.HeaderTruncated) != "",
	}
}

// ListDLQ calls fn for each dead letter of kind (empty: all), oldest
// first, until fn returns false.
func (b *Bus) ListDLQ(ctx context.Context, kind message.Letters, fn func(DeadLetter) bool) error {
	filter := message.DLQWildcard
	if kind != "" {
		filter = kind.Subject()
	}
	info, err := b.dlq.Info(ctx, jetstream.WithSubjectFilter(filter))
	if err != nil {
		return fmt.Errorf("dead letters: %w", err)
	}
	var n uint64
	for _, c := range info.State.Subjects { // the counts on the filter's subjects
		n += c
	}
	if n == 0 {
		return nil
	}
	last := info.State.LastSeq
	cons, err := b.dlq.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{FilterSubjects: []string{filter}, InactiveThreshold: orderedInactive})
	if err != nil {
		return fmt.Errorf("dead letters: %w", err)
	}
	it, err := cons.Messages()
	if err != nil {
		return fmt.Errorf("dead letters: %w", err)
	}
	defer b.stopOrdered(StreamDLQ, cons, it)
	stop := context.AfterFunc(ctx, it.Stop)
	defer stop()
	for {
		m, err := it.Next(jetstream.NextMaxWait(5 * time.Second))
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if errors.Is(err, nats.ErrTimeout) || errors.Is(err, context.DeadlineExceeded) {
				return nil // nothing more on the filter
			}
			return fmt.Errorf("dead letters: %w", err)
		}
		md, err := m.Metadata()
		if err != nil {
			return err
		}
		if !fn(deadLetterOf(m, md)) || md.Sequence.Stream >= last || md.NumPending == 0 {
			return nil
		}
	}
}

// ReplayCount says what a replay did.
type ReplayCount struct {
	Replayed int // sent back and deleted
	Skipped  int // left in place: not replayable (see Replay)
}

// Replay sends the dead letters of kind (create, update or writeback;
// empty for create and update) back where they came from, each with a new
// Nats-Msg-Id so that the duplicate window does not drop it, and deletes
// each from the dead-letter stream once the send is acknowledged. It reads
// them one at a time (memory does not grow with their number) and stops at
// the last one stored when it began, so a letter that fails again is not
// replayed twice in one go.
//
// A dead letter is input like any other: its headers say where it came
// from, and only the subjects it can have come from are believed
// (tqtriage.jobs.<its action>, tqtriage.results.<a valid run id>), with
// data that parses as what belongs there. Any other letter (a forged
// target, a cut copy, data that does not parse) is reported to report with
// the reason and skipped; the others are still replayed. report is told of
// every letter, with a nil error for one replayed.
func (b *Bus) Replay(ctx context.Context, kind message.Letters, report func(d DeadLetter, err error)) (ReplayCount, error) {
	var kinds []message.Letters
	switch {
	case kind == "":
		kinds = []message.Letters{message.LettersCreate, message.LettersUpdate}
	case kind.Replayable():
		kinds = []message.Letters{kind}
	default:
		return ReplayCount{}, fmt.Errorf("replay: dead letters on %s did not parse and cannot be replayed", kind.Subject())
	}
	var n ReplayCount
	for _, k := range kinds {
		var stop error
		err := b.ListDLQ(ctx, k, func(d DeadLetter) bool {
			target, err := replayTarget(k, d)
			if err == nil {
				err = b.replayOne(ctx, d, target)
			}
			switch {
			case err == nil:
				n.Replayed++
			case errors.Is(err, errNotReplayable):
				n.Skipped++
			default:
				stop = err
			}
			if report != nil {
				report(d, err)
			}
			return stop == nil
		})
		if err = errors.Join(stop, err); err != nil {
			return n, err
		}
	}
	return n, nil
}

// errNotReplayable marks a dead letter replay skips.
var errNotReplayable = errors.New("not replayable")

// NotReplayable reports whether err says a dead letter was skipped by
// Replay as not replayable (rather than that replaying it failed).
func NotReplayable(err error) bool { return errors.Is(err, errNotReplayable) }

// replayTarget is where a dead letter of kind may be sent back, judged
// from its data as much as from its headers.
func replayTarget(kind message.Letters, d DeadLetter) (string, error) {
	skip := func(format string, args ...any) (string, error) {
		return "", fmt.Errorf("%w: %s", errNotReplayable, fmt.Sprintf(format, args...))
	}
	if d.Truncated {
		return skip("its data was cut to fit the dead-letter stream")
	}
	switch kind {
	case message.LettersCreate, message.LettersUpdate:
		want := message.JobSubject(message.Action(kind))
		// A dry run's failed job goes back to the dry-run subject, so
		// that its replay stays a dry run.
		if dry := message.DryRunJobSubject(message.Action(kind)); d.Source == dry {
			want = dry
		}
		if d.Source != want {
			return skip("it names %q as its source; a %s dead letter comes from %s", headerValue(d.Source, 100), kind, want)
		}
		if _, err := message.ParseJob(want, d.Data); err != nil {
			return skip("its data is not a %s job: %v", kind, err)
		}
		return want, nil
	case message.LettersWriteback:
		runID, ok := strings.CutPrefix(d.Source, message.ResultsPrefix)
		if !ok || message.CheckRunID(runID) != nil {
			return skip("it names %q as its source; a write-back dead letter comes from %s<run id>", headerValue(d.Source, 100), message.ResultsPrefix)
		}
		r, err := message.ParseResult(d.Data)
		if err != nil {
			return skip("its data is not a result: %v", err)
		}
		if r.RunID != runID {
			return skip("its result is of run %s, not of %s", r.RunID, runID)
		}
		return d.Source, nil
	}
	return skip("dead letters on %s cannot be replayed", kind.Subject())
}

func (b *Bus) replayOne(ctx context.Context, d DeadLetter, target string) error {
	msgID := d.MsgID
	if msgID == "" {
		msgID = "dlq"
	}
	msgID += "/replay-" + strconv.FormatUint(d.Seq, 10)
	hdr := nats.Header{}
	if d.RunID != "" && message.ValidRunID(d.RunID) {
		hdr.Set(message.HeaderRunID, d.RunID)
	}
	if _, err := b.publish(ctx, Publication{Subject: target, MsgID: msgID, Data: d.Data}, hdr); err != nil {
		if Permanent(err) {
			return fmt.Errorf("%w: %w", errNotReplayable, err)
		}
		return fmt.Errorf("replay dead letter %d: %w", d.Seq, err)
	}
	if err := b.dlq.DeleteMsg(ctx, d.Seq); err != nil && !errors.Is(err, jetstream.ErrMsgNotFound) {
		return fmt.Errorf("replayed dead letter %d but could not delete it (a second replay would send it again): %w", d.Seq, err)
	}
	return nil
}
