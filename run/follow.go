package run

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tqtriage/tqtriage/bus"
	"github.com/tqtriage/tqtriage/message"
)

// FollowOptions shape Follow.
type FollowOptions struct {
	// WrittenBack makes the run complete only once write-back has settled
	// each of its results (`run`), not just once each job has a result
	// (`publish --wait`).
	WrittenBack bool
	Progress    io.Writer     // where progress goes (nil: none)
	Terminal    bool          // Progress is a terminal: redraw a bar in place
	Width       int           // the terminal's columns (default 80): a longer line would wrap and not redraw
	Every       time.Duration // how often progress is shown (default 200ms on a terminal, 5s otherwise)
	// AwaitRecord is how long to wait for the run's record to appear,
	// when Follow starts beside the Publish that makes it (0: not at all).
	AwaitRecord time.Duration
	// Answered, when set, is kept at the number of jobs with a result, for
	// a Publish beside it to keep only so far ahead (Options.Ahead).
	Answered *atomic.Int64
	// Latency, the one Publish was given, is told of each result read:
	// the report then says how long jobs took (Report.JobLatency).
	Latency *Latency
}

// add counts one stored message of the run.
func (t *Tally) add(s bus.Stored) {
	if s.Receipt {
		if rc, err := message.ParseReceipt(s.Data); err == nil {
			t.AddReceipt(rc)
		}
		return
	}
	r, err := message.ParseResult(s.Data)
	if err != nil {
		t.AddUnreadable()
		return
	}
	t.Add(r)
}

// know tells the tally what the run's record says of its jobs.
func (t *Tally) know(rec Record) {
	t.dryRun = rec.DryRun
	if rec.Published {
		t.SetLimit(rec.MaxSeq)
	}
}

// complete reports whether every job of rec has its result (and, with
// writtenBack, every result its receipt).
func (t *Tally) complete(rec Record, writtenBack bool) bool {
	return rec.Published && int64(t.done) >= rec.Total && (!writtenBack || t.awaiting == 0)
}

// Follow reads the results (and receipts) of run id as they come until the
// run is complete, showing progress. Interrupting it (ctx) loses nothing:
// the run goes on, and Status shows it later. Completion is the run's own:
// another run's result still being retried does not hold it up.
func Follow(ctx context.Context, b Bus, id string, o FollowOptions) (*Tally, Record, error) {
	if o.Every <= 0 {
		o.Every = 5 * time.Second
		if o.Terminal {
			o.Every = 200 * time.Millisecond
		}
	}
	rec, err := awaitRecord(ctx, b, id, o.AwaitRecord)
	if err != nil {
		return nil, rec, err
	}
	var (
		mu    sync.Mutex
		tally Tally
	)
	tally.know(rec)
	tally.latency = o.Latency
	rctx, stop := context.WithCancel(ctx)
	defer stop()
	readErr := make(chan error, 1)
	go func() {
		readErr <- b.ReadRun(rctx, id, true, func(s bus.Stored) bool {
			mu.Lock()
			defer mu.Unlock()
			tally.add(s)
			if o.Answered != nil {
				o.Answered.Store(int64(tally.done))
			}
			return true
		})
	}()
	p := newProgress(o, time.Now())
	line := func() snapshot {
		mu.Lock()
		defer mu.Unlock()
		return snapshotOf(&tally, rec, o.WrittenBack)
	}
	// finish stops the reader and waits for it, so that the tally
	// returned is no longer written to.
	finish := func() *Tally {
		stop()
		<-readErr
		return &tally
	}
	// interrupted ends a Follow whose ctx ended: the run goes on.
	interrupted := func() (*Tally, Record, error) {
		p.show(line(), true)
		return finish(), rec, fmt.Errorf("stopped waiting for run %s (it goes on; see `tqtriage status %s`): %w", id, id, ctx.Err())
	}
	tick := time.NewTicker(min(o.Every, 200*time.Millisecond))
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return interrupted()
		case err := <-readErr:
			readErr <- nil // for finish
			if ctx.Err() != nil {
				// Interrupted: the reader ended with it.
				return interrupted()
			}
			if err == nil || errors.Is(err, context.Canceled) {
				err = errors.New("results stream ended")
			}
			return finish(), rec, fmt.Errorf("following run %s: %w", id, err)
		case <-tick.C:
		}
		if !rec.Published {
			if r, err := Get(ctx, b, id); err == nil {
				rec = r
			}
		}
		mu.Lock()
		tally.know(rec)
		complete := tally.complete(rec, o.WrittenBack)
		mu.Unlock()
		if complete {
			p.show(line(), true)
			return finish(), rec, nil
		}
		p.show(line(), false)
	}
}

// awaitRecord reads the record of run id, waiting up to d for it to be
// made.
func awaitRecord(ctx context.Context, b Bus, id string, d time.Duration) (Record, error) {
	deadline := time.Now().Add(d)
	for {
		rec, err := Get(ctx, b, id)
		if !errors.Is(err, ErrNotFound) || time.Now().After(deadline) {
			return rec, err
		}
		select {
		case <-ctx.Done():
			return rec, ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// Status counts the results (and receipts) stored so far for run id.
func Status(ctx context.Context, b Bus, id string) (*Tally, Record, error) {
	rec, err := Get(ctx, b, id)
	if err != nil {
		return nil, rec, err
	}
	var tally Tally
	tally.know(rec)
	err = b.ReadRun(ctx, id, false, func(s bus.Stored) bool {
		tally.add(s)
		return true
	})
	return &tally, rec, err
}
