package integration

import (
	"testing"

	"github.com/tqtriage/tqtriage/message"
	"github.com/tqtriage/tqtriage/run"
	"github.com/tqtriage/tqtriage/triage/triagesim"
)

// Triage keeps one indicator per type, value and source (its documented
// rule, the simulator's default), or, in the other rule, one per type and
// value. Another team's indicators of the same values are in Triage before
// tqtriage runs; these tests prove what each action does to them.

const foreignSource = "Triage-UI"

// seedForeign puts indicators of the collection's values into Triage from
// another source, as a person or another integration would have.
func seedForeign(t *testing.T, e *env, inds []struct{ typ, value string }) map[string]triagesim.Indicator {
	t.Helper()
	triageType := map[string]string{"MD5": "MD5", "SHA-256": "SHA256", "URL": "URL", "FQDN": "Hostname"}
	out := map[string]triagesim.Indicator{}
	for _, in := range inds {
		got, err := e.triage.Seed(triagesim.Indicator{ThreatLevel: "Suspicious", ThreatType: triageType[in.typ], ThreatValue: in.value, ThreatSource: foreignSource})
		if err != nil {
			t.Fatal(err)
		}
		out[got[0].ID] = got[0]
	}
	return out
}

// unchanged fails the test if a foreign indicator is not as it was seeded.
func unchanged(t *testing.T, e *env, foreign map[string]triagesim.Indicator) {
	t.Helper()
	for id, was := range foreign {
		now, ok := e.triage.Get(id)
		if !ok || now.ThreatLevel != was.ThreatLevel || now.ThreatSource != was.ThreatSource {
			t.Fatalf("another source's indicator %s was changed: %+v, was %+v", id, now, was)
		}
	}
}

func counts(out interface{ Line(int64) string }, total int64) string { return out.Line(total) }

func TestPerSourceTriageNeverTouchesAnotherSourcesIndicators(t *testing.T) {
	e := newEnv(t) // the simulator keeps one per source by default
	inds := sampleIndicators("persource", 8)
	e.collection("ps", inds)
	var half []struct{ typ, value string }
	for _, in := range inds[:4] {
		half = append(half, struct{ typ, value string }{in.Type, in.Value})
	}
	foreign := seedForeign(t, e, half)
	o := e.once(workerConfig())

	created := e.run(o, message.ActionCreate, "ps", run.Options{})
	if created.Failed() || created.Tally.Count(message.StatusCreated) != 8 || e.triage.Len() != 12 {
		t.Fatalf("create: %s; Triage holds %d (want ours beside theirs: 12)", counts(created.Tally, 8), e.triage.Len())
	}
	unchanged(t, e, foreign)
	again := e.run(o, message.ActionCreate, "ps", run.Options{})
	if again.Failed() || again.Tally.Count(message.StatusExists) != 8 {
		t.Fatalf("create again: %s", counts(again.Tally, 8))
	}
	for _, rs := range results(t, o.Bus, again.Record.ID) {
		if r := rs[0]; r.Triage == nil || r.Triage.ThreatSource != "ThreatQ" {
			t.Fatalf("create again answered %+v; want our own indicator", r.Triage)
		}
	}
	updated := e.run(o, message.ActionUpdate, "ps", run.Options{ThreatLevel: "Benign"})
	if updated.Failed() || updated.Tally.Count(message.StatusUpdated) != 8 {
		t.Fatalf("update: %s", counts(updated.Tally, 8))
	}
	unchanged(t, e, foreign)
	for _, in := range inds {
		for _, tt := range []string{"MD5", "SHA256", "URL", "Hostname"} {
			if got, ok := e.triage.FindFrom(tt, in.Value, "ThreatQ"); ok && got.ThreatLevel != "Benign" {
				t.Fatalf("our indicator %+v was not updated", got)
			}
		}
	}
	// Only another source's indicators: update finds none of ours; upsert
	// creates ours beside them.
	only := sampleIndicators("foreign-only", 4)
	e.collection("fo", only)
	var all []struct{ typ, value string }
	for _, in := range only {
		all = append(all, struct{ typ, value string }{in.Type, in.Value})
	}
	foreign2 := seedForeign(t, e, all)
	nf := e.run(o, message.ActionUpdate, "fo", run.Options{})
	if nf.Failed() || nf.Tally.Count(message.StatusNotFound) != 4 {
		t.Fatalf("update with only foreign indicators: %s", counts(nf.Tally, 4))
	}
	up := e.run(o, message.ActionUpdate, "fo", run.Options{Upsert: true})
	if up.Failed() || up.Tally.Count(message.StatusCreated) != 4 {
		t.Fatalf("upsert with only foreign indicators: %s", counts(up.Tally, 4))
	}
	unchanged(t, e, foreign2)
}

func TestPerValueTriageAnswersExistsAndLeavesTheIndicatorThere(t *testing.T) {
	e := newEnv(t)
	e.triage.SetUniqueness(triagesim.UniquePerValue)
	inds := sampleIndicators("pervalue", 8)
	e.collection("pv", inds)
	var half []struct{ typ, value string }
	for _, in := range inds[:4] {
		half = append(half, struct{ typ, value string }{in.Type, in.Value})
	}
	foreign := seedForeign(t, e, half)
	o := e.once(workerConfig())

	created := e.run(o, message.ActionCreate, "pv", run.Options{})
	if created.Failed() || created.Tally.Count(message.StatusCreated) != 4 || created.Tally.Count(message.StatusExists) != 4 || e.triage.Len() != 8 {
		t.Fatalf("create: %s; Triage holds %d", counts(created.Tally, 8), e.triage.Len())
	}
	unchanged(t, e, foreign)
	again := e.run(o, message.ActionCreate, "pv", run.Options{})
	if again.Failed() || again.Tally.Count(message.StatusExists) != 8 {
		t.Fatalf("create again: %s", counts(again.Tally, 8))
	}
	unchanged(t, e, foreign)

	// Values tqtriage never answered for (no Triage id in ThreatQ), held
	// by another source: update finds none of ours; upsert meets the one
	// there and leaves it unchanged.
	only := sampleIndicators("pv-foreign-only", 4)
	e.collection("pvo", only)
	var all []struct{ typ, value string }
	for _, in := range only {
		all = append(all, struct{ typ, value string }{in.Type, in.Value})
	}
	foreign2 := seedForeign(t, e, all)
	nf := e.run(o, message.ActionUpdate, "pvo", run.Options{})
	if nf.Failed() || nf.Tally.Count(message.StatusNotFound) != 4 {
		t.Fatalf("update: %s", counts(nf.Tally, 4))
	}
	up := e.run(o, message.ActionUpdate, "pvo", run.Options{Upsert: true})
	if up.Failed() || up.Tally.Count(message.StatusExists) != 4 {
		t.Fatalf("upsert: %s", counts(up.Tally, 4))
	}
	unchanged(t, e, foreign2)

	// The values create answered: ThreatQ holds their Triage ids, and an
	// update goes to those indicators by id (one per value is all this
	// Triage keeps), without a lookup.
	before := e.triage.Stats()
	updated := e.run(o, message.ActionUpdate, "pv", run.Options{ThreatLevel: "Benign"})
	if updated.Failed() || updated.Tally.Count(message.StatusUpdated) != 8 {
		t.Fatalf("update: %s", counts(updated.Tally, 8))
	}
	if after := e.triage.Stats(); after.Requests[triagesim.EndpointList] != before.Requests[triagesim.EndpointList] {
		t.Fatalf("update by known ids made %d lookups; want none", after.Requests[triagesim.EndpointList]-before.Requests[triagesim.EndpointList])
	}
}
