package triage

import (
	"context"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/tqtriage/tqtriage/triage/triagesim"
)

// fakeClock is the client's view of time, moved by the test.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func TestTokenIsRenewedBeforeItExpires(t *testing.T) {
	cases := []struct {
		lifetime time.Duration
		reuseFor time.Duration // still the same token this long after the grant
		renewBy  time.Duration // a new one by this long after it
	}{
		{7200 * time.Second, 7189 * time.Second, 7191 * time.Second},        // x/oauth2's 10s margin
		{6 * time.Second, 2900 * time.Millisecond, 3100 * time.Millisecond}, // half of a short life
	}
	for _, tc := range cases {
		t.Run(tc.lifetime.String(), func(t *testing.T) {
			sim := triagesim.New(triagesim.Options{TokenLifetime: tc.lifetime})
			srv := httptest.NewServer(sim)
			defer srv.Close()
			c, err := New(context.Background(), Config{BaseURL: srv.URL, ClientID: triagesim.DefaultClientID,
				ClientSecret: triagesim.DefaultClientSecret})
			if err != nil {
				t.Fatal(err)
			}
			// The expiry comes from the grant, in real time; the cache's
			// clock starts there and is moved by hand.
			clock := &fakeClock{t: time.Now()}
			c.tokens.now = clock.now
			ctx := context.Background()
			if err := c.Ping(ctx); err != nil {
				t.Fatal(err)
			}
			clock.add(tc.reuseFor)
			if err := c.Ping(ctx); err != nil {
				t.Fatal(err)
			}
			if g := sim.Stats().TokenGrants; g != 1 {
				t.Fatalf("%d grants %v into a %v token, want 1", g, tc.reuseFor, tc.lifetime)
			}
			clock.add(tc.renewBy - tc.reuseFor)
			if err := c.Ping(ctx); err != nil {
				t.Fatal(err)
			}
			st := sim.Stats()
			if st.TokenGrants != 2 || st.Unauthorized != 0 {
				t.Fatalf("stats %+v: want a second grant before any 401", st)
			}
		})
	}
}

func TestTokenWaitEndsWithTheCallersContext(t *testing.T) {
	release := make(chan struct{})
	sim := triagesim.New(triagesim.Options{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == TokenPath {
			<-release // a token endpoint that hangs
		}
		sim.ServeHTTP(w, r)
	}))
	defer srv.Close()
	defer close(release)
	c, err := New(context.Background(), Config{BaseURL: srv.URL, ClientID: triagesim.DefaultClientID,
		ClientSecret: triagesim.DefaultClientSecret})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	start := time.Now()
	err = c.Ping(ctx)
	if err == nil || ctx.Err() == nil || time.Since(start) > time.Second {
		t.Fatalf("Ping = %v after %v, want the context's end", err, time.Since(start))
	}
}

func TestTokenFailureKinds(t *testing.T) {
	cases := []struct {
		status int
		body   string
		kind   Kind
	}{
		{http.StatusBadRequest, `{"error":"unsupported_grant_type"}`, KindUnauthorized},
		{http.StatusUnauthorized, `{"error":"invalid_client"}`, KindUnauthorized},
		{http.StatusOK, `{"error":"invalid_grant"}`, KindUnauthorized},
		{http.StatusOK, `{"token_type":"Bearer"}`, KindBadResponse}, // no access_token
		{http.StatusTooManyRequests, ``, KindRateLimited},
		{http.StatusBadGateway, `<html></html>`, KindServer},
		{http.StatusNotFound, ``, KindNotFound},
	}
	for _, tc := range cases {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			w.Header().Set("Retry-After", "4")
			w.WriteHeader(tc.status)
			_, _ = w.Write([]byte(tc.body))
		}))
		c, err := New(context.Background(), Config{BaseURL: srv.URL, ClientID: "id", ClientSecret: "secret"})
		if err != nil {
			t.Fatal(err)
		}
		err = c.Ping(context.Background())
		srv.Close()
		e, ok := err.(*Error)
		if !ok || e.Kind != tc.kind || e.Path != TokenPath || e.Method != http.MethodPost {
			t.Errorf("%d %s: err = %v, want kind %v at the token endpoint", tc.status, tc.body, err, tc.kind)
			continue
		}
		if tc.kind == KindRateLimited && e.RetryAfter() != 4*time.Second {
			t.Errorf("429 from the token endpoint: Retry-After %v", e.RetryAfter())
		}
	}
}
