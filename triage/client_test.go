package triage_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tqtriage/tqtriage/internal/retry"
	"github.com/tqtriage/tqtriage/triage"
	"github.com/tqtriage/tqtriage/triage/triagesim"
)

// fast retries quickly so that tests of retrying take milliseconds.
var fast = retry.Policy{MaxAttempts: 5, InitialInterval: time.Millisecond, MaxInterval: 5 * time.Millisecond}

// viaRetry calls a client the way the worker does: each call inside
// retry.Do(ctx, policy, op, notify). The client makes one attempt per call,
// so the tests that count retries, or that no retry happens, go through
// this: they prove that the client's errors carry what internal/retry reads
// (Retryable, RetryAfter).
type viaRetry struct {
	c      *triage.Client
	policy retry.Policy
	notify retry.Notify
}

func (v viaRetry) run(ctx context.Context, op func(ctx context.Context) error) error {
	_, err := retry.Do(ctx, v.policy, op, v.notify)
	return err
}

func (v viaRetry) create(ctx context.Context, in triage.NewIndicator) error {
	return v.run(ctx, func(ctx context.Context) error { _, err := v.c.CreateIndicator(ctx, in); return err })
}

func (v viaRetry) get(ctx context.Context, id string) error {
	return v.run(ctx, func(ctx context.Context) error { _, err := v.c.GetIndicator(ctx, id); return err })
}

func (v viaRetry) update(ctx context.Context, id, level, source string) error {
	return v.run(ctx, func(ctx context.Context) error { _, err := v.c.UpdateIndicator(ctx, id, level, source); return err })
}

func (v viaRetry) find(ctx context.Context, threatType, value string) error {
	return v.run(ctx, func(ctx context.Context) error { _, err := v.c.FindIndicator(ctx, threatType, value, ""); return err })
}

func (v viaRetry) ping(ctx context.Context) error { return v.run(ctx, v.c.Ping) }

// list reads every page, and tries the whole listing again on a retryable
// failure.
func (v viaRetry) list(ctx context.Context, opts triage.ListOptions) error {
	return v.run(ctx, func(ctx context.Context) error {
		for _, err := range v.c.ListIndicators(ctx, opts) {
			if err != nil {
				return err
			}
		}
		return nil
	})
}

// recorder sits in front of the simulator and keeps what each request
// looked like, so tests can check what the client sent.
type recorder struct {
	next http.Handler
	mu   sync.Mutex
	reqs []seen
	// rewrite, when set before the first request, changes a request
	// after it is recorded and before the simulator sees it.
	rewrite func(*http.Request)
}

type seen struct {
	method, path, query string
	header              http.Header
	body                string
}

func (rec *recorder) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	b, _ := io.ReadAll(r.Body)
	r.Body = io.NopCloser(bytes.NewReader(b))
	rec.mu.Lock()
	rec.reqs = append(rec.reqs, seen{r.Method, r.URL.Path, r.URL.RawQuery, r.Header.Clone(), string(b)})
	rec.mu.Unlock()
	if rec.rewrite != nil {
		rec.rewrite(r)
	}
	rec.next.ServeHTTP(w, r)
}

func (rec *recorder) all() []seen {
	rec.mu.Lock()
	defer rec.mu.Unlock()
	return append([]seen(nil), rec.reqs...)
}

// tokens are the access tokens the client presented.
func (rec *recorder) tokens() []string {
	var out []string
	for _, r := range rec.all() {
		if t, ok := strings.CutPrefix(r.header.Get("Authorization"), "Bearer "); ok {
			out = append(out, t)
		}
	}
	return out
}

type env struct {
	sim    *triagesim.Server
	srv    *httptest.Server
	rec    *recorder
	client *triage.Client
}

// newEnv starts a simulator with opts and a client of it with cfg's
// non-zero fields.
func newEnv(t testing.TB, opts triagesim.Options, cfg triage.Config) *env {
	t.Helper()
	sim := triagesim.New(opts)
	rec := &recorder{next: sim}
	srv := httptest.NewServer(rec)
	t.Cleanup(srv.Close)
	cfg.BaseURL = srv.URL
	if cfg.ClientID == "" {
		cfg.ClientID = triagesim.DefaultClientID
	}
	if cfg.ClientSecret == "" {
		cfg.ClientSecret = triagesim.DefaultClientSecret
	}
	c, err := triage.New(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	return &env{sim: sim, srv: srv, rec: rec, client: c}
}

// retried is the env's client called as the worker calls it, under fast.
func (e *env) retried() viaRetry { return viaRetry{c: e.client, policy: fast} }

func sha(n byte) string { return strings.Repeat(string("0123456789abcdef"[n%16]), 64) }

func newSHA(value string) triage.NewIndicator {
	return triage.NewIndicator{ThreatLevel: "Malicious", ThreatType: "SHA256", ThreatValue: value, ThreatSource: "ThreatQ"}
}

func requireKind(t *testing.T, err error, want error) *triage.Error {
	t.Helper()
	if !errors.Is(err, want) {
		t.Fatalf("err = %v, want one matching %v", err, want)
	}
	var te *triage.Error
	if !errors.As(err, &te) {
		t.Fatalf("err = %T %v, want a *triage.Error", err, err)
	}
	return te
}

func TestNewChecksConfig(t *testing.T) {
	ok := triage.Config{BaseURL: "https://triage.example.com", ClientID: "id", ClientSecret: "secret"}
	cases := []struct {
		name string
		edit func(*triage.Config)
		want string
	}{
		{"no base URL", func(c *triage.Config) { c.BaseURL = "" }, "base URL is required"},
		{"no scheme", func(c *triage.Config) { c.BaseURL = "triage.example.com" }, "scheme must be http or https"},
		{"ftp", func(c *triage.Config) { c.BaseURL = "ftp://triage.example.com" }, "scheme must be http or https"},
		{"no host", func(c *triage.Config) { c.BaseURL = "https://" }, "no host"},
		{"query", func(c *triage.Config) { c.BaseURL = "https://triage.example.com?x=1" }, "query"},
		{"user info", func(c *triage.Config) { c.BaseURL = "https://u:p@triage.example.com" }, "credentials"},
		{"no client ID", func(c *triage.Config) { c.ClientID = "" }, "client ID is required"},
		{"no secret", func(c *triage.Config) { c.ClientSecret = "" }, "client secret is required"},
		{"missing CA file", func(c *triage.Config) { c.HTTP.CAFile = "/nonexistent/ca.pem" }, "CA file"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cfg := ok
			tc.edit(&cfg)
			_, err := triage.New(context.Background(), cfg)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("New: err = %v, want one saying %q", err, tc.want)
			}
		})
	}
	for _, base := range []string{"https://triage.example.com/", "https://triage.example.com/api/public/v2/"} {
		cfg := ok
		cfg.BaseURL = base
		if _, err := triage.New(context.Background(), cfg); err != nil {
			t.Errorf("New with base URL %q: %v", base, err)
		}
	}
}

func TestBaseURLWithAPISuffixReachesTheAPI(t *testing.T) {
	e := newEnv(t, triagesim.Options{}, triage.Config{})
	c, err := triage.New(context.Background(), triage.Config{
		BaseURL: e.srv.URL + "/api/public/v2/", ClientID: triagesim.DefaultClientID, ClientSecret: triagesim.DefaultClientSecret,
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Ping(context.Background()); err != nil {
		t.Fatalf("Ping: %v", err)
	}
}

func TestCreateGetUpdateRoundTrip(t *testing.T) {
	e := newEnv(t, triagesim.Options{}, triage.Config{})
	ctx := context.Background()
	before := time.Now().Add(-time.Second)

	created, err := e.client.CreateIndicator(ctx, newSHA(sha(1)))
	if err != nil {
		t.Fatalf("CreateIndicator: %v", err)
	}
	if created.ID == "" || created.ThreatValue != sha(1) || created.ThreatType != "SHA256" ||
		created.ThreatLevel != "Malicious" || created.ThreatSource != "ThreatQ" || created.CreatedAt.Before(before) {
		t.Fatalf("created = %+v", created)
	}
	if in, ok := e.sim.Get(created.ID); !ok || in.ThreatValue != sha(1) {
		t.Fatalf("the simulator holds %+v, %v", in, ok)
	}

	got, err := e.client.GetIndicator(ctx, created.ID)
	if err != nil || *got != *created {
		t.Fatalf("GetIndicator = %+v, %v; want %+v", got, err, created)
	}

	updated, err := e.client.UpdateIndicator(ctx, created.ID, "Benign", "Analyst")
	if err != nil {
		t.Fatalf("UpdateIndicator: %v", err)
	}
	if updated.ID != created.ID || updated.ThreatLevel != "Benign" || updated.ThreatSource != "Analyst" ||
		updated.ThreatValue != sha(1) || updated.UpdatedAt.Before(created.UpdatedAt) {
		t.Fatalf("updated = %+v", updated)
	}

	// The update sends the two attributes Triage allows there, nothing else.
	for _, r := range e.rec.all() {
		if r.method == http.MethodPut {
			if strings.Contains(r.body, "threat_value") || strings.Contains(r.body, "threat_type") ||
				!strings.Contains(r.body, `"id":"`+created.ID+`"`) {
				t.Fatalf("PUT body %s", r.body)
			}
		}
	}
	st := e.sim.Stats()
	if st.Creates != 1 || st.Updates != 1 || st.TokenGrants != 1 {
		t.Fatalf("stats %+v: want one create, one update, one token", st)
	}
}

func TestCreateTwiceAnswersDuplicate(t *testing.T) {
	e := newEnv(t, triagesim.Options{}, triage.Config{})
	ctx := context.Background()
	first, err := e.client.CreateIndicator(ctx, newSHA(sha(2)))
	if err != nil {
		t.Fatal(err)
	}
	err = e.retried().create(ctx, newSHA(sha(2)))
	te := requireKind(t, err, triage.ErrDuplicate)
	if te.StatusCode != 422 || te.Retryable() || errors.Is(err, triage.ErrValidation) {
		t.Fatalf("duplicate error %+v", te)
	}
	if st := e.sim.Stats(); st.Requests[triagesim.EndpointCreate] != 2 {
		t.Fatalf("a duplicate must not be retried: %d creates sent", st.Requests[triagesim.EndpointCreate])
	}
	found, err := e.client.FindIndicator(ctx, "SHA256", sha(2), "")
	if err != nil || found.ID != first.ID {
		t.Fatalf("FindIndicator = %+v, %v; want id %s", found, err, first.ID)
	}
}

func TestValidationErrorCarriesEveryMessage(t *testing.T) {
	e := newEnv(t, triagesim.Options{}, triage.Config{})
	err := e.retried().create(context.Background(), triage.NewIndicator{ThreatLevel: "Evil", ThreatValue: "ab"})
	te := requireKind(t, err, triage.ErrValidation)
	want := []string{
		"threat_level - is not included in the list",
		"threat_type - can't be blank",
		"threat_value - is too short (minimum is 3 characters)",
	}
	if strings.Join(te.Messages, "|") != strings.Join(want, "|") {
		t.Fatalf("messages %q, want %q", te.Messages, want)
	}
	text := err.Error()
	if !strings.HasPrefix(text, "triage: POST /threat_indicators: 422 validation: threat_level - ") {
		t.Fatalf("error text %q", text)
	}
	if n := e.sim.Stats().Requests[triagesim.EndpointCreate]; n != 1 {
		t.Fatalf("a validation error was sent %d times, want once", n)
	}
}

func TestUnknownIndicatorIsNotFound(t *testing.T) {
	e := newEnv(t, triagesim.Options{}, triage.Config{})
	ctx := context.Background()
	err := e.retried().get(ctx, "4242")
	te := requireKind(t, err, triage.ErrNotFound)
	if len(te.Messages) != 1 || !strings.Contains(te.Messages[0], "The record identified by 4242 could not be found.") {
		t.Fatalf("messages %q", te.Messages)
	}
	requireKind(t, e.retried().update(ctx, "4242", "Benign", ""), triage.ErrNotFound)
	requireKind(t, e.retried().find(ctx, "SHA256", sha(3)), triage.ErrNotFound)
	if _, err := e.client.GetIndicator(ctx, " "); err == nil {
		t.Fatal("GetIndicator with a blank id must fail before any request")
	}
	if st := e.sim.Stats(); st.Requests[triagesim.EndpointGet] != 1 || st.Requests[triagesim.EndpointPut] != 1 {
		t.Fatalf("not-found answers must not be retried: %v", st.Requests)
	}
}

func TestExpiredTokenIsRenewedOnce(t *testing.T) {
	e := newEnv(t, triagesim.Options{}, triage.Config{})
	ctx := context.Background()
	if _, err := e.client.CreateIndicator(ctx, newSHA(sha(4))); err != nil {
		t.Fatal(err)
	}
	e.sim.ExpireTokens()
	got, err := e.client.CreateIndicator(ctx, newSHA(sha(5)))
	if err != nil {
		t.Fatalf("create after the token expired: %v", err)
	}
	if got.ThreatValue != sha(5) {
		t.Fatalf("created %+v", got)
	}
	st := e.sim.Stats()
	if st.Unauthorized != 1 || st.TokenGrants != 2 || st.Creates != 2 || st.Requests[triagesim.EndpointCreate] != 3 {
		t.Fatalf("stats %+v: want one 401, two grants, two creates out of three requests", st)
	}
}

func TestExpiredTokenIsRenewedOnceForConcurrentCalls(t *testing.T) {
	e := newEnv(t, triagesim.Options{}, triage.Config{})
	ctx := context.Background()
	if err := e.client.Ping(ctx); err != nil {
		t.Fatal(err)
	}
	e.sim.ExpireTokens()
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for i := range 16 {
		wg.Go(func() {
			_, err := e.client.CreateIndicator(ctx, newSHA(sha(byte(i))+"-"+string(rune('a'+i))))
			errs <- err
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if st := e.sim.Stats(); st.TokenGrants != 2 || st.Creates != 16 {
		t.Fatalf("stats %+v: sixteen calls refused together must share one new token", st)
	}
}

func TestConcurrentFirstCallsShareOneToken(t *testing.T) {
	e := newEnv(t, triagesim.Options{Latency: 20 * time.Millisecond}, triage.Config{})
	var wg sync.WaitGroup
	for range 20 {
		wg.Go(func() {
			if err := e.client.Ping(context.Background()); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if g := e.sim.Stats().TokenGrants; g != 1 {
		t.Fatalf("%d token grants, want 1", g)
	}
}

func TestTokenRefusedAfterRenewalIsUnauthorized(t *testing.T) {
	// Tokens that are dead on arrival: the renewal cannot help, and the
	// call ends after exactly one renewal, without retries.
	e := newEnv(t, triagesim.Options{TokenLifetime: time.Nanosecond}, triage.Config{})
	err := e.retried().create(context.Background(), newSHA(sha(6)))
	te := requireKind(t, err, triage.ErrUnauthorized)
	if te.Retryable() || te.StatusCode != 401 || !strings.Contains(err.Error(), "invalid_token: The access token expired") {
		t.Fatalf("error %v", err)
	}
	st := e.sim.Stats()
	if st.Requests[triagesim.EndpointCreate] != 2 || st.TokenGrants != 2 || st.Unauthorized != 2 {
		t.Fatalf("stats %+v: want two tries with two tokens, nothing more", st)
	}
}

func TestWrongSecretIsUnauthorizedWithoutTheSecret(t *testing.T) {
	const secret = "s3cr3t-that-must-not-leak"
	e := newEnv(t, triagesim.Options{}, triage.Config{ClientSecret: secret})
	err := e.retried().create(context.Background(), newSHA(sha(7)))
	te := requireKind(t, err, triage.ErrUnauthorized)
	if te.Path != triage.TokenPath || te.StatusCode != 401 || !strings.Contains(err.Error(), "invalid_client") {
		t.Fatalf("error %v", err)
	}
	if strings.Contains(err.Error(), secret) {
		t.Fatalf("error text holds the secret: %v", err)
	}
	st := e.sim.Stats()
	if st.TokenRefusals != 1 || st.Requests[triagesim.EndpointCreate] != 0 {
		t.Fatalf("stats %+v: one refused grant, no API call, no retry", st)
	}
}

func TestRateLimitWaitsRetryAfter(t *testing.T) {
	e := newEnv(t, triagesim.Options{}, triage.Config{})
	ctx := context.Background()
	if err := e.client.Ping(ctx); err != nil { // the token, outside the limit
		t.Fatal(err)
	}
	e.sim.SetRateLimit(1, 1, time.Second)
	if _, err := e.client.CreateIndicator(ctx, newSHA(sha(8))); err != nil {
		t.Fatal(err)
	}
	var waits []time.Duration
	c := viaRetry{c: e.client, policy: fast, notify: func(err error, _ int, wait time.Duration) {
		if errors.Is(err, triage.ErrRateLimited) {
			waits = append(waits, wait)
		}
	}}
	start := time.Now()
	if err := c.create(ctx, newSHA(sha(9))); err != nil {
		t.Fatalf("create under the rate limit: %v", err)
	}
	elapsed := time.Since(start)
	if elapsed < time.Second {
		t.Fatalf("the create came back after %v, before the 1s Retry-After", elapsed)
	}
	if len(waits) == 0 || waits[0] < time.Second {
		t.Fatalf("retry waits %v, want the first at least 1s", waits)
	}
	if st := e.sim.Stats(); st.RateLimited < 1 || st.Creates != 2 {
		t.Fatalf("stats %+v", st)
	}
}

func TestRateLimitedWithoutRetryAfterBacksOff(t *testing.T) {
	e := newEnv(t, triagesim.Options{}, triage.Config{})
	e.sim.FailNext(2, http.StatusTooManyRequests) // a 429 with no Retry-After
	attempts := 0
	c := viaRetry{c: e.client, policy: fast, notify: func(err error, attempt int, _ time.Duration) {
		if !errors.Is(err, triage.ErrRateLimited) {
			t.Errorf("retried %v", err)
		}
		attempts = attempt
	}}
	if err := c.create(context.Background(), newSHA(sha(10))); err != nil {
		t.Fatal(err)
	}
	if attempts != 2 {
		t.Fatalf("%d retries, want 2", attempts)
	}
}

func TestRetryAfterBeyondPolicyIsHandedBack(t *testing.T) {
	e := newEnv(t, triagesim.Options{}, triage.Config{})
	if err := e.client.Ping(context.Background()); err != nil {
		t.Fatal(err)
	}
	e.sim.SetRateLimit(0.001, 1, 30*time.Second)
	_ = e.client.Ping(context.Background()) // uses the bucket's one request
	p := fast
	p.MaxRetryAfter = time.Second
	start := time.Now()
	err := viaRetry{c: e.client, policy: p}.create(context.Background(), newSHA(sha(11)))
	te := requireKind(t, err, triage.ErrRateLimited)
	if te.RetryAfter() != 30*time.Second || time.Since(start) > 5*time.Second {
		t.Fatalf("error %v after %v: want the 30s Retry-After handed back at once", err, time.Since(start))
	}
	if !strings.Contains(err.Error(), "429 rate limited") || !strings.Contains(err.Error(), "retry after 30s") {
		t.Fatalf("error text %q", err)
	}
}

func TestServerErrorBurstIsRetriedPast(t *testing.T) {
	e := newEnv(t, triagesim.Options{}, triage.Config{})
	e.sim.FailNext(3, http.StatusBadGateway)
	var notes []int
	c := viaRetry{c: e.client, policy: fast, notify: func(err error, attempt int, _ time.Duration) {
		if !errors.Is(err, triage.ErrServer) {
			t.Errorf("retried %v", err)
		}
		notes = append(notes, attempt)
	}}
	if err := c.create(context.Background(), newSHA(sha(12))); err != nil {
		t.Fatal(err)
	}
	if len(notes) != 3 {
		t.Fatalf("retries %v, want three", notes)
	}
	if st := e.sim.Stats(); st.ServerErrors != 3 || st.Creates != 1 || st.Requests[triagesim.EndpointCreate] != 4 {
		t.Fatalf("stats %+v", st)
	}
}

func TestRetriesEndAtMaxAttempts(t *testing.T) {
	e := newEnv(t, triagesim.Options{}, triage.Config{})
	e.sim.FailNext(100, http.StatusInternalServerError)
	err := viaRetry{c: e.client, policy: retry.Policy{MaxAttempts: 3, InitialInterval: time.Millisecond}}.create(context.Background(), newSHA(sha(13)))
	te := requireKind(t, err, triage.ErrServer)
	if !te.Retryable() || te.StatusCode != 500 {
		t.Fatalf("error %+v", te)
	}
	if n := e.sim.Stats().Requests[triagesim.EndpointCreate]; n != 3 {
		t.Fatalf("%d attempts, want 3", n)
	}
}

func TestPermanentClientErrorIsNotRetried(t *testing.T) {
	e := newEnv(t, triagesim.Options{}, triage.Config{})
	err := e.retried().list(context.Background(), triage.ListOptions{Filters: map[string]string{"bogus": "x"}})
	te := requireKind(t, err, triage.ErrClient)
	if te.StatusCode != 400 || te.Retryable() || !strings.Contains(err.Error(), "Filter not allowed") {
		t.Fatalf("error %v", err)
	}
	if n := e.sim.Stats().Requests[triagesim.EndpointList]; n != 1 {
		t.Fatalf("a 400 was sent %d times, want once", n)
	}
}

func TestContextEndStopsRetries(t *testing.T) {
	e := newEnv(t, triagesim.Options{}, triage.Config{})
	c := viaRetry{c: e.client, policy: retry.Policy{MaxAttempts: 1000, InitialInterval: 20 * time.Millisecond, MaxInterval: 20 * time.Millisecond}}
	if err := e.client.Ping(context.Background()); err != nil {
		t.Fatal(err)
	}
	e.sim.FailNext(1<<30, http.StatusServiceUnavailable)
	ctx, cancel := context.WithTimeout(context.Background(), 150*time.Millisecond)
	defer cancel()
	start := time.Now()
	err := c.create(ctx, newSHA(sha(14)))
	// The deadline lands in a backoff wait (the error joins the last 503)
	// or in a request (a transport error): either way it is in the chain.
	if !errors.Is(err, context.DeadlineExceeded) || retry.IsRetryable(err) {
		t.Fatalf("err = %v, want the deadline", err)
	}
	if elapsed := time.Since(start); elapsed > time.Second {
		t.Fatalf("returned after %v", elapsed)
	}
	sent := e.sim.Stats().Requests[triagesim.EndpointCreate]
	time.Sleep(60 * time.Millisecond) // longer than a backoff step: no new attempt may come
	// The request the deadline cut short may still reach the server late.
	if later := e.sim.Stats().Requests[triagesim.EndpointCreate]; later > sent+1 || sent > 10 {
		t.Fatalf("%d attempts, then %d: retries must stop with the context", sent, later)
	}

	cancelled, cancelNow := context.WithCancel(context.Background())
	cancelNow()
	err = c.get(cancelled, "1")
	if !errors.Is(err, context.Canceled) || retry.IsRetryable(err) {
		t.Fatalf("cancelled call: %v", err)
	}
}

func TestClientSendsJSONAPIMediaTypes(t *testing.T) {
	e := newEnv(t, triagesim.Options{}, triage.Config{UserAgent: "tqtriage-test/1"})
	ctx := context.Background()
	in, err := e.client.CreateIndicator(ctx, newSHA(sha(15)))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.client.UpdateIndicator(ctx, in.ID, "Suspicious", "x"); err != nil {
		t.Fatal(err)
	}
	if _, err := e.client.GetIndicator(ctx, in.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := e.client.FindIndicator(ctx, "SHA256", sha(15), ""); err != nil {
		t.Fatal(err)
	}
	if err := e.client.Ping(ctx); err != nil {
		t.Fatal(err)
	}
	st := e.sim.Stats()
	if st.UnsupportedMediaType != 0 || st.NotAcceptable != 0 || st.BadRequests != 0 {
		t.Fatalf("stats %+v: the simulator refused a media type", st)
	}
	for _, r := range e.rec.all() {
		if r.path == triage.TokenPath {
			form, _ := url.ParseQuery(r.body)
			if r.header.Get("Content-Type") != "application/x-www-form-urlencoded" || r.query != "" ||
				form.Get("grant_type") != "client_credentials" || form.Get("client_id") != triagesim.DefaultClientID ||
				form.Get("client_secret") != triagesim.DefaultClientSecret || r.header.Get("Authorization") != "" {
				t.Fatalf("token request: query %q, headers %v: want the credentials in the form body only", r.query, r.header)
			}
			if got := r.header.Get("User-Agent"); got != "tqtriage-test/1" {
				t.Errorf("token request: User-Agent %q", got)
			}
			continue
		}
		if got := r.header.Get("Accept"); got != triage.MediaType {
			t.Errorf("%s %s: Accept %q", r.method, r.path, got)
		}
		wantCT := ""
		if r.body != "" {
			wantCT = triage.MediaType
		}
		if got := r.header.Get("Content-Type"); got != wantCT {
			t.Errorf("%s %s: Content-Type %q, want %q", r.method, r.path, got, wantCT)
		}
		if !strings.HasPrefix(r.header.Get("Authorization"), "Bearer ") {
			t.Errorf("%s %s: Authorization %q", r.method, r.path, r.header.Get("Authorization"))
		}
		if got := r.header.Get("User-Agent"); got != "tqtriage-test/1" {
			t.Errorf("%s %s: User-Agent %q", r.method, r.path, got)
		}
	}
}

func TestListIndicatorsFollowsEveryPage(t *testing.T) {
	e := newEnv(t, triagesim.Options{}, triage.Config{})
	seed := make([]triagesim.Indicator, 450)
	for i := range seed {
		seed[i] = triagesim.Indicator{ThreatLevel: "Suspicious", ThreatType: "MD5", ThreatValue: strings.Repeat("a", 32-len(itoa(i))) + itoa(i)}
	}
	if _, err := e.sim.Seed(seed...); err != nil {
		t.Fatal(err)
	}
	if _, err := e.sim.Seed(triagesim.Indicator{ThreatLevel: "Benign", ThreatType: "URL", ThreatValue: "http://x.test/"}); err != nil {
		t.Fatal(err)
	}
	seenIDs := map[string]bool{}
	n := 0
	for in, err := range e.client.ListIndicators(context.Background(), triage.ListOptions{ThreatType: "MD5", PageSize: 200}) {
		if err != nil {
			t.Fatal(err)
		}
		if in.ThreatType != "MD5" || seenIDs[in.ID] {
			t.Fatalf("indicator %+v (repeat: %v)", in, seenIDs[in.ID])
		}
		seenIDs[in.ID] = true
		n++
	}
	if n != 450 {
		t.Fatalf("listed %d, want 450", n)
	}
	if pages := e.sim.Stats().Requests[triagesim.EndpointList]; pages != 3 {
		t.Fatalf("%d pages fetched, want 3", pages)
	}

	// Stopping early fetches no further page.
	e.sim.ResetStats()
	for range e.client.ListIndicators(context.Background(), triage.ListOptions{PageSize: 10}) {
		break
	}
	if pages := e.sim.Stats().Requests[triagesim.EndpointList]; pages != 1 {
		t.Fatalf("%d pages fetched for one indicator", pages)
	}

	for _, err := range e.client.ListIndicators(context.Background(), triage.ListOptions{PageSize: 201}) {
		if err == nil || !strings.Contains(err.Error(), "page size 201") {
			t.Fatalf("page size 201: %v", err)
		}
	}
}

func TestListIndicatorsFilters(t *testing.T) {
	e := newEnv(t, triagesim.Options{}, triage.Config{})
	old := time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)
	seeded, err := e.sim.Seed(
		triagesim.Indicator{ThreatLevel: "Benign", ThreatType: "Hostname", ThreatValue: "a.example", CreatedAt: old},
		triagesim.Indicator{ThreatLevel: "Malicious", ThreatType: "Hostname", ThreatValue: "b.example", ThreatSource: "ThreatQ", CreatedAt: old},
		triagesim.Indicator{ThreatLevel: "Malicious", ThreatType: "URL", ThreatValue: "http://b.example/", ThreatSource: "ThreatQ"},
	)
	if err != nil {
		t.Fatal(err)
	}
	ids := func(opts triage.ListOptions) string {
		var out []string
		for in, err := range e.client.ListIndicators(context.Background(), opts) {
			if err != nil {
				t.Fatal(err)
			}
			out = append(out, in.ID)
		}
		return strings.Join(out, ",")
	}
	id := func(i int) string { return seeded[i].ID }
	cases := []struct {
		opts triage.ListOptions
		want string
	}{
		{triage.ListOptions{ThreatType: "Hostname"}, id(0) + "," + id(1)},
		{triage.ListOptions{ThreatLevel: "Malicious", ThreatSource: "ThreatQ"}, id(1) + "," + id(2)},
		{triage.ListOptions{ThreatType: "Hostname", ThreatValue: "b.example"}, id(1)},
		{triage.ListOptions{UpdatedAfter: old.Add(time.Hour)}, id(2)},
		{triage.ListOptions{Sort: "-id", PageSize: 1}, id(2) + "," + id(1) + "," + id(0)},
		{triage.ListOptions{Filters: map[string]string{"threat_value_cont": "b.example"}}, id(1) + "," + id(2)},
	}
	for _, tc := range cases {
		if got := ids(tc.opts); got != tc.want {
			t.Errorf("%+v: ids %s, want %s", tc.opts, got, tc.want)
		}
	}
}

// TestListIndicatorsPagesByItsOwnQueryWhateverHostTheLinksName: links
// that name a load balancer's host are not followed; the client asks the
// base URL for page[number] 2, 3, … and the token never leaves it.
func TestListIndicatorsPagesByItsOwnQueryWhateverHostTheLinksName(t *testing.T) {
	var trapped atomic.Int64
	trap := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		trapped.Add(1)
		http.Error(w, "not Triage", http.StatusTeapot)
	}))
	t.Cleanup(trap.Close)
	e := newEnv(t, triagesim.Options{BaseURL: trap.URL}, triage.Config{})
	for i := range 5 {
		if _, err := e.sim.Seed(triagesim.Indicator{ThreatLevel: "Benign", ThreatType: "MD5", ThreatValue: strings.Repeat("b", 31) + itoa(i)}); err != nil {
			t.Fatal(err)
		}
	}
	var got []string
	for in, err := range e.client.ListIndicators(context.Background(), triage.ListOptions{ThreatType: "MD5", PageSize: 2}) {
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, in.ThreatValue)
	}
	if len(got) != 5 || got[4] != strings.Repeat("b", 31)+"4" {
		t.Fatalf("listed %q", got)
	}
	if n := trapped.Load(); n != 0 {
		t.Fatalf("%d requests went to the host the links name", n)
	}
	var pages []string
	for _, r := range e.rec.all() {
		if r.path != "/api/public/v2/threat_indicators" {
			continue
		}
		q, _ := url.ParseQuery(r.query)
		if q.Get("filter[threat_type]") != "MD5" || q.Get("page[size]") != "2" {
			t.Fatalf("page request lost its query: %s", r.query)
		}
		pages = append(pages, q.Get("page[number]"))
	}
	if strings.Join(pages, ",") != "1,2,3" {
		t.Fatalf("pages asked for: %v", pages)
	}
}

// TestListIndicatorsStopsWhenAServerIgnoresThePageNumber: a server that
// answers the same page (with a next link) whatever page[number] says
// would make the listing endless.
func TestListIndicatorsStopsWhenAServerIgnoresThePageNumber(t *testing.T) {
	e := newEnv(t, triagesim.Options{}, triage.Config{})
	for i := range 3 {
		if _, err := e.sim.Seed(triagesim.Indicator{ThreatLevel: "Benign", ThreatType: "MD5", ThreatValue: strings.Repeat("c", 31) + itoa(i)}); err != nil {
			t.Fatal(err)
		}
	}
	e.rec.rewrite = func(r *http.Request) {
		q := r.URL.Query()
		if q.Has("page[number]") {
			q.Set("page[number]", "1")
			r.URL.RawQuery = q.Encode()
		}
	}
	var n int
	var last error
	for _, err := range e.client.ListIndicators(context.Background(), triage.ListOptions{PageSize: 2}) {
		if err != nil {
			last = err
			break
		}
		n++
	}
	te := requireKind(t, last, triage.ErrBadResponse)
	if n != 2 || !strings.Contains(te.Error(), "page 2 repeats page 1") {
		t.Fatalf("listed %d then %v", n, last)
	}
}

func TestFindIndicatorEncodesValues(t *testing.T) {
	e := newEnv(t, triagesim.Options{}, triage.Config{})
	ctx := context.Background()
	values := []string{
		"http://a.example/path?x=1&y=2#frag",
		"http://a.example/a+b c",
		"http://a.example/a b+c",
		"http://a.example/%41%2F?q=%26",
		"http://a.example/ünï/código?名前=値",
		"http://a.example/comma,separated,parts",
		"http://a.example/comma",
		"http://a.example/[brackets]/=equals;semi",
	}
	ids := map[string]string{}
	for _, v := range values {
		in, err := e.client.CreateIndicator(ctx, triage.NewIndicator{ThreatLevel: "Malicious", ThreatType: "URL", ThreatValue: v})
		if err != nil {
			t.Fatalf("create %q: %v", v, err)
		}
		if in.ThreatValue != v {
			t.Fatalf("created value %q, sent %q", in.ThreatValue, v)
		}
		ids[v] = in.ID
	}
	for _, v := range values {
		in, err := e.client.FindIndicator(ctx, "URL", v, "")
		if err != nil {
			t.Fatalf("find %q: %v", v, err)
		}
		if in.ID != ids[v] || in.ThreatValue != v {
			t.Fatalf("find %q = %+v, want id %s", v, in, ids[v])
		}
	}
	if _, err := e.client.FindIndicator(ctx, "Hostname", values[0], ""); !errors.Is(err, triage.ErrNotFound) {
		t.Fatalf("another type: %v", err)
	}
	if _, err := e.client.FindIndicator(ctx, "URL", "http://a.example/comma,other", ""); !errors.Is(err, triage.ErrNotFound) {
		t.Fatalf("a comma value that does not exist: %v", err)
	}
}

func TestPingChecksCredentials(t *testing.T) {
	e := newEnv(t, triagesim.Options{}, triage.Config{})
	if err := e.client.Ping(context.Background()); err != nil {
		t.Fatal(err)
	}
	if n := e.sim.Stats().Requests[triagesim.EndpointStatus]; n != 1 {
		t.Fatalf("status requests %d", n)
	}
}

func itoa(i int) string { return strconv.Itoa(i) }
