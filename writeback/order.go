package writeback

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/tqtriage/tqtriage/bus"
	"github.com/tqtriage/tqtriage/message"
	"github.com/tqtriage/tqtriage/threatq"
)

// Write-back applies the results of one ThreatQ indicator in the order
// they were answered (docs/flow.md, "Write-back order"): a result of an
// older run that is retried late never overwrites what a newer run wrote.
// For each indicator it keeps, per attribute name, when the last result
// written to it was answered. Before writing, it leaves out the attributes
// that a later result has written, and records its own time for the rest
// by compare-and-set, so that two replicas cannot both decide on what they
// read before the other stored. Within one replica, the results of one
// indicator are written one at a time.

// Order is where write-back keeps that time: *bus.Bus (the bucket
// TQTRIAGE_APPLIED).
type Order interface {
	LastApplied(ctx context.Context, indicatorID int64) (bus.Applied, uint64, error)
	SetApplied(ctx context.Context, indicatorID int64, a bus.Applied, rev uint64) error
}

// KeepOrder makes w apply the results of each ThreatQ indicator in the
// order they were answered, keeping the times in o. Without it, results
// are written in the order they come. Calling it again with the same o
// changes nothing.
func (w *Writer) KeepOrder(o Order) {
	if cur := w.ord.Load(); cur != nil && cur.o == o {
		return
	}
	w.ord.Store(&ordering{o: o, locks: &indicatorLocks{m: map[int64]*indicatorLock{}}})
}

type ordering struct {
	o     Order
	locks *indicatorLocks
}

const (
	// maxAhead is how far past the time a result was stored its
	// answered_at is believed. A result is stored after it is answered, so
	// a later answered_at is a worker's clock running ahead, or a forged
	// time that would otherwise hold off every later result of its
	// indicator.
	maxAhead = time.Minute
	// maxAppliedNames bounds an indicator's entry: results carry two or
	// three attributes, and a forged one must not grow it without end.
	maxAppliedNames = 32
	// orderTries bounds the compare-and-set loop while other replicas
	// change the same indicator's entry.
	orderTries = 8
)

// answeredAt is when r was answered: its answered_at, or, for a result
// without one (an older worker's), when it was stored.
func answeredAt(r message.Result, a bus.Attempt) time.Time {
	at, ok := r.Answered()
	if !ok || (!a.Stored.IsZero() && at.After(a.Stored.Add(maxAhead))) {
		return a.Stored
	}
	return at
}

// inOrder decides which of r's attributes to write: those no later result
// of the indicator has written. It records r's time for them before the
// write and holds the indicator's lock in this replica until release.
// kept names the attributes left as a later result set them (for the
// receipt). A non-nil stop is the delivery's outcome instead: stale when
// every attribute was written by a later result, or the failure to decide.
//
// written names the attributes that results of this indicator wrote
// before (nil when write-back keeps no order).
func (w *Writer) inOrder(ctx context.Context, r message.Result, a bus.Attempt, attrs []threatq.Attribute) (write []threatq.Attribute, kept string, written []string, release func(), stop *bus.Outcome) {
	ord := w.ord.Load()
	if ord == nil {
		return attrs, "", nil, func() {}, nil
	}
	fail := func(err error) ([]threatq.Attribute, string, []string, func(), *bus.Outcome) {
		out := bus.Err(err)
		return nil, "", nil, nil, &out
	}
	id := r.Indicator.ID
	unlock, err := ord.locks.lock(ctx, id)
	if err != nil {
		return fail(err)
	}
	at := answeredAt(r, a)
	// An indicator the run read without any of these attributes has most
	// likely never been written back: its entry is created without being
	// read first (a request saved); if one was there after all, the
	// create fails and the entry is read.
	guessNone := neverWritten(r, attrs)
	for try := range orderTries {
		var (
			cur bus.Applied
			rev uint64
		)
		if try > 0 || !guessNone {
			var err error
			if cur, rev, err = ord.o.LastApplied(ctx, id); err != nil {
				unlock()
				return fail(err)
			}
		}
		next := maps.Clone(cur)
		if next == nil {
			next = bus.Applied{}
		}
		var keep []threatq.Attribute
		var newer []string
		changed := false
		for _, attr := range attrs {
			t, seen := cur[attr.Name]
			switch {
			case seen && t.After(at):
				newer = append(newer, attr.Name)
				continue
			case !seen || t.Before(at):
				next[attr.Name], changed = at, true
			}
			// An equal time is this result's own, recorded before a
			// write that failed: not stale.
			keep = append(keep, attr)
		}
		if len(keep) == 0 {
			unlock()
			out := bus.Done(string(message.ReceiptStale), receipt(r, a, message.ReceiptStale,
				fmt.Sprintf("answered %s; a result answered later was already written to %s", at.UTC().Format(message.AnsweredAtFormat), strings.Join(newer, ", "))))
			return nil, "", nil, nil, &out
		}
		written = slices.Collect(maps.Keys(cur))
		kept = ""
		if len(newer) > 0 {
			kept = fmt.Sprintf("left %s as a result answered later wrote them", strings.Join(newer, ", "))
		}
		if !changed {
			return keep, kept, written, unlock, nil
		}
		prune(next, maxAppliedNames)
		err = ord.o.SetApplied(ctx, id, next, rev)
		if err == nil {
			return keep, kept, written, unlock, nil
		}
		if !errors.Is(err, bus.ErrAppliedChanged) {
			unlock()
			return fail(err)
		}
	}
	unlock()
	return fail(orderBusy{id})
}

// neverWritten says whether the run read r's indicator from ThreatQ
// without a row of any of attrs' names: nothing of write-back's was there.
func neverWritten(r message.Result, attrs []threatq.Attribute) bool {
	if !r.ThreatQKnown {
		return false
	}
	for _, row := range r.ThreatQAttributes {
		for _, a := range attrs {
			if row.Name == a.Name {
				return false
			}
		}
	}
	return true
}

// orderBusy: other replicas kept changing the indicator's entry; worth
// another delivery.
type orderBusy struct{ id int64 }

func (e orderBusy) Error() string {
	return fmt.Sprintf("the write-back order of indicator %d changed %d times while deciding", e.id, orderTries)
}
func (orderBusy) Retryable() bool { return true }

// prune keeps the n latest names of a.
func prune(a bus.Applied, n int) {
	if len(a) <= n {
		return
	}
	names := slices.SortedFunc(maps.Keys(a), func(x, y string) int { return a[y].Compare(a[x]) })
	for _, name := range names[n:] {
		delete(a, name)
	}
}

// indicatorLocks lets one result of an indicator at a time through, within
// this replica.
type indicatorLocks struct {
	mu sync.Mutex
	m  map[int64]*indicatorLock
}

type indicatorLock struct {
	held chan struct{} // holds a token while locked
	refs int           // holders and waiters
}

// lock waits for the indicator's lock, or for ctx to end.
func (l *indicatorLocks) lock(ctx context.Context, id int64) (unlock func(), err error) {
	l.mu.Lock()
	e := l.m[id]
	if e == nil {
		e = &indicatorLock{held: make(chan struct{}, 1)}
		l.m[id] = e
	}
	e.refs++
	l.mu.Unlock()
	select {
	case e.held <- struct{}{}:
		return func() { <-e.held; l.leave(id, e) }, nil
	case <-ctx.Done():
		l.leave(id, e)
		return nil, ctx.Err()
	}
}

func (l *indicatorLocks) leave(id int64, e *indicatorLock) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if e.refs--; e.refs == 0 {
		delete(l.m, id)
	}
}
