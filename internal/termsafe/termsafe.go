// Package termsafe makes text from outside (indicator values, reasons a
// server gave, dead letters, a collection's name) safe to print for a
// person: control characters, terminal escape sequences, bidirectional
// overrides and invalid UTF-8 are shown escaped, so that a value cannot
// move the cursor, rewrite the screen or hide what is around it.
package termsafe

import (
	"fmt"
	"strings"
	"unicode/utf8"
)

// Line is s for a line of output: everything unsafe escaped, newlines
// included.
func Line(s string) string { return clean(s, false) }

// Text is s for output of several lines: newlines stay, everything else
// unsafe is escaped.
func Text(s string) string { return clean(s, true) }

func clean(s string, keepNewlines bool) string {
	if safe(s, keepNewlines) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); {
		r, size := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && size == 1:
			fmt.Fprintf(&b, `\x%02x`, s[i])
		case r == '\n' && keepNewlines:
			b.WriteByte('\n')
		case r == '\n':
			b.WriteString(`\n`)
		case r == '\r':
			b.WriteString(`\r`)
		case r == '\t':
			b.WriteString(`\t`)
		case unsafe(r):
			if r < 0x100 {
				fmt.Fprintf(&b, `\x%02x`, r)
			} else {
				fmt.Fprintf(&b, `\u%04x`, r)
			}
		default:
			b.WriteString(s[i : i+size])
		}
		i += size
	}
	return b.String()
}

func safe(s string, keepNewlines bool) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < 0x20 || c == 0x7f || c >= 0x80 {
			if c == '\n' && keepNewlines {
				continue
			}
			if c < 0x80 {
				return false
			}
			// Non-ASCII: look at the runes.
			for _, r := range s[i:] {
				if r == utf8.RuneError || unsafe(r) || r < 0x20 && !(r == '\n' && keepNewlines) {
					return false
				}
			}
			return utf8.ValidString(s[i:])
		}
	}
	return true
}

// unsafe reports a rune that changes how the text around it is shown: C0
// and C1 controls, DEL, and the bidirectional embeddings, overrides and
// isolates.
func unsafe(r rune) bool {
	switch {
	case r < 0x20, r == 0x7f, r >= 0x80 && r < 0xa0:
		return true
	case r >= 0x202a && r <= 0x202e, r >= 0x2066 && r <= 0x2069, r == 0x200e, r == 0x200f, r == 0x061c:
		return true
	}
	return false
}

// JSON returns JSON text with every rune unsafe on a terminal that its
// encoder left as it is (DEL, C1 controls, bidirectional controls: JSON
// escapes only those below 0x20) written as a \u escape instead. The JSON
// means exactly the same to a parser; printed, it cannot rewrite the
// screen. data must be valid JSON, as encoding/json writes it (invalid
// UTF-8 already replaced).
func JSON(data []byte) []byte {
	clean := true
	for _, c := range data {
		if c == 0x7f || c >= 0x80 {
			clean = false
			break
		}
	}
	if clean {
		return data
	}
	out := make([]byte, 0, len(data)+16)
	for i := 0; i < len(data); {
		r, size := utf8.DecodeRune(data[i:])
		if unsafe(r) {
			out = fmt.Appendf(out, `\u%04x`, r) // all below 0x10000
		} else {
			out = append(out, data[i:i+size]...)
		}
		i += size
	}
	return out
}

// Clip cuts s to at most n bytes, on a rune boundary, ending a cut with
// "…" (counted in the n): a bound on text from outside that keeps valid
// UTF-8 valid. s is returned whole when it fits.
func Clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	cut := max(0, n-len(ellipsis))
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + ellipsis
}

const ellipsis = "…"
