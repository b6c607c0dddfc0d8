package message

import (
	"errors"
	"strings"
	"testing"
)

func TestParseJob(t *testing.T) {
	ok := `{"v":1,"run_id":"r-1","action":"create","seq":17,"indicator":{"id":106767,"type":"SHA-256","value":"x"},"threat_level":"Malicious","threat_source":"ThreatQ","upsert":false,"reply_to":"tqtriage.results.r-1"}`
	j, err := ParseJob("tqtriage.jobs.create", []byte(ok))
	if err != nil || j.Seq != 17 || j.Indicator.ID != 106767 || j.ReplyTo != "tqtriage.results.r-1" {
		t.Fatalf("ParseJob(contract example) = %+v, %v", j, err)
	}
	min := `{"v":1,"run_id":"r-1","action":"update","indicator":{"id":5,"type":"MD5","value":"x"},"extra":"ignored"}`
	j, err = ParseJob("tqtriage.jobs.update", []byte(min))
	if err != nil || j.ReplyTo != "tqtriage.results.r-1" || j.Seq != 0 {
		t.Fatalf("ParseJob(minimal) = %+v, %v; want reply_to defaulted", j, err)
	}
	for name, c := range map[string]struct{ subject, data, reason string }{
		"empty":      {"tqtriage.jobs.create", " ", "empty"},
		"not json":   {"tqtriage.jobs.create", "hello", "not JSON"},
		"wrong type": {"tqtriage.jobs.create", `{"v":1,"run_id":"r","action":"create","indicator":{"id":"7"}}`, "indicator.id"},
		"version":    {"tqtriage.jobs.create", `{"v":2,"run_id":"r","action":"create","indicator":{"id":1}}`, "version 2"},
		"run id":     {"tqtriage.jobs.create", `{"v":1,"run_id":"a.b","action":"create","indicator":{"id":1}}`, "run_id"},
		"action":     {"tqtriage.jobs.create", `{"v":1,"run_id":"r","action":"delete","indicator":{"id":1}}`, "action"},
		"subject":    {"tqtriage.jobs.create", `{"v":1,"run_id":"r","action":"update","indicator":{"id":1}}`, "arrived on"},
		"no id":      {"tqtriage.jobs.create", `{"v":1,"run_id":"r","action":"create","indicator":{}}`, "indicator.id"},
		"too large":  {"tqtriage.jobs.create", `{"v":1,"run_id":"r","action":"create","indicator":{"id":1,"value":"` + strings.Repeat("x", MaxJobBytes) + `"}}`, "at most 65536"},
	} {
		_, err := ParseJob(c.subject, []byte(c.data))
		var pe *ParseError
		if !errors.As(err, &pe) || !strings.Contains(err.Error(), c.reason) {
			t.Errorf("%s: err %v; want a ParseError mentioning %q", name, err, c.reason)
		}
	}
}

// TestJobsOverALimitParseAndAreAnsweredInvalid: a job that names its run,
// action and indicator is answered, even when another field is hostile;
// its answer always goes to its own run's subject.
func TestJobsOverALimitParseAndAreAnsweredInvalid(t *testing.T) {
	base := func(extra string) string {
		return `{"v":1,"run_id":"victim","action":"create","indicator":{"id":1,"type":"MD5","value":"x"}` + extra + `}`
	}
	for name, c := range map[string]struct{ data, reason string }{
		"foreign reply":     {base(`,"reply_to":"tqtriage.results.other"`), "reply_to"},
		"elsewhere":         {base(`,"reply_to":"elsewhere"`), "reply_to"},
		"wildcard reply":    {base(`,"reply_to":"tqtriage.results.>"`), "reply_to"},
		"newline in reply":  {base(`,"reply_to":"tqtriage.results.victim\n"`), "reply_to"},
		"long reply":        {base(`,"reply_to":"tqtriage.results.` + strings.Repeat("a", 5000) + `"`), "reply_to (5017 bytes)"},
		"negative seq":      {base(`,"seq":-1`), "seq -1"},
		"huge seq":          {base(`,"seq":4000000000000`), "seq 4000000000000"},
		"long value":        {`{"v":1,"run_id":"victim","action":"create","indicator":{"id":1,"type":"URL","value":"` + strings.Repeat("<", MaxValueBytes+1) + `"}}`, "indicator.value is 8193 bytes"},
		"long type":         {`{"v":1,"run_id":"victim","action":"create","indicator":{"id":1,"type":"` + strings.Repeat("T", 100) + `","value":"x"}}`, "indicator.type"},
		"long threat level": {base(`,"threat_level":"` + strings.Repeat("M", 40) + `"`), "threat_level"},
		"long source":       {base(`,"threat_source":"` + strings.Repeat("S", 300) + `"`), "threat_source"},
	} {
		j, err := ParseJob("tqtriage.jobs.create", []byte(c.data))
		if err != nil {
			t.Errorf("%s: %v; want it parsed, to be answered invalid", name, err)
			continue
		}
		if !strings.Contains(j.Problem(), c.reason) || j.ReplyTo != "tqtriage.results.victim" {
			t.Errorf("%s: problem %q, reply to %q; want a problem naming %q and the run's own subject", name, j.Problem(), j.ReplyTo, c.reason)
		}
		r := NewResult(j, StatusInvalid, j.Problem())
		data, err := Encode(r)
		if err != nil || len(data) > 4096 {
			t.Errorf("%s: result of %d bytes, %v; want a small one", name, len(data), err)
		}
	}
	if j, err := ParseJob("tqtriage.jobs.create", []byte(base(`,"reply_to":"tqtriage.results.victim","seq":3`))); err != nil || j.Problem() != "" {
		t.Fatalf("a job within its limits: %q, %v", j.Problem(), err)
	}
}

func TestEncodeDoesNotEscapeHTML(t *testing.T) {
	b, err := Encode(Indicator{ID: 1, Type: "URL", Value: "<a&b>"})
	if err != nil || string(b) != `{"id":1,"type":"URL","value":"<a&b>"}` {
		t.Fatalf("Encode = %s, %v", b, err)
	}
}

func TestParseResult(t *testing.T) {
	r, err := ParseResult([]byte(`{"v":1,"run_id":"r","action":"create","indicator":{"id":1},"status":"created","reason":"","attempts":1}`))
	if err != nil || r.Status != StatusCreated {
		t.Fatalf("ParseResult = %+v, %v", r, err)
	}
	if _, err := ParseResult([]byte(`{"v":1,"status":"done"}`)); err == nil {
		t.Fatal("unknown status accepted")
	}
}

func TestValidRunID(t *testing.T) {
	for id, want := range map[string]bool{
		"20261127T060258-5a7778bc": true, "a_b-C9": true, "": false, "a.b": false, "a b": false, "a*": false, "a>": false,
		strings.Repeat("x", 64): true, strings.Repeat("x", 65): false,
	} {
		if ValidRunID(id) != want {
			t.Errorf("ValidRunID(%q) = %v", id, !want)
		}
	}
}

// FuzzParseJob: whatever a publisher sends, ParseJob returns a job whose
// answer is bounded and goes to the run's own subject, or a ParseError;
// it never panics.
func FuzzParseJob(f *testing.F) {
	f.Add([]byte(`{"v":1,"run_id":"r-1","action":"create","seq":17,"indicator":{"id":106767,"type":"SHA-256","value":"x"},"threat_level":"Malicious","threat_source":"ThreatQ","upsert":false,"reply_to":"tqtriage.results.r-1"}`))
	f.Add([]byte(`{"v":1,"run_id":"r","action":"update","indicator":{"id":5,"type":"MD5","value":"x"},"reply_to":"tqtriage.results.other\n"}`))
	f.Add([]byte(`{"v":1,"run_id":"r","action":"create","seq":4000000000000,"indicator":{"id":1}}`))
	f.Add([]byte(`not json`))
	f.Fuzz(func(t *testing.T, data []byte) {
		j, err := ParseJob("tqtriage.jobs.create", data)
		if err != nil {
			var pe *ParseError
			if !errors.As(err, &pe) {
				t.Fatalf("error %T %v; want a *ParseError", err, err)
			}
			return
		}
		if j.ReplyTo != ResultSubject(j.RunID) || !ValidRunID(j.RunID) || j.Indicator.ID <= 0 {
			t.Fatalf("parsed job %+v answers on %q", j, j.ReplyTo)
		}
		r := NewResult(j, StatusInvalid, j.Problem())
		out, err := Encode(r)
		if err != nil || len(out) > 16<<10 {
			t.Fatalf("result of %d bytes, %v", len(out), err)
		}
		if _, err := ParseResult(out); err != nil {
			t.Fatalf("the answer does not parse back: %v", err)
		}
	})
}

func TestResultAnsweredAt(t *testing.T) {
	r, err := ParseResult([]byte(`{"v":1,"run_id":"r","action":"create","indicator":{"id":1},"status":"created","reason":"","attempts":1,"answered_at":"2026-11-27T10:25:41.123456789Z"}`))
	if err != nil {
		t.Fatal(err)
	}
	at, ok := r.Answered()
	if !ok || at.Nanosecond() != 123456789 || at.Second() != 41 {
		t.Fatalf("answered %v %v", at, ok)
	}
	for _, bad := range []string{"", "yesterday", "2026-11-27 10:25:41", strings.Repeat("9", 65)} {
		if _, ok := (Result{AnsweredAt: bad}).Answered(); ok {
			t.Errorf("%q read as a time", bad)
		}
	}
}

func TestParseReceiptKnowsEveryOutcome(t *testing.T) {
	for _, o := range []ReceiptOutcome{ReceiptWritten, ReceiptNothing, ReceiptDeadLettered, ReceiptStale} {
		rc, err := ParseReceipt([]byte(`{"v":1,"run_id":"r","indicator":1,"result":9,"outcome":"` + string(o) + `"}`))
		if err != nil || rc.Outcome != o {
			t.Errorf("%s: %+v %v", o, rc, err)
		}
	}
	if _, err := ParseReceipt([]byte(`{"v":1,"run_id":"r","indicator":1,"result":9,"outcome":"lost"}`)); err == nil {
		t.Error("an unknown outcome parsed")
	}
}
