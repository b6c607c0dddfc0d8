package sample

import (
	"testing"

	"github.com/tqtriage/tqtriage/mapping"
)

// TestSampleHasWhatTheDemoSays: the documented invalid and unsupported
// indicators, every other one valid and distinct, and the ones seeded in
// Triage among them.
func TestSampleHasWhatTheDemoSays(t *testing.T) {
	inds := Indicators(300)
	seen := map[string]bool{}
	invalid := 0
	for _, in := range inds {
		if _, err := mapping.Map(in.Type, in.Value); err != nil {
			invalid++
			continue
		}
		if seen[in.Value] {
			t.Fatalf("value %q twice", in.Value)
		}
		seen[in.Value] = true
	}
	if len(inds) != 300 || invalid != 6 {
		t.Fatalf("%d indicators, %d invalid; want 300 and 6", len(inds), invalid)
	}
	for _, in := range append(InTriage(), FromOtherSource()...) {
		if !seen[in.ThreatValue] {
			t.Fatalf("%q is seeded in Triage but is not in the collection", in.ThreatValue)
		}
	}
	v := map[string]bool{}
	for _, in := range append(Valid("a", 50), Valid("b", 50)...) {
		if _, err := mapping.Map(in.Type, in.Value); err != nil || v[in.Value] {
			t.Fatalf("Valid gave %q (%v, repeated %v)", in.Value, err, v[in.Value])
		}
		v[in.Value] = true
	}
}
