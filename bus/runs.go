package bus

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/tqtriage/tqtriage/message"
)

// ErrRunNotFound is returned for an unknown run id.
var ErrRunNotFound = errors.New("run not found")

// PutRunRecord stores the record of run id (package run owns its shape).
func (b *Bus) PutRunRecord(ctx context.Context, id string, data []byte) error {
	if err := message.CheckRunID(id); err != nil {
		return err
	}
	if _, err := b.runs.Put(ctx, id, data); err != nil {
		return fmt.Errorf("record run %s: %w", id, err)
	}
	return nil
}

// GetRunRecord reads the record of run id.
func (b *Bus) GetRunRecord(ctx context.Context, id string) ([]byte, error) {
	if err := message.CheckRunID(id); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrRunNotFound, err)
	}
	e, err := b.runs.Get(ctx, id)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil, fmt.Errorf("run %s: %w", id, ErrRunNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("read run %s: %w", id, err)
	}
	return e.Value(), nil
}

// Stored is one message of a run as stored: a result, or write-back's
// receipt for one.
type Stored struct {
	Seq     uint64 // stream sequence
	Receipt bool   // on tqtriage.written.<run_id>, else a result
	Data    []byte
}

// ReadRun calls fn for every result and receipt stored for run id, in
// the order they were stored. With follow it keeps waiting for new ones
// until fn returns false or ctx ends; without, it returns once it has read
// what was stored when it began.
func (b *Bus) ReadRun(ctx context.Context, id string, follow bool, fn func(Stored) bool) error {
	subjects := []string{message.ResultSubject(id), message.ReceiptSubject(id)}
	var last uint64
	for _, s := range subjects {
		m, err := b.results.GetLastMsgForSubject(ctx, s)
		switch {
		case err == nil:
			last = max(last, m.Sequence)
		case !errors.Is(err, jetstream.ErrMsgNotFound):
			return fmt.Errorf("results of run %s: %w", id, err)
		}
	}
	if last == 0 && !follow {
		return nil
	}
	cons, err := b.results.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{
		FilterSubjects:    subjects,
		DeliverPolicy:     jetstream.DeliverAllPolicy,
		InactiveThreshold: orderedInactive,
	})
	if err != nil {
		return fmt.Errorf("results of run %s: %w", id, err)
	}
	it, err := cons.Messages()
	if err != nil {
		return fmt.Errorf("results of run %s: %w", id, err)
	}
	defer b.stopOrdered(StreamResults, cons, it)
	stop := context.AfterFunc(ctx, it.Stop)
	defer stop()
	for {
		m, err := it.Next()
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if errors.Is(err, jetstream.ErrNoHeartbeat) {
				continue
			}
			return fmt.Errorf("results of run %s: %w", id, err)
		}
		md, err := m.Metadata()
		if err != nil {
			return fmt.Errorf("results of run %s: %w", id, err)
		}
		s := Stored{Seq: md.Sequence.Stream, Receipt: m.Subject() == subjects[1], Data: m.Data()}
		if !fn(s) {
			return nil
		}
		if !follow && s.Seq >= last {
			return nil
		}
	}
}

// orderedInactive is how long the server keeps a reader's consumer after
// the reader is gone without deleting it (a killed process).
const orderedInactive = 30 * time.Second

// stopOrdered stops a reader and deletes its consumer, so that `status`
// and `--wait` leave nothing behind on the server.
func (b *Bus) stopOrdered(stream string, cons jetstream.Consumer, it jetstream.MessagesContext) {
	it.Stop()
	info := cons.CachedInfo()
	if info == nil || info.Name == "" {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := b.js.DeleteConsumer(ctx, stream, info.Name); err != nil && !errors.Is(err, jetstream.ErrConsumerNotFound) {
		b.log.Debug().Err(err).Str("consumer", info.Name).Msg("could not delete a reader's consumer; the server drops it when idle")
	}
}

// RunIDs returns the ids of the runs recorded, in no order. It reads the
// bucket's keys from its stream's subjects (one request a page, the
// permission status already has), not through a consumer.
func (b *Bus) RunIDs(ctx context.Context) ([]string, error) {
	s, err := b.js.Stream(ctx, "KV_"+BucketRuns)
	if err != nil {
		return nil, fmt.Errorf("runs: %w", err)
	}
	prefix := "$KV." + BucketRuns + "."
	info, err := s.Info(ctx, jetstream.WithSubjectFilter(prefix+">"))
	if err != nil {
		return nil, fmt.Errorf("runs: %w", err)
	}
	ids := make([]string, 0, len(info.State.Subjects))
	for subj := range info.State.Subjects {
		if id, ok := strings.CutPrefix(subj, prefix); ok && message.ValidRunID(id) {
			ids = append(ids, id)
		}
	}
	return ids, nil
}
