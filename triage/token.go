package triage

import (
	"context"
	"errors"
	"net/http"
	"net/url"
	"sync"
	"time"

	"golang.org/x/oauth2"
	"golang.org/x/oauth2/clientcredentials"
)

// tokenCache holds the one access token a Client uses.
//
// The x/oauth2 ReuseTokenSource cannot be told to forget a token that the
// API refused, and it fetches under a mutex that a request's context cannot
// abandon. So the cache is ours, and x/oauth2's clientcredentials only
// performs the grant: one fetch at a time, in its own goroutine on a
// long-lived context, waited for by every caller that needs a token until
// its own context ends.
type tokenCache struct {
	conf   *clientcredentials.Config // without the secret
	secret func() (string, error)    // read for each grant: a rotated secret is used at once
	ctx    context.Context           // long-lived; carries the HTTP client for token calls
	now    func() time.Time

	mu       sync.Mutex
	tok      *oauth2.Token
	renewAt  time.Time
	inflight chan struct{} // closed when the running fetch ends
	fetchErr error         // result of the last fetch, for its waiters
}

// refreshMargin is how long before expiry a token is renewed: x/oauth2's
// 10 s, but never more than half its life so short-lived tokens stay usable.
const refreshMargin = 10 * time.Second

func newTokenCache(ctx context.Context, conf *clientcredentials.Config, secret func() (string, error), hc *http.Client) *tokenCache {
	// WithoutCancel: the caller's context may be short; the grant's must not
	// be, since callers share it. Values stay, the HTTP client for token
	// calls among them.
	ctx = context.WithValue(context.WithoutCancel(ctx), oauth2.HTTPClient, hc)
	return &tokenCache{conf: conf, secret: secret, ctx: ctx, now: time.Now}
}

// secretError is a failure of the secret's source: no grant was asked for.
type secretError struct{ err error }

func (e secretError) Error() string { return "client secret: " + e.err.Error() }
func (e secretError) Unwrap() error { return e.err }

// fresh returns a token granted from now on: the cached one is forgotten,
// unless a fetch is already running, whose token is fresh enough.
func (c *tokenCache) fresh(ctx context.Context) (string, error) {
	c.mu.Lock()
	if c.inflight == nil {
		c.tok = nil
	}
	c.mu.Unlock()
	return c.token(ctx)
}

// token returns a valid access token, fetching one when there is none.
func (c *tokenCache) token(ctx context.Context) (string, error) {
	for {
		c.mu.Lock()
		if c.tok != nil && c.now().Before(c.renewAt) {
			t := c.tok.AccessToken
			c.mu.Unlock()
			return t, nil
		}
		wait := c.inflight
		if wait == nil {
			wait = make(chan struct{})
			c.inflight = wait
			go c.fetch(wait)
		}
		c.mu.Unlock()

		select {
		case <-wait:
		case <-ctx.Done():
			return "", ctx.Err()
		}
		c.mu.Lock()
		err, got := c.fetchErr, c.tok != nil
		c.mu.Unlock()
		if err != nil {
			return "", err
		}
		if !got {
			// Dropped again between the fetch and this read (another
			// request's 401): loop and fetch anew.
			continue
		}
	}
}

func (c *tokenCache) fetch(done chan struct{}) {
	start := c.now()
	var tok *oauth2.Token
	secret, err := c.secret()
	if err != nil {
		err = secretError{err}
	} else {
		conf := *c.conf
		conf.ClientSecret = secret
		tok, err = conf.Token(c.ctx)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	defer close(done)
	c.inflight = nil
	c.fetchErr = err
	if err != nil {
		c.tok = nil
		return
	}
	c.tok = tok
	if tok.Expiry.IsZero() {
		c.renewAt = start.Add(100 * 365 * 24 * time.Hour)
		return
	}
	c.renewAt = tok.Expiry.Add(-min(refreshMargin, tok.Expiry.Sub(start)/2))
}

// drop forgets the token the API just refused, unless it has already been
// replaced: many requests that held the same stale token get one new token
// between them, not one each.
func (c *tokenCache) drop(refused string) {
	c.mu.Lock()
	if c.tok != nil && c.tok.AccessToken == refused {
		c.tok = nil
	}
	c.mu.Unlock()
}

// current is the cached access token, for scrubbing error texts.
func (c *tokenCache) current() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.tok == nil {
		return ""
	}
	return c.tok.AccessToken
}

// tokenError turns a failed grant into an *Error, through CheckResponse
// like every other answer, without keeping the *oauth2.RetrieveError: its
// text holds the raw body, which could echo what was sent.
func tokenError(err error, path string) *Error {
	var re *oauth2.RetrieveError
	if !errors.As(err, &re) || re.Response == nil {
		kind := KindBadResponse // a 2xx without a usable token
		var ue *url.Error
		if errors.As(err, &ue) {
			// No answer. The token URL in *url.Error carries no credentials:
			// they travel in the form body.
			kind = KindTransport
		}
		return &Error{Kind: kind, Method: http.MethodPost, Path: path, Err: err}
	}
	e, _ := CheckResponse(re.Response, re.Body, http.MethodPost, path).(*Error)
	if e == nil {
		// A 2xx carrying an OAuth error parameter: refused all the same.
		e = &Error{StatusCode: re.Response.StatusCode, Method: http.MethodPost, Path: path,
			Messages: []string{clipMessage(joinNonEmpty(re.ErrorCode, re.ErrorDescription))}}
	}
	// Doorkeeper refuses bad credentials with 401 invalid_client, and a bad
	// grant with 400 (RFC 6749 5.2): no retry fixes either.
	if e.StatusCode == http.StatusBadRequest || e.StatusCode == http.StatusForbidden || e.StatusCode < 300 {
		e.Kind = KindUnauthorized
	}
	return e
}
