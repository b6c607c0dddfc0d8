package wire

import (
	"encoding/json"
	"testing"
)

// FuzzDecodeDocuments feeds arbitrary bytes to the decoders of what
// ThreatQ sends: none may panic, whatever a server (or a proxy in front
// of it) answers.
func FuzzDecodeDocuments(f *testing.F) {
	for _, s := range []string{
		`{"total":1,"data":[{"id":1,"type":{"name":"MD5"},"value":"a"}],"nextCursorMark":"x","limit":1}`,
		`{"total":"4090","data":{},"nextCursorMark":"x","limit":"100"}`,
		`{"data":{"a":1}}`,
		`{"total":1,"data":[{"id":"7","type":"FQDN","value":null}]}`,
		`{"data":{"errors":{"name":["taken"],"x":[["a"],{"detail":"d"}]}}}`,
		`{"errors":["First",["a","b"],{"title":"t"}]}`,
		`{"error":"invalid_client","error_description":"no","message":"no"}`,
		`<html>502 Bad Gateway</html>`,
		`{"access_token":"t","expires_in":"3600"}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		var p CollectionPage
		if p.DecodeRaw(b) == nil && !json.Valid(b) {
			t.Fatalf("decoded invalid JSON %q", b)
		}
		var l AttributeList
		_ = json.Unmarshal(b, &l)
		var tr TokenResponse
		_ = json.Unmarshal(b, &tr)
		var sl SearchList
		_ = json.Unmarshal(b, &sl)
		var in Indicator
		_ = json.Unmarshal(b, &in)
		_ = ParseErrorBody(b)
		_, _, _ = AnswerErrors(b)
	})
}
