package integration

import (
	"context"
	"iter"
	"testing"
	"time"

	"github.com/tqtriage/tqtriage/bus"
	"github.com/tqtriage/tqtriage/mapping"
	"github.com/tqtriage/tqtriage/message"
	"github.com/tqtriage/tqtriage/run"
	"github.com/tqtriage/tqtriage/threatq/threatqsim"
)

// itemsWithIDs is a source of seeded ThreatQ indicators by their ids,
// without reading the collection through ThreatQ.
func itemsWithIDs(ids []int64, inds []threatqsim.SeedIndicator) iter.Seq[run.Item] {
	return func(yield func(run.Item) bool) {
		for i, s := range inds {
			if !yield(run.Item{Indicator: message.Indicator{ID: ids[i], Type: s.Type, Value: s.Value}}) {
				return
			}
		}
	}
}

// TestSlowThreatQIsWrittenOnceADelivery: ThreatQ answers each request
// more slowly than the write-back consumer's ack wait (2 s here), so one
// result takes several ack waits to write. The executor's heartbeat keeps
// the delivery: no second delivery writes the same result at the same time
// (each indicator gets exactly its three adds, one row per name, one
// receipt per result).
func TestSlowThreatQIsWrittenOnceADelivery(t *testing.T) {
	e := newEnv(t)
	inds := sampleIndicators("slow", 4)
	ids := e.collection("slow", inds)
	o := e.once(workerConfig())
	e.threatq.SetLatency(ackWait + ackWait/4)

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	out, err := o.Run(ctx, run.Options{Action: message.ActionCreate}, itemsWithIDs(ids, inds), run.FollowOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if out.Failed() || out.Tally.Count(message.StatusCreated) != len(inds) || out.Tally.AwaitingWriteback() != 0 {
		t.Fatalf("run: %s", out.Tally.Line(out.Record.Total))
	}
	for _, id := range ids {
		if n := e.threatq.Writes(id); n != 3 {
			t.Errorf("indicator %d: %d attribute writes; want its 3 adds, once", id, n)
		}
		got := attrs(e.threatq, id)
		for _, name := range []string{mapping.AttrID, mapping.AttrThreatLevel, mapping.AttrThreatSource} {
			if len(got[name]) != 1 {
				t.Errorf("indicator %d: %q has %d rows: %v", id, name, len(got[name]), got)
			}
		}
	}
	receipts := 0
	err = o.Bus.ReadRun(context.Background(), out.Record.ID, false, func(s bus.Stored) bool {
		if s.Receipt {
			receipts++
		}
		return true
	})
	if err != nil || receipts != len(inds) {
		t.Fatalf("%d receipts (%v); want one per result", receipts, err)
	}
}
