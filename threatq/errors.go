package threatq

import (
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

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
	// ErrAnswerErrors: a 2xx answer whose body carries errors, which
	// ThreatQuotient's own SDK treats as a failure (docs/api.md).
	ErrAnswerErrors = errors.New("threatq: errors in a successful answer")
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
	// InBody: the answer had a 2xx status, but its body carries errors
	// (Messages). BodyStatus is an HTTP status those errors name, 0 when
	// none does; it alone can make such a failure retryable.
	InBody     bool
	BodyStatus int
	Err        error
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
	if e.InBody {
		b.WriteString(" with errors in its body")
		if e.BodyStatus != 0 {
			fmt.Fprintf(&b, " (status %d)", e.BodyStatus)
		}
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

// Is matches the sentinel of the status code; an answer with errors in
// its body matches ErrAnswerErrors, and the sentinel of the status its
// errors name.
func (e *Error) Is(target error) bool {
	if e.InBody {
		if target == ErrAnswerErrors {
			return true
		}
		if e.BodyStatus == 0 {
			return false
		}
		return (&Error{StatusCode: e.BodyStatus}).Is(target)
	}
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
// a port without it, or the caller's own cancellation or deadline). A 2xx
// answer with errors in its body is retryable only when its errors name a
// status that is.
func (e *Error) Retryable() bool {
	if e.InBody {
		return e.BodyStatus != 0 && (&Error{StatusCode: e.BodyStatus}).Retryable()
	}
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

// Refused reports whether the failure is the client's credentials rather
// than the request: the token endpoint refused them (ErrAuthentication:
// a 4xx other than 408 and 429, or the secret could not be read) or could
// not be used for good (a redirect, an answer without a token, a
// certificate that fails verification), or the API refused a fresh token
// (401, 403). No request can succeed until that changes: internal/gate
// reads it to hold a replica's work.
func (e *Error) Refused() bool {
	switch {
	case e.InBody:
		return false // the answer passed authentication
	case errors.Is(e.Err, ErrAuthentication), e.StatusCode == http.StatusUnauthorized, e.StatusCode == http.StatusForbidden:
		return true
	case e.Path != TokenPath || e.Retryable():
		return false
	}
	return e.Err == nil || !httpclient.CallerEnded(e.Err)
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
