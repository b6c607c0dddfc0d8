package triagesim

import (
	"cmp"
	"slices"
	"strconv"
	"sync"
	"time"
	"unicode/utf8"
)

// Indicator is a threat indicator held by the simulator.
type Indicator struct {
	ID           string // decimal, assigned by the simulator
	ThreatLevel  string
	ThreatType   string
	ThreatValue  string
	ThreatSource string
	CreatedAt    time.Time
	UpdatedAt    time.Time
}

// The values Triage accepts; case matters.
var (
	threatLevels = map[string]bool{"Malicious": true, "Suspicious": true, "Benign": true}
	threatTypes  = map[string]bool{
		"Hostname": true, "URL": true, "MD5": true, "SHA256": true,
		"Header": true, "Sender": true, "Subject": true, "Domain": true,
	}
)

// minValueLen is Triage's shortest threat_value, in characters.
const minValueLen = 3

type key struct{ typ, value string }

// record is an indicator in the store. Its fields change only under the
// store's write lock; readers copy it out under the read lock.
type record struct {
	id                        int64
	level, typ, value, source string
	created, updated          time.Time
}

func (r *record) export() Indicator {
	return Indicator{
		ID: strconv.FormatInt(r.id, 10), ThreatLevel: r.level, ThreatType: r.typ, ThreatValue: r.value,
		ThreatSource: r.source, CreatedAt: r.created, UpdatedAt: r.updated,
	}
}

// store indexes indicators by id and by type+value, so that create, get,
// update and an exact find cost a map lookup whatever the store's size.
// A type+value holds one indicator per source, or one in all (unique). The
// records of a key are in id order. ordered (by id, ascending,
// append-only) serves unfiltered pages by slicing.
type store struct {
	mu      sync.RWMutex
	byID    map[int64]*record
	byKey   map[key][]*record
	ordered []*record
	lastID  int64
}

func newStore() *store {
	return &store{byID: map[int64]*record{}, byKey: map[key][]*record{}}
}

// taken reports whether an indicator of k may not be added (or moved to
// source) beside the records already there, under rule u. except is the
// record being changed, if any.
func (s *store) taken(k key, source string, u Uniqueness, except *record) bool {
	for _, r := range s.byKey[k] {
		if r != except && (u == UniquePerValue || r.source == source) {
			return true
		}
	}
	return false
}

// validation errors, as jsonapi-resources words them.
type fieldError struct{ attr, msg string }

const (
	msgBlank    = "can't be blank"
	msgNotIn    = "is not included in the list"
	msgTooShort = "is too short (minimum is 3 characters)"
	msgTaken    = "has already been taken"
)

func checkLevel(level string, errs []fieldError) []fieldError {
	switch {
	case level == "":
		return append(errs, fieldError{"threat_level", msgBlank})
	case !threatLevels[level]:
		return append(errs, fieldError{"threat_level", msgNotIn})
	}
	return errs
}

func checkNew(in *Indicator) []fieldError {
	errs := checkLevel(in.ThreatLevel, nil)
	switch {
	case in.ThreatType == "":
		errs = append(errs, fieldError{"threat_type", msgBlank})
	case !threatTypes[in.ThreatType]:
		errs = append(errs, fieldError{"threat_type", msgNotIn})
	}
	switch {
	case in.ThreatValue == "":
		errs = append(errs, fieldError{"threat_value", msgBlank})
	case utf8.RuneCountInString(in.ThreatValue) < minValueLen:
		errs = append(errs, fieldError{"threat_value", msgTooShort})
	}
	return errs
}

// create validates and stores in, stamping it with now unless it carries
// its own times (Seed). Uniqueness is checked once the rest is valid, under
// the same lock as the insert, so that of concurrent creates of one
// type+value exactly one wins.
func (s *store) create(in Indicator, now time.Time, u Uniqueness) (Indicator, []fieldError) {
	if errs := checkNew(&in); len(errs) > 0 {
		return Indicator{}, errs
	}
	if in.CreatedAt.IsZero() {
		in.CreatedAt = now
	}
	if in.UpdatedAt.IsZero() {
		in.UpdatedAt = in.CreatedAt
	}
	k := key{in.ThreatType, in.ThreatValue}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.taken(k, in.ThreatSource, u, nil) {
		return Indicator{}, []fieldError{{"threat_value", msgTaken}}
	}
	s.lastID++
	r := &record{
		id: s.lastID, level: in.ThreatLevel, typ: in.ThreatType, value: in.ThreatValue, source: in.ThreatSource,
		created: in.CreatedAt.UTC().Truncate(time.Millisecond), updated: in.UpdatedAt.UTC().Truncate(time.Millisecond),
	}
	s.byID[r.id] = r
	s.byKey[k] = append(s.byKey[k], r)
	s.ordered = append(s.ordered, r)
	return r.export(), nil
}

// update sets level and/or source (nil: unchanged) of indicator id. A
// source that another indicator of the same type and value holds already
// is refused, as a create of it would be.
func (s *store) update(id int64, level, source *string, now time.Time, u Uniqueness) (Indicator, bool, []fieldError) {
	if level != nil {
		if errs := checkLevel(*level, nil); len(errs) > 0 {
			// Rails validates after the lookup; an unknown id is still 404.
			if _, ok := s.get(id); !ok {
				return Indicator{}, false, nil
			}
			return Indicator{}, true, errs
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	r, ok := s.byID[id]
	if !ok {
		return Indicator{}, false, nil
	}
	if source != nil && *source != r.source && s.taken(key{r.typ, r.value}, *source, u, r) {
		return Indicator{}, true, []fieldError{{"threat_value", msgTaken}}
	}
	changed := false
	if level != nil && *level != r.level {
		r.level, changed = *level, true
	}
	if source != nil && *source != r.source {
		r.source, changed = *source, true
	}
	if changed {
		r.updated = now
	}
	return r.export(), true, nil
}

func (s *store) get(id int64) (Indicator, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if r, ok := s.byID[id]; ok {
		return r.export(), true
	}
	return Indicator{}, false
}

// find returns the first indicator of typ and value (lowest id) whose
// source is source, or of any source when source is "*".
func (s *store) find(typ, value, source string) (Indicator, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	for _, r := range s.byKey[key{typ, value}] {
		if source == "*" || r.source == source {
			return r.export(), true
		}
	}
	return Indicator{}, false
}

func (s *store) all() []Indicator {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := make([]Indicator, len(s.ordered))
	for i, r := range s.ordered {
		out[i] = r.export()
	}
	return out
}

func (s *store) len() int {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return len(s.ordered)
}

// query is a parsed list request.
type query struct {
	filters []filter
	// exact type and value filters, when both are given: the index answers.
	types, values []string
	sort          []sortKey
	number, size  int
}

// page returns the indicators of q's page and how many match in all.
func (s *store) page(q *query) ([]Indicator, int) {
	s.mu.RLock()
	var matched []*record
	switch {
	case q.types != nil && q.values != nil:
		for _, t := range q.types {
			for _, v := range q.values {
				for _, r := range s.byKey[key{t, v}] {
					if matchAll(r, q.filters) {
						matched = append(matched, r)
					}
				}
			}
		}
		slices.SortFunc(matched, func(a, b *record) int { return cmp.Compare(a.id, b.id) })
		matched = slices.Compact(matched) // a value named twice in one filter
	case len(q.filters) == 0:
		matched = s.ordered // already in id order; sliced below, never changed
	default:
		for _, r := range s.ordered {
			if matchAll(r, q.filters) {
				matched = append(matched, r)
			}
		}
	}
	if len(q.sort) > 0 {
		if len(q.filters) == 0 && q.types == nil {
			matched = slices.Clone(matched)
		}
		slices.SortStableFunc(matched, func(a, b *record) int { return compareBy(a, b, q.sort) })
	}
	total := len(matched)
	from := min((q.number-1)*q.size, total)
	to := min(from+q.size, total)
	out := make([]Indicator, 0, to-from)
	for _, r := range matched[from:to] {
		out = append(out, r.export())
	}
	s.mu.RUnlock()
	return out, total
}

func matchAll(r *record, fs []filter) bool {
	for i := range fs {
		if !fs[i].match(r) {
			return false
		}
	}
	return true
}
