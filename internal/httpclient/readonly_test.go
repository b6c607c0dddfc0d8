package httpclient

import (
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
)

func TestReadOnlyClientSendsReadsAndTheTokenRequestOnly(t *testing.T) {
	var got atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { got.Add(1) }))
	defer srv.Close()
	var wrapped atomic.Int64
	c, err := New(Options{ReadOnly: true, TokenPath: "/oauth/token", Wrap: func(rt http.RoundTripper) http.RoundTripper {
		return roundTripFunc(func(r *http.Request) (*http.Response, error) { wrapped.Add(1); return rt.RoundTrip(r) })
	}})
	if err != nil {
		t.Fatal(err)
	}
	for _, c2 := range []struct {
		method, path string
		sent         bool
	}{
		{"GET", "/api/public/v2/threat_indicators", true},
		{"HEAD", "/api/public/v2/threat_indicators", true},
		{"POST", "/oauth/token", true},
		{"POST", "/prefix/oauth/token", true},
		{"POST", "/api/public/v2/threat_indicators", false},
		{"POST", "/oauth/token/../../api/public/v2/threat_indicators", false},
		{"PUT", "/api/public/v2/threat_indicators/1", false},
		{"PATCH", "/api/public/v2/threat_indicators/1", false},
		{"DELETE", "/api/indicators/1/attributes/2", false},
		{"PUT", "/oauth/token", false},
	} {
		before, beforeWrap := got.Load(), wrapped.Load()
		req, _ := http.NewRequest(c2.method, srv.URL+c2.path, strings.NewReader("{}"))
		resp, err := c.Do(req)
		if err == nil {
			resp.Body.Close()
		}
		sent := got.Load() > before
		if sent != c2.sent {
			t.Errorf("%s %s: sent %v, want %v (err %v)", c2.method, c2.path, sent, c2.sent, err)
		}
		if !c2.sent {
			if !errors.Is(err, ErrReadOnly) || TransportRetryable(err) {
				t.Errorf("%s %s: error %v, want ErrReadOnly and not retryable", c2.method, c2.path, err)
			}
			if wrapped.Load() != beforeWrap {
				t.Errorf("%s %s: a refused request reached the wrapped transport (metrics, throttle)", c2.method, c2.path)
			}
		}
	}
}
