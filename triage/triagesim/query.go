package triagesim

import (
	"cmp"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// Filters follow Triage's documented form: filter[ATTR] or
// filter[ATTR_OP], where a comma separates values that OR together.
// String attributes take no operator (exact), _eq, _not_eq, _cont and
// _start; timestamps take exact, _eq, _gt, _gteq, _lt and _lteq; id takes
// exact and _eq. Anything else is refused the way jsonapi-resources refuses
// it (400 "Filter not allowed").

type attr int

const (
	attrID attr = iota
	attrLevel
	attrType
	attrValue
	attrSource
	attrCreated
	attrUpdated
)

var attrNames = map[string]attr{
	"id": attrID, "threat_level": attrLevel, "threat_type": attrType, "threat_value": attrValue,
	"threat_source": attrSource, "created_at": attrCreated, "updated_at": attrUpdated,
}

// attributeNames are the resource's attributes, for sparse fieldsets.
var attributeNames = map[string]bool{
	"threat_level": true, "threat_type": true, "threat_value": true, "threat_source": true,
	"created_at": true, "updated_at": true,
}

func (a attr) str(r *record) string {
	switch a {
	case attrLevel:
		return r.level
	case attrType:
		return r.typ
	case attrValue:
		return r.value
	case attrSource:
		return r.source
	}
	return ""
}

func (a attr) time(r *record) time.Time {
	if a == attrCreated {
		return r.created
	}
	return r.updated
}

type filter struct {
	attr   attr
	op     string // "", "not_eq", "cont", "start", "gt", "gteq", "lt", "lteq"
	values []string
	ids    []int64
	times  []time.Time
}

var stringOps = map[string]bool{"": true, "not_eq": true, "cont": true, "start": true}
var timeOps = map[string]bool{"": true, "gt": true, "gteq": true, "lt": true, "lteq": true}

// parseFilter reads one filter[NAME]=raw. ok is false for a filter Triage
// would not allow; badValue is set for a value that does not parse.
func parseFilter(name, raw string) (f filter, ok bool, badValue bool) {
	a, known := attrNames[name]
	op := ""
	if !known {
		for _, suffix := range []string{"not_eq", "eq", "cont", "start", "gteq", "gt", "lteq", "lt"} {
			if base, found := strings.CutSuffix(name, "_"+suffix); found {
				if a, known = attrNames[base]; known {
					op = suffix
					break
				}
			}
		}
		if !known {
			return f, false, false
		}
	}
	if op == "eq" {
		op = ""
	}
	f = filter{attr: a, op: op, values: strings.Split(raw, ",")}
	switch a {
	case attrID:
		if op != "" {
			return f, false, false
		}
		for _, v := range f.values {
			id, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
			if err != nil {
				return f, true, true
			}
			f.ids = append(f.ids, id)
		}
	case attrCreated, attrUpdated:
		if !timeOps[op] {
			return f, false, false
		}
		for _, v := range f.values {
			t, err := parseTime(strings.TrimSpace(v))
			if err != nil {
				return f, true, true
			}
			f.times = append(f.times, t)
		}
	default:
		if !stringOps[op] {
			return f, false, false
		}
	}
	return f, true, false
}

func parseTime(v string) (time.Time, error) {
	if t, err := time.Parse(time.RFC3339Nano, v); err == nil {
		return t, nil
	}
	return time.Parse(time.DateOnly, v)
}

func (f *filter) match(r *record) bool {
	switch f.attr {
	case attrID:
		for _, id := range f.ids {
			if r.id == id {
				return true
			}
		}
		return false
	case attrCreated, attrUpdated:
		t := f.attr.time(r)
		for _, want := range f.times {
			c := t.Compare(want)
			if (f.op == "" && c == 0) || (f.op == "gt" && c > 0) || (f.op == "gteq" && c >= 0) ||
				(f.op == "lt" && c < 0) || (f.op == "lteq" && c <= 0) {
				return true
			}
		}
		return false
	}
	got := f.attr.str(r)
	if f.op == "not_eq" {
		for _, v := range f.values {
			if got == v {
				return false
			}
		}
		return true
	}
	for _, v := range f.values {
		if (f.op == "" && got == v) || (f.op == "cont" && strings.Contains(got, v)) ||
			(f.op == "start" && strings.HasPrefix(got, v)) {
			return true
		}
	}
	return false
}

type sortKey struct {
	attr attr
	desc bool
}

func parseSort(raw string) ([]sortKey, bool) {
	var keys []sortKey
	for part := range strings.SplitSeq(raw, ",") {
		desc := strings.HasPrefix(part, "-")
		a, ok := attrNames[strings.TrimPrefix(part, "-")]
		if !ok {
			return nil, false
		}
		keys = append(keys, sortKey{a, desc})
	}
	return keys, true
}

func compareBy(a, b *record, keys []sortKey) int {
	for _, k := range keys {
		var c int
		switch k.attr {
		case attrID:
			c = cmp.Compare(a.id, b.id)
		case attrCreated, attrUpdated:
			c = k.attr.time(a).Compare(k.attr.time(b))
		default:
			c = strings.Compare(k.attr.str(a), k.attr.str(b))
		}
		if k.desc {
			c = -c
		}
		if c != 0 {
			return c
		}
	}
	return cmp.Compare(a.id, b.id)
}

// listParams are the query parameters kept in a page's links, as
// jsonapi-resources keeps them: filters, sort and fields, besides page.
func listParams(in url.Values) url.Values {
	out := url.Values{}
	for k, v := range in {
		if strings.HasPrefix(k, "filter[") || strings.HasPrefix(k, "fields[") || k == "sort" {
			out[k] = v
		}
	}
	return out
}
