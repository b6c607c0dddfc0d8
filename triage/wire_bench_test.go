package triage

import (
	"encoding/json"
	"net/http"
	"testing"

	"github.com/tqtriage/tqtriage/internal/fixture"
	"github.com/tqtriage/tqtriage/triage/internal/wire"
)

// The CPU of one Triage call that is ours, apart from HTTP: building the
// create request's JSON:API body, and decoding the indicator it answers
// with (a recorded create response).

func BenchmarkBuildCreateRequest(b *testing.B) {
	c := &Client{api: "https://triage.example.com/api/public/v2"}
	b.ReportAllocs()
	for b.Loop() {
		k, err := c.newCall(http.MethodPost, indicatorsPath, nil, requestDocument{Data: requestResource{
			Type: wire.ResourceType,
			Attributes: requestAttributes{ThreatLevel: "Malicious", ThreatType: "SHA256",
				ThreatValue: "0a8b2f6f5c2ad0d3f4bbf7c4f0f1e0b87b2a4c0d1e5f6a7b8c9d0e1f2a3b4c5d", ThreatSource: "ThreatQ"},
		}})
		if err != nil || len(k.body) == 0 {
			b.Fatal(err)
		}
	}
}

func BenchmarkDecodeIndicatorResponse(b *testing.B) {
	body := fixture.Read(b, "triage", "splunk_soar_create_response_RECONSTRUCTED.json")
	b.ReportAllocs()
	b.SetBytes(int64(len(body)))
	for b.Loop() {
		var doc wire.Document
		if err := json.Unmarshal(body, &doc); err != nil {
			b.Fatal(err)
		}
		in, err := indicatorOf(doc.Data)
		if err != nil || in.ID != "209" {
			b.Fatal(in, err)
		}
	}
}
