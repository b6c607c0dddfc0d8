package httpclient

import (
	"errors"
	"fmt"
	"net/http"
	"strings"
)

// ErrReadOnly is the error of a request a read-only client refused to
// send. No retry helps: it is a bug, not a condition.
var ErrReadOnly = errors.New("refused by a read-only client: only reads may be sent")

// readOnly lets GET and HEAD requests through, and a POST whose path ends
// in tokenPath (the OAuth token request, which changes nothing on the
// server); every other request is refused before it leaves.
type readOnly struct {
	tokenPath string
	base      http.RoundTripper
}

func (r readOnly) RoundTrip(req *http.Request) (*http.Response, error) {
	switch {
	case req.Method == http.MethodGet, req.Method == http.MethodHead:
	case req.Method == http.MethodPost && r.tokenPath != "" && strings.HasSuffix(req.URL.Path, r.tokenPath):
	default:
		if req.Body != nil {
			req.Body.Close()
		}
		return nil, fmt.Errorf("%s %s: %w", req.Method, req.URL.Path, ErrReadOnly)
	}
	return r.base.RoundTrip(req)
}
