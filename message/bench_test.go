package message

import (
	"testing"
)

// The hot path of one job, in the worker: decode and check the job,
// encode its result; in write-back and the follower: decode the result.

var benchJob = []byte(`{"v":1,"run_id":"20261127T060258-5a7778bc","action":"create","seq":17,"indicator":{"id":106767,"type":"SHA-256","value":"0a8b2f6f5c2ad0d3f4bbf7c4f0f1e0b87b2a4c0d1e5f6a7b8c9d0e1f2a3b4c5d"},"threat_level":"Malicious","threat_source":"ThreatQ","reply_to":"tqtriage.results.20261127T060258-5a7778bc","threatq_attributes":[{"id":4893068,"name":"ID","value":"325"},{"id":4893069,"name":"Threat Level","value":"Malicious"},{"id":4893070,"name":"Threat Source","value":"ThreatQ"}]}`)

func BenchmarkParseJob(b *testing.B) {
	b.ReportAllocs()
	b.SetBytes(int64(len(benchJob)))
	for b.Loop() {
		if _, err := ParseJob("tqtriage.jobs.create", benchJob); err != nil {
			b.Fatal(err)
		}
	}
}

func benchResult() Result {
	j, _ := ParseJob("tqtriage.jobs.create", benchJob)
	r := NewResult(j, StatusCreated, "")
	r.Triage = &TriageIndicator{ID: "325", ThreatLevel: "Malicious", ThreatType: "SHA256", ThreatValue: j.Indicator.Value, ThreatSource: "ThreatQ",
		CreatedAt: "2026-11-27T06:02:58.123Z", UpdatedAt: "2026-11-27T06:02:58.123Z"}
	r.Attributes = []Attribute{{Name: "ID", Value: "325"}, {Name: "Threat Level", Value: "Malicious"}, {Name: "Threat Source", Value: "ThreatQ"}}
	r.Attempts = 1
	return r
}

func BenchmarkEncodeResult(b *testing.B) {
	r := benchResult()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Encode(r); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkParseResult(b *testing.B) {
	data, _ := Encode(benchResult())
	b.ReportAllocs()
	b.SetBytes(int64(len(data)))
	for b.Loop() {
		if _, err := ParseResult(data); err != nil {
			b.Fatal(err)
		}
	}
}
