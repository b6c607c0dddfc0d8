package threatqsim

import (
	"strconv"
	"unicode/utf8"
)

// appendPage appends a collection page's JSON. It writes by hand what
// encoding/json would make of collectionPageDoc, because pages are the
// simulator's hot path: a test reads 200,000 indicators, and reflection
// under the race detector made serving them take longer than reading them.
// encode_test.go holds it to encoding/json's output.
func appendPage(b []byte, total int, docs []indicatorDoc, next string, limit int) []byte {
	b = append(b, `{"total":`...)
	b = strconv.AppendInt(b, int64(total), 10)
	b = append(b, `,"data":`...)
	if len(docs) == 0 {
		b = append(b, "{}"...) // the last page, as ThreatQ sends it
	} else {
		b = append(b, '[')
		for i := range docs {
			if i > 0 {
				b = append(b, ',')
			}
			b = appendIndicator(b, &docs[i])
		}
		b = append(b, ']')
	}
	b = append(b, `,"nextCursorMark":`...)
	b = appendString(b, next)
	b = append(b, `,"limit":`...)
	b = strconv.AppendInt(b, int64(limit), 10)
	return append(b, '}')
}

func appendIndicator(b []byte, d *indicatorDoc) []byte {
	b = appendKey(b, '{', "class", d.Class)
	b = appendIntKey(b, "score", int64(d.Score))
	b = appendKey(b, ',', "value", d.Value)
	b = appendKey(b, ',', "expires_calculated_at", d.ExpiresCalculatedAt)
	b = appendKey(b, ',', "touched_at", d.TouchedAt)
	b = appendIntKey(b, "id", d.ID)
	b = appendKey(b, ',', "updated_at", d.UpdatedAt)
	b = appendKey(b, ',', "published_at", d.PublishedAt)
	b = appendKey(b, ',', "created_at", d.CreatedAt)
	b = appendIntKey(b, "status_id", d.StatusID)
	b = appendKey(b, ',', "hash", d.Hash)
	b = appendIntKey(b, "type_id", d.TypeID)
	b = append(b, `,"adversaries":[]`...)
	b = appendName(b, ',', "type")
	b = appendKey(b, '{', "name", d.Type.Name)
	b = appendIntKey(b, "id", d.Type.ID)
	b = appendKey(b, ',', "class", d.Type.Class)
	b = appendName(append(b, '}'), ',', "status")
	b = appendKey(b, '{', "name", d.Status.Name)
	b = appendIntKey(b, "id", d.Status.ID)
	b = appendKey(b, ',', "description", d.Status.Description)
	b = append(b, `},"attributes":[`...)
	for i := range d.Attributes {
		a := &d.Attributes[i]
		if i > 0 {
			b = append(b, ',')
		}
		b = appendKey(b, '{', "value", a.Value)
		b = appendKey(b, ',', "created_at", a.CreatedAt)
		b = appendIntKey(b, "indicator_id", a.IndicatorID)
		b = appendKey(b, ',', "updated_at", a.UpdatedAt)
		b = appendIntKey(b, "attribute_id", a.AttributeID)
		b = appendIntKey(b, "id", a.ID)
		b = appendKey(b, ',', "touched_at", a.TouchedAt)
		b = appendKey(b, ',', "name", a.Name)
		b = append(b, '}')
	}
	b = append(b, `],"sources":[`...)
	for i := range d.Sources {
		s := &d.Sources[i]
		if i > 0 {
			b = append(b, ',')
		}
		b = strconv.AppendInt(appendName(b, '{', "indicator_id"), s.IndicatorID, 10)
		b = appendIntKey(b, "indicator_status_id", s.IndicatorStatusID)
		b = appendKey(b, ',', "published_at", s.PublishedAt)
		b = appendIntKey(b, "source_id", s.SourceID)
		b = appendIntKey(b, "id", s.ID)
		b = appendKey(b, ',', "created_at", s.CreatedAt)
		b = appendKey(b, ',', "source_type", s.SourceType)
		b = appendIntKey(b, "creator_source_id", s.CreatorSourceID)
		b = appendIntKey(b, "indicator_type_id", s.IndicatorTypeID)
		b = appendIntKey(b, "reference_id", s.ReferenceID)
		b = appendKey(b, ',', "updated_at", s.UpdatedAt)
		b = appendKey(b, ',', "name", s.Name)
		b = append(b, '}')
	}
	return append(b, "]}"...)
}

// appendName appends sep and "key": (keys here need no escaping).
func appendName(b []byte, sep byte, key string) []byte {
	b = append(b, sep, '"')
	b = append(b, key...)
	return append(b, '"', ':')
}

// appendKey appends sep, "key": and the string value.
func appendKey(b []byte, sep byte, key, value string) []byte {
	return appendString(appendName(b, sep, key), value)
}

// appendIntKey appends ,"key": and the number.
func appendIntKey(b []byte, key string, v int64) []byte {
	return strconv.AppendInt(appendName(b, ',', key), v, 10)
}

const hexDigits = "0123456789abcdef"

// appendString appends s as a JSON string, escaped as encoding/json does
// (control characters, quotes, backslashes, U+2028/U+2029, and invalid
// UTF-8 as U+FFFD), except that <, > and & are left as they are.
func appendString(b []byte, s string) []byte {
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' {
				i++
				continue
			}
			b = append(b, s[start:i]...)
			switch c {
			case '"', '\\':
				b = append(b, '\\', c)
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			case '\b':
				b = append(b, '\\', 'b')
			case '\f':
				b = append(b, '\\', 'f')
			default:
				b = append(b, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xF])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b = append(b, s[start:i]...)
			b = append(b, `\ufffd`...)
			i += size
			start = i
			continue
		}
		if r == '\u2028' || r == '\u2029' {
			b = append(b, s[start:i]...)
			b = append(b, '\\', 'u', '2', '0', '2', hexDigits[r&0xF])
			i += size
			start = i
			continue
		}
		i += size
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}
