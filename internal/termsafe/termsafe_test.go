package termsafe

import "testing"

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
