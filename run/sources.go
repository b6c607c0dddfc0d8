package run

import (
	"context"
	"errors"
	"io"
	"iter"

	"github.com/tqtriage/tqtriage/mapping"
	"github.com/tqtriage/tqtriage/message"
	"github.com/tqtriage/tqtriage/threatq"
	"github.com/tqtriage/tqtriage/threatq/export"
)

// Collection is what FromCollection needs of the ThreatQ client.
type Collection interface {
	CollectionIndicators(ctx context.Context, hash string, pageSize int) iter.Seq2[threatq.Indicator, error]
}

// FromCollection yields the indicators of a ThreatQ data collection, page
// by page as the client reads them. A read error ends the source.
func FromCollection(ctx context.Context, c Collection, hash string, pageSize int) iter.Seq[Item] {
	return func(yield func(Item) bool) {
		for ind, err := range c.CollectionIndicators(ctx, hash, pageSize) {
			if err != nil {
				yield(Item{Err: err})
				return
			}
			if !yield(itemOf(ind)) {
				return
			}
		}
	}
}

// itemOf is the item of a ThreatQ indicator, with the attributes it holds
// of those tqtriage writes (its Triage ID among them), bounded.
func itemOf(ind threatq.Indicator) Item {
	it := Item{Indicator: message.Indicator{ID: ind.ID, Type: ind.Type, Value: ind.Value}, Known: ind.Attributes != nil}
	for _, a := range ind.Attributes {
		if len(it.Attributes) == message.MaxAttributes {
			it.Known = false // not all of them: write-back must list
			break
		}
		if mapping.Written(a.Name) && len(a.Value) > message.MaxAttrBytes {
			it.Known = false
			continue
		}
		if mapping.Written(a.Name) {
			it.Attributes = append(it.Attributes, message.Attribute{ID: a.ID, Name: a.Name, Value: a.Value})
		}
	}
	return it
}

// FromExport yields the indicators of an export file; a bad line is an
// item to skip (reported with its line number), not the end of the file.
func FromExport(r *export.Reader) iter.Seq[Item] {
	return func(yield func(Item) bool) {
		for {
			ind, err := r.Next()
			if errors.Is(err, io.EOF) {
				return
			}
			var le *export.LineError
			if errors.As(err, &le) {
				if !yield(Item{Err: err, Skip: true}) {
					return
				}
				continue
			}
			if err != nil {
				yield(Item{Err: err})
				return
			}
			if !yield(itemOf(ind)) {
				return
			}
		}
	}
}
