package publish

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/tqtriage/tqtriage/bus"
	"github.com/tqtriage/tqtriage/message"
	"github.com/tqtriage/tqtriage/report"
)

// Results is what Wait and Status need of JetStream.
type Results interface {
	GetRun(ctx context.Context, id string) (bus.Run, error)
	ReadResults(ctx context.Context, subject string, follow bool, fn func(bus.StoredResult) bool) error
}

// WaitOptions shape the progress display of Wait.
type WaitOptions struct {
	Out      io.Writer     // where progress goes (nil: none)
	Terminal bool          // Out is a terminal: redraw one line in place
	Every    time.Duration // how often progress is shown (default 200ms on a terminal, 5s otherwise)
}

// Wait follows the results of run id until every job of the run has one,
// showing progress. Interrupting it (ctx) loses nothing: the run goes on,
// and Status shows it later.
func Wait(ctx context.Context, b Results, id string, o WaitOptions) (*report.Tally, bus.Run, error) {
	if o.Every <= 0 {
		o.Every = 5 * time.Second
		if o.Terminal {
			o.Every = 200 * time.Millisecond
		}
	}
	run, err := b.GetRun(ctx, id)
	if err != nil {
		return nil, run, err
	}
	var (
		mu    sync.Mutex
		tally report.Tally
	)
	rctx, stop := context.WithCancel(ctx)
	defer stop()
	readErr := make(chan error, 1)
	go func() {
		readErr <- b.ReadResults(rctx, message.ResultSubject(id), true, func(r bus.StoredResult) bool {
			mu.Lock()
			defer mu.Unlock()
			if r.Status == "" {
				tally.AddUnreadable()
			} else {
				tally.Add(r.Result, r.Seq)
			}
			return true
		})
	}()
	tick := time.NewTicker(min(o.Every, 200*time.Millisecond))
	defer tick.Stop()
	lastShown := time.Time{}
	show := func(final bool) {
		if o.Out == nil {
			return
		}
		mu.Lock()
		line := tally.Line(run.Total)
		mu.Unlock()
		if !run.Published {
			line += " (still publishing)"
		}
		switch {
		case o.Terminal:
			fmt.Fprintf(o.Out, "\r\033[K%s", line)
			if final {
				fmt.Fprintln(o.Out)
			}
		case final || time.Since(lastShown) >= o.Every:
			fmt.Fprintln(o.Out, line)
		}
		lastShown = time.Now()
	}
	// finish stops the reader and waits for it, so that the tally
	// returned is no longer written to.
	finish := func() *report.Tally {
		stop()
		<-readErr
		return &tally
	}
	for {
		select {
		case <-ctx.Done():
			show(true)
			return finish(), run, fmt.Errorf("stopped waiting for run %s (it goes on; see `tqtriage status %s`): %w", id, id, ctx.Err())
		case err := <-readErr:
			if err == nil || errors.Is(err, context.Canceled) {
				err = errors.New("results stream ended")
			}
			readErr <- nil // for finish
			return finish(), run, fmt.Errorf("following run %s: %w", id, err)
		case <-tick.C:
		}
		if !run.Published {
			if r, err := b.GetRun(ctx, id); err == nil {
				run = r
			}
		}
		mu.Lock()
		complete := run.Published && int64(tally.Done()) >= run.Total
		mu.Unlock()
		if complete {
			show(true)
			return finish(), run, nil
		}
		if time.Since(lastShown) >= o.Every {
			show(false)
		}
	}
}

// Status counts the results stored so far for run id.
func Status(ctx context.Context, b Results, id string) (*report.Tally, bus.Run, error) {
	run, err := b.GetRun(ctx, id)
	if err != nil {
		return nil, run, err
	}
	var tally report.Tally
	err = b.ReadResults(ctx, message.ResultSubject(id), false, func(r bus.StoredResult) bool {
		if r.Status == "" {
			tally.AddUnreadable()
		} else {
			tally.Add(r.Result, r.Seq)
		}
		return true
	})
	return &tally, run, err
}
