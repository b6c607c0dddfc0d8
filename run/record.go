// Package run is the life of one run, in one place: its record, publishing
// its jobs, following its results and write-back receipts, the tally by
// status, completion, and the summary a person reads.
//
// A run is the jobs of one collection (or export file) for one action. It
// is recorded where `status` finds it, published with a bounded number of
// jobs awaiting acknowledgement, and complete when each of its jobs has a
// result (and, for `run`, each result a write-back receipt). Everything
// here speaks package bus's plain types; it never sees JetStream.
package run

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"time"

	"github.com/tqtriage/tqtriage/bus"
	"github.com/tqtriage/tqtriage/message"
)

// Bus is what a run needs of JetStream.
type Bus interface {
	PublishAsync(p bus.Publication) (bus.Future, error)
	Publish(ctx context.Context, p bus.Publication) (bus.PubAck, error)
	PutRunRecord(ctx context.Context, id string, data []byte) error
	GetRunRecord(ctx context.Context, id string) ([]byte, error)
	ReadRun(ctx context.Context, id string, follow bool, fn func(bus.Stored) bool) error
}

// Record is what is kept of a run, for status and for a wait that was
// interrupted. Its JSON is stored in the runs bucket.
type Record struct {
	ID         string         `json:"id"`
	Action     message.Action `json:"action"`
	Source     string         `json:"source"`                // "collection <hash>", "file <path>" or "stdin"
	SourceName string         `json:"source_name,omitempty"` // the collection's name, when known
	Upsert     bool           `json:"upsert,omitempty"`
	// DryRun: the run asks what its jobs would do and writes nothing. A
	// dry run cannot be resumed as a real one, nor the other way round.
	DryRun    bool      `json:"dry_run,omitempty"`
	StartedAt time.Time `json:"started_at"`
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

// ErrNotFound is returned for an unknown run id.
var ErrNotFound = bus.ErrRunNotFound

// NewID returns a run id: sortable by time, unique by its random part.
func NewID(now time.Time) string {
	var b [4]byte
	_, _ = rand.Read(b[:])
	return now.UTC().Format("20060102T150405") + "-" + hex.EncodeToString(b[:])
}

// Get reads the record of run id; an unknown one is ErrNotFound.
func Get(ctx context.Context, b Bus, id string) (Record, error) {
	var r Record
	data, err := b.GetRunRecord(ctx, id)
	if err != nil {
		return r, err
	}
	if err := json.Unmarshal(data, &r); err != nil {
		return r, fmt.Errorf("run %s: unreadable record: %w", id, err)
	}
	return r, nil
}

func put(ctx context.Context, b Bus, r Record) error {
	data, err := json.Marshal(r)
	if err != nil {
		return err
	}
	return b.PutRunRecord(ctx, r.ID, data)
}
