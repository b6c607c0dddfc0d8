package wire

import (
	"slices"
	"testing"
)

func TestAnswerErrors(t *testing.T) {
	for _, tc := range []struct {
		name   string
		body   string
		found  bool
		msgs   []string
		status int
	}{
		{"a list of messages", `{"errors":["Locked."]}`, true, []string{"Locked."}, 0},
		{"JSON:API objects with a status", `{"errors":[{"status":"503","title":"Busy"}]}`, true, []string{"Busy"}, 503},
		{"a numeric status", `{"errors":[{"status":429,"detail":"Slow down"}]}`, true, []string{"Slow down"}, 429},
		{"field errors inside data", `{"data":{"errors":{"value":["The value field is required."]}}}`, true, []string{"value: The value field is required."}, 0},
		{"a bare string", `{"errors":"nope"}`, true, []string{"nope"}, 0},
		{"beside data", `{"data":[{"id":1}],"errors":["partial"]}`, true, []string{"partial"}, 0},
		{"an empty list", `{"data":[],"errors":[]}`, false, nil, 0},
		{"an empty object", `{"errors":{}}`, false, nil, 0},
		{"null", `{"errors":null,"data":{"id":1}}`, false, nil, 0},
		{"false", `{"errors":false}`, false, nil, 0},
		{"none", `{"total":1,"data":[{"id":1,"value":"x"}]}`, false, nil, 0},
		{"a value that says errors", `{"total":1,"data":[{"id":1,"value":"errors"}]}`, false, nil, 0},
		{"an attribute named errors in data", `{"data":{"id":1,"errors":[]}}`, false, nil, 0},
		{"a last page", `{"total":0,"data":{},"nextCursorMark":"*"}`, false, nil, 0},
		{"not an object", `["errors"]`, false, nil, 0},
		{"a status out of range", `{"errors":[{"status":"abc","title":"t"},{"status":"700","title":"u"}]}`, true, []string{"t", "u"}, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			msgs, status, found := AnswerErrors([]byte(tc.body))
			if found != tc.found || !slices.Equal(msgs, tc.msgs) || status != tc.status {
				t.Fatalf("got %q %d %v; want %q %d %v", msgs, status, found, tc.msgs, tc.status, tc.found)
			}
		})
	}
}
