package threatq

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"

	"github.com/tqtriage/tqtriage/threatq/internal/wire"
)

// Attribute is a named value on an indicator ("Threat Level": "Malicious").
type Attribute struct {
	Name  string `json:"name"`
	Value string `json:"value"`
}

// attributePageSize is asked for only when the first list answer says it
// holds fewer rows than the indicator has.
const attributePageSize = 500

// Attributes returns the attributes of an indicator, in ThreatQ's order.
// An indicator may hold several rows of one name.
func (c *Client) Attributes(ctx context.Context, indicatorID int64) ([]Attribute, error) {
	rows, err := c.attributeRows(ctx, indicatorID)
	if err != nil {
		return nil, err
	}
	out := make([]Attribute, len(rows))
	for i, r := range rows {
		out[i] = Attribute{Name: r.Name, Value: r.Value}
	}
	return out, nil
}

// attributeRows lists every attribute row of an indicator. The first
// request is the plain one every known integration sends; only when its
// total says rows are missing does it page on with limit and offset.
func (c *Client) attributeRows(ctx context.Context, indicatorID int64) ([]wire.AttributeRow, error) {
	if indicatorID <= 0 {
		return nil, fmt.Errorf("attributes: %w: indicator id %d", ErrInvalidArgument, indicatorID)
	}
	path := attributesPath(indicatorID)
	var rows []wire.AttributeRow
	var query url.Values
	for {
		var l wire.AttributeList
		if err := c.do(ctx, call{method: http.MethodGet, path: path, query: query}, &l); err != nil {
			return nil, fmt.Errorf("list attributes of indicator %d: %w", indicatorID, err)
		}
		rows = append(rows, l.Data...)
		if len(l.Data) == 0 || int64(len(rows)) >= l.Total {
			return rows, nil
		}
		query = url.Values{"limit": {strconv.Itoa(attributePageSize)}, "offset": {strconv.Itoa(len(rows))}}
	}
}

func attributesPath(indicatorID int64) string {
	return "/api/indicators/" + strconv.FormatInt(indicatorID, 10) + "/attributes"
}

// SetAttributes makes each named attribute of the indicator hold exactly
// the given value, with this client's attribute source: one list request,
// then only the writes that change something. The names that are absent
// are added (one POST, of an array when there are several); a name
// present with another value has its row changed in place (PUT), keeping
// the row's id; further rows of the same name are removed (DELETE). Attributes not named in attrs are left alone. Running
// it twice with the same attrs sends no write the second time.
//
// It is not atomic: when it fails half-way, running it again completes the
// work. Two concurrent calls for one indicator may both add a row, and so
// may a POST retried after its answer was lost; the next call removes the
// extra row.
func (c *Client) SetAttributes(ctx context.Context, indicatorID int64, attrs []Attribute) error {
	if err := checkAttributes(indicatorID, attrs); err != nil || len(attrs) == 0 {
		return err
	}
	rows, err := c.attributeRows(ctx, indicatorID)
	if err != nil {
		return err
	}
	return c.setAttributes(ctx, indicatorID, attrs, rows)
}

// SetAttributesKnown is SetAttributes with the indicator's rows as the
// caller read them (with the collection: AttributeRow), instead of a list
// request first: a create's attributes cost one POST (of an array), an
// update's a PUT each, and values that did not change nothing. rows must
// hold every row of the names in attrs that the indicator had when read
// (none: an empty slice). A row that has gone since (a PUT or DELETE
// answered 404) makes it list the rows and try once more.
func (c *Client) SetAttributesKnown(ctx context.Context, indicatorID int64, attrs []Attribute, rows []AttributeRow) error {
	if err := checkAttributes(indicatorID, attrs); err != nil || len(attrs) == 0 {
		return err
	}
	known := make([]wire.AttributeRow, len(rows))
	for i, r := range rows {
		known[i] = wire.AttributeRow{ID: r.ID, Name: r.Name, Value: r.Value}
	}
	err := c.setAttributes(ctx, indicatorID, attrs, known)
	if !errors.Is(err, errRowGone) {
		return err
	}
	return c.SetAttributes(ctx, indicatorID, attrs)
}

// errRowGone marks a change of a known row that answered 404.
var errRowGone = errors.New("an attribute row read earlier is gone")

func checkAttributes(indicatorID int64, attrs []Attribute) error {
	seen := make(map[string]bool, len(attrs))
	for _, a := range attrs {
		if a.Name == "" {
			return fmt.Errorf("set attributes of indicator %d: %w: an attribute has no name", indicatorID, ErrInvalidArgument)
		}
		if seen[a.Name] {
			return fmt.Errorf("set attributes of indicator %d: %w: attribute %q given twice", indicatorID, ErrInvalidArgument, a.Name)
		}
		seen[a.Name] = true
	}
	return nil
}

// setAttributes brings the rows of each name in attrs to its one value.
func (c *Client) setAttributes(ctx context.Context, indicatorID int64, attrs []Attribute, rows []wire.AttributeRow) error {
	byName := make(map[string][]wire.AttributeRow, len(attrs))
	for _, a := range attrs {
		byName[a.Name] = nil
	}
	for _, r := range rows {
		if rs, ok := byName[r.Name]; ok {
			byName[r.Name] = append(rs, r)
		}
	}
	for _, rs := range byName {
		slices.SortStableFunc(rs, func(a, b wire.AttributeRow) int { return cmp.Compare(a.ID, b.ID) })
	}
	// The names the indicator has no row of are added together, in one
	// request, where ThreatQ takes an array (a create's three attributes:
	// one POST, not three); the rest are changed one by one.
	added, refused, err := c.addAll(ctx, indicatorID, attrs, byName)
	if err != nil {
		return fmt.Errorf("set attributes of indicator %d: %w", indicatorID, err)
	}
	if added {
		attrs = slices.DeleteFunc(slices.Clone(attrs), func(a Attribute) bool { return len(byName[a.Name]) == 0 })
	}
	var errs []error
	for _, a := range attrs {
		if err := c.setOne(ctx, indicatorID, a, byName[a.Name]); err != nil {
			errs = append(errs, err)
			// A ThreatQ that is down fails every other write too; stop
			// rather than pile up the same error.
			if ctx.Err() != nil || errors.Is(err, ErrUnavailable) || errors.Is(err, errRowGone) {
				break
			}
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("set attributes of indicator %d: %w", indicatorID, errors.Join(errs...))
	}
	if refused {
		// The array was refused and the same attributes one by one
		// were taken: this ThreatQ takes no arrays.
		c.noArrays.Store(true)
	}
	return nil
}

// addAll adds, in one POST of an array, every attribute of attrs the
// indicator has no row of, when there are two or more and ThreatQ is not
// known to refuse arrays. added says it did; refused, that the array was
// answered with a client error, and setOne is to add them one by one.
//
// docs/api.md: ThreatQ takes an array of attribute objects, while every
// known integration sends one object a request. So an array answered
// with a client error (400, 415 or 422: not an authorisation, a missing
// indicator or a rate limit) is not taken as final: the attributes go one
// object a request, and if those are all taken, this instance is one
// that refuses arrays, and the client sends none again.
func (c *Client) addAll(ctx context.Context, indicatorID int64, attrs []Attribute, rows map[string][]wire.AttributeRow) (added, refused bool, err error) {
	if c.noArrays.Load() {
		return false, false, nil
	}
	var body []attributeBody
	for _, a := range attrs {
		if len(rows[a.Name]) == 0 {
			body = append(body, c.newAttribute(a))
		}
	}
	if len(body) < 2 {
		return false, false, nil
	}
	err = c.do(ctx, call{method: http.MethodPost, path: attributesPath(indicatorID), body: body}, nil)
	var e *Error
	if errors.As(err, &e) && !e.InBody && arrayRefusal(e.StatusCode) {
		return false, true, nil
	}
	if err != nil {
		names := make([]string, len(body))
		for i, b := range body {
			names[i] = strconv.Quote(b.Name)
		}
		return false, false, fmt.Errorf("add %s: %w", strings.Join(names, ", "), err)
	}
	return true, false, nil
}

// arrayRefusal is a status with which a ThreatQ that does not take an
// array of attributes might answer one.
func arrayRefusal(status int) bool {
	return status == http.StatusBadRequest || status == http.StatusUnsupportedMediaType || status == http.StatusUnprocessableEntity
}

// setOne brings the rows of one name to the single value of a.
func (c *Client) setOne(ctx context.Context, indicatorID int64, a Attribute, rows []wire.AttributeRow) error {
	path := attributesPath(indicatorID)
	if len(rows) == 0 {
		// One object: a single name to add, or a ThreatQ that refused
		// the array (addAll).
		if err := c.do(ctx, call{method: http.MethodPost, path: path, body: c.newAttribute(a)}, nil); err != nil {
			return fmt.Errorf("add %q: %w", a.Name, err)
		}
		return nil
	}
	// Keep a row that already holds the value, so that nothing changes
	// when nothing has to; otherwise the first (oldest) row.
	keep := 0
	for i, r := range rows {
		if r.Value == a.Value {
			keep = i
			break
		}
	}
	if rows[keep].Value != a.Value {
		rowPath := path + "/" + strconv.FormatInt(rows[keep].ID, 10)
		if err := c.do(ctx, call{method: http.MethodPut, path: rowPath, body: valueBody{Value: a.Value}}, nil); err != nil {
			if errors.Is(err, ErrNotFound) {
				err = fmt.Errorf("%w: %w", errRowGone, err)
			}
			return fmt.Errorf("change %q (row %d): %w", a.Name, rows[keep].ID, err)
		}
	}
	for i, r := range rows {
		if i == keep {
			continue
		}
		rowPath := path + "/" + strconv.FormatInt(r.ID, 10)
		err := c.do(ctx, call{method: http.MethodDelete, path: rowPath}, nil)
		// A row already gone is what we wanted (a concurrent or earlier
		// partial run removed it).
		if err != nil && !errors.Is(err, ErrNotFound) {
			return fmt.Errorf("remove extra %q (row %d): %w", a.Name, r.ID, err)
		}
	}
	return nil
}

// newAttribute is the body that adds a, with this client's source.
func (c *Client) newAttribute(a Attribute) attributeBody {
	return attributeBody{Name: a.Name, Value: a.Value, Sources: []wire.Source{{Name: c.source}}}
}

type attributeBody struct {
	Name    string        `json:"name"`
	Value   string        `json:"value"`
	Sources []wire.Source `json:"sources"`
}

type valueBody struct {
	Value string `json:"value"`
}
