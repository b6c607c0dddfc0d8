package termsafe

import (
	"encoding/json"
	"strings"
	"testing"
	"unicode/utf8"
)

func TestLineEscapesWhatCouldRewriteATerminal(t *testing.T) {
	for in, want := range map[string]string{
		"plain value https://x.example/a?b=c": "plain value https://x.example/a?b=c",
		"naïve café ✓":                        "naïve café ✓",
		"\x1b[2J\x1b[Hgotcha":                 `\x1b[2J\x1b[Hgotcha`,
		"a\nb\rc\td":                          `a\nb\rc\td`,
		"bell\x07 del\x7f":                    `bell\x07 del\x7f`,
		"c1 \u009b31m":                        `c1 \x9b31m`,
		"rtl \u202eevil\u202c":                `rtl \u202eevil\u202c`,
		"bad \xff\xfe utf8":                   `bad \xff\xfe utf8`,
	} {
		if got := Line(in); got != want {
			t.Errorf("Line(%q) = %q; want %q", in, got, want)
		}
	}
	if got := Text("one\ntwo\x1b]0;title\x07"); got != "one\ntwo\\x1b]0;title\\x07" {
		t.Errorf("Text = %q", got)
	}
}

func TestJSONEscapesWhatItsEncoderLeftRaw(t *testing.T) {
	in := map[string]string{"v": "a\x7fb\u0085c\u202ed\u2066e é ok \x1b"}
	data, err := json.Marshal(in)
	if err != nil {
		t.Fatal(err)
	}
	out := JSON(data)
	for _, bad := range []string{"\x7f", "\u0085", "\u202e", "\u2066", "\x1b"} {
		if strings.Contains(string(out), bad) {
			t.Errorf("%q left raw in %s", bad, out)
		}
	}
	var back map[string]string
	if err := json.Unmarshal(out, &back); err != nil || back["v"] != in["v"] {
		t.Errorf("escaped JSON means %q (%v), want %q", back["v"], err, in["v"])
	}
	if plain := []byte(`{"a":"b"}`); &JSON(plain)[0] != &plain[0] {
		t.Error("plain JSON copied")
	}
}

func TestClipCutsOnARuneBoundaryWithinTheBound(t *testing.T) {
	for _, c := range []struct {
		s    string
		n    int
		want string
	}{
		{"short", 10, "short"},
		{"exactly10!", 10, "exactly10!"},
		{"eleven byte", 10, "eleven …"},
		{"ééééé", 6, "é…"}, // 10 bytes; a cut at 3 would split an é
		{"abc", 0, "…"},
	} {
		got := Clip(c.s, c.n)
		if got != c.want || !utf8.ValidString(got) || len(got) > max(c.n, len("…")) {
			t.Errorf("Clip(%q, %d) = %q; want %q", c.s, c.n, got, c.want)
		}
	}
}
