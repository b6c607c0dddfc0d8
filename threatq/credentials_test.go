package threatq_test

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tqtriage/tqtriage/internal/httpclient"
	"github.com/tqtriage/tqtriage/internal/retry"
	"github.com/tqtriage/tqtriage/threatq"
	"github.com/tqtriage/tqtriage/threatq/threatqsim"
)

func isRefused(err error) bool {
	var e *threatq.Error
	return errors.As(err, &e) && e.Refused()
}

type rotating struct {
	mu  sync.Mutex
	v   string
	err error
}

func (r *rotating) set(v string, err error) { r.mu.Lock(); r.v, r.err = v, err; r.mu.Unlock() }
func (r *rotating) read() (string, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.v, r.err
}

func TestARotatedThreatQSecretIsReadForTheNextToken(t *testing.T) {
	sim, url := startSim(t, threatqsim.Options{})
	ids := sim.AddCollection("h", "c", []threatqsim.SeedIndicator{{Type: "MD5", Value: strings.Repeat("a", 32)}})
	const wrong = "not-the-secret-4e1"
	src := &rotating{v: wrong}
	c := newClient(t, url, func(cfg *threatq.Config) { cfg.ClientSecret, cfg.SecretFunc, cfg.Retry = "", src.read, retry.None })
	ctx := context.Background()
	err := c.Authenticate(ctx)
	if !isRefused(err) || !errors.Is(err, threatq.ErrAuthentication) || strings.Contains(err.Error(), wrong) {
		t.Fatalf("a wrong secret: %v; want a refusal without the secret", err)
	}
	src.set(threatqsim.DefaultClientSecret, nil)
	if err := c.Authenticate(ctx); err != nil {
		t.Fatalf("after the secret was put right: %v", err)
	}
	sim.SetCredentials(threatqsim.DefaultClientID, "rotated")
	sim.ExpireTokens()
	if _, err := c.Attributes(ctx, ids[0]); !isRefused(err) {
		t.Fatalf("after the rotation at ThreatQ: %v; want a refusal", err)
	}
	src.set("rotated", nil)
	if _, err := c.Attributes(ctx, ids[0]); err != nil {
		t.Fatalf("with the rotated secret: %v", err)
	}
	src.set("", errors.New("open /run/secrets/threatq: no such file or directory"))
	if err := c.Authenticate(ctx); !isRefused(err) || !strings.Contains(err.Error(), "secret") {
		t.Fatalf("a secret that cannot be read: %v; want a refusal naming the secret", err)
	}
}

func TestThreatQRefusedTellsTheCredentialsFromTheRequest(t *testing.T) {
	for _, tc := range []struct {
		name    string
		arrange func(*threatqsim.Server)
		refused bool
		is      error
	}{
		{"401 that a fresh token does not cure", func(s *threatqsim.Server) { s.RefuseAPI(401) }, true, threatq.ErrUnauthorized},
		{"403 that a fresh token does not cure", func(s *threatqsim.Server) { s.RefuseAPI(403) }, true, threatq.ErrForbidden},
		{"the token endpoint refuses the client", func(s *threatqsim.Server) { s.SetCredentials(threatqsim.DefaultClientID, "other") }, true, threatq.ErrAuthentication},
		{"429", func(s *threatqsim.Server) { s.ThrottleFor(time.Minute, 30*time.Second) }, false, threatq.ErrRateLimited},
		{"404", func(*threatqsim.Server) {}, false, threatq.ErrNotFound},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sim, url := startSim(t, threatqsim.Options{})
			c := newClient(t, url, func(cfg *threatq.Config) { cfg.Retry = retry.None })
			tc.arrange(sim)
			_, err := c.Attributes(context.Background(), 987654321)
			if isRefused(err) != tc.refused || !errors.Is(err, tc.is) {
				t.Fatalf("%v: refused %v; want %v and %v", err, isRefused(err), tc.refused, tc.is)
			}
		})
	}
}

type countingPacer struct {
	wait     time.Duration
	observed atomic.Int64
}

func (p *countingPacer) Wait(ctx context.Context) error {
	select {
	case <-time.After(p.wait):
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
func (p *countingPacer) Observe(*http.Response) { p.observed.Add(1) }

func TestThreatQPacingIsOutsideTheRequestTimeout(t *testing.T) {
	sim, url := startSim(t, threatqsim.Options{})
	ids := sim.AddCollection("h", "c", []threatqsim.SeedIndicator{{Type: "MD5", Value: strings.Repeat("b", 32)}})
	p := &countingPacer{wait: 300 * time.Millisecond}
	c := newClient(t, url, func(cfg *threatq.Config) {
		cfg.Pacer, cfg.Retry, cfg.HTTP = p, retry.None, httpclient.Options{Timeout: 100 * time.Millisecond}
	})
	if _, err := c.Attributes(context.Background(), ids[0]); err != nil {
		t.Fatalf("a pause of 300ms before a request with a 100ms timeout: %v", err)
	}
	if p.observed.Load() != 1 {
		t.Fatalf("the pacer saw %d answers; want 1", p.observed.Load())
	}
}
