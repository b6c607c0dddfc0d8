package main

import (
	"context"
	"io"
	"maps"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/tqtriage/tqtriage/bus"
	"github.com/tqtriage/tqtriage/bus/bustest"
	"github.com/tqtriage/tqtriage/internal/gate"
	"github.com/tqtriage/tqtriage/triage/triagesim"
)

// get answers GET path on a replica's HTTP address: status and body.
func get(t *testing.T, addr, path string) (int, string) {
	t.Helper()
	resp, err := http.Get("http://" + addr + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

var refusalLogged = regexp.MustCompile(`"level":"error".*"service":"Triage".*invalid_client.*no usable credentials`)

// TestAWorkerWhoseSecretIsRefusedTakesNoJobAndResumesWhenItIsRotated is
// the reproduction of a worker started with a wrong TRIAGE_CLIENT_SECRET:
// it answered /readyz 200, then failed and dead-lettered every job it
// took. Now it says why it is not ready, takes no job (none failed, none
// dead-lettered), logs the refusal once, and resumes by itself when the
// secret in its file is put right, without a restart.
func TestAWorkerWhoseSecretIsRefusedTakesNoJobAndResumesWhenItIsRotated(t *testing.T) {
	t.Parallel()
	s := startSim(t, sampleSize)
	secretFile := filepath.Join(t.TempDir(), "triage-secret")
	if err := os.WriteFile(secretFile, []byte(testSecret+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	env := s.env(minimal()).without("TRIAGE_CLIENT_SECRET").with("NATS_URL", startNATS(t),
		"TRIAGE_CLIENT_SECRET_FILE", secretFile, "WORKER_MAX_DELIVER", "1")
	w := start(t, env.with("HTTP_ADDR", "127.0.0.1:0"), true, "worker")
	wb := start(t, env.with("HTTP_ADDR", ""), true, "writeback")
	addr := w.waitFor(t, servingLine)[1]
	w.waitFor(t, refusalLogged)
	if code, body := get(t, addr, "/readyz"); code != http.StatusServiceUnavailable || !strings.Contains(body, "Triage refused the credentials") || !strings.Contains(body, "invalid_client") {
		t.Fatalf("/readyz of a worker whose secret is refused: %d %q; want 503 naming the refusal", code, body)
	}

	r := tq(t, env, "", "publish", "--action", "create", "--collection", s.collection)
	mustCode(t, r, 0)
	id := runID(t, r)
	// Nothing to wait on: proving that no job is taken takes a while.
	time.Sleep(2 * time.Second)
	if st := tq(t, env, "", "status", id); !strings.Contains(st.stdout, "in progress: 0 of 40 jobs have a result") {
		t.Fatalf("the refused worker answered jobs: %v", st)
	}
	if dl := tq(t, env, "", "dlq", "list"); !strings.Contains(dl.stdout, "0 dead letters") {
		t.Fatalf("jobs dead-lettered: %v", dl)
	}
	if n := strings.Count(w.stderr.String(), `"level":"error"`); n != 1 {
		t.Fatalf("%d errors logged; want the refusal once:\n%s", n, w.stderr.String())
	}

	// The secret is rotated in its file: the worker picks it up.
	if err := os.WriteFile(secretFile, []byte(triagesim.DefaultClientSecret+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the worker ready again", func() bool { code, _ := get(t, addr, "/readyz"); return code == http.StatusOK })
	eventually(t, "every job of the run answered", func() bool {
		st := tq(t, env, "", "status", id)
		return strings.Contains(st.stdout, "complete") && maps.Equal(counts(st.stdout), map[string]int{"created": sampleValid - sampleExists, "exists": sampleExists, "invalid": sampleInvalid})
	})
	if !strings.Contains(w.stderr.String(), "credentials accepted again") {
		t.Errorf("the recovery is not logged:\n%s", w.stderr.String())
	}
	if dl := tq(t, env, "", "dlq", "list"); !strings.Contains(dl.stdout, "0 dead letters") {
		t.Fatalf("jobs dead-lettered: %v", dl)
	}
	for _, p := range []*proc{w, wb} {
		if code := p.stop(t, 10*time.Second); code != 0 {
			t.Errorf("tqtriage %s exited %d on SIGTERM", p.args[0], code)
		}
	}
}

// TestReadyOnlyWithATokenNATSAndTheConsumerAndNotWhileDraining: what
// /readyz answers, through replicaReady.
func TestReadyOnlyWithATokenNATSAndTheConsumerAndNotWhileDraining(t *testing.T) {
	t.Parallel()
	srv := bustest.Server(t)
	b := bustest.Connect(t, srv, bus.Config{}, zerolog.Nop())
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	granted := make(chan struct{})
	g := gate.New(ctx, gate.Config{Service: "Triage", Retry: 10 * time.Millisecond, MaxRetry: 10 * time.Millisecond, Probe: func(context.Context) error {
		select {
		case <-granted:
			return nil
		default:
			return refusedErr{}
		}
	}})
	_ = g.Started(ctx)
	ready := replicaReady(ctx, b, []*gate.Gate{g}, bus.ConsumerWorkers)
	if err := ready(); err == nil || !strings.Contains(err.Error(), "Triage refused the credentials: 401 invalid_client") {
		t.Fatalf("ready with refused credentials: %v", err)
	}
	close(granted)
	deadline := time.Now().Add(10 * time.Second)
	for ready() != nil {
		if time.Now().After(deadline) {
			t.Fatalf("not ready once a token was granted: %v", ready())
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := replicaReady(ctx, b, []*gate.Gate{g}, "tqtriage-nobody")(); err == nil {
		t.Fatal("ready without its consumer")
	}
	cancel() // SIGTERM: draining
	if err := ready(); err == nil || !strings.Contains(err.Error(), "draining") {
		t.Fatalf("ready while draining: %v", err)
	}
	b.Close()
	if err := replicaReady(context.Background(), b, nil)(); err == nil || !strings.Contains(err.Error(), "NATS") {
		t.Fatalf("ready without NATS: %v", err)
	}
}

type refusedErr struct{}

func (refusedErr) Error() string { return "401 invalid_client" }
func (refusedErr) Refused() bool { return true }
