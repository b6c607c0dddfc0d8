package throttle

import (
	"context"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"
)

func TestRateIsCapped(t *testing.T) {
	th := New(50)
	start := time.Now()
	for i := 0; i < 30; i++ {
		if err := th.Wait(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	// 30 requests at 50/s with a burst of 5 take at least (30-5)/50 s.
	if el := time.Since(start); el < 450*time.Millisecond {
		t.Fatalf("30 requests at 50/s took %v; the limit did not hold", el)
	}
}

func Test429PausesEveryRequestAndCutsTheRate(t *testing.T) {
	var calls atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if calls.Add(1) == 1 {
			w.Header().Set("Retry-After", "1")
			w.WriteHeader(http.StatusTooManyRequests)
			return
		}
		w.WriteHeader(http.StatusOK)
	}))
	defer srv.Close()
	th := New(100)
	c := &http.Client{Transport: th.Transport(http.DefaultTransport)}
	resp, err := c.Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusTooManyRequests || th.Throttled() != 1 {
		t.Fatalf("status %d, throttled %d", resp.StatusCode, th.Throttled())
	}
	if th.Limit() >= 100 {
		t.Fatalf("rate %v after a 429; want it cut below 100", th.Limit())
	}
	start := time.Now()
	resp, err = c.Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if el := time.Since(start); el < 900*time.Millisecond {
		t.Fatalf("next request went after %v; want the 1s Retry-After honoured", el)
	}
}

func TestWaitEndsWithContext(t *testing.T) {
	th := New(0)
	th.Observe(&http.Response{StatusCode: 429, Header: http.Header{"Retry-After": {"60"}}})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if err := th.Wait(ctx); err == nil {
		t.Fatal("Wait returned during a 60s pause")
	}
}
