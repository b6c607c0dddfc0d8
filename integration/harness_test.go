package integration

import (
	"context"
	"fmt"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/rs/zerolog"

	"github.com/tqtriage/tqtriage/bus"
	"github.com/tqtriage/tqtriage/internal/retry"
	"github.com/tqtriage/tqtriage/message"
	"github.com/tqtriage/tqtriage/pipeline"
	"github.com/tqtriage/tqtriage/publish"
	"github.com/tqtriage/tqtriage/report"
	"github.com/tqtriage/tqtriage/threatq/threatqsim"
	"github.com/tqtriage/tqtriage/triage/triagesim"
	"github.com/tqtriage/tqtriage/worker"
	"github.com/tqtriage/tqtriage/writeback"
)

// ackWait is short in these tests, so that a redelivery after a worker
// stops comes within a second or two.
const ackWait = 2 * time.Second

// env is one test's world: a JetStream server, the two simulators, and
// helpers to build the service's parts on them.
type env struct {
	t       *testing.T
	srv     *server.Server
	triage  *triagesim.Server
	threatq *threatqsim.Server
	tURL    string
	qURL    string
	log     zerolog.Logger
}

func newEnv(t *testing.T) *env {
	t.Helper()
	srv, err := bus.StartEmbedded(bus.EmbeddedOptions{StoreDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Shutdown(); srv.WaitForShutdown() })
	e := &env{t: t, srv: srv, triage: triagesim.New(triagesim.Options{}), threatq: threatqsim.New(threatqsim.Options{})}
	ts := httptest.NewServer(e.triage)
	qs := httptest.NewServer(e.threatq)
	t.Cleanup(ts.Close)
	t.Cleanup(qs.Close)
	e.tURL, e.qURL = ts.URL, qs.URL
	e.log = zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel).With().Timestamp().Logger()
	return e
}

// bus opens a connection of its own, as a separate process would.
func (e *env) bus() *bus.Bus {
	e.t.Helper()
	b, err := bus.Connect(context.Background(), bus.Config{URL: e.srv.ClientURL(), AckWait: ackWait}, e.log)
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(b.Close)
	return b
}

// workerConfig retries fast, so that failures play out in a test's time.
func workerConfig() worker.Config {
	return worker.Config{
		Retry:           retry.Policy{MaxAttempts: 3, InitialInterval: 5 * time.Millisecond, MaxInterval: 20 * time.Millisecond},
		RedeliveryDelay: 50 * time.Millisecond, MaxRedeliveryDelay: 200 * time.Millisecond,
		AckWait: ackWait,
	}
}

func (e *env) triageClient() worker.Triage {
	e.t.Helper()
	c, _, err := pipeline.NewTriage(context.Background(), pipeline.TriageSettings{BaseURL: e.tURL, ClientID: triagesim.DefaultClientID, ClientSecret: triagesim.DefaultClientSecret})
	if err != nil {
		e.t.Fatal(err)
	}
	return c
}

func (e *env) worker(b *bus.Bus, cfg worker.Config) *worker.Worker {
	e.t.Helper()
	w, err := worker.New(cfg, e.triageClient(), b, e.log, nil)
	if err != nil {
		e.t.Fatal(err)
	}
	return w
}

func (e *env) writer(b *bus.Bus) *writeback.Writer {
	e.t.Helper()
	tq, err := pipeline.NewThreatQ(context.Background(), pipeline.ThreatQSettings{BaseURL: e.qURL, ClientID: threatqsim.DefaultClientID, ClientSecret: threatqsim.DefaultClientSecret}, retry.None)
	if err != nil {
		e.t.Fatal(err)
	}
	return writeback.New(writeback.Config{
		Retry:           retry.Policy{MaxAttempts: 2, InitialInterval: 5 * time.Millisecond, MaxInterval: 20 * time.Millisecond},
		RedeliveryDelay: 50 * time.Millisecond, MaxRedeliveryDelay: 300 * time.Millisecond,
	}, tq, b, e.log, nil)
}

func (e *env) once(cfg worker.Config) pipeline.Once {
	b := e.bus()
	return pipeline.Once{Bus: b, Worker: e.worker(b, cfg), Writer: e.writer(b), WorkerConcurrency: 16, WritebackConcurrency: 8, Log: e.log}
}

// collection seeds a ThreatQ collection and returns its indicators' ids.
func (e *env) collection(hash string, inds []threatqsim.SeedIndicator) []int64 {
	return e.threatq.AddCollection(hash, "collection "+hash, inds)
}

// items reads a collection through the real ThreatQ client.
func (e *env) items(ctx context.Context, hash string) func(func(publish.Item) bool) {
	e.t.Helper()
	tq, err := pipeline.NewThreatQ(ctx, pipeline.ThreatQSettings{BaseURL: e.qURL, ClientID: threatqsim.DefaultClientID, ClientSecret: threatqsim.DefaultClientSecret}, retry.Policy{})
	if err != nil {
		e.t.Fatal(err)
	}
	return publish.FromCollection(ctx, tq, hash, 50)
}

// run is `tqtriage run` on the collection: publish, work, write back.
func (e *env) run(o pipeline.Once, action, hash string, po publish.Options) pipeline.Outcome {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	po.Action = action
	out, err := o.Run(ctx, po, e.items(ctx, hash), publish.WaitOptions{})
	if err != nil {
		e.t.Fatalf("%s run: %v", action, err)
	}
	return out
}

// results reads every stored result of a run, by indicator id.
func results(t *testing.T, b *bus.Bus, runID string) map[int64][]message.Result {
	t.Helper()
	out := map[int64][]message.Result{}
	err := b.ReadResults(context.Background(), message.ResultSubject(runID), false, func(r bus.StoredResult) bool {
		if r.Status == "" {
			t.Errorf("unreadable result: %s", r.Reason)
		}
		out[r.Indicator.ID] = append(out[r.Indicator.ID], r.Result)
		return true
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// waitStatus waits until the run's tally satisfies ok.
func waitStatus(t *testing.T, b *bus.Bus, runID string, within time.Duration, ok func(*report.Tally) bool) *report.Tally {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		tally, _, err := publish.Status(context.Background(), b, runID)
		if err == nil && ok(tally) {
			return tally
		}
		if time.Now().After(deadline) {
			line := "no tally"
			if tally != nil {
				line = tally.Line(0)
			}
			t.Fatalf("run %s: condition not met within %v (err %v; %s)", runID, within, err, line)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// sampleIndicators returns n valid indicators of the four types.
func sampleIndicators(prefix string, n int) []threatqsim.SeedIndicator {
	out := make([]threatqsim.SeedIndicator, n)
	for i := range out {
		switch i % 4 {
		case 0:
			out[i] = threatqsim.SeedIndicator{Type: "MD5", Value: fmt.Sprintf("%032x", hash(prefix, i))}
		case 1:
			out[i] = threatqsim.SeedIndicator{Type: "SHA-256", Value: fmt.Sprintf("%064x", hash(prefix, i))}
		case 2:
			out[i] = threatqsim.SeedIndicator{Type: "URL", Value: fmt.Sprintf("https://%s-%d.example.com/login", prefix, i)}
		default:
			out[i] = threatqsim.SeedIndicator{Type: "FQDN", Value: fmt.Sprintf("%s-%d.phish.example.net", prefix, i)}
		}
	}
	return out
}

func hash(prefix string, i int) uint64 {
	h := uint64(14695981039346656037)
	for _, c := range prefix {
		h = (h ^ uint64(c)) * 1099511628211
	}
	return (h ^ uint64(i)) * 1099511628211
}

// serve runs fn in the background until the test ends, and waits for it.
func serve(t *testing.T, fn func(ctx context.Context) error) context.CancelFunc {
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		if err := fn(ctx); err != nil {
			t.Errorf("serve: %v", err)
		}
	}()
	t.Cleanup(func() { cancel(); wg.Wait() })
	return cancel
}
