package triage

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/tqtriage/tqtriage/internal/httpclient"
	"github.com/tqtriage/tqtriage/internal/redact"
	"github.com/tqtriage/tqtriage/internal/termsafe"
	"github.com/tqtriage/tqtriage/triage/internal/wire"
)

// Kind says what went wrong with a call, in terms a caller can act on.
type Kind int

// The kinds of Error. Only KindRateLimited, KindServer and KindTransport are
// retryable.
const (
	KindUnknown      Kind = iota
	KindDuplicate         // 422 "has already been taken": the indicator exists
	KindValidation        // any other 422: the request is wrong, Messages say why
	KindNotFound          // 404
	KindUnauthorized      // 401 after one fresh token, or the token endpoint refused the credentials
	KindRateLimited       // 429, with RetryAfterDelay when the server sent Retry-After
	KindServer            // 5xx
	KindTransport         // no answer: connection refused or reset, timeout, TLS failure (retryable as httpclient.TransportRetryable says)
	KindClient            // any other 4xx: permanent
	KindBadResponse       // a status or body the client cannot use (a redirect, undecodable or oversized JSON)
	KindForbidden         // 403 after one fresh token: the credentials may not do this
)

var kindNames = [...]string{
	KindUnknown:      "unknown",
	KindDuplicate:    "duplicate",
	KindValidation:   "validation",
	KindNotFound:     "not found",
	KindUnauthorized: "unauthorized",
	KindRateLimited:  "rate limited",
	KindServer:       "server error",
	KindTransport:    "transport",
	KindClient:       "client error",
	KindBadResponse:  "bad response",
	KindForbidden:    "forbidden",
}

func (k Kind) String() string {
	if k >= 0 && int(k) < len(kindNames) {
		return kindNames[k]
	}
	return "kind(" + strconv.Itoa(int(k)) + ")"
}

// Sentinels for errors.Is: errors.Is(err, triage.ErrDuplicate) holds for an
// *Error of KindDuplicate however deeply it is wrapped.
var (
	ErrDuplicate    = errors.New("triage: duplicate")
	ErrValidation   = errors.New("triage: validation failed")
	ErrNotFound     = errors.New("triage: not found")
	ErrUnauthorized = errors.New("triage: unauthorized")
	ErrRateLimited  = errors.New("triage: rate limited")
	ErrServer       = errors.New("triage: server error")
	ErrTransport    = errors.New("triage: transport error")
	ErrClient       = errors.New("triage: client error")
	ErrBadResponse  = errors.New("triage: bad response")
	ErrForbidden    = errors.New("triage: forbidden")
)

var kindSentinels = [...]error{
	KindDuplicate:    ErrDuplicate,
	KindValidation:   ErrValidation,
	KindNotFound:     ErrNotFound,
	KindUnauthorized: ErrUnauthorized,
	KindRateLimited:  ErrRateLimited,
	KindServer:       ErrServer,
	KindTransport:    ErrTransport,
	KindClient:       ErrClient,
	KindBadResponse:  ErrBadResponse,
	KindForbidden:    ErrForbidden,
}

// Error is what every call returns when Triage did not answer with success.
// Its text never holds the client secret or an access token.
type Error struct {
	Kind       Kind
	StatusCode int    // 0 when no response came (KindTransport)
	Method     string // HTTP method of the failed request
	Path       string // path below the API base (/threat_indicators/7), or /oauth/token
	// Messages are the server's own words: title/detail of every JSON:API
	// error object, or the OAuth error and its description.
	Messages []string
	// RetryAfterDelay is the server's Retry-After (429, 503), 0 when absent.
	RetryAfterDelay time.Duration
	// Err is the cause when there is one beyond the status: the transport or
	// decoding error.
	Err error
}

func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString("triage: ")
	b.WriteString(e.Method)
	b.WriteByte(' ')
	b.WriteString(e.Path)
	b.WriteString(": ")
	if e.StatusCode != 0 {
		b.WriteString(strconv.Itoa(e.StatusCode))
		b.WriteByte(' ')
	}
	b.WriteString(e.Kind.String())
	if len(e.Messages) > 0 {
		b.WriteString(": ")
		b.WriteString(strings.Join(e.Messages, "; "))
	}
	if e.RetryAfterDelay > 0 {
		fmt.Fprintf(&b, " (retry after %s)", e.RetryAfterDelay)
	}
	if e.Err != nil {
		b.WriteString(": ")
		b.WriteString(e.Err.Error())
	}
	return b.String()
}

// Unwrap gives errors.Is/As the cause (context.Canceled, a net error, …).
func (e *Error) Unwrap() error { return e.Err }

// Is matches the Err* sentinel of e's kind.
func (e *Error) Is(target error) bool {
	return int(e.Kind) < len(kindSentinels) && target != nil && target == kindSentinels[e.Kind]
}

// Retryable tells internal/retry whether the same request may succeed later.
func (e *Error) Retryable() bool {
	switch e.Kind {
	case KindRateLimited, KindServer:
		return true
	case KindTransport:
		return httpclient.TransportRetryable(e.Err)
	}
	return false
}

// Refused reports whether the failure is the client's credentials rather
// than the request: the token endpoint refused the grant or could not be
// used (a 4xx, a redirect, an answer without a token, a certificate that
// fails verification), the client secret could not be read, or the API
// refused a fresh token (401, 403). No request can succeed until that
// changes, so it is the caller's condition, not its work's: internal/gate
// reads it to hold a replica's work.
func (e *Error) Refused() bool {
	switch {
	case e.Kind == KindUnauthorized, e.Kind == KindForbidden:
		return true
	case e.Path != TokenPath, e.Kind == KindRateLimited, e.Kind == KindServer:
		return false
	case e.Kind == KindTransport:
		return !httpclient.TransportRetryable(e.Err) && !httpclient.CallerEnded(e.Err)
	}
	return true
}

// RetryAfter is the server's requested delay (0 when none), read by
// internal/retry as the least wait before the next attempt.
func (e *Error) RetryAfter() time.Duration { return e.RetryAfterDelay }

// Bounds on what an error carries of a server's body: enough to act on, not
// enough to turn an error log into a copy of a large answer.
const (
	maxMessages   = 20
	maxMessageLen = 300
)

// CheckResponse turns a response that is not a success into an *Error and
// returns nil for a 2xx. It is the one place that interprets status codes
// and JSON:API error bodies. body is the response body, already read within
// the client's bound (it may be truncated). method and path only label the
// error.
func CheckResponse(resp *http.Response, body []byte, method, path string) error {
	code := resp.StatusCode
	if code >= 200 && code <= 299 {
		return nil
	}
	e := &Error{StatusCode: code, Method: method, Path: path}
	switch {
	case code == http.StatusUnauthorized:
		e.Kind = KindUnauthorized
		e.Messages = bearerError(resp.Header.Get("WWW-Authenticate"))
	case code == http.StatusForbidden:
		e.Kind = KindForbidden
	case code == http.StatusNotFound:
		e.Kind = KindNotFound
	case code == http.StatusUnprocessableEntity:
		e.Kind = KindValidation
	case code == http.StatusTooManyRequests:
		e.Kind = KindRateLimited
		e.RetryAfterDelay = httpclient.RetryAfter(resp.Header.Get("Retry-After"), time.Now())
	case code >= 500 && code <= 599:
		e.Kind = KindServer
		e.RetryAfterDelay = httpclient.RetryAfter(resp.Header.Get("Retry-After"), time.Now())
	case code >= 400 && code <= 499:
		e.Kind = KindClient
	default:
		// Redirects are not followed (a POST would lose its body and the
		// token must not travel to another host): name where it pointed.
		e.Kind = KindBadResponse
		if loc := resp.Header.Get("Location"); loc != "" {
			e.Messages = []string{"unexpected redirect to " + redact.URL(clipMessage(loc))}
		}
	}
	if msgs := errorMessages(body); len(msgs) > 0 {
		e.Messages = msgs
	}
	if e.Kind == KindValidation {
		for _, m := range e.Messages {
			if strings.Contains(strings.ToLower(m), "has already been taken") {
				e.Kind = KindDuplicate
				break
			}
		}
	}
	return e
}

func errorMessages(body []byte) []string {
	var eb wire.ErrorBody
	if len(body) == 0 || json.Unmarshal(body, &eb) != nil {
		return nil
	}
	var msgs []string
	for _, o := range eb.Errors {
		if len(msgs) == maxMessages {
			msgs = append(msgs, fmt.Sprintf("and %d more", len(eb.Errors)-maxMessages))
			break
		}
		if m := o.Message(); m != "" {
			msgs = append(msgs, clipMessage(m))
		}
	}
	if len(msgs) == 0 && eb.Error != "" {
		msgs = append(msgs, clipMessage(joinNonEmpty(eb.Error, eb.ErrorDescription)))
	}
	return msgs
}

// bearerError reads the error and its description from a WWW-Authenticate
// Bearer challenge, e.g. `Bearer realm="Doorkeeper", error="invalid_token",
// error_description="The access token expired"`.
func bearerError(h string) []string {
	if h == "" {
		return nil
	}
	params := map[string]string{}
	for part := range strings.SplitSeq(strings.TrimSpace(strings.TrimPrefix(h, "Bearer")), ",") {
		k, v, ok := strings.Cut(strings.TrimSpace(part), "=")
		if ok {
			params[strings.ToLower(k)] = strings.Trim(v, `"`)
		}
	}
	if m := joinNonEmpty(params["error"], params["error_description"]); m != "" {
		return []string{clipMessage(m)}
	}
	return nil
}

func joinNonEmpty(a, b string) string {
	switch {
	case a == "":
		return b
	case b == "":
		return a
	}
	return a + ": " + b
}

// clipMessage bounds a message taken from an answer.
func clipMessage(s string) string { return termsafe.Clip(s, maxMessageLen) }
