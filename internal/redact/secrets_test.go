package redact

import (
	"slices"
	"testing"
)

func TestSecretsKeepsTheLastTwo(t *testing.T) {
	var s Secrets
	if got := s.List(); len(got) != 0 {
		t.Fatalf("empty: %q", got)
	}
	for _, v := range []string{"a", "a", "b", "c", "c"} {
		s.Add(v)
	}
	got := s.List()
	if want := []string{"b", "c"}; !slices.Equal(got, want) {
		t.Fatalf("List() = %q; want %q", got, want)
	}
	got[0] = "x" // the caller's own copy
	if s.List()[0] != "b" {
		t.Fatal("List shares its slice with the caller")
	}
}
