package triage_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tqtriage/tqtriage/internal/httpclient"
	"github.com/tqtriage/tqtriage/internal/retry"
	"github.com/tqtriage/tqtriage/triage"
	"github.com/tqtriage/tqtriage/triage/triagesim"
)

// writeCA writes the certificate of a TLS test server as a PEM file.
func writeCA(t *testing.T, srv *httptest.Server) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "ca.pem")
	block := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw})
	if err := os.WriteFile(path, block, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func newClient(t *testing.T, cfg triage.Config) *triage.Client {
	t.Helper()
	if cfg.ClientID == "" {
		cfg.ClientID, cfg.ClientSecret = triagesim.DefaultClientID, triagesim.DefaultClientSecret
	}
	c, err := triage.New(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestTLSWithCustomCAFile(t *testing.T) {
	sim := triagesim.New(triagesim.Options{})
	srv := httptest.NewUnstartedServer(sim)
	srv.Config.ErrorLog = log.New(io.Discard, "", 0) // the refused handshakes below are expected
	srv.StartTLS()
	t.Cleanup(srv.Close)

	trusted := newClient(t, triage.Config{BaseURL: srv.URL, HTTP: httpclient.Options{CAFile: writeCA(t, srv)}})
	in, err := trusted.CreateIndicator(context.Background(), newSHA(sha(1)))
	if err != nil {
		t.Fatalf("with the server's CA: %v", err)
	}
	if !strings.HasPrefix(in.ID, "1") {
		t.Fatalf("created %+v", in)
	}

	// Verification is on by default: the test CA is in no system pool. The
	// failure is at the token request, and it is not retried.
	retries := 0
	strict := newClient(t, triage.Config{BaseURL: srv.URL})
	err = viaRetry{c: strict, policy: fast, notify: func(error, int, time.Duration) { retries++ }}.ping(context.Background())
	te := requireKind(t, err, triage.ErrTransport)
	var unknownCA x509.UnknownAuthorityError
	var verify *tls.CertificateVerificationError
	if !errors.As(err, &unknownCA) && !errors.As(err, &verify) {
		t.Fatalf("error %v: want a certificate verification failure", err)
	}
	if te.Path != triage.TokenPath || te.Retryable() || retries != 0 {
		t.Fatalf("failed at %s (retryable: %v, %d retries), want the token request, not retried", te.Path, te.Retryable(), retries)
	}
	if n := sim.Stats().TokenGrants; n != 1 {
		t.Fatalf("%d grants: the untrusted client must not have reached the server", n)
	}

	insecure := newClient(t, triage.Config{BaseURL: srv.URL, HTTP: httpclient.Options{InsecureSkipVerify: true}})
	if err := insecure.Ping(context.Background()); err != nil {
		t.Fatalf("with verification off: %v", err)
	}
}

func TestOversizedResponseIsAnError(t *testing.T) {
	sim := triagesim.New(triagesim.Options{})
	srv := httptest.NewServer(sim)
	t.Cleanup(srv.Close)
	big := strings.Repeat("x", 2000)
	if _, err := sim.Seed(triagesim.Indicator{ThreatLevel: "Benign", ThreatType: "URL", ThreatValue: "http://a.example/" + big}); err != nil {
		t.Fatal(err)
	}
	c := newClient(t, triage.Config{BaseURL: srv.URL, MaxBodyBytes: 1024})
	err := viaRetry{c: c, policy: fast}.get(context.Background(), "1")
	te := requireKind(t, err, triage.ErrBadResponse)
	if !errors.Is(err, httpclient.ErrBodyTooLarge) || te.Retryable() {
		t.Fatalf("error %v: want a permanent ErrBodyTooLarge", err)
	}
	if n := sim.Stats().Requests[triagesim.EndpointGet]; n != 1 {
		t.Fatalf("%d gets, want 1", n)
	}

	// A request body beyond the bound is refused before it is sent.
	_, err = c.CreateIndicator(context.Background(), triage.NewIndicator{
		ThreatLevel: "Benign", ThreatType: "URL", ThreatValue: strings.Repeat("y", triage.MaxRequestBytes),
	})
	if !errors.Is(err, triage.ErrRequestTooLarge) {
		t.Fatalf("oversized request: %v", err)
	}
	if n := sim.Stats().Requests[triagesim.EndpointCreate]; n != 0 {
		t.Fatalf("%d creates reached the server", n)
	}
}

func TestRedirectIsNotFollowed(t *testing.T) {
	sim := triagesim.New(triagesim.Options{})
	mux := http.NewServeMux()
	mux.Handle("/oauth/token", sim)
	mux.HandleFunc("/api/public/v2/threat_indicators", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "https://elsewhere.example/api/public/v2/threat_indicators", http.StatusFound)
	})
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	_, err := newClient(t, triage.Config{BaseURL: srv.URL}).CreateIndicator(context.Background(), newSHA(sha(2)))
	te := requireKind(t, err, triage.ErrBadResponse)
	if te.StatusCode != http.StatusFound || !strings.Contains(err.Error(), "unexpected redirect to https://elsewhere.example/") {
		t.Fatalf("error %v", err)
	}
}

// TestSecretsNeverInErrors provokes every kind of error, including from a
// server that echoes what it received, and looks for the client secret
// and every access token the client used in their texts.
func TestSecretsNeverInErrors(t *testing.T) {
	const secret = "S3cret-Value-0f-The-Client"
	sim := triagesim.New(triagesim.Options{ClientSecret: secret})
	rec := &recorder{next: sim}
	srv := httptest.NewServer(rec)
	t.Cleanup(srv.Close)
	ctx := context.Background()
	var errs []error
	collect := func(err error) {
		if err == nil {
			t.Fatal("expected an error")
		}
		errs = append(errs, err)
	}

	c := newClient(t, triage.Config{BaseURL: srv.URL, ClientID: triagesim.DefaultClientID, ClientSecret: secret})
	if _, err := c.CreateIndicator(ctx, newSHA(sha(3))); err != nil {
		t.Fatal(err)
	}
	_, err := c.CreateIndicator(ctx, newSHA(sha(3)))
	collect(err) // duplicate
	_, err = c.CreateIndicator(ctx, triage.NewIndicator{})
	collect(err) // validation
	_, err = c.GetIndicator(ctx, "999")
	collect(err) // not found
	sim.FailNext(10, http.StatusServiceUnavailable)
	collect(viaRetry{c: c, policy: retry.Policy{MaxAttempts: 2, InitialInterval: 1}}.ping(ctx)) // server
	sim.FailNext(0, 0)
	sim.SetTokenLifetime(1)
	sim.ExpireTokens()
	collect(c.Ping(ctx)) // unauthorized after renewal
	sim.SetTokenLifetime(0)

	wrong := newClient(t, triage.Config{BaseURL: srv.URL, ClientID: triagesim.DefaultClientID, ClientSecret: secret + "x"})
	collect(wrong.Ping(ctx)) // refused grant

	// A server that echoes the credentials and the bearer token back.
	echo := http.NewServeMux()
	echo.HandleFunc("/oauth/token", func(w http.ResponseWriter, r *http.Request) {
		_ = r.ParseForm()
		if r.Form.Get("client_secret") == secret+"-echo" {
			w.Header().Set("Content-Type", "application/json")
			_, _ = w.Write([]byte(`{"access_token":"tok-` + secret + `-echoed","token_type":"Bearer","expires_in":7200}`))
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusUnauthorized)
		_, _ = w.Write([]byte(`{"error":"invalid_client","error_description":"bad secret ` + r.Form.Get("client_secret") + `"}`))
	})
	echo.HandleFunc("/api/public/v2/", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", triage.MediaType)
		w.WriteHeader(http.StatusUnprocessableEntity)
		_, _ = w.Write([]byte(`{"errors":[{"title":"is invalid","detail":"authorization - ` + r.Header.Get("Authorization") + ` is invalid"}]}`))
	})
	echoSrv := httptest.NewServer(echo)
	t.Cleanup(echoSrv.Close)
	collect(newClient(t, triage.Config{BaseURL: echoSrv.URL, ClientID: "id", ClientSecret: secret}).Ping(ctx))
	collect(newClient(t, triage.Config{BaseURL: echoSrv.URL, ClientID: "id", ClientSecret: secret + "-echo"}).Ping(ctx))

	// No server at all.
	gone := httptest.NewServer(http.NotFoundHandler())
	gone.Close()
	collect(newClient(t, triage.Config{BaseURL: gone.URL, ClientID: "id", ClientSecret: secret}).Ping(ctx))

	forbidden := append(rec.tokens(), secret, "tok-"+secret+"-echoed")
	if len(rec.tokens()) == 0 {
		t.Fatal("no token was recorded")
	}
	for _, err := range errs {
		text := err.Error()
		for _, s := range forbidden {
			if strings.Contains(text, s) {
				t.Errorf("error text holds a secret: %s", text)
			}
		}
	}
	if !strings.Contains(errs[len(errs)-2].Error(), "[redacted]") || !strings.Contains(errs[len(errs)-3].Error(), "[redacted]") {
		t.Errorf("echoed secrets must be replaced: %v / %v", errs[len(errs)-3], errs[len(errs)-2])
	}
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// TestHTTPWrapSeesEveryRequest: the transport hook of httpclient (a shared
// rate limit, metrics) sees the token request, the API calls and the
// caller's retries of them.
func TestHTTPWrapSeesEveryRequest(t *testing.T) {
	sim := triagesim.New(triagesim.Options{})
	srv := httptest.NewServer(sim)
	t.Cleanup(srv.Close)
	var mu sync.Mutex
	var seen []string
	wrap := func(next http.RoundTripper) http.RoundTripper {
		return roundTripFunc(func(r *http.Request) (*http.Response, error) {
			mu.Lock()
			seen = append(seen, r.Method+" "+r.URL.Path)
			mu.Unlock()
			return next.RoundTrip(r)
		})
	}
	c := newClient(t, triage.Config{BaseURL: srv.URL, HTTP: httpclient.Options{Wrap: wrap}})
	sim.FailNext(1, http.StatusServiceUnavailable)
	if err := (viaRetry{c: c, policy: fast}).create(context.Background(), newSHA(sha(4))); err != nil {
		t.Fatal(err)
	}
	want := "[POST /oauth/token POST /api/public/v2/threat_indicators POST /api/public/v2/threat_indicators]"
	if got := fmt.Sprint(seen); got != want {
		t.Fatalf("wrapped transport saw %s, want %s", got, want)
	}
}

// TestTransportFailuresFollowTheSharedRule: what the client makes of a
// failure to get an answer is httpclient.TransportRetryable's verdict.
func TestTransportFailuresFollowTheSharedRule(t *testing.T) {
	sim := triagesim.New(triagesim.Options{})
	srv := httptest.NewUnstartedServer(sim)
	srv.Config.ErrorLog = log.New(io.Discard, "", 0) // the TLS hello on a plain port is expected
	srv.Start()
	t.Cleanup(srv.Close)
	gone := httptest.NewServer(http.NotFoundHandler())
	gone.Close()
	slowly := func(t *testing.T, c *triage.Client) *triage.Client {
		if err := c.Ping(context.Background()); err != nil { // the token, before the latency
			t.Fatal(err)
		}
		sim.SetLatency(time.Second, 0)
		t.Cleanup(func() { sim.SetLatency(0, 0) })
		return c
	}
	cases := []struct {
		name      string
		client    func(t *testing.T) *triage.Client
		timeout   time.Duration // of the caller's context, when set
		retryable bool
	}{
		{"no server", func(t *testing.T) *triage.Client {
			return newClient(t, triage.Config{BaseURL: gone.URL})
		}, 0, true},
		{"https to a plain HTTP port", func(t *testing.T) *triage.Client {
			return newClient(t, triage.Config{BaseURL: "https://" + srv.Listener.Addr().String()})
		}, 0, false},
		{"the client's own timeout", func(t *testing.T) *triage.Client {
			return slowly(t, newClient(t, triage.Config{BaseURL: srv.URL, HTTP: httpclient.Options{Timeout: 50 * time.Millisecond}}))
		}, 0, true},
		{"the caller's deadline", func(t *testing.T) *triage.Client {
			return slowly(t, newClient(t, triage.Config{BaseURL: srv.URL}))
		}, 50 * time.Millisecond, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := tc.client(t)
			ctx := context.Background()
			if tc.timeout > 0 {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, tc.timeout)
				defer cancel()
			}
			_, err := c.GetIndicator(ctx, "1")
			te := requireKind(t, err, triage.ErrTransport)
			if te.Retryable() != tc.retryable || te.Retryable() != httpclient.TransportRetryable(te.Err) {
				t.Fatalf("error %v: retryable %v, want %v", err, te.Retryable(), tc.retryable)
			}
		})
	}
}
