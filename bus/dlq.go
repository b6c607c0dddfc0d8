package bus

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

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
	Data       []byte // the job (or result) as it was, byte for byte
}

// deadLetterHeader describes a delivered message for the dead-letter
// stream: why, where it came from (so replay can send it back), how often
// it was delivered, its run and its original Nats-Msg-Id.
func deadLetterHeader(m jetstream.Msg, md *jetstream.MsgMetadata, runID, reason string) nats.Header {
	h := nats.Header{}
	h.Set(message.HeaderReason, reason)
	h.Set(message.HeaderSubject, m.Subject())
	if md != nil {
		h.Set(message.HeaderDeliveries, strconv.FormatUint(md.NumDelivered, 10))
	}
	if runID != "" {
		h.Set(message.HeaderRunID, runID)
	}
	if id := m.Headers().Get(jetstream.MsgIDHeader); id != "" {
		h.Set(message.HeaderMsgID, id)
	}
	return h
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
	cons, err := b.dlq.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{FilterSubjects: []string{filter}})
	if err != nil {
		return fmt.Errorf("dead letters: %w", err)
	}
	it, err := cons.Messages()
	if err != nil {
		return fmt.Errorf("dead letters: %w", err)
	}
	defer it.Stop()
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

// Replay sends the dead letters of kind (create, update or writeback;
// empty for create and update) back where they came from, each with a new
// Nats-Msg-Id so that the duplicate window does not drop it, and deletes
// each from the dead-letter stream once the send is acknowledged. Dead
// letters on tqtriage.dlq.invalid are not replayable: they did not parse.
func (b *Bus) Replay(ctx context.Context, kind message.Letters, log func(d DeadLetter, err error)) (int, error) {
	var kinds []message.Letters
	switch {
	case kind == "":
		kinds = []message.Letters{message.LettersCreate, message.LettersUpdate}
	case kind.Replayable():
		kinds = []message.Letters{kind}
	default:
		return 0, fmt.Errorf("replay: dead letters on %s did not parse and cannot be replayed", kind.Subject())
	}
	n := 0
	for _, k := range kinds {
		var letters []DeadLetter
		if err := b.ListDLQ(ctx, k, func(d DeadLetter) bool { letters = append(letters, d); return true }); err != nil {
			return n, err
		}
		for _, d := range letters {
			err := b.replayOne(ctx, d)
			if log != nil {
				log(d, err)
			}
			if err != nil {
				return n, err
			}
			n++
		}
	}
	return n, nil
}

func (b *Bus) replayOne(ctx context.Context, d DeadLetter) error {
	if d.Source == "" {
		return fmt.Errorf("dead letter %d has no %s header: cannot tell where it came from", d.Seq, message.HeaderSubject)
	}
	msgID := d.MsgID
	if msgID == "" {
		msgID = "dlq"
	}
	msgID += "/replay-" + strconv.FormatUint(d.Seq, 10)
	hdr := nats.Header{}
	if d.RunID != "" {
		hdr.Set(message.HeaderRunID, d.RunID)
	}
	if _, err := b.publish(ctx, Publication{Subject: d.Source, MsgID: msgID, Data: d.Data}, hdr); err != nil {
		return fmt.Errorf("replay dead letter %d: %w", d.Seq, err)
	}
	if err := b.dlq.DeleteMsg(ctx, d.Seq); err != nil && !errors.Is(err, jetstream.ErrMsgNotFound) {
		return fmt.Errorf("replayed dead letter %d but could not delete it (a second replay would send it again): %w", d.Seq, err)
	}
	return nil
}
