package triage_test

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tqtriage/tqtriage/internal/httpclient"
	"github.com/tqtriage/tqtriage/triage"
	"github.com/tqtriage/tqtriage/triage/triagesim"
)

// slowPacer holds every request for d and counts the answers it sees.
type slowPacer struct {
	d        time.Duration
	observed atomic.Int64
}

func (p *slowPacer) Wait(ctx context.Context) error {
	select {
	case <-time.After(p.d):
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (p *slowPacer) Observe(*http.Response) { p.observed.Add(1) }

// TestPacingIsOutsideTheRequestTimeout: a pause longer than the request
// timeout is waited for before the request starts, so the request does
// not time out in it (a throttle inside the transport did: "Client.Timeout
// exceeded while awaiting headers", for a request never sent).
func TestPacingIsOutsideTheRequestTimeout(t *testing.T) {
	srv := httptest.NewServer(triagesim.New(triagesim.Options{}))
	t.Cleanup(srv.Close)
	p := &slowPacer{d: 300 * time.Millisecond}
	c := newClient(t, triage.Config{BaseURL: srv.URL, Pacer: p, HTTP: httpclient.Options{Timeout: 100 * time.Millisecond}})
	if _, err := c.CreateIndicator(context.Background(), newSHA(sha(1))); err != nil {
		t.Fatalf("a pause of 300ms before a request with a 100ms timeout: %v", err)
	}
	if p.observed.Load() != 1 {
		t.Fatalf("the pacer saw %d answers; want 1", p.observed.Load())
	}
}

// secret is a secret's source that the test rotates.
type secret struct {
	mu  sync.Mutex
	v   string
	err error
	n   int
}

func (s *secret) set(v string, err error) { s.mu.Lock(); s.v, s.err = v, err; s.mu.Unlock() }
func (s *secret) read() (string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.n++
	return s.v, s.err
}

func TestARotatedSecretIsReadForTheNextToken(t *testing.T) {
	sim := triagesim.New(triagesim.Options{})
	srv := httptest.NewServer(sim)
	t.Cleanup(srv.Close)
	const wrong = "not-the-secret-9f2"
	src := &secret{v: wrong}
	c := newClient(t, triage.Config{BaseURL: srv.URL, ClientID: triagesim.DefaultClientID, ClientSecretFunc: src.read})
	ctx := context.Background()

	err := c.Authenticate(ctx)
	var te *triage.Error
	if !errors.As(err, &te) || !te.Refused() || !errors.Is(err, triage.ErrUnauthorized) || !strings.Contains(err.Error(), "invalid_client") {
		t.Fatalf("a wrong secret: %v; want a refusal naming invalid_client", err)
	}
	if strings.Contains(err.Error(), wrong) {
		t.Fatalf("the error holds the secret: %v", err)
	}
	src.set(triagesim.DefaultClientSecret, nil)
	if err := c.Authenticate(ctx); err != nil {
		t.Fatalf("after the secret was put right: %v", err)
	}
	if _, err := c.CreateIndicator(ctx, newSHA(sha(1))); err != nil {
		t.Fatal(err)
	}

	// Rotated at Triage: the old token still works until revoked; then
	// the next token needs the new secret, read at that moment.
	sim.SetCredentials(triagesim.DefaultClientID, "rotated-secret")
	sim.RevokeTokens()
	if _, err := c.CreateIndicator(ctx, newSHA(sha(2))); !isRefused(err) {
		t.Fatalf("after the rotation at Triage: %v; want a refusal", err)
	}
	src.set("rotated-secret", nil)
	if _, err := c.CreateIndicator(ctx, newSHA(sha(2))); err != nil {
		t.Fatalf("with the rotated secret: %v", err)
	}

	// A source that fails (a file gone) or is empty fails the grant
	// without a request, as a refusal.
	grants := sim.Stats().TokenGrants + sim.Stats().TokenRefusals
	for _, bad := range []struct {
		v   string
		err error
	}{{"", errors.New("open /run/secrets/triage: no such file or directory")}, {"", nil}} {
		src.set(bad.v, bad.err)
		if err := c.Authenticate(ctx); !isRefused(err) || !strings.Contains(err.Error(), "secret") {
			t.Fatalf("a secret that cannot be read (%v): %v; want a refusal naming the secret", bad.err, err)
		}
	}
	if n := sim.Stats().TokenGrants + sim.Stats().TokenRefusals; n != grants {
		t.Fatalf("%d token requests sent without a secret", n-grants)
	}
}

func isRefused(err error) bool {
	var te *triage.Error
	return errors.As(err, &te) && te.Refused()
}

// TestRefusedTellsTheCredentialsFromTheRequest: what a caller treats as
// the replica's condition (Refused) and what as the request's.
func TestRefusedTellsTheCredentialsFromTheRequest(t *testing.T) {
	for _, tc := range []struct {
		name    string
		arrange func(*triagesim.Server)
		refused bool
		is      error
		grants  int64 // tokens granted for the call
	}{
		{"401 that a fresh token does not cure", func(s *triagesim.Server) { s.RefuseAPI(401) }, true, triage.ErrUnauthorized, 2},
		{"403 that a fresh token does not cure", func(s *triagesim.Server) { s.RefuseAPI(403) }, true, triage.ErrForbidden, 2},
		{"the token endpoint refuses the client", func(s *triagesim.Server) { s.SetCredentials(triagesim.DefaultClientID, "other") }, true, triage.ErrUnauthorized, 0},
		{"429", func(s *triagesim.Server) { s.ThrottleFor(time.Minute, 30*time.Second) }, false, triage.ErrRateLimited, 1},
		{"503", func(s *triagesim.Server) { s.FailNext(1, 503) }, false, triage.ErrServer, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sim := triagesim.New(triagesim.Options{})
			srv := httptest.NewServer(sim)
			t.Cleanup(srv.Close)
			c := newClient(t, triage.Config{BaseURL: srv.URL})
			tc.arrange(sim)
			_, err := c.CreateIndicator(context.Background(), newSHA(sha(1)))
			if isRefused(err) != tc.refused || !errors.Is(err, tc.is) {
				t.Fatalf("%v: refused %v, want %v and %v", err, isRefused(err), tc.refused, tc.is)
			}
			if n := sim.Stats().TokenGrants; n != tc.grants {
				t.Fatalf("%d tokens granted; want %d (a refusal of the API is final only after a fresh token)", n, tc.grants)
			}
		})
	}
	sim := triagesim.New(triagesim.Options{})
	srv := httptest.NewServer(sim)
	t.Cleanup(srv.Close)
	if _, err := newClient(t, triage.Config{BaseURL: srv.URL}).GetIndicator(context.Background(), "999"); isRefused(err) || !errors.Is(err, triage.ErrNotFound) {
		t.Fatalf("a 404 on the API: %v; want not found, not a refusal", err)
	}
}
