package integration

import (
	"context"
	"errors"
	"iter"
	"testing"

	"github.com/tqtriage/tqtriage/mapping"
	"github.com/tqtriage/tqtriage/message"
	"github.com/tqtriage/tqtriage/run"
	"github.com/tqtriage/tqtriage/threatq/threatqsim"
)

// attrs returns an indicator's ThreatQ attributes as name → values.
func attrs(s *threatqsim.Server, id int64) map[string][]string {
	out := map[string][]string{}
	for _, a := range s.Attributes(id) {
		out[a.Name] = append(out[a.Name], a.Value)
	}
	return out
}

func TestCreateTwiceAnswersExists(t *testing.T) {
	e := newEnv(t)
	inds := sampleIndicators("twice", 40)
	ids := e.collection("c1", inds)
	o := e.once(workerConfig())

	first := e.run(o, message.ActionCreate, "c1", run.Options{})
	if first.Failed() || first.Tally.Count(message.StatusCreated) != 40 {
		t.Fatalf("first run: %s", first.Tally.Line(first.Record.Total))
	}
	second := e.run(o, message.ActionCreate, "c1", run.Options{})
	if second.Failed() || second.Tally.Count(message.StatusExists) != 40 || second.Tally.Done() != 40 {
		t.Fatalf("second run: %s; want all 40 exists and no failure", second.Tally.Line(second.Record.Total))
	}
	if n := e.triage.Len(); n != 40 {
		t.Fatalf("Triage holds %d indicators; want one per indicator, 40", n)
	}
	// Both runs answered with the same Triage id, written back once.
	r1, r2 := results(t, o.Bus, first.Record.ID), results(t, o.Bus, second.Record.ID)
	for i, id := range ids {
		a, b := r1[id], r2[id]
		if len(a) != 1 || len(b) != 1 {
			t.Fatalf("indicator %d: %d and %d results; want one per run", id, len(a), len(b))
		}
		if a[0].Triage == nil || b[0].Triage == nil || a[0].Triage.ID != b[0].Triage.ID {
			t.Fatalf("indicator %d: Triage ids %+v and %+v differ", id, a[0].Triage, b[0].Triage)
		}
		got := attrs(e.threatq, id)
		if len(got[mapping.AttrID]) != 1 || got[mapping.AttrID][0] != a[0].Triage.ID || len(got[mapping.AttrThreatLevel]) != 1 {
			t.Fatalf("indicator %d (%s): attributes %v; want one ID %s and one level", id, inds[i].Value, got, a[0].Triage.ID)
		}
	}
}

func TestUpdateWithAnotherLevelChangesTriageAndThreatQInPlace(t *testing.T) {
	e := newEnv(t)
	ids := e.collection("c2", sampleIndicators("update", 20))
	o := e.once(workerConfig())
	if out := e.run(o, message.ActionCreate, "c2", run.Options{}); out.Failed() {
		t.Fatalf("create: %s", out.Tally.Line(out.Record.Total))
	}
	before := map[int64]map[string]int64{} // attribute row ids by name
	for _, id := range ids {
		before[id] = map[string]int64{}
		for _, a := range e.threatq.Attributes(id) {
			before[id][a.Name] = a.ID
		}
	}

	out := e.run(o, message.ActionUpdate, "c2", run.Options{ThreatLevel: "Benign", ThreatSource: "SOC feed"})
	if out.Failed() || out.Tally.Count(message.StatusUpdated) != 20 {
		t.Fatalf("update: %s", out.Tally.Line(out.Record.Total))
	}
	for _, ind := range e.triage.Indicators() {
		if ind.ThreatLevel != "Benign" || ind.ThreatSource != "SOC feed" {
			t.Fatalf("Triage indicator %s: level %s source %s; want Benign, SOC feed", ind.ID, ind.ThreatLevel, ind.ThreatSource)
		}
	}
	for _, id := range ids {
		rows := e.threatq.Attributes(id)
		seen := map[string]int{}
		for _, a := range rows {
			seen[a.Name]++
			switch a.Name {
			case mapping.AttrThreatLevel:
				if a.Value != "Benign" {
					t.Fatalf("indicator %d: Threat Level %q; want Benign", id, a.Value)
				}
			case mapping.AttrThreatSource:
				if a.Value != "SOC feed" {
					t.Fatalf("indicator %d: Threat Source %q", id, a.Value)
				}
			}
			if prev, ok := before[id][a.Name]; ok && prev != a.ID {
				t.Fatalf("indicator %d: %s is row %d, was row %d; want it changed in place", id, a.Name, a.ID, prev)
			}
		}
		for name, n := range seen {
			if n != 1 {
				t.Fatalf("indicator %d has %d rows named %q; want one value per name", id, n, name)
			}
		}
	}
}

func TestUpdateOfAbsentIndicatorIsNotFoundOrCreatedWithUpsert(t *testing.T) {
	e := newEnv(t)
	e.collection("c3", sampleIndicators("absent", 8))
	o := e.once(workerConfig())
	out := e.run(o, message.ActionUpdate, "c3", run.Options{})
	if out.Failed() || out.Tally.Count(message.StatusNotFound) != 8 || e.triage.Len() != 0 {
		t.Fatalf("update without upsert: %s, Triage holds %d", out.Tally.Line(out.Record.Total), e.triage.Len())
	}
	out = e.run(o, message.ActionUpdate, "c3", run.Options{Upsert: true})
	if out.Failed() || out.Tally.Count(message.StatusCreated) != 8 || e.triage.Len() != 8 {
		t.Fatalf("update with upsert: %s, Triage holds %d", out.Tally.Line(out.Record.Total), e.triage.Len())
	}
}

func TestInvalidAndUnsupportedAreAnsweredInvalidAndNeverSent(t *testing.T) {
	e := newEnv(t)
	bad := []threatqsim.SeedIndicator{
		{Type: "MD5", Value: "abc"},
		{Type: "SHA-256", Value: "zz" + string(make([]byte, 0))},
		{Type: "URL", Value: "no-scheme.example.com/x"},
		{Type: "FQDN", Value: "bad host.example.com"},
		{Type: "IP Address", Value: "192.0.2.1"},
		{Type: "Email Address", Value: "a@example.com"},
	}
	good := sampleIndicators("mixed", 4)
	ids := e.collection("c4", append(bad, good...))
	o := e.once(workerConfig())
	out := e.run(o, message.ActionCreate, "c4", run.Options{})
	if out.Failed() || out.Tally.Count(message.StatusInvalid) != len(bad) || out.Tally.Count(message.StatusCreated) != len(good) {
		t.Fatalf("%s", out.Tally.Line(out.Record.Total))
	}
	if st := e.triage.Stats(); st.Creates != int64(len(good)) || st.Invalid != 0 {
		t.Fatalf("Triage received %d creates and %d invalid ones; want %d and 0", st.Creates, st.Invalid, len(good))
	}
	rs := results(t, o.Bus, out.Record.ID)
	for _, id := range ids[:len(bad)] {
		r := rs[id]
		if len(r) != 1 || r[0].Status != message.StatusInvalid || r[0].Reason == "" || len(r[0].Attributes) != 0 {
			t.Fatalf("indicator %d: results %+v; want one invalid with a reason and no attributes", id, r)
		}
		if got := e.threatq.Attributes(id); len(got) != 0 {
			t.Fatalf("indicator %d: invalid but attributes written: %+v", id, got)
		}
	}
}

// TestResumedRunQueuesEachIndicatorOnce: publishing stops half way (the
// source fails); publishing again with the same run id queues only the
// rest, and the run ends with one result per indicator.
func TestResumedRunQueuesEachIndicatorOnce(t *testing.T) {
	e := newEnv(t)
	b := e.serveWorkers(withConcurrency(workerConfig(), 8))
	inds := sampleIndicators("resume", 10)
	source := func(upTo int, fail bool) iter.Seq[run.Item] {
		return func(yield func(run.Item) bool) {
			for it := range itemsOf(inds[:upTo]) {
				if !yield(it) {
					return
				}
			}
			if fail {
				yield(run.Item{Err: errors.New("ThreatQ went away")})
			}
		}
	}
	opts := run.Options{ID: "resume-run", Action: message.ActionCreate}
	first, err := run.Publish(context.Background(), b, opts, source(6, true), e.log)
	if err == nil || first.Total != 6 || first.Error == "" {
		t.Fatalf("first publish: %+v, %v; want 6 jobs and the source's error recorded", first, err)
	}
	second, err := run.Publish(context.Background(), b, opts, source(10, false), e.log)
	if err != nil || second.Total != 10 || second.MaxSeq != 16 {
		t.Fatalf("resumed publish: %+v, %v; want a total of 10", second, err)
	}
	tally, _, err := run.Follow(context.Background(), b, "resume-run", run.FollowOptions{})
	if err != nil || tally.Done() != 10 || tally.Count(message.StatusCreated) != 10 {
		t.Fatalf("wait: %v, %s", err, tally.Line(10))
	}
	for id, rs := range results(t, b, "resume-run") {
		if len(rs) != 1 {
			t.Fatalf("indicator %d has %d results", id, len(rs))
		}
	}
}
