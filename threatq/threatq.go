// Package threatq is the client of the ThreatQ API that tqtriage needs: it
// reads a data collection (a saved search) as a stream of indicators, names
// the collection, and writes attributes back onto indicators, one value per
// attribute name.
//
// It authenticates with the client-credentials grant (or the password
// grant), caches the token, renews it before it expires and once on a 401,
// and always sends "Authorization: Bearer" with a capital B, which ThreatQ
// requires. Requests are retried with backoff on 429, 5xx and transport
// failures (internal/retry); bodies are read with a size bound; secrets
// never appear in errors. The package does not log: it returns errors (an
// *Error for a failed call) and leaves logging to its caller, and it knows
// nothing about Triage, the queue or how indicator types map.
//
// The export-file reader is in the export subpackage, and an in-memory
// ThreatQ to test against is in threatqsim.
package threatq

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
	"sync/atomic"
	"time"

	"github.com/tqtriage/tqtriage/internal/httpclient"
	"github.com/tqtriage/tqtriage/internal/redact"
	"github.com/tqtriage/tqtriage/internal/retry"
	"github.com/tqtriage/tqtriage/internal/termsafe"
	"github.com/tqtriage/tqtriage/threatq/internal/wire"
)

// DefaultAttributeSource is the source named on attributes written back.
const DefaultAttributeSource = "Cofense Triage"

// DefaultMaxBodyBytes bounds one response body. A page of 500 indicators
// with their attributes and sources is a few MiB at most.
const DefaultMaxBodyBytes = 32 << 20

// Config configures a Client. BaseURL and ClientID are required, and
// either ClientSecret (client credentials) or Email and Password (password
// grant).
type Config struct {
	// BaseURL is the ThreatQ address without /api, such as
	// https://threatq.example.com (a trailing /api is tolerated).
	BaseURL string
	// ClientID and ClientSecret: the API credentials (client-credentials
	// grant, HTTP Basic).
	ClientID, ClientSecret string
	// Email and Password, when set, select the password grant, with ClientID.
	Email, Password string
	// SecretFunc, when set, replaces ClientSecret (or, with Email, the
	// Password) and is called for each token request, so that a secret
	// rotated where it is kept (a file) is used without a restart. An
	// error or an empty secret from it fails that token request.
	SecretFunc func() (string, error)
	// Pacer, when set, is waited on before every API request, outside
	// its timeout, and told of every answer (internal/throttle is one).
	Pacer Pacer
	// AttributeSource names the source of written attributes (default
	// DefaultAttributeSource).
	AttributeSource string
	// HTTP configures TLS verification, an extra CA file and timeouts.
	// Proxies come from the environment (HTTPS_PROXY, NO_PROXY).
	HTTP httpclient.Options
	// Retry bounds the retries of one call (zero value: retry's defaults).
	Retry retry.Policy
	// OnRetry, when set, is told of each failed attempt that will be tried
	// again, so that the caller can log it (this package never logs).
	OnRetry retry.Notify
	// MaxBodyBytes bounds one response body (default DefaultMaxBodyBytes).
	MaxBodyBytes int64
	// UserAgent is sent on every request (default "tqtriage").
	UserAgent string
}

// String masks the secrets, so that a Config printed by mistake leaks none.
func (c Config) String() string {
	mask := func(s string) string {
		if s == "" {
			return `""`
		}
		return "[redacted]"
	}
	return fmt.Sprintf("threatq.Config{BaseURL:%q ClientID:%q ClientSecret:%s Email:%q Password:%s AttributeSource:%q}",
		c.BaseURL, c.ClientID, mask(c.ClientSecret), c.Email, mask(c.Password), c.AttributeSource)
}

// GoString is String, for %#v.
func (c Config) GoString() string { return c.String() }

// Pacer paces a client's requests: Wait before a request is sent, so
// that a long pause cannot time the request out; Observe on every answer.
type Pacer interface {
	Wait(ctx context.Context) error
	Observe(resp *http.Response)
}

// Client talks to one ThreatQ instance. It is safe for concurrent use.
type Client struct {
	base      string // scheme://host[/prefix], without /api
	http      *http.Client
	retry     retry.Policy
	onRetry   retry.Notify
	maxBody   int64
	userAgent string
	source    string
	secrets   *redact.Secrets // masked in every message read from the server
	pacer     Pacer           // nil: none
	tokens    *tokenCache
	// noArrays: this ThreatQ refused an array of attributes and took
	// them one by one (addAll); it is sent one a request from now on.
	noArrays atomic.Bool
}

// New checks cfg and returns a client. It does not contact ThreatQ (Ping
// does). ctx bounds the client's token fetches, which outlive any one call
// because concurrent calls share them: give it the service's lifetime
// context, not a request's.
func New(ctx context.Context, cfg Config) (*Client, error) {
	base, err := normaliseBaseURL(cfg.BaseURL)
	if err != nil {
		return nil, err
	}
	var missing []string
	if cfg.ClientID == "" {
		missing = append(missing, "ClientID")
	}
	passwordGrant := cfg.Email != "" || cfg.Password != ""
	switch {
	case passwordGrant && cfg.Email == "":
		missing = append(missing, "Email (a Password is set)")
	case passwordGrant && cfg.Password == "" && cfg.SecretFunc == nil:
		missing = append(missing, "Password (an Email is set)")
	case !passwordGrant && cfg.ClientSecret == "" && cfg.SecretFunc == nil:
		missing = append(missing, "ClientSecret (or Email and Password)")
	}
	if len(missing) > 0 {
		return nil, fmt.Errorf("%w: missing %s", ErrInvalidConfig, strings.Join(missing, ", "))
	}
	if cfg.MaxBodyBytes < 0 {
		return nil, fmt.Errorf("%w: MaxBodyBytes is negative", ErrInvalidConfig)
	}
	hc, err := httpclient.New(cfg.HTTP)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidConfig, err)
	}
	// A redirect is not followed: it would turn a POST or PUT into a GET
	// without its body (a write that looks done and is not), and the
	// token must not travel to another host. It is reported instead.
	hc.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	c := &Client{
		base:      base,
		http:      hc,
		retry:     cfg.Retry,
		onRetry:   cfg.OnRetry,
		maxBody:   cfg.MaxBodyBytes,
		userAgent: cfg.UserAgent,
		source:    cfg.AttributeSource,
		secrets:   &redact.Secrets{},
		pacer:     cfg.Pacer,
	}
	if c.maxBody == 0 {
		c.maxBody = DefaultMaxBodyBytes
	}
	if c.userAgent == "" {
		c.userAgent = "tqtriage"
	}
	if c.source == "" {
		c.source = DefaultAttributeSource
	}
	secret := cfg.SecretFunc
	if secret == nil {
		fixed := cfg.ClientSecret
		if passwordGrant {
			fixed = cfg.Password
		}
		secret = func() (string, error) { return fixed, nil }
	}
	c.tokens = newTokenCache(ctx, func(ctx context.Context) (token, error) {
		s, err := secret()
		if err == nil && s == "" {
			err = errors.New("the secret is empty")
		}
		if err != nil {
			// The secret's own source failed (a file gone or empty):
			// nothing was sent. Its error names the file, never the
			// content.
			return token{}, &Error{Method: http.MethodPost, Path: TokenPath, Messages: []string{"the secret could not be read"}, Err: fmt.Errorf("%w: %w", ErrAuthentication, err)}
		}
		c.secrets.Add(s)
		grant := clientCredentials(cfg.ClientID, s)
		if passwordGrant {
			grant = passwordCredentials(cfg.ClientID, cfg.Email, s)
		}
		return c.fetchToken(ctx, grant)
	})
	return c, nil
}

// Authenticate obtains a new access token, whatever the cache holds (a
// fetch already running serves), reading the secret anew: how a caller
// whose requests were refused learns that the credentials work again. A
// refusal is an *Error whose Refused method says so.
func (c *Client) Authenticate(ctx context.Context) error {
	return c.tokens.fresh(ctx)
}

func normaliseBaseURL(raw string) (string, error) {
	if strings.TrimSpace(raw) == "" {
		return "", fmt.Errorf("%w: missing BaseURL", ErrInvalidConfig)
	}
	u, err := url.Parse(strings.TrimSpace(raw))
	if err != nil {
		// url.Parse quotes the input, which may hold credentials.
		return "", fmt.Errorf("%w: BaseURL does not parse as a URL", ErrInvalidConfig)
	}
	if u.User != nil {
		return "", fmt.Errorf("%w: BaseURL must not carry credentials; use ClientID and ClientSecret", ErrInvalidConfig)
	}
	if (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		return "", fmt.Errorf("%w: BaseURL %q is not an http(s) address with a host", ErrInvalidConfig, redact.URL(raw))
	}
	if u.RawQuery != "" || u.Fragment != "" {
		return "", fmt.Errorf("%w: BaseURL %q has a query or fragment", ErrInvalidConfig, redact.URL(raw))
	}
	p := strings.TrimRight(u.Path, "/")
	p = strings.TrimSuffix(p, "/api")
	return u.Scheme + "://" + u.Host + p, nil
}

// AttributeSource is the source named on attributes this client writes.
func (c *Client) AttributeSource() string { return c.source }

// Ping checks that ThreatQ answers and accepts the credentials, by
// obtaining a token (the cached one when it is still fresh).
func (c *Client) Ping(ctx context.Context) error {
	_, err := retry.Do(ctx, c.retry, func(ctx context.Context) error {
		_, err := c.tokens.get(ctx)
		return err
	}, c.onRetry)
	if err != nil {
		return fmt.Errorf("threatq ping: %w", err)
	}
	return nil
}

// call is one API request: the path below the base URL (starting /api/),
// its query, and a JSON body.
type call struct {
	method string
	path   string
	query  url.Values
	body   any
}

// do runs c with retries and decodes a 2xx answer's body into out (when
// out is not nil). The body is marshalled once and sent again as is.
func (c *Client) do(ctx context.Context, cl call, out any) error {
	var payload []byte
	if cl.body != nil {
		var err error
		if payload, err = json.Marshal(cl.body); err != nil {
			return fmt.Errorf("threatq: encode %s %s: %w", cl.method, cl.path, err)
		}
	}
	_, err := retry.Do(ctx, c.retry, func(ctx context.Context) error {
		return c.once(ctx, cl, payload, out)
	}, c.onRetry)
	return err
}

// once makes one attempt: with the cached token, and on a 401 or 403 once
// more with a fresh one (the token may have been revoked or expired early,
// or been granted before the client's permissions changed).
func (c *Client) once(ctx context.Context, cl call, payload []byte, out any) error {
	tok, err := c.tokens.get(ctx)
	if err != nil {
		return err
	}
	resp, err := c.send(ctx, cl, payload, tok)
	if err != nil {
		return err
	}
	if resp.StatusCode == http.StatusUnauthorized || resp.StatusCode == http.StatusForbidden {
		httpclient.Drain(resp.Body)
		c.tokens.invalidate(tok)
		if tok, err = c.tokens.get(ctx); err != nil {
			return err
		}
		if resp, err = c.send(ctx, cl, payload, tok); err != nil {
			return err
		}
	}
	return c.read(resp, cl.method, cl.path, out)
}

func (c *Client) send(ctx context.Context, cl call, payload []byte, tok string) (*http.Response, error) {
	u := c.base + cl.path
	if len(cl.query) > 0 {
		u += "?" + cl.query.Encode()
	}
	var body io.Reader
	if payload != nil {
		body = bytes.NewReader(payload)
	}
	req, err := http.NewRequestWithContext(ctx, cl.method, u, body)
	if err != nil {
		return nil, &Error{Method: cl.method, Path: cl.path, Err: err}
	}
	req.Header.Set("Accept", "application/json")
	req.Header.Set("User-Agent", c.userAgent)
	if payload != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	// Always a capital B, whatever token_type the server sent: ThreatQ
	// rejects "bearer".
	req.Header.Set("Authorization", "Bearer "+tok)
	if c.pacer != nil {
		// Before Do: the request's timeout starts there, and a pause of
		// minutes must not be spent inside it.
		if err := c.pacer.Wait(ctx); err != nil {
			return nil, &Error{Method: cl.method, Path: cl.path, Err: err}
		}
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, &Error{Method: cl.method, Path: cl.path, Err: c.maskErr(err, tok)}
	}
	if c.pacer != nil {
		c.pacer.Observe(resp)
	}
	return resp, nil
}

// read turns a response into out or an *Error, and closes its body.
func (c *Client) read(resp *http.Response, method, path string, out any) error {
	defer httpclient.Drain(resp.Body)
	b, err := httpclient.ReadResponse(resp, c.maxBody)
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		e := &Error{
			StatusCode:      resp.StatusCode,
			Method:          method,
			Path:            path,
			Messages:        c.mask(wire.ParseErrorBody(b)),
			RetryAfterDelay: httpclient.RetryAfter(resp.Header.Get("Retry-After"), time.Now()),
		}
		if loc := resp.Header.Get("Location"); resp.StatusCode >= 300 && resp.StatusCode < 400 && loc != "" {
			e.Messages = append(e.Messages, "redirected to "+redact.URL(termsafe.Clip(loc, 200))+": not followed")
		}
		return e
	}
	if err != nil {
		return &Error{StatusCode: resp.StatusCode, Method: method, Path: path, Err: &decodeError{err}}
	}
	// A 2xx answer may still say it failed: ThreatQuotient's SDK checks
	// the body for errors, and so does this client (docs/api.md).
	if msgs, status, found := wire.AnswerErrors(b); found {
		return &Error{StatusCode: resp.StatusCode, Method: method, Path: path, Messages: c.mask(msgs),
			InBody: true, BodyStatus: status, RetryAfterDelay: httpclient.RetryAfter(resp.Header.Get("Retry-After"), time.Now())}
	}
	if out == nil {
		return nil
	}
	if d, ok := out.(rawDecoder); ok {
		err = d.DecodeRaw(b)
	} else {
		err = json.Unmarshal(b, out)
	}
	if err != nil {
		return &Error{StatusCode: resp.StatusCode, Method: method, Path: path, Err: &decodeError{err}}
	}
	return nil
}

// rawDecoder is a document that decodes itself without json.Unmarshal's
// extra pass over the bytes: a collection page, the hot path.
type rawDecoder interface{ DecodeRaw([]byte) error }

var _ rawDecoder = (*wire.CollectionPage)(nil)

// mask replaces any secret the client holds in server-provided text.
func (c *Client) mask(msgs []string, extra ...string) []string {
	secrets := append(c.secrets.List(), extra...) // List gives a slice of our own
	for i, m := range msgs {
		for _, s := range secrets {
			if len(s) >= 4 {
				m = strings.ReplaceAll(m, s, "[redacted]")
			}
		}
		msgs[i] = m
	}
	return msgs
}

// maskErr returns err, or a plain copy of its text with secrets masked when
// it holds one (transport errors quote URLs, never bodies, so this is
// belt and braces).
func (c *Client) maskErr(err error, extra ...string) error {
	msg := err.Error()
	masked := c.mask([]string{msg}, extra...)[0]
	if masked == msg {
		return err
	}
	return &maskedError{msg: masked, err: err}
}

// maskedError keeps the chain for errors.Is/As but prints the masked text.
type maskedError struct {
	msg string
	err error
}

func (m *maskedError) Error() string { return m.msg }
func (m *maskedError) Unwrap() error { return m.err }

// escapeSegment escapes one path segment (a collection hash is opaque
// text from the user).
func escapeSegment(s string) string { return url.PathEscape(s) }
