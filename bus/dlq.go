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

// DeadLetter is one message of the dead-letter stream.
type DeadLetter struct {
	Seq     uint64 // stream sequence: the handle for replay and delete
	Subject string // tqtriage.dlq.<action|invalid|writeback>
	Time    time.Time
	Header  nats.Header
	Data    []byte // the job (or result) as it was, byte for byte
}

// Reason is why the message was dead-lettered.
func (d DeadLetter) Reason() string { return d.Header.Get(message.HeaderReason) }

// DeadLetterMsg stores a message on a dead-letter subject and waits for the
// stream to have it; only then may the original be acknowledged. msgID
// makes a repeat after a crash harmless.
func (b *Bus) DeadLetterMsg(ctx context.Context, subject, msgID string, data []byte, hdr nats.Header) error {
	_, err := b.Publish(ctx, subject, msgID, data, hdr)
	return err
}

// DeadLetterHeader describes a delivered message for the dead-letter
// stream: why, where it came from (so replay can send it back), how often
// it was delivered, its run and its original Nats-Msg-Id.
func DeadLetterHeader(m jetstream.Msg, md *jetstream.MsgMetadata, runID, reason string) nats.Header {
	h := nats.Header{}
	h.Set(message.HeaderReason, reason)
	h.Set(message.HeaderSubject, m.Subject())
	h.Set(message.HeaderDeliveries, strconv.FormatUint(md.NumDelivered, 10))
	if runID != "" {
		h.Set(message.HeaderRunID, runID)
	}
	if id := m.Headers().Get(jetstream.MsgIDHeader); id != "" {
		h.Set(message.HeaderMsgID, id)
	}
	return h
}

// DeadLetterID is the Nats-Msg-Id of a delivered message's dead letter: one
// per stored message, so a repeat after a crash is dropped, but a replayed
// message that fails again is dead-lettered again.
func DeadLetterID(md *jetstream.MsgMetadata) string {
	return "dlq/" + md.Stream + "/" + strconv.FormatUint(md.Sequence.Stream, 10)
}

// ListDLQ calls fn for each dead letter on subject filter (default all),
// oldest first, until fn returns false.
func (b *Bus) ListDLQ(ctx context.Context, filter string, fn func(DeadLetter) bool) error {
	if filter == "" {
		filter = message.DLQWildcard
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
		d := DeadLetter{Seq: md.Sequence.Stream, Subject: m.Subject(), Time: md.Timestamp, Header: m.Headers(), Data: m.Data()}
		if !fn(d) || md.Sequence.Stream >= last || md.NumPending == 0 {
			return nil
		}
	}
}

// Replay sends the dead letters of action (create, update or writeback;
// empty for create and update) back where they came from, each with a new
// Nats-Msg-Id so that the duplicate window does not drop it, and deletes
// each from the dead-letter stream once the send is acknowledged. Dead
// letters on tqtriage.dlq.invalid are not replayable: they did not parse.
func (b *Bus) Replay(ctx context.Context, action string, log func(d DeadLetter, err error)) (int, error) {
	var filters []string
	switch action {
	case "":
		filters = []string{message.DLQSubject(message.ActionCreate), message.DLQSubject(message.ActionUpdate)}
	case message.ActionCreate, message.ActionUpdate:
		filters = []string{message.DLQSubject(action)}
	case "writeback":
		filters = []string{message.DLQWriteback}
	default:
		return 0, fmt.Errorf("replay: action %q: want create, update or writeback", action)
	}
	n := 0
	for _, f := range filters {
		var letters []DeadLetter
		if err := b.ListDLQ(ctx, f, func(d DeadLetter) bool { letters = append(letters, d); return true }); err != nil {
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
	target := d.Header.Get(message.HeaderSubject)
	if target == "" {
		return fmt.Errorf("dead letter %d has no %s header: cannot tell where it came from", d.Seq, message.HeaderSubject)
	}
	msgID := d.Header.Get(message.HeaderMsgID)
	if msgID == "" {
		msgID = "dlq"
	}
	msgID += "/replay-" + strconv.FormatUint(d.Seq, 10)
	hdr := nats.Header{}
	if run := d.Header.Get(message.HeaderRunID); run != "" {
		hdr.Set(message.HeaderRunID, run)
	}
	if _, err := b.Publish(ctx, target, msgID, d.Data, hdr); err != nil {
		return fmt.Errorf("replay dead letter %d: %w", d.Seq, err)
	}
	if err := b.dlq.DeleteMsg(ctx, d.Seq); err != nil && !errors.Is(err, jetstream.ErrMsgNotFound) {
		return fmt.Errorf("replayed dead letter %d but could not delete it (a second replay would send it again): %w", d.Seq, err)
	}
	return nil
}
