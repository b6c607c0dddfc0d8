package triagesim

import (
	"bytes"
	"encoding/json"
	"net/http"
	"strconv"
	"strings"
)

// A create or update request, decoded in one pass (this is the hot path of
// every benchmark) while still giving each deviation the error
// jsonapi-resources would give it: unknown keys are refused by name.
type inputDocument struct {
	Data *inputResource `json:"data"`
}

type inputResource struct {
	ID         json.RawMessage  `json:"id"`
	Type       json.RawMessage  `json:"type"`
	Attributes *inputAttributes `json:"attributes"`
}

type inputAttributes struct {
	ThreatLevel  json.RawMessage `json:"threat_level"`
	ThreatType   json.RawMessage `json:"threat_type"`
	ThreatValue  json.RawMessage `json:"threat_value"`
	ThreatSource json.RawMessage `json:"threat_source"`
}

// inputValue is one attribute of a request: set when present, null or not
// (null reads as "").
type inputValue struct {
	set  bool
	name string
	val  string
}

func (a inputValue) ptr() *string {
	if !a.set {
		return nil
	}
	return &a.val
}

type inputAttrs struct {
	level, typ, value, source inputValue
}

// onlyUpdatable refuses, as jsonapi-resources does for fields outside
// updatable_fields, an update that names the type or the value.
func (a *inputAttrs) onlyUpdatable() *errorObject {
	for _, v := range []inputValue{a.typ, a.value} {
		if v.set {
			e := newError(http.StatusBadRequest, "105", "Param not allowed", v.name+" is not allowed.")
			return &e
		}
	}
	return nil
}

// parseResource reads the data of a create (wantID "") or an update
// (wantID the URL's id).
func parseResource(body []byte, wantID string) (*inputAttrs, *errorObject) {
	bad := func(code, title, detail string) (*inputAttrs, *errorObject) {
		e := newError(http.StatusBadRequest, code, title, detail)
		return nil, &e
	}
	var doc inputDocument
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&doc); err != nil {
		if name, ok := strings.CutPrefix(err.Error(), "json: unknown field "); ok {
			if unq, err := strconv.Unquote(name); err == nil {
				name = unq
			}
			return bad("105", "Param not allowed", name+" is not allowed.")
		}
		return bad("400", "Bad request", "The request body is not a JSON:API document.")
	}
	if doc.Data == nil {
		return bad("106", "Missing Parameter", "The required parameter, data, is missing.")
	}
	d := doc.Data
	typ, ok := rawString(d.Type)
	if !ok || typ == "" {
		return bad("106", "Missing Parameter", "The required parameter, type, is missing.")
	}
	if typ != resourceType {
		return bad("101", "Invalid resource", typ+" is not a valid resource.")
	}
	switch {
	case wantID == "" && d.ID != nil:
		return bad("105", "Param not allowed", "id is not allowed.")
	case wantID != "":
		id, ok := rawString(d.ID)
		if !ok || id == "" {
			return bad("106", "Missing Parameter", "The required parameter, id, is missing.")
		}
		if id != wantID {
			return bad("113", "Key is not included in URL", "The URL does not support the key "+id)
		}
	}
	out := &inputAttrs{
		level: inputValue{name: "threat_level"}, typ: inputValue{name: "threat_type"},
		value: inputValue{name: "threat_value"}, source: inputValue{name: "threat_source"},
	}
	if d.Attributes == nil {
		return out, nil
	}
	for _, f := range []struct {
		raw json.RawMessage
		dst *inputValue
	}{
		{d.Attributes.ThreatLevel, &out.level}, {d.Attributes.ThreatType, &out.typ},
		{d.Attributes.ThreatValue, &out.value}, {d.Attributes.ThreatSource, &out.source},
	} {
		if f.raw == nil {
			continue
		}
		v, ok := rawString(f.raw)
		if !ok {
			return bad("103", "Invalid field value", string(f.raw)+" is not a valid value for "+f.dst.name+".")
		}
		f.dst.set, f.dst.val = true, v
	}
	return out, nil
}

// rawString reads a JSON string or null ("", true); anything else is not ok.
func rawString(raw json.RawMessage) (string, bool) {
	if raw == nil || string(raw) == "null" {
		return "", raw != nil
	}
	var s string
	if raw[0] != '"' || json.Unmarshal(raw, &s) != nil {
		return "", false
	}
	return s, true
}
