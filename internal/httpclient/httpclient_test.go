package httpclient

import (
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestParseRetryAfter(t *testing.T) {
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	cases := []struct {
		in   string
		want time.Duration
	}{
		{"", 0},
		{"0", 0},
		{"-3", 0},
		{"120", 2 * time.Minute},
		{" 5 ", 5 * time.Second},
		{"99999999999999999", time.Duration(1<<63-1) / time.Second * time.Second},
		{now.Add(90 * time.Second).Format(http.TimeFormat), 90 * time.Second},
		{now.Add(-time.Minute).Format(http.TimeFormat), 0},
		{"Fri, 02 Jan 2026 03:05:05 GMT", time.Minute},
		{"Friday, 02-Jan-26 03:05:05 GMT", time.Minute}, // RFC 850, still accepted
		{"soon", 0},
		{"1.5", 0},
	}
	for _, tc := range cases {
		if got := RetryAfter(tc.in, now); got != tc.want {
			t.Errorf("RetryAfter(%q) = %v, want %v", tc.in, got, tc.want)
		}
	}
}

func TestReadBodyIsBounded(t *testing.T) {
	if b, err := ReadBody(strings.NewReader("12345"), 5); err != nil || string(b) != "12345" {
		t.Fatalf("ReadBody at the limit = %q, %v", b, err)
	}
	if _, err := ReadBody(strings.NewReader("123456"), 5); !errors.Is(err, ErrBodyTooLarge) {
		t.Fatalf("ReadBody over the limit: err %v; want ErrBodyTooLarge", err)
	}
}

func TestCAFileErrorsAreClear(t *testing.T) {
	if _, err := New(Options{CAFile: filepath.Join(t.TempDir(), "missing.pem")}); err == nil || !strings.Contains(err.Error(), "read CA file") {
		t.Fatalf("missing CA file: err %v", err)
	}
	bad := filepath.Join(t.TempDir(), "bad.pem")
	if err := os.WriteFile(bad, []byte("not a certificate"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := New(Options{CAFile: bad}); err == nil || !strings.Contains(err.Error(), "no PEM certificate") {
		t.Fatalf("bad CA file: err %v", err)
	}
}

func TestWrapSeesRequests(t *testing.T) {
	var seen int
	c, err := New(Options{Wrap: func(rt http.RoundTripper) http.RoundTripper {
		return roundTripFunc(func(r *http.Request) (*http.Response, error) { seen++; return rt.RoundTrip(r) })
	}})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}))
	defer srv.Close()
	resp, err := c.Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	Drain(resp.Body)
	if seen != 1 {
		t.Fatalf("wrapper saw %d requests; want 1", seen)
	}
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

func TestReadResponseReadsTheDeclaredLengthAndKeepsTheBound(t *testing.T) {
	body := func(s string, n int64) *http.Response {
		return &http.Response{Body: io.NopCloser(strings.NewReader(s)), ContentLength: n}
	}
	if b, err := ReadResponse(body("hello", 5), 10); err != nil || string(b) != "hello" {
		t.Fatalf("declared: %q, %v", b, err)
	}
	if b, err := ReadResponse(body("hello", -1), 10); err != nil || string(b) != "hello" {
		t.Fatalf("undeclared: %q, %v", b, err)
	}
	if _, err := ReadResponse(body("hello world", 11), 5); !errors.Is(err, ErrBodyTooLarge) {
		t.Fatalf("over the bound: %v", err)
	}
	if _, err := ReadResponse(body("hel", 5), 10); err == nil {
		t.Fatal("a body cut short of its declared length was accepted")
	}
}
