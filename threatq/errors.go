package threatq

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"sort"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/tqtriage/tqtriage/internal/httpclient"
)

// Sentinels for errors.Is. An *Error matches the one of its status code;
// the rest are returned wrapped where they apply.
var (
	// ErrInvalidConfig: New was given a configuration it cannot work with.
	ErrInvalidConfig = errors.New("threatq: invalid configuration")
	// ErrInvalidArgument: a method was called with an argument it refuses
	// before sending anything (an empty hash, a nameless attribute).
	ErrInvalidArgument = errors.New("threatq: invalid argument")
	// ErrAuthentication: the token endpoint refused the credentials.
	ErrAuthentication = errors.New("threatq: authentication failed")
	// ErrUnauthorized: 401, after one fresh token was tried.
	ErrUnauthorized = errors.New("threatq: unauthorized")
	// ErrForbidden: 403.
	ErrForbidden = errors.New("threatq: forbidden")
	// ErrNotFound: 404 (an unknown indicator or data collection).
	ErrNotFound = errors.New("threatq: not found")
	// ErrRateLimited: 429.
	ErrRateLimited = errors.New("threatq: rate limited")
	// ErrUnexpectedResponse: ThreatQ answered with a document this client
	// cannot use.
	ErrUnexpectedResponse = errors.New("threatq: unexpected response")
	// ErrUnavailable: a 5xx answer or no answer at all (the transport failed).
	ErrUnavailable = errors.New("threatq: unavailable")
)

// Error is a failed ThreatQ call: the request (method and path, never the
// query or a header), the status (0 when no answer came), the messages read
// from the error body, and the transport or decoding error, if any.
// It tells the retry package whether the call may succeed later.
type Error struct {
	StatusCode int
	Method     string
	Path       string
	// Messages are the server's own words, from either known error shape
	// ({"data":{"errors":{"field":["…"]}}} or {"errors":[…]}) or an OAuth
	// error; secrets the client knows are masked.
	Messages []string
	// RetryAfterDelay is the server's Retry-After, when it sent one.
	RetryAfterDelay time.Duration
	Err             error
}

func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString("threatq: ")
	b.WriteString(e.Method)
	b.WriteByte(' ')
	b.WriteString(e.Path)
	if e.StatusCode != 0 {
		fmt.Fprintf(&b, ": %d %s", e.StatusCode, http.StatusText(e.StatusCode))
	}
	if len(e.Messages) > 0 {
		b.WriteString(": ")
		b.WriteString(strings.Join(e.Messages, "; "))
	}
	if e.Err != nil {
		b.WriteString(": ")
		b.WriteString(e.Err.Error())
	}
	return b.String()
}

func (e *Error) Unwrap() error { return e.Err }

// Is matches the sentinel of the status code.
func (e *Error) Is(target error) bool {
	switch target {
	case ErrUnauthorized:
		return e.StatusCode == http.StatusUnauthorized
	case ErrForbidden:
		return e.StatusCode == http.StatusForbidden
	case ErrNotFound:
		return e.StatusCode == http.StatusNotFound
	case ErrRateLimited:
		return e.StatusCode == http.StatusTooManyRequests
	case ErrUnavailable:
		return e.StatusCode >= 500 || (e.StatusCode == 0 && e.Retryable())
	}
	return false
}

// Retryable reports whether the same request may succeed later: 408, 429,
// 5xx other than 501 and 505, and the transport failures that
// httpclient.TransportRetryable accepts (not a refused certificate, TLS to
// a port without it, or the caller's own cancellation or deadline).
func (e *Error) Retryable() bool {
	switch {
	case e.StatusCode == http.StatusRequestTimeout, e.StatusCode == http.StatusTooManyRequests:
		return true
	case e.StatusCode == http.StatusNotImplemented, e.StatusCode == http.StatusHTTPVersionNotSupported:
		return false
	case e.StatusCode >= 500:
		return true
	case e.StatusCode != 0 || e.Err == nil:
		return false
	}
	return transportRetryable(e.Err)
}

// RetryAfter is the delay the server asked for (0 when it did not).
func (e *Error) RetryAfter() time.Duration { return e.RetryAfterDelay }

// transportRetryable says whether a failure to get an answer at all is
// worth another try. A body too large or a broken document would come back
// the same; the rest is httpclient's rule.
func transportRetryable(err error) bool {
	var decode *decodeError
	return !errors.As(err, &decode) && httpclient.TransportRetryable(err)
}

// decodeError marks a 2xx answer whose body could not be used: retrying
// would read the same document.
type decodeError struct{ err error }

func (d *decodeError) Error() string        { return "decode response: " + d.err.Error() }
func (d *decodeError) Unwrap() error        { return d.err }
func (d *decodeError) Is(target error) bool { return target == ErrUnexpectedResponse }

// ParseErrorBody returns the messages of a ThreatQ error body, in a stable
// order. It knows the two shapes public integrations parse,
// {"data":{"errors":{"field":["message",…]}}} (as "field: message") and
// {"errors":["message",["part",…],…]}, plus OAuth errors
// ({"error","error_description","message"}) and {"message"} alone. A body
// it cannot read gives its first bytes, so that an HTML error page still
// says something.
func ParseErrorBody(body []byte) []string {
	var doc struct {
		Data struct {
			Errors json.RawMessage `json:"errors"`
		} `json:"data"`
		Errors           json.RawMessage `json:"errors"`
		Error            json.RawMessage `json:"error"`
		ErrorDescription string          `json:"error_description"`
		Message          string          `json:"message"`
	}
	trimmed := strings.TrimSpace(string(body))
	if trimmed == "" {
		return nil
	}
	var msgs []string
	if err := json.Unmarshal([]byte(trimmed), &doc); err != nil {
		return []string{snippet(trimmed)}
	}
	msgs = appendMessages(msgs, "", doc.Data.Errors)
	msgs = appendMessages(msgs, "", doc.Errors)
	if len(msgs) == 0 {
		var code string
		if json.Unmarshal(doc.Error, &code) == nil && code != "" {
			switch {
			case doc.ErrorDescription != "":
				msgs = append(msgs, code+": "+doc.ErrorDescription)
			case doc.Message != "":
				msgs = append(msgs, code+": "+doc.Message)
			default:
				msgs = append(msgs, code)
			}
		} else {
			msgs = appendMessages(msgs, "", doc.Error)
		}
	}
	if len(msgs) == 0 && doc.Message != "" {
		msgs = append(msgs, doc.Message)
	}
	if len(msgs) == 0 && !strings.HasPrefix(trimmed, "{") {
		msgs = append(msgs, snippet(trimmed))
	}
	return msgs
}

// appendMessages flattens strings, arrays and objects (field → messages)
// into "field: message" lines. Objects with a message-like member (the
// JSON:API-ish {"title","detail"}) give that member.
func appendMessages(msgs []string, field string, raw json.RawMessage) []string {
	raw = json.RawMessage(strings.TrimSpace(string(raw)))
	if len(raw) == 0 || string(raw) == "null" {
		return msgs
	}
	prefix := func(s string) string {
		if field == "" {
			return s
		}
		return field + ": " + s
	}
	switch raw[0] {
	case '"':
		var s string
		if json.Unmarshal(raw, &s) == nil && s != "" {
			msgs = append(msgs, prefix(s))
		}
	case '[':
		var list []json.RawMessage
		if json.Unmarshal(raw, &list) == nil {
			for _, item := range list {
				msgs = appendMessages(msgs, field, item)
			}
		}
	case '{':
		var m map[string]json.RawMessage
		if json.Unmarshal(raw, &m) != nil {
			return msgs
		}
		for _, key := range []string{"detail", "message", "title"} {
			var s string
			if v, ok := m[key]; ok && json.Unmarshal(v, &s) == nil && s != "" {
				return append(msgs, prefix(s))
			}
		}
		keys := make([]string, 0, len(m))
		for k := range m {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			sub := k
			if field != "" {
				sub = field + "." + k
			}
			msgs = appendMessages(msgs, sub, m[k])
		}
	default:
		msgs = append(msgs, prefix(string(raw)))
	}
	return msgs
}

func snippet(s string) string {
	const max = 200
	s = strings.Join(strings.Fields(s), " ")
	if len(s) > max {
		// Cut on a rune boundary.
		cut := max
		for cut > 0 && !utf8.RuneStart(s[cut]) {
			cut--
		}
		s = s[:cut] + "…"
	}
	return s
}
