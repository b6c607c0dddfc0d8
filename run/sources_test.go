package run

import (
	"strings"
	"testing"

	"github.com/tqtriage/tqtriage/message"
	"github.com/tqtriage/tqtriage/threatq"
	"github.com/tqtriage/tqtriage/threatq/export"
)

// TestItemsCarryWhatThreatQHoldsOfOurAttributes: the Triage ID (and level
// and source) ThreatQ holds go into the job, so that update finds its
// Triage indicator without a lookup; other attributes and over-long values
// do not.
func TestItemsCarryWhatThreatQHoldsOfOurAttributes(t *testing.T) {
	line := `{"id":7,"type":{"name":"MD5"},"value":"d41d8cd98f00b204e9800998ecf8427e","attributes":[` +
		`{"id":1,"name":"Contact","value":"x"},{"id":2,"name":"ID","value":"325"},` +
		`{"id":3,"name":"Threat Source","value":"` + strings.Repeat("s", message.MaxAttrBytes+1) + `"},` +
		`{"id":4,"name":"Threat Level","value":"Malicious"}]}` + "\n"
	var got []Item
	for it := range FromExport(export.NewReader(strings.NewReader(line))) {
		got = append(got, it)
	}
	want := []message.Attribute{{ID: 2, Name: "ID", Value: "325"}, {ID: 4, Name: "Threat Level", Value: "Malicious"}}
	if len(got) != 1 || len(got[0].Attributes) != 2 || got[0].Attributes[0] != want[0] || got[0].Attributes[1] != want[1] {
		t.Fatalf("items %+v; want one carrying %+v", got, want)
	}
	many := threatq.Indicator{ID: 1, Type: "MD5", Value: "x"}
	for i := range 40 {
		many.Attributes = append(many.Attributes, threatq.AttributeRow{ID: int64(i), Name: "ID", Value: "1"})
	}
	if it := itemOf(many); len(it.Attributes) != message.MaxAttributes {
		t.Fatalf("%d attributes carried; want at most %d", len(it.Attributes), message.MaxAttributes)
	}
}
