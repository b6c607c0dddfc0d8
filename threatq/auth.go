package threatq

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/tqtriage/tqtriage/internal/httpclient"
	"github.com/tqtriage/tqtriage/threatq/internal/wire"
)

// grant builds the token request of one OAuth grant. Both put grant_type
// in the query, as ThreatQ's own examples do, and in the form body, as
// OAuth servers expect.
type grant struct {
	name  string
	build func(req *http.Request)
	form  url.Values
}

func clientCredentials(id, secret string) grant {
	return grant{
		name: "client_credentials",
		form: url.Values{"grant_type": {"client_credentials"}},
		// Basic credentials are sent as they are, not form-escaped first:
		// ThreatQ's OAuth server splits the decoded pair on the first colon.
		build: func(req *http.Request) { req.SetBasicAuth(id, secret) },
	}
}

func passwordCredentials(clientID, email, password string) grant {
	return grant{
		name:  "password",
		form:  url.Values{"grant_type": {"password"}, "email": {email}, "password": {password}, "client_id": {clientID}},
		build: func(*http.Request) {},
	}
}

// token is an access token and when to stop using it.
type token struct {
	access    string
	refreshAt time.Time // renew from here on, in the background
	expiresAt time.Time // zero: the server gave no lifetime
}

// TokenPath is where a token is asked for, below the base URL.
const TokenPath = "/api/token"

var errNoToken = errors.New("the token response has no access_token")

// fetchToken asks for a new token, once (the caller retries).
func (c *Client) fetchToken(ctx context.Context, g grant) (token, error) {
	start := time.Now()
	u := c.base + TokenPath + "?" + url.Values{"grant_type": {g.name}}.Encode()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u, strings.NewReader(g.form.Encode()))
	if err != nil {
		return token{}, &Error{Method: http.MethodPost, Path: TokenPath, Err: err}
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Accept", "application/json")
	req.Header.Set("User-Agent", c.userAgent)
	g.build(req)
	resp, err := c.http.Do(req)
	if err != nil {
		return token{}, &Error{Method: http.MethodPost, Path: TokenPath, Err: c.maskErr(err)}
	}
	defer httpclient.Drain(resp.Body)
	var tr wire.TokenResponse
	if err := c.read(resp, http.MethodPost, TokenPath, &tr); err != nil {
		if e, ok := err.(*Error); ok && e.StatusCode >= 400 && e.StatusCode < 500 && e.StatusCode != http.StatusTooManyRequests && e.StatusCode != http.StatusRequestTimeout {
			// The server looked at the credentials and said no.
			e.Err = ErrAuthentication
		}
		return token{}, err
	}
	if tr.AccessToken == "" {
		return token{}, &Error{StatusCode: resp.StatusCode, Method: http.MethodPost, Path: TokenPath, Err: &decodeError{errNoToken}}
	}
	t := token{access: tr.AccessToken}
	if tr.ExpiresIn > 0 {
		life := time.Duration(tr.ExpiresIn) * time.Second
		t.expiresAt = start.Add(life)
		// Renew a tenth of the lifetime early (at most a minute), so that
		// a request never leaves with a token about to lapse in flight.
		early := min(life/10, time.Minute)
		t.refreshAt = t.expiresAt.Add(-early)
	}
	return t, nil
}

// tokenCache hands out the current token and renews it with one fetch at
// a time however many goroutines ask: single flight. A token past its
// refresh time but not expired is still handed out while the renewal runs,
// so callers wait only when there is no usable token at all.
type tokenCache struct {
	base  context.Context // bounds fetches, which outlive any one caller
	fetch func(context.Context) (token, error)
	now   func() time.Time

	mu     sync.Mutex
	cur    *token
	flight *tokenFlight
}

type tokenFlight struct {
	done chan struct{}
	tok  token
	err  error
}

func newTokenCache(base context.Context, fetch func(context.Context) (token, error)) *tokenCache {
	return &tokenCache{base: base, fetch: fetch, now: time.Now}
}

// get returns a usable access token, fetching one if needed.
func (tc *tokenCache) get(ctx context.Context) (string, error) {
	tc.mu.Lock()
	now := tc.now()
	if t := tc.cur; t != nil {
		if t.expiresAt.IsZero() || now.Before(t.refreshAt) {
			tc.mu.Unlock()
			return t.access, nil
		}
		if now.Before(t.expiresAt) {
			tc.startLocked() // renew in the background; this one still works
			tc.mu.Unlock()
			return t.access, nil
		}
		tc.cur = nil
	}
	f := tc.startLocked()
	tc.mu.Unlock()
	select {
	case <-f.done:
		if f.err != nil {
			return "", f.err
		}
		return f.tok.access, nil
	case <-ctx.Done():
		return "", fmt.Errorf("threatq: waiting for a token: %w", ctx.Err())
	}
}

// startLocked starts a fetch unless one is running, and returns it.
func (tc *tokenCache) startLocked() *tokenFlight {
	if tc.flight != nil {
		return tc.flight
	}
	f := &tokenFlight{done: make(chan struct{})}
	tc.flight = f
	go func() {
		tok, err := tc.fetch(tc.base)
		tc.mu.Lock()
		if err == nil {
			tc.cur = &tok
		}
		tc.flight = nil
		f.tok, f.err = tok, err
		tc.mu.Unlock()
		close(f.done)
	}()
	return f
}

// fresh obtains a new token, whatever is cached (a fetch already running
// serves: its token is new).
func (tc *tokenCache) fresh(ctx context.Context) error {
	tc.mu.Lock()
	tc.cur = nil
	tc.mu.Unlock()
	_, err := tc.get(ctx)
	return err
}

// invalidate drops access if it is still the current token: after a 401,
// the next get fetches a new one. Comparing first means that many requests
// failing with the same token cause one fetch, not one each.
func (tc *tokenCache) invalidate(access string) {
	tc.mu.Lock()
	if tc.cur != nil && tc.cur.access == access {
		tc.cur = nil
	}
	tc.mu.Unlock()
}
