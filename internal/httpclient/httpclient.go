// Package httpclient builds the HTTP clients that talk to Triage and ThreatQ:
// certificate verification on unless turned off, an extra CA bundle, proxies
// from the standard environment variables, timeouts, enough idle connections
// for a worker's concurrency, and bounded reads of response bodies. It
// also holds the one rule, shared by both clients, of which failures to get
// an answer are worth another try (TransportRetryable).
package httpclient

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"
)

// Options configure a client. The zero value verifies certificates against
// the system pool and uses the defaults noted on each field.
type Options struct {
	// InsecureSkipVerify turns certificate verification off (the "Verify
	// SSL: off" of the seed). Off only when asked for.
	InsecureSkipVerify bool
	// CAFile names a PEM bundle trusted in addition to the system pool.
	CAFile string
	// Timeout bounds one request, body included (default 60s).
	Timeout time.Duration
	// MaxConnsPerHost keeps this many idle connections to one host, so that
	// a worker's concurrency does not reconnect on every request (default 256).
	MaxConnsPerHost int
	// Wrap, when set, wraps the transport of New's client: a request rate
	// limit, metrics. It sees every request, retries included.
	Wrap func(http.RoundTripper) http.RoundTripper
	// ReadOnly makes a client that sends only GET and HEAD requests, and a
	// POST to a path ending in TokenPath (the OAuth token request); any
	// other request fails with ErrReadOnly before it is sent, before Wrap
	// sees it. A dry run's clients are built so: no code path of theirs can
	// write, whatever it calls.
	ReadOnly  bool
	TokenPath string
}

// NewTransport returns a transport configured by o.
func NewTransport(o Options) (*http.Transport, error) {
	tlsCfg := &tls.Config{MinVersion: tls.VersionTLS12, InsecureSkipVerify: o.InsecureSkipVerify} //nolint:gosec // an operator's explicit choice
	if o.CAFile != "" {
		pem, err := os.ReadFile(o.CAFile)
		if err != nil {
			return nil, fmt.Errorf("read CA file: %w", err)
		}
		pool, err := x509.SystemCertPool()
		if err != nil || pool == nil {
			pool = x509.NewCertPool()
		}
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("CA file %s: no PEM certificate in it", o.CAFile)
		}
		tlsCfg.RootCAs = pool
	}
	n := o.MaxConnsPerHost
	if n <= 0 {
		n = 256
	}
	return &http.Transport{
		Proxy:                 http.ProxyFromEnvironment,
		DialContext:           (&net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		TLSClientConfig:       tlsCfg,
		ForceAttemptHTTP2:     true,
		MaxIdleConns:          n,
		MaxIdleConnsPerHost:   n,
		IdleConnTimeout:       90 * time.Second,
		TLSHandshakeTimeout:   10 * time.Second,
		ExpectContinueTimeout: time.Second,
		ResponseHeaderTimeout: 60 * time.Second,
	}, nil
}

// New returns a client over NewTransport(o).
func New(o Options) (*http.Client, error) {
	t, err := NewTransport(o)
	if err != nil {
		return nil, err
	}
	timeout := o.Timeout
	if timeout <= 0 {
		timeout = 60 * time.Second
	}
	var rt http.RoundTripper = t
	if o.Wrap != nil {
		rt = o.Wrap(t)
	}
	if o.ReadOnly {
		rt = readOnly{tokenPath: o.TokenPath, base: rt}
	}
	return &http.Client{Transport: rt, Timeout: timeout}, nil
}

// ErrBodyTooLarge is returned by ReadBody when a body exceeds its limit.
var ErrBodyTooLarge = errors.New("response body too large")

// ReadBody reads at most limit bytes of r. A longer body is an error rather
// than silently cut JSON.
func ReadBody(r io.Reader, limit int64) ([]byte, error) {
	b, err := io.ReadAll(io.LimitReader(r, limit+1))
	if err != nil {
		return b, err
	}
	if int64(len(b)) > limit {
		return b[:limit], fmt.Errorf("%w (over %d bytes)", ErrBodyTooLarge, limit)
	}
	return b, nil
}

// ReadResponse reads the body of resp within limit, like ReadBody, in one
// allocation of its declared length when it has one (the transport holds a
// body to its Content-Length), rather than growing a buffer as it reads.
func ReadResponse(resp *http.Response, limit int64) ([]byte, error) {
	n := resp.ContentLength
	if n < 0 || n > limit {
		return ReadBody(resp.Body, limit)
	}
	b := make([]byte, n)
	m, err := io.ReadFull(resp.Body, b)
	return b[:m], err
}

// Drain reads what is left of a response body (up to a bound) and closes it,
// so the connection can be reused.
func Drain(body io.ReadCloser) {
	_, _ = io.CopyN(io.Discard, body, 64<<10)
	_ = body.Close()
}

// RetryAfter reads a Retry-After header as delay-seconds or an HTTP date
// (RFC 9110 10.2.3). Anything else, or a moment already past, is 0.
func RetryAfter(v string, now time.Time) time.Duration {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0
	}
	if secs, err := strconv.ParseInt(v, 10, 64); err == nil {
		const maxSecs = int64(1<<63-1) / int64(time.Second)
		if secs <= 0 {
			return 0
		}
		return time.Duration(min(secs, maxSecs)) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil {
		if d := t.Sub(now); d > 0 {
			return d
		}
	}
	return 0
}
