package threatq

import (
	"cmp"
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

// Bounds of the saved-search listing that CollectionName falls back to.
const (
	searchPageSize = 100
	searchMaxPages = 5
)

// CollectionName returns the name of the data collection hash, for logs
// and reports; callers treat it as optional. It asks
// GET /api/search/query/{hash}?fields=name first: one request, but no
// public source shows that call (docs/api.md). When that fails or names
// nothing, it lists the saved searches (GET /api/search/query, the call
// ThreatQuotient's SDK makes) and matches the hash, reading at most
// searchMaxPages pages of searchPageSize.
func (c *Client) CollectionName(ctx context.Context, hash string) (string, error) {
	if hash == "" {
		return "", fmt.Errorf("collection name: %w: empty collection hash", ErrInvalidArgument)
	}
	name, byHash := c.collectionNameByHash(ctx, hash)
	if byHash == nil && name != "" {
		return name, nil
	}
	if ctx.Err() != nil {
		// byHash is nil when the answer came but named nothing.
		return "", fmt.Errorf("name of collection %s: %w", hash, cmp.Or(byHash, ctx.Err()))
	}
	name, listed := c.collectionNameFromList(ctx, hash)
	switch {
	case listed == nil:
		return name, nil
	case byHash == nil:
		return "", fmt.Errorf("name of collection %s: %w (by hash: no name)", hash, listed)
	}
	return "", fmt.Errorf("name of collection %s: %w (by hash: %w)", hash, listed, byHash)
}

// collectionNameByHash asks GET /api/search/query/{hash}?fields=name.
func (c *Client) collectionNameByHash(ctx context.Context, hash string) (string, error) {
	var doc struct {
		Data json.RawMessage `json:"data"`
	}
	err := c.do(ctx, call{
		method: http.MethodGet,
		path:   "/api/search/query/" + escapeSegment(hash),
		query:  url.Values{"fields": {"name"}},
	}, &doc)
	if err != nil {
		return "", err
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
			return "", fmt.Errorf("%w: %w", ErrUnexpectedResponse, err)
		}
		one.Name = list[0].Name
	}
	return string(one.Name), nil
}

// collectionNameFromList pages GET /api/search/query with limit and
// offset until it finds hash, the list ends, or searchMaxPages were read.
func (c *Client) collectionNameFromList(ctx context.Context, hash string) (string, error) {
	read := 0
	for page := 1; page <= searchMaxPages; page++ {
		var l wire.SearchList
		err := c.do(ctx, call{
			method: http.MethodGet,
			path:   "/api/search/query",
			query:  url.Values{"limit": {strconv.Itoa(searchPageSize)}, "offset": {strconv.Itoa(read)}},
		}, &l)
		if err != nil {
			return "", fmt.Errorf("list saved searches, page %d: %w", page, err)
		}
		for _, s := range l.Data {
			if string(s.Hash) == hash {
				return string(s.Name), nil
			}
		}
		read += len(l.Data)
		if len(l.Data) == 0 || (l.Total > 0 && int64(read) >= l.Total) {
			return "", fmt.Errorf("%w: no saved search of this hash among the %d listed", ErrNotFound, read)
		}
	}
	return "", fmt.Errorf("%w: no saved search of this hash among the first %d listed (the listing stops there)", ErrNotFound, read)
}
