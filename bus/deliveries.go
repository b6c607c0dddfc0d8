package bus

import (
	"context"
	"errors"
	"strconv"

	"github.com/nats-io/nats.go/jetstream"
)

// Deliveries that do not count (a snooze, a hand-back) are recorded in a
// key-value bucket, by consumer and stream sequence, because JetStream's
// own delivery count counts every delivery. Only a redelivery reads it, so
// the first delivery of a message, the common case, costs nothing.

func deliveriesKey(durable string, seq uint64) string {
	return durable + "." + strconv.FormatUint(seq, 10)
}

// countedDeliveries is the number of deliveries of a message that count,
// this one included.
func (b *Bus) countedDeliveries(ctx context.Context, durable string, md *jetstream.MsgMetadata) int {
	n := int(md.NumDelivered)
	if n <= 1 {
		return max(n, 1)
	}
	e, err := b.deliveries.Get(ctx, deliveriesKey(durable, md.Sequence.Stream))
	if err != nil {
		if !errors.Is(err, jetstream.ErrKeyNotFound) {
			b.log.Warn().Err(err).Msg("could not read a message's uncounted deliveries; counting them all")
		}
		return n
	}
	free, _ := strconv.Atoi(string(e.Value()))
	return max(n-free, 1)
}

// markUncounted records that the current delivery of m does not count.
func (b *Bus) markUncounted(ctx context.Context, durable string, m jetstream.Msg, md *jetstream.MsgMetadata) {
	ctx = context.WithoutCancel(ctx) // a hand-back comes when the handler's context has ended; each call keeps JetStream's default timeout
	if md == nil {
		var err error
		if md, err = m.Metadata(); err != nil {
			return
		}
	}
	key := deliveriesKey(durable, md.Sequence.Stream)
	// One holder of a message at a time, so a conflict is rare; try a
	// few times, and count the delivery when it cannot be recorded.
	for range 3 {
		e, err := b.deliveries.Get(ctx, key)
		switch {
		case errors.Is(err, jetstream.ErrKeyNotFound):
			if _, err = b.deliveries.Create(ctx, key, []byte("1")); err == nil {
				return
			}
		case err == nil:
			n, _ := strconv.Atoi(string(e.Value()))
			if _, err = b.deliveries.Update(ctx, key, []byte(strconv.Itoa(n+1)), e.Revision()); err == nil {
				return
			}
		}
		if ctx.Err() != nil {
			break
		}
	}
	b.log.Warn().Uint64("stream_seq", md.Sequence.Stream).Msg("could not record an uncounted delivery; it will count")
}
