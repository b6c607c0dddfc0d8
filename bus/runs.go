package bus

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/tqtriage/tqtriage/message"
)

// Run is what the registry keeps of a run, for status and for a wait that
// was interrupted.
type Run struct {
	ID         string    `json:"id"`
	Action     string    `json:"action"`
	Source     string    `json:"source"`                // "collection <hash>", "file <path>" or "stdin"
	SourceName string    `json:"source_name,omitempty"` // the collection's name, when known
	Upsert     bool      `json:"upsert,omitempty"`
	StartedAt  time.Time `json:"started_at"`
	// Total is the number of jobs, known once publishing ends (Published).
	Total int64 `json:"total"`
	// MaxSeq is the highest seq given to a job: a resumed run numbers
	// its new jobs after it.
	MaxSeq    int64      `json:"max_seq,omitempty"`
	Published bool       `json:"published"`
	EndedAt   *time.Time `json:"published_at,omitempty"`
	// Rejected counts input lines or indicators that could not become a
	// job (an export line that does not parse, a repeated indicator).
	Rejected int64 `json:"rejected,omitempty"`
	// Error is set when publishing stopped early.
	Error string `json:"error,omitempty"`
}

// ErrRunNotFound is returned for an unknown run id.
var ErrRunNotFound = errors.New("run not found")

// PutRun records r (creating or replacing it).
func (b *Bus) PutRun(ctx context.Context, r Run) error {
	data, err := json.Marshal(r)
	if err != nil {
		return err
	}
	if _, err := b.runs.Put(ctx, r.ID, data); err != nil {
		return fmt.Errorf("record run %s: %w", r.ID, err)
	}
	return nil
}

// GetRun reads a run's record.
func (b *Bus) GetRun(ctx context.Context, id string) (Run, error) {
	var r Run
	if !message.ValidRunID(id) {
		return r, fmt.Errorf("run id %q: %w", id, ErrRunNotFound)
	}
	e, err := b.runs.Get(ctx, id)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return r, fmt.Errorf("run %s: %w", id, ErrRunNotFound)
	}
	if err != nil {
		return r, fmt.Errorf("read run %s: %w", id, err)
	}
	if err := json.Unmarshal(e.Value(), &r); err != nil {
		return r, fmt.Errorf("run %s: unreadable record: %w", id, err)
	}
	return r, nil
}

// StoredResult is a result with its place in the results stream.
type StoredResult struct {
	message.Result
	Seq uint64 // stream sequence
}

// ReadResults calls fn for every result stored on subject (a run's reply
// subject), oldest first. With follow it keeps waiting for new ones until
// fn returns false or ctx ends; without, it returns once it has read what
// was stored when it began. A result that does not parse is passed with
// Status "" and its error in Reason, so that a count never hides it.
func (b *Bus) ReadResults(ctx context.Context, subject string, follow bool, fn func(StoredResult) bool) error {
	var last uint64
	if m, err := b.results.GetLastMsgForSubject(ctx, subject); err == nil {
		last = m.Sequence
	} else if !errors.Is(err, jetstream.ErrMsgNotFound) {
		return fmt.Errorf("results of %s: %w", subject, err)
	}
	if last == 0 && !follow {
		return nil
	}
	cons, err := b.results.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{subject},
		DeliverPolicy:  jetstream.DeliverAllPolicy,
	})
	if err != nil {
		return fmt.Errorf("results of %s: %w", subject, err)
	}
	it, err := cons.Messages()
	if err != nil {
		return fmt.Errorf("results of %s: %w", subject, err)
	}
	defer it.Stop()
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
			return fmt.Errorf("results of %s: %w", subject, err)
		}
		md, err := m.Metadata()
		if err != nil {
			return fmt.Errorf("results of %s: %w", subject, err)
		}
		sr := StoredResult{Seq: md.Sequence.Stream}
		if r, err := message.ParseResult(m.Data()); err != nil {
			sr.Reason = err.Error()
		} else {
			sr.Result = r
		}
		if !fn(sr) {
			return nil
		}
		if !follow && sr.Seq >= last {
			return nil
		}
	}
}
