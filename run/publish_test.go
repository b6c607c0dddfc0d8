package run

import (
	"context"
	"errors"
	"fmt"
	"iter"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/tqtriage/tqtriage/bus"
	"github.com/tqtriage/tqtriage/message"
)

func ind(id int64) Item {
	return Item{Indicator: message.Indicator{ID: id, Type: "MD5", Value: fmt.Sprintf("%032x", id)}}
}

func inds(ids ...int64) []Item {
	out := make([]Item, len(ids))
	for i, id := range ids {
		out[i] = ind(id)
	}
	return out
}

// source yields list, and counts what was taken from it.
func source(list []Item, taken *int) iter.Seq[Item] {
	return func(yield func(Item) bool) {
		for _, it := range list {
			if taken != nil {
				*taken++
			}
			if !yield(it) {
				return
			}
		}
	}
}

func publish(t *testing.T, b *fakeBus, o Options, list []Item) (Record, error) {
	t.Helper()
	return Publish(context.Background(), b, o, source(list, nil), zerolog.Nop())
}

func seqs(jobs []message.Job) []int64 {
	var out []int64
	for _, j := range jobs {
		out = append(out, j.Seq)
	}
	return out
}

func TestPublishSendsOneNumberedJobPerIndicatorAndRecordsTheTotal(t *testing.T) {
	b := newFakeBus()
	o := Options{ID: "run-a", Action: message.ActionUpdate, Upsert: true, ThreatLevel: "Suspicious", ThreatSource: "Feed",
		Source: "collection abc", SourceName: "Phish"}
	rec, err := publish(t, b, o, inds(11, 12, 13))
	if err != nil {
		t.Fatal(err)
	}
	if rec.ID != "run-a" || rec.Action != message.ActionUpdate || !rec.Published || rec.Total != 3 || rec.MaxSeq != 3 || rec.Rejected != 0 ||
		rec.Error != "" || rec.EndedAt == nil || rec.StartedAt.IsZero() || !rec.Upsert || rec.Source != "collection abc" || rec.SourceName != "Phish" {
		t.Fatalf("returned record %+v", rec)
	}
	if got := b.record(t, "run-a"); got.Total != 3 || !got.Published || got.MaxSeq != 3 {
		t.Fatalf("stored record %+v; want the returned one", got)
	}
	jobs := b.storedJobs()
	if len(jobs) != 3 {
		t.Fatalf("%d jobs stored; want 3", len(jobs))
	}
	for i, j := range jobs {
		want := message.Job{V: message.Version, RunID: "run-a", Action: message.ActionUpdate, Seq: int64(i + 1), Indicator: ind(int64(11 + i)).Indicator,
			ThreatLevel: "Suspicious", ThreatSource: "Feed", Upsert: true, ReplyTo: message.ResultSubject("run-a")}
		if !reflect.DeepEqual(j, want) {
			t.Errorf("job %d = %+v; want %+v", i+1, j, want)
		}
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, id := range []int64{11, 12, 13} {
		if !b.ids[message.MsgID("run-a", message.ActionUpdate, id)] {
			t.Errorf("no job stored with the contract's message id for indicator %d", id)
		}
	}
}

func TestPublishRecordsTheRunAsStartedBeforeTheFirstJob(t *testing.T) {
	b := newFakeBus()
	var seen *Record
	items := func(yield func(Item) bool) {
		rec := b.record(t, "run-b")
		seen = &rec
		yield(ind(1))
	}
	if _, err := Publish(context.Background(), b, Options{ID: "run-b", Action: message.ActionCreate}, items, zerolog.Nop()); err != nil {
		t.Fatal(err)
	}
	if seen == nil || seen.Published || seen.StartedAt.IsZero() {
		t.Fatalf("record while publishing: %+v; want one started and not yet published", seen)
	}
}

func TestPublishCountsRejectedItemsAndRepeatsAndGoesOn(t *testing.T) {
	b := newFakeBus()
	list := []Item{ind(1), {Err: errors.New("line 2: not a number"), Skip: true}, ind(2), ind(1), {Err: errors.New("line 5: no type"), Skip: true}, ind(3)}
	rec, err := publish(t, b, Options{ID: "run-c", Action: message.ActionCreate}, list)
	if err != nil {
		t.Fatal(err)
	}
	if rec.Total != 3 || rec.Rejected != 3 || rec.Error != "" {
		t.Fatalf("record %+v; want 3 jobs and 3 rejected (two bad lines, one repeat)", rec)
	}
	// Skipped items take no number; the repeat took one and was dropped.
	if got := seqs(b.storedJobs()); !slices.Equal(got, []int64{1, 2, 4}) || rec.MaxSeq != 4 {
		t.Fatalf("stored seqs %v, max %d; want [1 2 4] and 4", got, rec.MaxSeq)
	}
}

func TestPublishStopsOnASourceErrorAndRecordsIt(t *testing.T) {
	b := newFakeBus()
	taken := 0
	list := []Item{ind(1), ind(2), {Err: errors.New("ThreatQ: 503 reading page 2")}, ind(3)}
	rec, err := Publish(context.Background(), b, Options{ID: "run-d", Action: message.ActionCreate}, source(list, &taken), zerolog.Nop())
	if err == nil || !strings.Contains(err.Error(), "page 2") {
		t.Fatalf("error %v; want the source's", err)
	}
	if taken != 3 {
		t.Errorf("%d items taken from the source; want it to stop at the error (3)", taken)
	}
	stored := b.record(t, "run-d")
	if rec.Total != 2 || !stored.Published || stored.Total != 2 || !strings.Contains(stored.Error, "page 2") {
		t.Fatalf("record %+v; want the 2 jobs sent and the source's error", stored)
	}
}

func TestPublishResendsAJobWhoseAcknowledgementFailed(t *testing.T) {
	b := newFakeBus()
	b.failAsyncOnce[message.MsgID("run-e", message.ActionCreate, 2)] = true
	rec, err := publish(t, b, Options{ID: "run-e", Action: message.ActionCreate}, inds(1, 2, 3))
	if err != nil {
		t.Fatal(err)
	}
	if rec.Total != 3 || rec.Rejected != 0 || b.syncCalls != 1 {
		t.Fatalf("record %+v after %d synchronous sends; want 3 jobs, one resent", rec, b.syncCalls)
	}
	if got := seqs(b.storedJobs()); !slices.Equal(got, []int64{1, 2, 3}) {
		t.Fatalf("stored %v; want each job once", got)
	}
}

func TestPublishRecordsAJobThatCouldNotBeStoredAsAnError(t *testing.T) {
	b := newFakeBus()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	b.failAsyncOnce[message.MsgID("run-m", message.ActionCreate, 2)] = true
	b.publishErr = func(bus.Publication) error {
		cancel() // give up waiting between resends
		return errors.New("nats: no responders")
	}
	rec, err := Publish(ctx, b, Options{ID: "run-m", Action: message.ActionCreate}, source(inds(1, 2), nil), zerolog.Nop())
	if err == nil {
		t.Fatal("Publish succeeded without storing job 2")
	}
	stored := b.record(t, "run-m")
	if rec.Total != 1 || stored.Total != 1 || stored.Error == "" || !stored.Published {
		t.Fatalf("record %+v; want the one job stored and the error", stored)
	}
}

func TestPublishSendsSynchronouslyWhatTheAsyncPublisherRefuses(t *testing.T) {
	b := newFakeBus()
	b.refuseAsync[message.MsgID("run-f", message.ActionCreate, 2)] = true
	rec, err := publish(t, b, Options{ID: "run-f", Action: message.ActionCreate}, inds(1, 2, 3))
	if err != nil {
		t.Fatal(err)
	}
	if rec.Total != 3 || b.syncCalls != 1 || len(b.storedJobs()) != 3 {
		t.Fatalf("record %+v, %d synchronous sends, %d jobs; want 3 jobs, one sent synchronously", rec, b.syncCalls, len(b.storedJobs()))
	}
}

func TestPublishCountsAJobTheStreamAlreadyHadAsRejected(t *testing.T) {
	b := newFakeBus()
	// Another run's publisher (or a crashed one) stored job 2 already.
	if _, err := b.Publish(context.Background(), jobPublication(t, "run-g", 2)); err != nil {
		t.Fatal(err)
	}
	rec, err := publish(t, b, Options{ID: "run-g", Action: message.ActionCreate}, inds(1, 2, 3))
	if err != nil {
		t.Fatal(err)
	}
	if rec.Total != 2 || rec.Rejected != 1 {
		t.Fatalf("record %+v; want 2 stored and 1 repeat", rec)
	}
}

func TestPublishResumingARunNumbersNewJobsAfterItsOldOnesAndAddsToItsTotal(t *testing.T) {
	b := newFakeBus()
	first, err := publish(t, b, Options{ID: "run-h", Action: message.ActionCreate, Source: "file a.csv"}, inds(1, 2, 3))
	if err != nil {
		t.Fatal(err)
	}
	// The same source, grown by two: the old three are repeats.
	rec, err := publish(t, b, Options{ID: "run-h", Action: message.ActionCreate, Source: "file a.csv"}, inds(1, 2, 3, 4, 5))
	if err != nil {
		t.Fatal(err)
	}
	if rec.Total != 5 || rec.Rejected != 0 || !rec.StartedAt.Equal(first.StartedAt) {
		t.Fatalf("resumed record %+v; want a total of 5, nothing rejected, the first start kept", rec)
	}
	jobs := b.storedJobs()
	if len(jobs) != 5 {
		t.Fatalf("%d jobs stored; want 5", len(jobs))
	}
	for _, j := range jobs[3:] {
		if j.Seq <= first.MaxSeq {
			t.Errorf("new job of indicator %d numbered %d, within the old run's 1..%d", j.Indicator.ID, j.Seq, first.MaxSeq)
		}
	}
	if rec.MaxSeq < jobs[4].Seq {
		t.Errorf("max seq %d below the last job's %d: a further resume would reuse numbers", rec.MaxSeq, jobs[4].Seq)
	}
}

func TestPublishRefusesToResumeARunAsAnotherAction(t *testing.T) {
	b := newFakeBus()
	if _, err := publish(t, b, Options{ID: "run-i", Action: message.ActionCreate}, inds(1)); err != nil {
		t.Fatal(err)
	}
	_, err := publish(t, b, Options{ID: "run-i", Action: message.ActionUpdate}, inds(2))
	if err == nil || !strings.Contains(err.Error(), "is a create run") {
		t.Fatalf("error %v; want a refusal", err)
	}
	if n := len(b.storedJobs()); n != 1 {
		t.Fatalf("%d jobs stored; want only the first run's", n)
	}
}

func TestPublishRefusesABadActionOrRunID(t *testing.T) {
	for _, o := range []Options{
		{ID: "run-j", Action: "delete"},
		{ID: "run-j", Action: ""},
		{ID: "run j!", Action: message.ActionCreate},
		{ID: "tqtriage.results.>", Action: message.ActionCreate},
		{ID: strings.Repeat("r", message.MaxRunIDLen+1), Action: message.ActionCreate},
	} {
		b := newFakeBus()
		if _, err := publish(t, b, o, inds(1)); err == nil {
			t.Errorf("%+v accepted", o)
		}
		if len(b.storedJobs()) != 0 || len(b.records) != 0 {
			t.Errorf("%+v: something was stored", o)
		}
	}
}

func TestPublishGivesANewRunAnID(t *testing.T) {
	b := newFakeBus()
	rec, err := publish(t, b, Options{Action: message.ActionCreate}, inds(1))
	if err != nil {
		t.Fatal(err)
	}
	if !message.ValidRunID(rec.ID) || b.record(t, rec.ID).Total != 1 {
		t.Fatalf("run id %q", rec.ID)
	}
	if other := NewID(time.Now()); other == rec.ID {
		t.Fatalf("two runs got id %q", other)
	}
}

func TestPublishStoppedByItsContextIsRecordedWithTheError(t *testing.T) {
	b := newFakeBus()
	ctx, cancel := context.WithCancel(context.Background())
	items := func(yield func(Item) bool) {
		if !yield(ind(1)) {
			return
		}
		cancel() // interrupted while reading the source
		for id := int64(2); id < 100; id++ {
			if !yield(ind(id)) {
				return
			}
		}
	}
	_, err := Publish(ctx, b, Options{ID: "run-k", Action: message.ActionCreate}, items, zerolog.Nop())
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("error %v; want the context's", err)
	}
	rec := b.record(t, "run-k")
	if !rec.Published || rec.Error == "" || rec.Total > 1 {
		t.Fatalf("record %+v; want it closed with the error and at most the first job", rec)
	}
}

// TestPublishBoundsTheJobsAwaitingAcknowledgement holds every
// acknowledgement until the publisher stops sending, then lets them
// through one at a time: the jobs sent and unacknowledged never exceed
// the bound.
//
// The bound is MaxInFlight plus two: the collector's channel holds
// MaxInFlight, the collector waits on one more, and send has made one
// more before it blocks handing it over.
func TestPublishBoundsTheJobsAwaitingAcknowledgement(t *testing.T) {
	const maxInFlight, n = 4, 40
	b := newFakeBus()
	b.hold = true
	list := make([]Item, n)
	for i := range list {
		list[i] = ind(int64(i + 1))
	}
	done := make(chan error, 1)
	go func() {
		_, err := publish(t, b, Options{ID: "run-l", Action: message.ActionCreate, MaxInFlight: maxInFlight}, list)
		done <- err
	}()
	// Wait until the publisher has sent all it may.
	for {
		b.mu.Lock()
		out, ch := b.outstanding, b.changed
		b.mu.Unlock()
		if out >= maxInFlight+2 {
			break
		}
		select {
		case <-ch:
		case <-time.After(10 * time.Second):
			t.Fatalf("the publisher stopped at %d unacknowledged jobs", out)
		}
	}
	for i := 0; i < n; i++ {
		b.gate <- struct{}{}
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if b.maxOutstanding > maxInFlight+2 {
		t.Fatalf("%d jobs awaited acknowledgement at once; want at most %d", b.maxOutstanding, maxInFlight+2)
	}
	if rec := b.record(t, "run-l"); rec.Total != n {
		t.Fatalf("total %d; want %d", rec.Total, n)
	}
}

// jobPublication is the publication Publish would make for indicator id
// as job 1 of run.
func jobPublication(t *testing.T, run string, id int64) bus.Publication {
	t.Helper()
	return bus.Publication{Subject: message.JobSubject(message.ActionCreate), MsgID: message.MsgID(run, message.ActionCreate, id),
		Data: []byte(fmt.Sprintf(`{"v":1,"run_id":%q,"action":"create","seq":1,"indicator":{"id":%d,"type":"MD5","value":"x"}}`, run, id))}
}
