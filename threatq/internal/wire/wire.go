// Package wire holds the documents ThreatQ sends, as the client reads
// them. The client, the export reader's tests and the simulator's tests
// share them, so that the simulator's answers are held to the same decoding
// as the public fixtures; they are internal because no caller of the client
// needs them. Decoding is tolerant where public sources show more than one
// shape (numbers as strings, an empty "data" sent as {} rather than []).
package wire

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"unicode/utf8"
)

// Indicator is one ThreatQ indicator, decoded as threatq.Indicator
// documents it. It has exactly the fields of threatq.Indicator, which is
// converted from it: a field added to one must be added to the other, or
// the conversion stops compiling.
type Indicator struct {
	ID         int64                `json:"id"`
	Type       string               `json:"type"`
	Value      string               `json:"value"`
	Attributes []IndicatorAttribute `json:"attributes,omitempty"`
}

// IndicatorAttribute is one attribute row as an indicator object embeds it:
// the row's id (to change it in place), its name and its value.
type IndicatorAttribute struct {
	ID    int64  `json:"id"`
	Name  string `json:"name"`
	Value string `json:"value"`
}

// UnmarshalJSON implements json.Unmarshaler with the tolerance described on
// threatq.Indicator.
func (in *Indicator) UnmarshalJSON(b []byte) error {
	var w indicatorFields
	if err := json.Unmarshal(b, &w); err != nil {
		return fmt.Errorf("indicator: %w", err)
	}
	*in = w.indicator()
	return nil
}

// indicatorFields decodes an indicator with custom decoding on its leaf
// fields only: a custom decoder on the whole object would make
// encoding/json scan every indicator of a page twice more.
type indicatorFields struct {
	ID         flexInt           `json:"id"`
	Type       flexName          `json:"type"`
	Value      FlexString        `json:"value"`
	Attributes []attributeFields `json:"attributes"`
}

type attributeFields struct {
	ID    flexInt    `json:"id"`
	Name  FlexString `json:"name"`
	Value FlexString `json:"value"`
}

func (w indicatorFields) indicator() Indicator {
	in := Indicator{ID: int64(w.ID), Type: string(w.Type), Value: string(w.Value)}
	// Present and empty stays empty, not nil: the object said it has none.
	if w.Attributes != nil {
		in.Attributes = make([]IndicatorAttribute, len(w.Attributes))
		for i, a := range w.Attributes {
			in.Attributes[i] = IndicatorAttribute{ID: int64(a.ID), Name: string(a.Name), Value: string(a.Value)}
		}
	}
	return in
}

// CollectionPage is one page of GET /api/indicators/query/hash/{hash}:
// {"total","data":[…],"nextCursorMark","limit"}. The last page's "data" is
// an empty object, which decodes as no indicators.
type CollectionPage struct {
	Total          int64       `json:"total"`
	Data           []Indicator `json:"data"`
	NextCursorMark string      `json:"nextCursorMark"`
	Limit          int64       `json:"limit"`
}

// UnmarshalJSON implements json.Unmarshaler.
func (p *CollectionPage) UnmarshalJSON(b []byte) error { return p.DecodeRaw(b) }

// DecodeRaw decodes a page in one pass in the common case (data is an
// array); the client calls it directly rather than through json.Unmarshal,
// which would scan the page once more to find its end.
func (p *CollectionPage) DecodeRaw(b []byte) error {
	var w struct {
		Total          flexInt           `json:"total"`
		Data           []indicatorFields `json:"data"`
		NextCursorMark string            `json:"nextCursorMark"`
		Limit          flexInt           `json:"limit"`
	}
	err := json.Unmarshal(b, &w)
	var data []Indicator
	var te *json.UnmarshalTypeError
	switch {
	case err == nil:
		data = make([]Indicator, len(w.Data))
		for i, x := range w.Data {
			data[i] = x.indicator()
		}
	case errors.As(err, &te) && te.Field == "data":
		// Not an array: the last page's "data": {} (decoded again, as the
		// first try left it out; the page is tiny).
		var again struct {
			Data rawList `json:"data"`
		}
		if err := json.Unmarshal(b, &again); err != nil {
			return fmt.Errorf("collection page: %w", err)
		}
		if _, err := decodeList[indicatorFields](again.Data); err != nil {
			return fmt.Errorf("collection page data: %w", err)
		}
	default:
		return fmt.Errorf("collection page: %w", err)
	}
	*p = CollectionPage{Total: int64(w.Total), Data: data, NextCursorMark: w.NextCursorMark, Limit: int64(w.Limit)}
	return nil
}

// TokenResponse is the answer of POST /api/token. ExpiresIn is in seconds;
// zero means the server did not say.
type TokenResponse struct {
	AccessToken  string `json:"access_token"`
	TokenType    string `json:"token_type"`
	ExpiresIn    int64  `json:"expires_in"`
	RefreshToken string `json:"refresh_token"`
}

// UnmarshalJSON implements json.Unmarshaler (expires_in may be a string).
func (t *TokenResponse) UnmarshalJSON(b []byte) error {
	var w struct {
		AccessToken  string  `json:"access_token"`
		TokenType    string  `json:"token_type"`
		ExpiresIn    flexInt `json:"expires_in"`
		RefreshToken string  `json:"refresh_token"`
	}
	if err := json.Unmarshal(b, &w); err != nil {
		return fmt.Errorf("token response: %w", err)
	}
	*t = TokenResponse{AccessToken: w.AccessToken, TokenType: w.TokenType, ExpiresIn: int64(w.ExpiresIn), RefreshToken: w.RefreshToken}
	return nil
}

// AttributeRow is one attribute of an indicator as ThreatQ lists it: the
// row's own ID (used to change or remove it), the attribute's type id, its
// name and value, and the sources that set it.
type AttributeRow struct {
	ID          int64    `json:"id"`
	AttributeID int64    `json:"attribute_id"`
	Name        string   `json:"name"`
	Value       string   `json:"value"`
	Sources     []Source `json:"sources,omitempty"`
}

// UnmarshalJSON implements json.Unmarshaler.
func (a *AttributeRow) UnmarshalJSON(b []byte) error {
	var w struct {
		ID          flexInt    `json:"id"`
		AttributeID flexInt    `json:"attribute_id"`
		Name        FlexString `json:"name"`
		Value       FlexString `json:"value"`
		Sources     rawList    `json:"sources"`
	}
	if err := json.Unmarshal(b, &w); err != nil {
		return fmt.Errorf("attribute: %w", err)
	}
	sources, err := decodeList[Source](w.Sources)
	if err != nil {
		return fmt.Errorf("attribute sources: %w", err)
	}
	*a = AttributeRow{ID: int64(w.ID), AttributeID: int64(w.AttributeID), Name: string(w.Name), Value: string(w.Value), Sources: sources}
	return nil
}

// AttributeList is the answer of GET /api/indicators/{id}/attributes.
type AttributeList struct {
	Total int64          `json:"total"`
	Data  []AttributeRow `json:"data"`
}

// UnmarshalJSON implements json.Unmarshaler.
func (l *AttributeList) UnmarshalJSON(b []byte) error {
	var w struct {
		Total flexInt `json:"total"`
		Data  rawList `json:"data"`
	}
	if err := json.Unmarshal(b, &w); err != nil {
		return fmt.Errorf("attribute list: %w", err)
	}
	data, err := decodeList[AttributeRow](w.Data)
	if err != nil {
		return fmt.Errorf("attribute list data: %w", err)
	}
	*l = AttributeList{Total: int64(w.Total), Data: data}
	return nil
}

// SavedSearch is one saved search (a data collection) of GET
// /api/search/query: its hash and name, the fields a collection's name is
// matched by.
type SavedSearch struct {
	Hash FlexString `json:"hash"`
	Name FlexString `json:"name"`
}

// SearchList is the answer of GET /api/search/query:
// {"total","data":[{"id","name","hash",…}]}; an empty "data" may be {}.
type SearchList struct {
	Total int64
	Data  []SavedSearch
}

// UnmarshalJSON implements json.Unmarshaler.
func (l *SearchList) UnmarshalJSON(b []byte) error {
	var w struct {
		Total flexInt `json:"total"`
		Data  rawList `json:"data"`
	}
	if err := json.Unmarshal(b, &w); err != nil {
		return fmt.Errorf("saved search list: %w", err)
	}
	data, err := decodeList[SavedSearch](w.Data)
	if err != nil {
		return fmt.Errorf("saved search list data: %w", err)
	}
	*l = SearchList{Total: int64(w.Total), Data: data}
	return nil
}

// Source names who set an attribute or reported an indicator.
type Source struct {
	Name string `json:"name"`
}

// rawList keeps a JSON value for decodeList. Unlike json.RawMessage it is
// only ever decoded from, so it need not copy on Marshal.
type rawList []byte

func (r *rawList) UnmarshalJSON(b []byte) error {
	*r = append((*r)[:0], b...)
	return nil
}

// decodeList decodes an array of T, and accepts null, absent or an empty
// object as no elements: ThreatQ answers the last page of a collection
// with "data": {}.
func decodeList[T any](b []byte) ([]T, error) {
	b = bytes.TrimSpace(b)
	if len(b) == 0 || string(b) == "null" {
		return nil, nil
	}
	switch b[0] {
	case '[':
		var out []T
		if err := json.Unmarshal(b, &out); err != nil {
			return nil, err
		}
		return out, nil
	case '{':
		var m map[string]json.RawMessage
		if err := json.Unmarshal(b, &m); err != nil {
			return nil, err
		}
		if len(m) == 0 {
			return nil, nil
		}
		return nil, errors.New("an object with members where a list was expected")
	default:
		return nil, fmt.Errorf("a JSON %s where a list was expected", kind(b[0]))
	}
}

func kind(c byte) string {
	switch c {
	case '"':
		return "string"
	case 't', 'f':
		return "boolean"
	case '{':
		return "object"
	case '[':
		return "array"
	default:
		return "number"
	}
}

// flexInt decodes a JSON integer, a string holding one, or null (zero).
type flexInt int64

func (n *flexInt) UnmarshalJSON(b []byte) error {
	s := string(b)
	if s == "null" {
		*n = 0
		return nil
	}
	if len(s) > 0 && s[0] == '"' {
		var str string
		if err := json.Unmarshal(b, &str); err != nil {
			return err
		}
		s = str
	}
	v, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return fmt.Errorf("not an integer: %.40q", s)
	}
	*n = flexInt(v)
	return nil
}

// FlexString decodes a JSON string or null (empty).
type FlexString string

// UnmarshalJSON implements json.Unmarshaler.
func (s *FlexString) UnmarshalJSON(b []byte) error {
	if string(b) == "null" {
		*s = ""
		return nil
	}
	if len(b) == 0 {
		return errors.New("empty JSON value")
	}
	if b[0] != '"' {
		return fmt.Errorf("a JSON %s where a string was expected", kind(b[0]))
	}
	// The decoder calling us has checked the document: a string without
	// escapes is its bytes between the quotes (if they are valid UTF-8,
	// which encoding/json would otherwise mend).
	if inner := b[1 : len(b)-1]; len(b) >= 2 && bytes.IndexByte(inner, '\\') < 0 && utf8.Valid(inner) {
		*s = FlexString(inner)
		return nil
	}
	var str string
	if err := json.Unmarshal(b, &str); err != nil {
		return err
	}
	*s = FlexString(str)
	return nil
}

// flexName decodes an indicator type given as its name ("SHA-256") or as
// the API's object {"id","name","class"}, or null.
type flexName string

func (n *flexName) UnmarshalJSON(b []byte) error {
	if len(b) > 0 && b[0] == '{' {
		var o struct {
			Name FlexString `json:"name"`
		}
		if err := json.Unmarshal(b, &o); err != nil {
			return err
		}
		*n = flexName(o.Name)
		return nil
	}
	var s FlexString
	if err := s.UnmarshalJSON(b); err != nil {
		return err
	}
	*n = flexName(s)
	return nil
}
