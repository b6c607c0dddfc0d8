package wire

import (
	"encoding/json"
	"sort"
	"strings"
	"unicode/utf8"
)

// ParseErrorBody returns the messages of a ThreatQ error body, in a stable
// order. It knows the two shapes public integrations parse,
// {"data":{"errors":{"field":["message",…]}}} (as "field: message") and
// {"errors":["message",["part",…],…]}, plus OAuth errors
// ({"error","error_description","message"}) and {"message"} alone. A body
// it cannot read gives its first bytes, so that an HTML error page still
// says something.
func ParseErrorBody(body []byte) []string {
	var doc struct {
		Data struct {
			Errors json.RawMessage `json:"errors"`
		} `json:"data"`
		Errors           json.RawMessage `json:"errors"`
		Error            json.RawMessage `json:"error"`
		ErrorDescription string          `json:"error_description"`
		Message          string          `json:"message"`
	}
	trimmed := strings.TrimSpace(string(body))
	if trimmed == "" {
		return nil
	}
	var msgs []string
	if err := json.Unmarshal([]byte(trimmed), &doc); err != nil {
		return []string{snippet(trimmed)}
	}
	msgs = appendMessages(msgs, "", doc.Data.Errors)
	msgs = appendMessages(msgs, "", doc.Errors)
	if len(msgs) == 0 {
		var code string
		if json.Unmarshal(doc.Error, &code) == nil && code != "" {
			switch {
			case doc.ErrorDescription != "":
				msgs = append(msgs, code+": "+doc.ErrorDescription)
			case doc.Message != "":
				msgs = append(msgs, code+": "+doc.Message)
			default:
				msgs = append(msgs, code)
			}
		} else {
			msgs = appendMessages(msgs, "", doc.Error)
		}
	}
	if len(msgs) == 0 && doc.Message != "" {
		msgs = append(msgs, doc.Message)
	}
	if len(msgs) == 0 && !strings.HasPrefix(trimmed, "{") {
		msgs = append(msgs, snippet(trimmed))
	}
	return msgs
}

// appendMessages flattens strings, arrays and objects (field → messages)
// into "field: message" lines. Objects with a message-like member (the
// JSON:API-ish {"title","detail"}) give that member.
func appendMessages(msgs []string, field string, raw json.RawMessage) []string {
	raw = json.RawMessage(strings.TrimSpace(string(raw)))
	if len(raw) == 0 || string(raw) == "null" {
		return msgs
	}
	prefix := func(s string) string {
		if field == "" {
			return s
		}
		return field + ": " + s
	}
	switch raw[0] {
	case '"':
		var s string
		if json.Unmarshal(raw, &s) == nil && s != "" {
			msgs = append(msgs, prefix(s))
		}
	case '[':
		var list []json.RawMessage
		if json.Unmarshal(raw, &list) == nil {
			for _, item := range list {
				msgs = appendMessages(msgs, field, item)
			}
		}
	case '{':
		var m map[string]json.RawMessage
		if json.Unmarshal(raw, &m) != nil {
			return msgs
		}
		for _, key := range []string{"detail", "message", "title"} {
			var s string
			if v, ok := m[key]; ok && json.Unmarshal(v, &s) == nil && s != "" {
				return append(msgs, prefix(s))
			}
		}
		keys := make([]string, 0, len(m))
		for k := range m {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			sub := k
			if field != "" {
				sub = field + "." + k
			}
			msgs = appendMessages(msgs, sub, m[k])
		}
	default:
		msgs = append(msgs, prefix(string(raw)))
	}
	return msgs
}

func snippet(s string) string {
	const max = 200
	s = strings.Join(strings.Fields(s), " ")
	if len(s) > max {
		// Cut on a rune boundary.
		cut := max
		for cut > 0 && !utf8.RuneStart(s[cut]) {
			cut--
		}
		s = s[:cut] + "…"
	}
	return s
}
