// Package triage is a client for the threat indicators of the Cofense Triage
// public API v2: create, update, get, find by type and value, and list. It
// owns the HTTP side of talking to Triage: OAuth2 client credentials with a
// shared, renewed token; the JSON:API media type; bounded bodies; and one
// error type whose Kind says what a caller can do, and whether trying again
// may help (Retryable, with the server's Retry-After), in the terms
// internal/retry reads.
//
// A call is one attempt, plus the one token renewal a 401 or 403 earns: it
// does not retry. The caller does (the worker, with internal/retry), because
// it counts attempts and must keep its job alive while it waits. A Pacer,
// when configured, is waited on before each request is sent, outside the
// request's timeout, and told of each answer (a 429 pauses it).
//
// It does not validate or map indicators (package mapping does), and it
// decides nothing about jobs: a duplicate is ErrDuplicate, and what that
// means for a run is the caller's business. The simulator in triagesim
// behaves like the API and is what the tests run against.
package triage

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"

	"golang.org/x/oauth2"
	"golang.org/x/oauth2/clientcredentials"

	"github.com/tqtriage/tqtriage/internal/httpclient"
	"github.com/tqtriage/tqtriage/internal/redact"
)

// MediaType is JSON:API's media type, sent as Content-Type and Accept.
const MediaType = "application/vnd.api+json"

// Paths below the base URL.
const (
	TokenPath = "/oauth/token"
	APIPath   = "/api/public/v2"
)

// Defaults for Config fields left zero.
const (
	DefaultMaxBodyBytes = 4 << 20
	DefaultUserAgent    = "tqtriage"
	// MaxRequestBytes bounds what one request sends; an indicator document
	// is far smaller, so a larger one is a mistake upstream.
	MaxRequestBytes = 1 << 20
)

// ErrRequestTooLarge is returned, without a request being sent, when a
// request body would exceed MaxRequestBytes.
var ErrRequestTooLarge = errors.New("request body too large")

// Config configures a Client.
type Config struct {
	// BaseURL is the Triage instance, e.g. https://triage.example.com.
	// A trailing /api/public/v2 is tolerated and removed.
	BaseURL  string
	ClientID string
	// ClientSecret is the client's secret; ClientSecretFunc, when set,
	// replaces it and is called for each token request, so that a secret
	// rotated where it is kept (a file) is used without a restart. An
	// error or an empty secret from it fails that token request.
	ClientSecret     string
	ClientSecretFunc func() (string, error)
	// Pacer, when set, is waited on before every API request and told of
	// every answer (the token requests excepted).
	Pacer Pacer
	// HTTP sets TLS verification, an extra CA file, timeouts and pooling;
	// proxies come from the standard environment variables.
	HTTP httpclient.Options
	// MaxBodyBytes bounds a response body (default DefaultMaxBodyBytes).
	MaxBodyBytes int64
	// UserAgent is sent on every request (default DefaultUserAgent).
	UserAgent string
}

// Pacer paces a client's requests (internal/throttle is one). Wait runs
// before a request is sent, outside its timeout, so that a long pause
// cannot time the request out; Observe sees every answer.
type Pacer interface {
	Wait(ctx context.Context) error
	Observe(resp *http.Response)
}

// Client calls one Triage instance. It is safe for concurrent use.
type Client struct {
	base    *url.URL // scheme://host[:port] plus any path prefix, no trailing slash
	api     string   // base + APIPath
	hc      *http.Client
	tokens  *tokenCache
	secrets *redact.Secrets // only to scrub them from error texts
	pacer   Pacer           // nil: none
	maxBody int64
	agent   string
}

// New checks cfg and returns a client. No request is made: the first call
// fetches the token (Ping checks the credentials up front). ctx is kept,
// without its cancellation, for token requests: pass the service's context.
func New(ctx context.Context, cfg Config) (*Client, error) {
	base, err := parseBaseURL(cfg.BaseURL)
	if err != nil {
		return nil, err
	}
	if cfg.ClientID == "" {
		return nil, errors.New("triage: client ID is required")
	}
	if cfg.ClientSecret == "" && cfg.ClientSecretFunc == nil {
		return nil, errors.New("triage: client secret is required")
	}
	hc, err := httpclient.New(cfg.HTTP)
	if err != nil {
		return nil, fmt.Errorf("triage: HTTP client: %w", err)
	}
	// A redirect would turn a POST into a GET without its body; report it
	// instead (CheckResponse makes it a KindBadResponse naming the target).
	hc.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }

	c := &Client{
		base:    base,
		api:     base.String() + APIPath,
		hc:      hc,
		secrets: &redact.Secrets{},
		pacer:   cfg.Pacer,
		maxBody: cfg.MaxBodyBytes,
		agent:   cfg.UserAgent,
	}
	if c.maxBody <= 0 {
		c.maxBody = DefaultMaxBodyBytes
	}
	if c.agent == "" {
		c.agent = DefaultUserAgent
	}
	secret := cfg.ClientSecretFunc
	if secret == nil {
		secret = func() (string, error) { return cfg.ClientSecret, nil }
	}
	c.tokens = newTokenCache(ctx, &clientcredentials.Config{
		ClientID: cfg.ClientID,
		TokenURL: base.String() + TokenPath,
		// Explicit: auto-detection would first try Basic auth and spend a
		// failed request finding out.
		AuthStyle: oauth2.AuthStyleInParams,
	}, c.readSecret(secret), withUserAgent(hc, c.agent))
	return c, nil
}

// readSecret wraps a secret's source: each secret read is remembered for
// scrubbing, and an empty one is an error.
func (c *Client) readSecret(src func() (string, error)) func() (string, error) {
	return func() (string, error) {
		s, err := src()
		if err != nil {
			return "", err
		}
		if s == "" {
			return "", errors.New("the client secret is empty")
		}
		c.secrets.Add(s)
		return s, nil
	}
}

// Authenticate obtains a new access token, whatever the cache holds (one
// fetch that is already running serves), reading the client secret anew.
// It is how a caller whose requests were refused learns that the
// credentials work again; an error is an *Error (Refused says whether
// the credentials are at fault).
func (c *Client) Authenticate(ctx context.Context) error {
	if _, err := c.tokens.fresh(ctx); err != nil {
		return c.tokenFailure(err)
	}
	return nil
}

// withUserAgent is hc sending agent on every request: the oauth2 package
// makes the token requests itself and would send Go's default.
func withUserAgent(hc *http.Client, agent string) *http.Client {
	out := *hc
	out.Transport = agentTransport{base: hc.Transport, agent: agent}
	return &out
}

type agentTransport struct {
	base  http.RoundTripper
	agent string
}

func (t agentTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	base := t.base
	if base == nil {
		base = http.DefaultTransport
	}
	r = r.Clone(r.Context()) // a RoundTripper must not change the request it is given
	r.Header.Set("User-Agent", t.agent)
	return base.RoundTrip(r)
}

func parseBaseURL(raw string) (*url.URL, error) {
	if strings.TrimSpace(raw) == "" {
		return nil, errors.New("triage: base URL is required")
	}
	u, err := url.Parse(strings.TrimSpace(raw))
	if err != nil {
		// url.Error quotes the input, which may hold credentials.
		return nil, fmt.Errorf("triage: base URL %q does not parse as a URL", redact.URL(raw))
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return nil, fmt.Errorf("triage: base URL %q: scheme must be http or https", redact.URL(raw))
	}
	if u.Host == "" {
		return nil, fmt.Errorf("triage: base URL %q: no host", redact.URL(raw))
	}
	if u.User != nil || u.RawQuery != "" || u.Fragment != "" {
		return nil, fmt.Errorf("triage: base URL %q: must not carry credentials, a query or a fragment", redact.URL(raw))
	}
	u.Path = strings.TrimSuffix(strings.TrimRight(u.Path, "/"), APIPath)
	u.RawPath = ""
	return u, nil
}

// call is one API operation: what to send and where.
type call struct {
	method string
	url    string // absolute
	path   string // below the API base, for errors
	body   []byte // nil: no body
}

// newCall prepares an operation on path (below the API base) with an
// optional query and a JSON body.
func (c *Client) newCall(method, path string, query url.Values, body any) (call, error) {
	k := call{method: method, url: c.api + path, path: path}
	if len(query) > 0 {
		k.url += "?" + query.Encode()
	}
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return k, fmt.Errorf("triage: %s %s: encode body: %w", method, path, err)
		}
		if len(b) > MaxRequestBytes {
			return k, fmt.Errorf("triage: %s %s: %w (%d bytes, limit %d)", method, path, ErrRequestTooLarge, len(b), MaxRequestBytes)
		}
		k.body = b
	}
	return k, nil
}

// newRequest is the one place a request is built: URL, JSON:API headers,
// user agent, bearer token.
func (c *Client) newRequest(ctx context.Context, k call, token string) (*http.Request, error) {
	var body io.Reader
	if k.body != nil {
		body = bytes.NewReader(k.body)
	}
	req, err := http.NewRequestWithContext(ctx, k.method, k.url, body)
	if err != nil {
		return nil, err
	}
	if k.body != nil {
		req.Header.Set("Content-Type", MediaType)
	}
	req.Header.Set("Accept", MediaType)
	req.Header.Set("User-Agent", c.agent)
	req.Header.Set("Authorization", "Bearer "+token)
	return req, nil
}

// do makes one attempt at k and decodes a success into out (when not nil).
// The attempt includes the one renewal of the token that a 401 or a 403
// earns: the token may have expired or been revoked since it was issued,
// or been issued before the client's permissions changed.
func (c *Client) do(ctx context.Context, k call, out any) error {
	token, err := c.tokens.token(ctx)
	if err != nil {
		return c.tokenFailure(err)
	}
	err = c.send(ctx, k, token, out)
	if !errors.Is(err, ErrUnauthorized) && !errors.Is(err, ErrForbidden) {
		return err
	}
	c.tokens.drop(token)
	if token, err = c.tokens.token(ctx); err != nil {
		return c.tokenFailure(err)
	}
	return c.send(ctx, k, token, out)
}

func (c *Client) tokenFailure(err error) error {
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		// The call's context ended while it waited for a token.
		return &Error{Kind: KindTransport, Method: http.MethodPost, Path: TokenPath, Err: err}
	}
	var se secretError
	if errors.As(err, &se) {
		// The secret's own source failed (a file gone or empty): nothing
		// was sent. Its error names the file, never the content.
		return &Error{Kind: KindUnauthorized, Method: http.MethodPost, Path: TokenPath,
			Messages: []string{"the client secret could not be read"}, Err: se.err}
	}
	e := tokenError(err, TokenPath)
	c.scrub(e, "")
	return e
}

// send makes one HTTP request and reads its answer.
func (c *Client) send(ctx context.Context, k call, token string, out any) error {
	req, err := c.newRequest(ctx, k, token)
	if err != nil {
		return fmt.Errorf("triage: %s %s: %w", k.method, k.path, err)
	}
	if c.pacer != nil {
		// Before Do: the request's timeout starts there, and a pause of
		// minutes must not be spent inside it.
		if err := c.pacer.Wait(ctx); err != nil {
			return &Error{Kind: KindTransport, Method: k.method, Path: k.path, Err: err}
		}
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		e := &Error{Kind: KindTransport, Method: k.method, Path: k.path, Err: err}
		c.scrub(e, token)
		return e
	}
	if c.pacer != nil {
		c.pacer.Observe(resp)
	}
	body, readErr := httpclient.ReadResponse(resp, c.maxBody)
	httpclient.Drain(resp.Body)
	if err := CheckResponse(resp, body, k.method, k.path); err != nil {
		c.scrub(err.(*Error), token)
		return err
	}
	if readErr != nil {
		kind := KindTransport // cut off mid-body: worth another try
		if errors.Is(readErr, httpclient.ErrBodyTooLarge) {
			kind = KindBadResponse
		}
		return &Error{Kind: kind, StatusCode: resp.StatusCode, Method: k.method, Path: k.path, Err: readErr}
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(body, out); err != nil {
		return &Error{Kind: KindBadResponse, StatusCode: resp.StatusCode, Method: k.method, Path: k.path,
			Err: fmt.Errorf("decode %s: %w", MediaType, err)}
	}
	return nil
}

// scrub removes the client secret and the access tokens (the one a request
// carried, the one cached now) from what e says, in case a server or proxy
// echoed them.
func (c *Client) scrub(e *Error, sent string) {
	secrets := append(c.secrets.List(), sent, c.tokens.current())
	for i, m := range e.Messages {
		for _, s := range secrets {
			if s != "" {
				m = strings.ReplaceAll(m, s, "[redacted]")
			}
		}
		e.Messages[i] = m
	}
	if e.Err != nil {
		text := e.Err.Error()
		for _, s := range secrets {
			if s != "" && strings.Contains(text, s) {
				e.Err = errors.New(strings.ReplaceAll(text, s, "[redacted]"))
				text = e.Err.Error()
			}
		}
	}
}
