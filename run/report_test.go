package run

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"iter"
	"maps"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/tqtriage/tqtriage/message"
)

func result(run string, seq int64, s message.Status, reason string, dry bool) message.Result {
	return message.Result{V: message.Version, RunID: run, Action: message.ActionCreate, Seq: seq,
		Indicator: message.Indicator{ID: 100 + seq, Type: "MD5", Value: fmt.Sprintf("value-%d", seq)}, Status: s, Reason: reason, DryRun: dry}
}

func TestReportTotalsStatesAndFirstProblemsGroupedByReason(t *testing.T) {
	b := newFakeBus()
	started := time.Date(2026, 11, 27, 10, 0, 0, 0, time.UTC)
	rec := Record{ID: "run-r1", Action: message.ActionCreate, Source: "file /tmp/x", Published: true, Total: 40, MaxSeq: 40, StartedAt: started, Rejected: 2}
	putRecord(t, b, rec)
	seq := int64(0)
	add := func(n int, s message.Status, reason string) {
		for range n {
			seq++
			b.addResultOf(t, result("run-r1", seq, s, reason, false))
		}
	}
	add(10, message.StatusCreated, "")
	add(3, message.StatusInvalid, "MD5: an MD5 hash is 32 hexadecimal digits")
	add(2, message.StatusFailed, "Triage answered 503")
	add(1, message.StatusInvalid, "unsupported type \"IP Address\"\x1b[2J") // a control character stays escaped
	add(24, message.StatusFailed, strings.Repeat("r", 2000))                // one long reason, cut: one group
	tally, rec, err := Status(context.Background(), b, "run-r1")
	if err != nil {
		t.Fatal(err)
	}
	if got := tally.State(rec); got != "writing_back" {
		t.Errorf("state %q, want writing_back (no receipts)", got)
	}
	r := NewReport(rec, tally)
	r.Ended(started.Add(90*time.Second), map[string]map[string]int64{"triage": {"create_indicator": 10}})
	var buf bytes.Buffer
	if err := r.Write(&buf); err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(buf.Bytes(), []byte("\x1b")) || !bytes.Contains(buf.Bytes(), []byte(`\u001b[2J`)) {
		t.Errorf("a control character is not escaped:\n%s", buf.String())
	}
	var got Report
	if err := json.Unmarshal(buf.Bytes(), &got); err != nil {
		t.Fatalf("the report is not one JSON document: %v\n%s", err, buf.String())
	}
	wantStatuses := map[message.Status]int{"created": 10, "exists": 0, "updated": 0, "not_found": 0, "invalid": 4, "skipped": 0, "failed": 26}
	if !maps.Equal(got.Statuses, wantStatuses) {
		t.Errorf("statuses %v, want %v", got.Statuses, wantStatuses)
	}
	if got.RunID != "run-r1" || got.Jobs != 40 || got.Results != 40 || got.Rejected != 2 || got.DurationSeconds != 90 ||
		got.Requests["triage"]["create_indicator"] != 10 || !got.Failed || got.WriteBack.Awaiting != 40 {
		t.Errorf("report %+v", got)
	}
	if len(got.Errors) != 4 {
		t.Fatalf("%d groups, want 4: %+v", len(got.Errors), got.Errors)
	}
	first := got.Errors[0]
	if first.Status != "invalid" || first.Count != 3 || len(first.Indicators) != 3 || first.Indicators[0].ID != 111 {
		t.Errorf("first group %+v", first)
	}
	if last := got.Errors[3]; last.Count != 24 || len(last.Reason) > maxReasonBytes || len(last.Indicators) != maxGroupExamples {
		t.Errorf("long-reason group: count %d, reason of %d bytes, %d indicators", last.Count, len(last.Reason), len(last.Indicators))
	}
}

func TestReportGroupsAreBounded(t *testing.T) {
	var g reasons
	for i := range 100 {
		g.add(result("r", int64(i+1), message.StatusFailed, fmt.Sprintf("reason %d", i), false))
	}
	g.add(result("r", 101, message.StatusCreated, "", false))
	if len(g.groups) != maxReasonGroups || g.other != 100-maxReasonGroups {
		t.Errorf("%d groups and %d others, want %d and %d", len(g.groups), g.other, maxReasonGroups, 100-maxReasonGroups)
	}
}

func TestADryRunIsPublishedCountedAndReportedAsOne(t *testing.T) {
	b := newFakeBus()
	items := func(yield func(Item) bool) {
		for i := range 3 {
			if !yield(Item{Indicator: message.Indicator{ID: int64(i + 1), Type: "MD5", Value: "v"}}) {
				return
			}
		}
	}
	rec, err := Publish(context.Background(), b, Options{ID: "dry-1", Action: message.ActionUpdate, DryRun: true}, iter.Seq[Item](items), zerolog.Nop())
	if err != nil || !rec.DryRun {
		t.Fatalf("Publish: %+v, %v", rec, err)
	}
	for _, j := range b.storedJobs() {
		if !j.DryRun {
			t.Errorf("job %+v is not a dry run", j)
		}
	}
	// Resuming it as a real run (or a real one as a dry run) is refused.
	if _, err := Publish(context.Background(), b, Options{ID: "dry-1", Action: message.ActionUpdate}, iter.Seq[Item](items), zerolog.Nop()); err == nil || !strings.Contains(err.Error(), "a dry run") {
		t.Errorf("a dry run resumed as a real one: %v", err)
	}

	b.addResultOf(t, result("dry-1", 1, message.StatusWouldUpdate, "would set level Benign → Malicious", true))
	b.addResultOf(t, result("dry-1", 2, message.StatusUnchanged, "", true))
	b.addResultOf(t, result("dry-1", 3, message.StatusWouldCreate, "would create it", true))
	tally, rec, err := Status(context.Background(), b, "dry-1")
	if err != nil {
		t.Fatal(err)
	}
	var sum bytes.Buffer
	tally.Summary(&sum, Header(rec), rec.Total)
	for _, want := range []string{"dry run", "would_update 1      in Triage; its level or source would change", "unchanged    1", "would_create 1", "would set level Benign → Malicious"} {
		if !strings.Contains(sum.String(), want) {
			t.Errorf("summary lacks %q:\n%s", want, sum.String())
		}
	}
	r := NewReport(rec, tally)
	want := map[message.Status]int{"would_create": 1, "exists": 0, "would_update": 1, "unchanged": 1, "not_found": 0, "invalid": 0, "skipped": 0, "failed": 0}
	if !r.DryRun || !maps.Equal(r.Statuses, want) || r.Failed {
		t.Errorf("report: dry %v, statuses %v, failed %v; want %v", r.DryRun, r.Statuses, r.Failed, want)
	}
}

func TestRecentRunsNewestFirst(t *testing.T) {
	b := newFakeBus()
	t0 := time.Date(2026, 11, 27, 10, 0, 0, 0, time.UTC)
	for i, id := range []string{"b", "a", "c", "d"} {
		putRecord(t, b, Record{ID: id, Action: message.ActionCreate, StartedAt: t0.Add(time.Duration(i) * time.Minute)})
	}
	b.records["junk"] = []byte("not json")
	recs, err := Recent(context.Background(), b, 3)
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, r := range recs {
		ids = append(ids, r.ID)
	}
	if strings.Join(ids, ",") != "d,c,a" {
		t.Errorf("recent runs %v, want d,c,a", ids)
	}
}
