package threatq

import (
	"context"
	"encoding/json"
	"fmt"
	"iter"
	"net/http"
	"net/url"
	"strconv"

	"github.com/tqtriage/tqtriage/threatq/internal/wire"
)

// Page sizes of CollectionIndicators.
const (
	DefaultPageSize = 100
	MaxPageSize     = 500
)

// CollectionIndicators streams the indicators of the data collection hash,
// in the order ThreatQ pages them (sort=updated_at), one page in memory at
// a time. pageSize is the number asked for per request: 0 or less means
// DefaultPageSize, more than MaxPageSize means MaxPageSize.
//
// Paging follows cursorMark ("*", then each page's nextCursorMark) and ends
// when a page has no indicators or the cursor stops changing. The sequence
// ends after yielding a non-nil error (the call failed after its retries,
// or ctx ended); the caller may also stop early. A failed page is not
// resumed: a second iteration starts from the beginning.
//
// Indicators are yielded as ThreatQ sends them, unchecked: a missing type
// or value is the caller's to judge.
func (c *Client) CollectionIndicators(ctx context.Context, hash string, pageSize int) iter.Seq2[Indicator, error] {
	switch {
	case pageSize <= 0:
		pageSize = DefaultPageSize
	case pageSize > MaxPageSize:
		pageSize = MaxPageSize
	}
	return func(yield func(Indicator, error) bool) {
		if hash == "" {
			yield(Indicator{}, fmt.Errorf("read collection: %w: empty collection hash", ErrInvalidArgument))
			return
		}
		path := "/api/indicators/query/hash/" + escapeSegment(hash)
		cursor := "*"
		read := int64(0)
		for page := 1; ; page++ {
			if err := ctx.Err(); err != nil {
				yield(Indicator{}, fmt.Errorf("threatq: read collection %s: %w", hash, err))
				return
			}
			var p wire.CollectionPage
			err := c.do(ctx, call{
				method: http.MethodGet,
				path:   path,
				query: url.Values{
					"sort":       {"updated_at"},
					"limit":      {strconv.Itoa(pageSize)},
					"cursorMark": {cursor},
				},
			}, &p)
			if err != nil {
				yield(Indicator{}, fmt.Errorf("read collection %s, page %d: %w", hash, page, err))
				return
			}
			for _, in := range p.Data {
				if !yield(Indicator(in), nil) {
					return
				}
			}
			read += int64(len(p.Data))
			if len(p.Data) > 0 && p.NextCursorMark == "" && read < p.Total {
				// Stopping here would pass a partial collection off as whole.
				yield(Indicator{}, fmt.Errorf("read collection %s, page %d: %w: no nextCursorMark after %d of %d indicators",
					hash, page, ErrUnexpectedResponse, read, p.Total))
				return
			}
			if len(p.Data) == 0 || p.NextCursorMark == "" || p.NextCursorMark == cursor {
				return
			}
			cursor = p.NextCursorMark
		}
	}
}

// CollectionName returns the name of the data collection hash, for logs
// and reports.
func (c *Client) CollectionName(ctx context.Context, hash string) (string, error) {
	if hash == "" {
		return "", fmt.Errorf("collection name: %w: empty collection hash", ErrInvalidArgument)
	}
	var doc struct {
		Data json.RawMessage `json:"data"`
	}
	err := c.do(ctx, call{
		method: http.MethodGet,
		path:   "/api/search/query/" + escapeSegment(hash),
		query:  url.Values{"fields": {"name"}},
	}, &doc)
	if err != nil {
		return "", fmt.Errorf("name of collection %s: %w", hash, err)
	}
	// "data" is one object; a list of one is accepted too.
	var one struct {
		Name wire.FlexString `json:"name"`
	}
	if err := json.Unmarshal(doc.Data, &one); err != nil {
		var list []struct {
			Name wire.FlexString `json:"name"`
		}
		if err2 := json.Unmarshal(doc.Data, &list); err2 != nil || len(list) == 0 {
			return "", fmt.Errorf("name of collection %s: %w: %w", hash, ErrUnexpectedResponse, err)
		}
		one.Name = list[0].Name
	}
	return string(one.Name), nil
}
