package triage

import (
	"context"
	"errors"
	"fmt"
	"iter"
	"maps"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/tqtriage/tqtriage/triage/internal/wire"
)

// Indicator is a Triage threat indicator.
type Indicator struct {
	ID           string
	ThreatLevel  string // Malicious, Suspicious, Benign
	ThreatType   string // Hostname, URL, MD5, SHA256, …
	ThreatValue  string
	ThreatSource string
	CreatedAt    time.Time
	UpdatedAt    time.Time
}

// NewIndicator is what CreateIndicator sends. Triage validates it (level and
// type from fixed lists, a value of at least 3 characters, one indicator per
// type and value) and answers ErrValidation or ErrDuplicate.
type NewIndicator struct {
	ThreatLevel  string
	ThreatType   string
	ThreatValue  string
	ThreatSource string
}

const indicatorsPath = "/threat_indicators"

// MaxPageSize is the largest page Triage serves.
const MaxPageSize = 200

// CreateIndicator creates an indicator. An indicator of the same type and
// value that exists already is ErrDuplicate: look it up with FindIndicator.
//
// A create that failed in transit may have reached Triage all the same: a
// caller that tries it again may be answered ErrDuplicate.
func (c *Client) CreateIndicator(ctx context.Context, in NewIndicator) (*Indicator, error) {
	k, err := c.newCall(http.MethodPost, indicatorsPath, nil, requestDocument{Data: requestResource{
		Type: wire.ResourceType,
		Attributes: requestAttributes{
			ThreatLevel:  in.ThreatLevel,
			ThreatType:   in.ThreatType,
			ThreatValue:  in.ThreatValue,
			ThreatSource: in.ThreatSource,
		},
	}})
	if err != nil {
		return nil, err
	}
	return c.indicator(ctx, k)
}

// UpdateIndicator sets an indicator's threat level and source, the two
// attributes Triage lets an update change. An empty one is not sent, and
// stays as it is.
func (c *Client) UpdateIndicator(ctx context.Context, id, level, source string) (*Indicator, error) {
	path, err := indicatorPath(id)
	if err != nil {
		return nil, err
	}
	k, err := c.newCall(http.MethodPut, path, nil, requestDocument{Data: requestResource{
		ID:         id,
		Type:       wire.ResourceType,
		Attributes: requestAttributes{ThreatLevel: level, ThreatSource: source},
	}})
	if err != nil {
		return nil, err
	}
	return c.indicator(ctx, k)
}

// GetIndicator reads one indicator by id; an unknown id is ErrNotFound.
func (c *Client) GetIndicator(ctx context.Context, id string) (*Indicator, error) {
	path, err := indicatorPath(id)
	if err != nil {
		return nil, err
	}
	k, err := c.newCall(http.MethodGet, path, nil, nil)
	if err != nil {
		return nil, err
	}
	return c.indicator(ctx, k)
}

func indicatorPath(id string) (string, error) {
	if strings.TrimSpace(id) == "" {
		return "", errors.New("triage: empty indicator id")
	}
	return indicatorsPath + "/" + url.PathEscape(id), nil
}

// indicator runs a call answered by one threat indicator document.
func (c *Client) indicator(ctx context.Context, k call) (*Indicator, error) {
	var doc wire.Document
	if err := c.do(ctx, k, &doc); err != nil {
		return nil, err
	}
	in, err := indicatorOf(doc.Data)
	if err != nil {
		return nil, &Error{Kind: KindBadResponse, Method: k.method, Path: k.path, Err: err}
	}
	return in, nil
}

// FindIndicator returns the first indicator (oldest first) of threatType
// (Triage's name: SHA256, Hostname, …) and value whose source is source, or
// of any source when source is empty; or an error matching ErrNotFound.
// Triage keeps one indicator per type, value and source, so a value may be
// held several times, once per source: a caller that means its own asks
// with its source.
//
// Triage ORs the comma-separated parts of a filter value, so a value (or
// source) with a comma cannot be filtered for exactly; it is then looked
// for among the indicators whose value starts with its part before the
// first comma (or of any source). In every case only an exact match of
// type, value and (when given) source is returned.
func (c *Client) FindIndicator(ctx context.Context, threatType, value, source string) (*Indicator, error) {
	if threatType == "" || value == "" {
		return nil, errors.New("triage: find indicator: type and value are required")
	}
	opts := ListOptions{ThreatType: threatType, ThreatValue: value, PageSize: MaxPageSize}
	if prefix, _, comma := strings.Cut(value, ","); comma {
		opts.ThreatValue = ""
		if prefix != "" {
			opts.Filters = map[string]string{"threat_value_start": prefix}
		}
	}
	if !strings.Contains(source, ",") {
		opts.ThreatSource = source
	}
	for in, err := range c.ListIndicators(ctx, opts) {
		if err != nil {
			return nil, err
		}
		if in.ThreatType == threatType && in.ThreatValue == value && (source == "" || in.ThreatSource == source) {
			return in, nil
		}
	}
	what := fmt.Sprintf("no %s indicator with value %q", threatType, value)
	if source != "" {
		what += fmt.Sprintf(" from source %q", source)
	}
	return nil, &Error{Kind: KindNotFound, Method: http.MethodGet, Path: indicatorsPath, Messages: []string{what}}
}

// ListOptions select and order the indicators ListIndicators returns. Empty
// fields select everything.
type ListOptions struct {
	// Exact matches (filter[threat_type] and so on).
	ThreatType   string
	ThreatValue  string
	ThreatLevel  string
	ThreatSource string
	// UpdatedAfter keeps indicators updated strictly after it
	// (filter[updated_at_gt]).
	UpdatedAfter time.Time
	// Filters are further filter[NAME] parameters, such as
	// "threat_value_start" or "updated_at_lteq".
	Filters map[string]string
	// Sort is Triage's sort parameter: "updated_at", "-updated_at", "id", …
	Sort string
	// PageSize is how many indicators a page holds, 1 to MaxPageSize
	// (default MaxPageSize).
	PageSize int
}

func (o ListOptions) query() (url.Values, error) {
	size := o.PageSize
	if size == 0 {
		size = MaxPageSize
	}
	if size < 1 || size > MaxPageSize {
		return nil, fmt.Errorf("triage: list indicators: page size %d outside 1..%d", o.PageSize, MaxPageSize)
	}
	q := url.Values{}
	set := func(name, v string) {
		if v != "" {
			q.Set("filter["+name+"]", v)
		}
	}
	set("threat_type", o.ThreatType)
	set("threat_value", o.ThreatValue)
	set("threat_level", o.ThreatLevel)
	set("threat_source", o.ThreatSource)
	if !o.UpdatedAfter.IsZero() {
		set("updated_at_gt", o.UpdatedAfter.UTC().Format(TimeFormat))
	}
	for name, v := range o.Filters {
		set(name, v)
	}
	if o.Sort != "" {
		q.Set("sort", o.Sort)
	}
	q.Set("page[number]", "1")
	q.Set("page[size]", strconv.Itoa(size))
	return q, nil
}

// TimeFormat is how Triage writes timestamps: UTC with milliseconds.
const TimeFormat = "2006-01-02T15:04:05.000Z"

// ListIndicators yields the indicators opts select, page by page. Each page
// is one call, not retried. A failure is yielded once, with a nil
// indicator, and ends the sequence.
//
// It pages by its own query, page[number] 1, 2, … (as Splunk's Triage app
// does), and reads a page's links.next only for whether there is one: the
// host a link names may be a load balancer's or a proxy's rather than the
// base URL, and the token goes to the base URL only. The listing ends at a
// page without links.next, an empty page, or a page that repeats the one
// before (a server that ignores page[number]), which is a KindBadResponse
// error.
func (c *Client) ListIndicators(ctx context.Context, opts ListOptions) iter.Seq2[*Indicator, error] {
	return func(yield func(*Indicator, error) bool) {
		q, err := opts.query()
		if err != nil {
			yield(nil, err)
			return
		}
		k, err := c.newCall(http.MethodGet, indicatorsPath, q, nil)
		if err != nil {
			yield(nil, err)
			return
		}
		var prevFirst, prevLast string
		for number := 1; ; number++ {
			var page wire.ListDocument
			if err := c.do(ctx, k, &page); err != nil {
				yield(nil, err)
				return
			}
			if n := len(page.Data); number > 1 && n > 0 && page.Data[0].ID == prevFirst && page.Data[n-1].ID == prevLast {
				yield(nil, &Error{Kind: KindBadResponse, Method: k.method, Path: k.path,
					Messages: []string{fmt.Sprintf("page %d repeats page %d: page[number] is not honoured", number, number-1)}})
				return
			}
			for _, r := range page.Data {
				in, err := indicatorOf(r)
				if err != nil {
					yield(nil, &Error{Kind: KindBadResponse, Method: k.method, Path: k.path, Err: err})
					return
				}
				if !yield(in, nil) {
					return
				}
			}
			if page.Links.Next == "" || len(page.Data) == 0 {
				return
			}
			prevFirst, prevLast = page.Data[0].ID, page.Data[len(page.Data)-1].ID
			if k, err = c.nextCall(q, number+1); err != nil {
				yield(nil, err)
				return
			}
		}
	}
}

// nextCall is the call of page number of the listing of query q: the
// client's own query with page[number] set, on the base URL, whatever host
// the page's links named.
func (c *Client) nextCall(q url.Values, number int) (call, error) {
	next := maps.Clone(q) // Set replaces page[number]'s slice, never changes q's
	next.Set("page[number]", strconv.Itoa(number))
	return c.newCall(http.MethodGet, indicatorsPath, next, nil)
}

// Ping checks that Triage answers and accepts the credentials
// (GET /system/status, which needs a token).
func (c *Client) Ping(ctx context.Context) error {
	k, err := c.newCall(http.MethodGet, "/system/status", nil, nil)
	if err != nil {
		return err
	}
	return c.do(ctx, k, nil)
}
