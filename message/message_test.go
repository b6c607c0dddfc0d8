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
		"empty":          {"tqtriage.jobs.create", " ", "empty"},
		"not json":       {"tqtriage.jobs.create", "hello", "not JSON"},
		"wrong type":     {"tqtriage.jobs.create", `{"v":1,"run_id":"r","action":"create","indicator":{"id":"7"}}`, "indicator.id"},
		"version":        {"tqtriage.jobs.create", `{"v":2,"run_id":"r","action":"create","indicator":{"id":1}}`, "version 2"},
		"run id":         {"tqtriage.jobs.create", `{"v":1,"run_id":"a.b","action":"create","indicator":{"id":1}}`, "run_id"},
		"action":         {"tqtriage.jobs.create", `{"v":1,"run_id":"r","action":"delete","indicator":{"id":1}}`, "action"},
		"subject":        {"tqtriage.jobs.create", `{"v":1,"run_id":"r","action":"update","indicator":{"id":1}}`, "arrived on"},
		"no id":          {"tqtriage.jobs.create", `{"v":1,"run_id":"r","action":"create","indicator":{}}`, "indicator.id"},
		"negative seq":   {"tqtriage.jobs.create", `{"v":1,"run_id":"r","action":"create","seq":-1,"indicator":{"id":1}}`, "seq"},
		"foreign reply":  {"tqtriage.jobs.create", `{"v":1,"run_id":"r","action":"create","indicator":{"id":1},"reply_to":"elsewhere"}`, "reply_to"},
		"wildcard reply": {"tqtriage.jobs.create", `{"v":1,"run_id":"r","action":"create","indicator":{"id":1},"reply_to":"tqtriage.results.>"}`, "reply_to"},
	} {
		_, err := ParseJob(c.subject, []byte(c.data))
		var pe *ParseError
		if !errors.As(err, &pe) || !strings.Contains(err.Error(), c.reason) {
			t.Errorf("%s: err %v; want a ParseError mentioning %q", name, err, c.reason)
		}
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
