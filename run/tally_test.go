package run

import (
	"bytes"
	"strings"
	"testing"

	"github.com/tqtriage/tqtriage/message"
)

func res(seq, id int64, s message.Status) message.Result {
	return message.Result{V: 1, Seq: seq, Indicator: message.Indicator{ID: id, Type: "MD5", Value: "x"}, Status: s, Reason: "because"}
}

func receipt(seq, id int64, o message.ReceiptOutcome) message.Receipt {
	return message.Receipt{V: 1, Seq: seq, Indicator: id, Outcome: o, Reason: "ThreatQ said no"}
}

func TestTallyCountsEachJobOnceWithItsLatestStatus(t *testing.T) {
	var tl Tally
	tl.Add(res(1, 11, message.StatusCreated))
	tl.Add(res(3, 13, message.StatusFailed))
	tl.Add(res(1, 11, message.StatusCreated)) // a repeat
	tl.Add(res(3, 13, message.StatusCreated)) // a replayed dead letter
	tl.Add(res(0, 99, message.StatusInvalid)) // a job without seq
	tl.Add(res(0, 99, message.StatusInvalid))
	tl.Add(res(1000, 1000, message.StatusSkipped))
	if tl.Done() != 4 || tl.Count(message.StatusCreated) != 2 || tl.Count(message.StatusFailed) != 0 ||
		tl.Count(message.StatusInvalid) != 1 || tl.Count(message.StatusSkipped) != 1 || tl.AwaitingWriteback() != 4 {
		t.Fatalf("tally %+v: done %d, counts %v, awaiting write-back %d", tl, tl.Done(), tl.Counts(), tl.AwaitingWriteback())
	}
	if got := tl.Line(5); got != "4/5 jobs: created 2, invalid 1, skipped 1" {
		t.Fatalf("Line = %q", got)
	}
	var b bytes.Buffer
	tl.Summary(&b, "create run r1", 5)
	if strings.Contains(b.String(), "failed") {
		t.Errorf("summary shows a failure that a replay has since answered:\n%s", b.String())
	}
	for _, want := range []string{"create run r1", "created     2", "invalid, for example:", "indicator 99 (MD5 \"x\"): because"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("summary lacks %q:\n%s", want, b.String())
		}
	}
}

func TestTallyFollowsWritebackReceiptsOfEachJobsLatestResult(t *testing.T) {
	var tl Tally
	tl.Add(res(1, 11, message.StatusCreated))
	tl.Add(res(2, 12, message.StatusCreated))
	tl.Add(res(0, 99, message.StatusInvalid))
	tl.AddReceipt(receipt(1, 11, message.ReceiptWritten))
	tl.AddReceipt(receipt(1, 11, message.ReceiptWritten)) // a repeat
	tl.AddReceipt(receipt(0, 99, message.ReceiptNothing))
	tl.AddReceipt(receipt(2, 12, message.ReceiptDeadLettered))
	tl.AddReceipt(receipt(7, 17, message.ReceiptWritten)) // of a result not read: ignored
	if tl.AwaitingWriteback() != 0 || tl.WritebackFailures() != 1 {
		t.Fatalf("awaiting %d, failed %d; want 0 and 1", tl.AwaitingWriteback(), tl.WritebackFailures())
	}
	rec := Record{Published: true, Total: 3}
	if !tl.complete(rec, true) || !tl.Failed(rec) {
		t.Fatalf("complete %v, failed %v; want both", tl.complete(rec, true), tl.Failed(rec))
	}
	var b bytes.Buffer
	tl.Summary(&b, "h", 3)
	if !strings.Contains(b.String(), "write-back  1 results could not be written") || !strings.Contains(b.String(), "indicator 12: ThreatQ said no") {
		t.Errorf("summary lacks the failed write-back:\n%s", b.String())
	}

	// The dead-lettered write-back is replayed: its result again, then
	// its receipt, written this time.
	tl.Add(res(2, 12, message.StatusCreated))
	if tl.complete(rec, true) || !tl.complete(rec, false) {
		t.Fatal("a result awaiting its receipt must hold up a run that waits for write-back, and only that")
	}
	tl.AddReceipt(receipt(2, 12, message.ReceiptWritten))
	if tl.WritebackFailures() != 0 || tl.Failed(rec) || !tl.complete(rec, true) {
		t.Fatalf("after the replay: failures %d, failed %v", tl.WritebackFailures(), tl.Failed(rec))
	}
}

// TestTallyCountsStaleWriteBacksAsSettledNotFailed: a result that
// write-back left because a later result of its indicator had been
// written is settled (the run is complete) and not a failure, and shows.
func TestTallyCountsStaleWriteBacksAsSettledNotFailed(t *testing.T) {
	var tl Tally
	tl.Add(res(1, 11, message.StatusCreated))
	tl.Add(res(2, 12, message.StatusCreated))
	tl.AddReceipt(receipt(1, 11, message.ReceiptStale))
	tl.AddReceipt(receipt(1, 11, message.ReceiptStale)) // a repeat
	tl.AddReceipt(receipt(2, 12, message.ReceiptWritten))
	rec := Record{Published: true, Total: 2}
	if tl.Superseded() != 1 || tl.AwaitingWriteback() != 0 || !tl.complete(rec, true) || tl.Failed(rec) {
		t.Fatalf("superseded %d, awaiting %d, complete %v, failed %v", tl.Superseded(), tl.AwaitingWriteback(), tl.complete(rec, true), tl.Failed(rec))
	}
	var b bytes.Buffer
	tl.Summary(&b, "h", 2)
	if !strings.Contains(b.String(), "superseded  1      results not written back: a later result of the same ThreatQ indicator had been written") {
		t.Errorf("summary lacks the stale write-back:\n%s", b.String())
	}
	// Its result comes again (a replay) and is written this time.
	tl.Add(res(1, 11, message.StatusCreated))
	if tl.Superseded() != 1 {
		t.Fatalf("superseded %d while the new result awaits its receipt", tl.Superseded())
	}
	tl.AddReceipt(receipt(1, 11, message.ReceiptWritten))
	if tl.Superseded() != 0 {
		t.Fatalf("superseded %d after it was written", tl.Superseded())
	}
	// A stale job beyond the run's jobs is moved apart with its count.
	tl.Add(res(5, 15, message.StatusCreated))
	tl.AddReceipt(receipt(5, 15, message.ReceiptStale))
	tl.SetLimit(2)
	if tl.Superseded() != 0 || tl.Apart() != 1 {
		t.Fatalf("superseded %d, apart %d", tl.Superseded(), tl.Apart())
	}
}

// TestTallyMemoryIsBoundedWhateverAResultSays: a result's seq is the
// publisher's word; a huge one, or many far apart, cost a page each at
// most and are counted apart once the run's jobs are known.
func TestTallyMemoryIsBoundedWhateverAResultSays(t *testing.T) {
	var tl Tally
	tl.Add(res(1, 1, message.StatusCreated))
	tl.Add(res(4_000_000_000_000, 2, message.StatusInvalid)) // beyond any run
	tl.Add(res(60_000_000, 3, message.StatusInvalid))        // far, but within the index
	if tl.Apart() != 1 || tl.Done() != 2 {
		t.Fatalf("apart %d, done %d; want 1 and 2", tl.Apart(), tl.Done())
	}
	pages := 0
	for _, p := range tl.pages {
		if p != nil {
			pages++
		}
	}
	if pages != 2 || len(tl.pages) > maxIndexedSeq/pageSize {
		t.Fatalf("%d pages made, %d page slots; want 2 and a bounded index", pages, len(tl.pages))
	}
	// Publishing ends: the run has 10 jobs. The far result is not one.
	tl.SetLimit(10)
	if tl.Apart() != 2 || tl.Done() != 1 || tl.Count(message.StatusInvalid) != 0 || tl.AwaitingWriteback() != 1 {
		t.Fatalf("after the limit: apart %d, done %d, invalid %d, awaiting %d", tl.Apart(), tl.Done(), tl.Count(message.StatusInvalid), tl.AwaitingWriteback())
	}
	tl.Add(res(11, 4, message.StatusCreated))
	if tl.Apart() != 3 || tl.Done() != 1 {
		t.Fatalf("a result beyond the known jobs: apart %d, done %d", tl.Apart(), tl.Done())
	}
	for i := int64(0); i < maxNoSeq+10; i++ {
		tl.Add(res(0, 1000+i, message.StatusInvalid))
	}
	if len(tl.noSeq) != maxNoSeq || tl.Apart() != 13 {
		t.Fatalf("jobs without seq: %d indexed, %d apart; want %d and 13", len(tl.noSeq), tl.Apart(), maxNoSeq)
	}
	var b bytes.Buffer
	tl.Summary(&b, "h", 10)
	if !strings.Contains(b.String(), "apart       13") {
		t.Errorf("summary does not say what was counted apart:\n%s", b.String())
	}
}
