package triage

import (
	"errors"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/tqtriage/tqtriage/internal/fixture"
)

func response(code int, header ...string) *http.Response {
	r := &http.Response{StatusCode: code, Header: http.Header{}}
	for i := 0; i+1 < len(header); i += 2 {
		r.Header.Set(header[i], header[i+1])
	}
	return r
}

func TestCheckResponseKinds(t *testing.T) {
	dup := `{"errors":[{"title":"has already been taken","detail":"threat_value - has already been taken","code":"100","source":{"pointer":"/data/attributes/threat_value"},"status":"422"}]}`
	cases := []struct {
		name      string
		resp      *http.Response
		body      string
		kind      Kind
		sentinel  error
		retryable bool
		after     time.Duration
		messages  string
	}{
		{"ok", response(200), "", KindUnknown, nil, false, 0, ""},
		{"created", response(201), "", KindUnknown, nil, false, 0, ""},
		{"duplicate by title", response(422), dup, KindDuplicate, ErrDuplicate, false, 0, "threat_value - has already been taken"},
		{"duplicate by detail only", response(422), `{"errors":[{"detail":"threat_key - Has already been taken"}]}`, KindDuplicate, ErrDuplicate, false, 0, "threat_key - Has already been taken"},
		{"duplicate among others", response(422), `{"errors":[{"title":"is invalid","detail":"threat_level - is invalid"},{"title":"has already been taken"}]}`, KindDuplicate, ErrDuplicate, false, 0, "threat_level - is invalid|has already been taken"},
		{"validation fixture", response(422), string(fixture.Read(t, "triage", "xsoar_v3_test_422_error.json")), KindValidation, ErrValidation, false, 0, "threat_key - can't be blank|threat_value - can't be blank"},
		{"validation without body", response(422), "", KindValidation, ErrValidation, false, 0, ""},
		{"not found fixture", response(404), string(fixture.Read(t, "triage", "xsoar_v3_test_404_error.json")), KindNotFound, ErrNotFound, false, 0, "The record identified by -1 could not be found."},
		{"not found titled", response(404), `{"errors":[{"title":"Record not found","detail":"The record identified by 5 could not be found.","code":"404","status":"404"}]}`, KindNotFound, ErrNotFound, false, 0, "Record not found: The record identified by 5 could not be found."},
		{"unauthorized", response(401, "WWW-Authenticate", `Bearer realm="Doorkeeper", error="invalid_token", error_description="The access token expired"`), "", KindUnauthorized, ErrUnauthorized, false, 0, "invalid_token: The access token expired"},
		{"oauth error body", response(401), `{"error":"invalid_client","error_description":"Client authentication failed"}`, KindUnauthorized, ErrUnauthorized, false, 0, "invalid_client: Client authentication failed"},
		{"rate limited seconds", response(429, "Retry-After", "7"), "", KindRateLimited, ErrRateLimited, true, 7 * time.Second, ""},
		{"rate limited bare", response(429), "", KindRateLimited, ErrRateLimited, true, 0, ""},
		{"server 500", response(500), "<html>oops</html>", KindServer, ErrServer, true, 0, ""},
		{"server 502", response(502), "", KindServer, ErrServer, true, 0, ""},
		{"server 503 with Retry-After", response(503, "Retry-After", "2"), "", KindServer, ErrServer, true, 2 * time.Second, ""},
		{"server 504", response(504), "", KindServer, ErrServer, true, 0, ""},
		{"bad request", response(400), `{"errors":[{"title":"Invalid page value","detail":"0 is not a valid value for size page parameter.","code":"118","status":"400"}]}`, KindClient, ErrClient, false, 0, "Invalid page value: 0 is not a valid value for size page parameter."},
		{"forbidden", response(403), "", KindForbidden, ErrForbidden, false, 0, ""},
		{"unsupported media type", response(415), "", KindClient, ErrClient, false, 0, ""},
		{"redirect", response(302, "Location", "https://x.example/"), "", KindBadResponse, ErrBadResponse, false, 0, "unexpected redirect to https://x.example/"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := CheckResponse(tc.resp, []byte(tc.body), "POST", "/threat_indicators")
			if tc.sentinel == nil {
				if err != nil {
					t.Fatalf("err = %v, want nil", err)
				}
				return
			}
			var e *Error
			if !errors.As(err, &e) {
				t.Fatalf("err = %v, want *Error", err)
			}
			if e.Kind != tc.kind || !errors.Is(err, tc.sentinel) || e.Retryable() != tc.retryable || e.RetryAfter() != tc.after {
				t.Fatalf("got kind %v retryable %v after %v, want %v %v %v", e.Kind, e.Retryable(), e.RetryAfter(), tc.kind, tc.retryable, tc.after)
			}
			if got := strings.Join(e.Messages, "|"); got != tc.messages {
				t.Fatalf("messages %q, want %q", got, tc.messages)
			}
			for _, other := range kindSentinels {
				if other != nil && other != tc.sentinel && errors.Is(err, other) {
					t.Fatalf("%v also matches %v", err, other)
				}
			}
			if wrapped := fmt.Errorf("create: %w", err); !errors.Is(wrapped, tc.sentinel) {
				t.Fatal("the sentinel must match through wrapping")
			}
		})
	}
}

func TestErrorText(t *testing.T) {
	err := CheckResponse(response(422), fixture.Read(t, "triage", "xsoar_v3_test_422_error.json"), "POST", "/threat_indicators")
	want := "triage: POST /threat_indicators: 422 validation: threat_key - can't be blank; threat_value - can't be blank"
	if err.Error() != want {
		t.Fatalf("text %q\nwant %q", err, want)
	}
	err = CheckResponse(response(429, "Retry-After", "3"), nil, "GET", "/threat_indicators")
	if want := "triage: GET /threat_indicators: 429 rate limited (retry after 3s)"; err.Error() != want {
		t.Fatalf("text %q, want %q", err, want)
	}
	te := &Error{Kind: KindTransport, Method: "GET", Path: "/x", Err: errors.New("connection refused")}
	if want := "triage: GET /x: transport: connection refused"; te.Error() != want {
		t.Fatalf("text %q, want %q", te, want)
	}
}

func TestErrorMessagesAreBounded(t *testing.T) {
	var b strings.Builder
	b.WriteString(`{"errors":[`)
	for i := range 50 {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, `{"detail":"attr%d - %s"}`, i, strings.Repeat("é", 400))
	}
	b.WriteString(`]}`)
	e := CheckResponse(response(422), []byte(b.String()), "POST", "/p").(*Error)
	if len(e.Messages) != maxMessages+1 || e.Messages[maxMessages] != "and 30 more" {
		t.Fatalf("%d messages, last %q", len(e.Messages), e.Messages[len(e.Messages)-1])
	}
	for _, m := range e.Messages {
		if len(m) > maxMessageLen+len("…") || !strings.HasSuffix(m, "…") && !strings.HasPrefix(m, "and ") {
			t.Fatalf("message of %d bytes: %q", len(m), m)
		}
	}
}

// FuzzCheckResponse: whatever a server sends, classifying it neither panics
// nor yields an error without a kind, and the text stays bounded.
func FuzzCheckResponse(f *testing.F) {
	f.Add(422, `{"errors":[{"title":"has already been taken"}]}`, "")
	f.Add(429, ``, "Wed, 21 Oct 2015 07:28:00 GMT")
	f.Add(401, `{"error":"invalid_client"}`, "5")
	f.Add(503, `{"errors":null}`, "-1")
	f.Add(302, `[]`, "x")
	f.Fuzz(func(t *testing.T, code int, body, retryAfter string) {
		if code < 100 || code > 999 {
			return
		}
		err := CheckResponse(response(code, "Retry-After", retryAfter, "WWW-Authenticate", body), []byte(body), "GET", "/x")
		if code >= 200 && code <= 299 {
			if err != nil {
				t.Fatalf("%d: %v", code, err)
			}
			return
		}
		e, ok := err.(*Error)
		if !ok || e.Kind == KindUnknown || e.RetryAfterDelay < 0 {
			t.Fatalf("%d: %#v", code, err)
		}
		if len(e.Messages) > maxMessages+1 {
			t.Fatalf("%d messages", len(e.Messages))
		}
	})
}
