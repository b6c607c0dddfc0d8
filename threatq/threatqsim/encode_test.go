package threatqsim

import (
	"encoding/json"
	"reflect"
	"testing"
)

// TestAppendPageMatchesEncodingJSON holds the hand-written page encoder to
// what encoding/json makes of the same documents.
func TestAppendPageMatchesEncodingJSON(t *testing.T) {
	awkward := []string{"", "plain", `quote " and \ backslash`, "tab\tnew\nline\r\b\f\x00\x1f", "<html>&amp;</html>",
		"ünïcödé ✓ 😀", "bad utf8 \xff\xfe end", "line\u2028sep\u2029para", "\x7f"}
	s := New(Options{Seed: 7})
	var docs []indicatorDoc
	for i, v := range awkward {
		id := s.AddCollection("h", "n", []SeedIndicator{{Type: "Name " + v, Value: v, Status: "S" + v, Source: "src " + v, Score: i,
			Attributes: []SeedAttribute{{Name: "A" + v, Value: v}, {Name: "B", Value: "x"}}}})[0]
		s.mu.Lock()
		in, _ := s.indicatorLocked(id)
		docs = append(docs, s.indicatorDocLocked(in))
		s.mu.Unlock()
	}
	for _, tc := range []struct {
		docs []indicatorDoc
		data any
	}{{docs, docs}, {nil, struct{}{}}} {
		got := appendPage(nil, 4090, tc.docs, "AoJ9\"+/=", 100)
		want, err := json.Marshal(collectionPageDoc{Total: 4090, Data: tc.data, NextCursorMark: "AoJ9\"+/=", Limit: 100})
		if err != nil {
			t.Fatal(err)
		}
		var g, w any
		if err := json.Unmarshal(got, &g); err != nil {
			t.Fatalf("hand-written page is not JSON: %v\n%s", err, got)
		}
		if err := json.Unmarshal(want, &w); err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(g, w) {
			t.Fatalf("pages differ:\n got %s\nwant %s", got, want)
		}
	}
}
