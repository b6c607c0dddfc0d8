package pipeline_test

import (
	"context"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/tqtriage/tqtriage/bus"
	"github.com/tqtriage/tqtriage/internal/retry"
	"github.com/tqtriage/tqtriage/internal/sample"
	"github.com/tqtriage/tqtriage/message"
	"github.com/tqtriage/tqtriage/pipeline"
	"github.com/tqtriage/tqtriage/run"
	"github.com/tqtriage/tqtriage/threatq/threatqsim"
	"github.com/tqtriage/tqtriage/triage/triagesim"
	"github.com/tqtriage/tqtriage/worker"
	"github.com/tqtriage/tqtriage/writeback"
)

// TestOnceRunsAWholeRunOnAnEmbeddedServer is `run` as `demo` assembles it:
// an embedded server, a worker and a write-back pool, one run published,
// worked and written back before Run returns.
func TestOnceRunsAWholeRunOnAnEmbeddedServer(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	ts := httptest.NewServer(triagesim.New(triagesim.Options{}))
	defer ts.Close()
	q := threatqsim.New(threatqsim.Options{})
	qs := httptest.NewServer(q)
	defer qs.Close()
	ids := q.AddCollection("c", "c", sample.Valid("once", 12))

	b, stop, err := pipeline.Embedded(ctx, t.TempDir(), bus.Config{Name: "pipeline-test"}, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	tc, err := pipeline.NewTriage(ctx, pipeline.TriageSettings{BaseURL: ts.URL, ClientID: triagesim.DefaultClientID, ClientSecret: triagesim.DefaultClientSecret})
	if err != nil {
		t.Fatal(err)
	}
	w, err := worker.New(worker.Config{}, tc, b)
	if err != nil {
		t.Fatal(err)
	}
	settings := pipeline.ThreatQSettings{BaseURL: qs.URL, ClientID: threatqsim.DefaultClientID, ClientSecret: threatqsim.DefaultClientSecret}
	tq, err := pipeline.NewThreatQ(ctx, settings, retry.None)
	if err != nil {
		t.Fatal(err)
	}
	once := pipeline.Once{Bus: b, Worker: w, Writer: writeback.New(writeback.Config{}, tq), Log: zerolog.Nop()}
	out, err := once.Run(ctx, run.Options{Action: message.ActionCreate}, run.FromCollection(ctx, tq, "c", 5), run.FollowOptions{})
	if err != nil || out.Failed() || out.Tally.Count(message.StatusCreated) != 12 || out.Tally.AwaitingWriteback() != 0 {
		t.Fatalf("run: %v, %s", err, out.Tally.Line(12))
	}
	for _, id := range ids {
		if len(q.Attributes(id)) != 3 {
			t.Fatalf("indicator %d carries %v; want the three attributes written back before Run returned", id, q.Attributes(id))
		}
	}
}

func TestClientsRefuseBadSettingsBeforeAnyRequest(t *testing.T) {
	ctx := context.Background()
	if _, err := pipeline.NewTriage(ctx, pipeline.TriageSettings{BaseURL: "ftp://x", ClientID: "a", ClientSecret: "b"}); err == nil || !strings.Contains(err.Error(), "http or https") {
		t.Fatalf("Triage with an ftp address: %v", err)
	}
	if _, err := pipeline.NewThreatQ(ctx, pipeline.ThreatQSettings{BaseURL: "https://tq.example", ClientID: "a"}, retry.None); err == nil {
		t.Fatal("ThreatQ without a secret or a password was accepted")
	}
}
