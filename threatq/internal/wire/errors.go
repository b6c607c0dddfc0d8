package wire

import (
	"bytes"
	"encoding/json"
	"sort"
	"strconv"
	"strings"

	"github.com/tqtriage/tqtriage/internal/termsafe"
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
	return termsafe.Clip(strings.Join(strings.Fields(s), " "), 200)
}

// errorsKey is what a body must hold for AnswerErrors to look further: a
// collection page of several MiB is not parsed a second time for nothing.
var errorsKey = []byte(`"errors"`)

// AnswerErrors reports the errors a successful (2xx) answer carries: a
// non-empty top-level "errors", or a non-empty "errors" in an object
// "data" (the two error shapes of ParseErrorBody). ThreatQuotient's own
// SDK treats such an answer as a failure. msgs are the errors' messages
// (at least one when found); status is an HTTP status that an error
// object names in a "status" member (as JSON:API errors do), 0 when none
// does.
func AnswerErrors(body []byte) (msgs []string, status int, found bool) {
	if !bytes.Contains(body, errorsKey) {
		return nil, 0, false
	}
	var doc struct {
		Errors json.RawMessage `json:"errors"`
		Data   json.RawMessage `json:"data"`
	}
	if json.Unmarshal(body, &doc) != nil {
		return nil, 0, false // not an object: the decoder will say so
	}
	raw := doc.Errors
	if !nonEmpty(raw) {
		raw = nil
		if d := bytes.TrimSpace(doc.Data); len(d) > 0 && d[0] == '{' {
			var inner struct {
				Errors json.RawMessage `json:"errors"`
			}
			if json.Unmarshal(d, &inner) == nil && nonEmpty(inner.Errors) {
				raw = inner.Errors
			}
		}
	}
	if raw == nil {
		return nil, 0, false
	}
	msgs = appendMessages(nil, "", raw)
	if len(msgs) == 0 {
		msgs = []string{snippet(string(raw))}
	}
	return msgs, namedStatus(raw), true
}

// nonEmpty reports whether raw is a value that says something: not
// absent, null, false, "", [] or {}.
func nonEmpty(raw json.RawMessage) bool {
	switch s := string(bytes.TrimSpace(raw)); s {
	case "", "null", "false", `""`:
		return false
	default:
		if s[0] == '[' || s[0] == '{' {
			var v []json.RawMessage
			if s[0] == '[' && json.Unmarshal(raw, &v) == nil {
				return len(v) > 0
			}
			var m map[string]json.RawMessage
			if s[0] == '{' && json.Unmarshal(raw, &m) == nil {
				return len(m) > 0
			}
		}
		return true
	}
}

// namedStatus is the first HTTP status (100 to 599) that an error object
// of raw names in "status", as a number or a string; 0 when none does.
func namedStatus(raw json.RawMessage) int {
	var objs []json.RawMessage
	if json.Unmarshal(raw, &objs) != nil {
		objs = []json.RawMessage{raw}
	}
	for _, o := range objs {
		var e struct {
			Status json.RawMessage `json:"status"`
		}
		if json.Unmarshal(o, &e) != nil || len(e.Status) == 0 {
			continue
		}
		s := strings.Trim(string(e.Status), `"`)
		if n, err := strconv.Atoi(s); err == nil && n >= 100 && n <= 599 {
			return n
		}
	}
	return 0
}
