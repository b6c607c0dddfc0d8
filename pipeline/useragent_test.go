package pipeline

import (
	"context"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"

	"github.com/tqtriage/tqtriage/internal/buildinfo"
	"github.com/tqtriage/tqtriage/internal/retry"
	"github.com/tqtriage/tqtriage/threatq/threatqsim"
	"github.com/tqtriage/tqtriage/triage/triagesim"
)

// agents records the User-Agent of every request h serves.
type agents struct {
	mu  sync.Mutex
	got map[string]bool
	h   http.Handler
}

func (a *agents) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	a.mu.Lock()
	a.got[r.Method+" "+r.URL.Path+" "+r.UserAgent()] = true
	a.mu.Unlock()
	a.h.ServeHTTP(w, r)
}

func TestClientsSendTheBuildsUserAgent(t *testing.T) {
	ctx := context.Background()
	ta := &agents{got: map[string]bool{}, h: triagesim.New(triagesim.Options{})}
	qa := &agents{got: map[string]bool{}, h: threatqsim.New(threatqsim.Options{})}
	ts, qs := httptest.NewServer(ta), httptest.NewServer(qa)
	defer ts.Close()
	defer qs.Close()

	tc, err := NewTriage(ctx, TriageSettings{BaseURL: ts.URL, ClientID: triagesim.DefaultClientID, ClientSecret: triagesim.DefaultClientSecret})
	if err != nil {
		t.Fatal(err)
	}
	if err := tc.Ping(ctx); err != nil {
		t.Fatal(err)
	}
	qc, err := NewThreatQ(ctx, ThreatQSettings{BaseURL: qs.URL, ClientID: threatqsim.DefaultClientID, ClientSecret: threatqsim.DefaultClientSecret}, retry.None)
	if err != nil {
		t.Fatal(err)
	}
	if err := qc.Ping(ctx); err != nil {
		t.Fatal(err)
	}
	want := buildinfo.UserAgent()
	for name, a := range map[string]*agents{"Triage": ta, "ThreatQ": qa} {
		if len(a.got) == 0 {
			t.Errorf("%s: no request", name)
		}
		for req := range a.got {
			if len(req) < len(want) || req[len(req)-len(want):] != want {
				t.Errorf("%s: %q was not sent with User-Agent %q", name, req, want)
			}
		}
	}
}
