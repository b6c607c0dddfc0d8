package run

import (
	"cmp"
	"context"
	"errors"
	"slices"
)

// Lister is what Recent needs: a Bus that lists its runs' ids.
type Lister interface {
	Bus
	RunIDs(ctx context.Context) ([]string, error)
}

// Recent returns the records of the n runs started last, newest first.
// A record that cannot be read (gone since it was listed, unreadable) is
// left out.
func Recent(ctx context.Context, b Lister, n int) ([]Record, error) {
	ids, err := b.RunIDs(ctx)
	if err != nil {
		return nil, err
	}
	var recs []Record
	for _, id := range ids {
		rec, err := Get(ctx, b, id)
		switch {
		case errors.Is(err, ErrNotFound):
			continue
		case err != nil && ctx.Err() != nil:
			return nil, ctx.Err()
		case err != nil:
			continue
		}
		recs = append(recs, rec)
	}
	slices.SortFunc(recs, func(a, b Record) int {
		if c := b.StartedAt.Compare(a.StartedAt); c != 0 {
			return c
		}
		return cmp.Compare(b.ID, a.ID)
	})
	if len(recs) > n {
		recs = recs[:n]
	}
	return recs, nil
}
