package integration

import (
	"context"
	"iter"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/rs/zerolog"

	"github.com/tqtriage/tqtriage/bus"
	"github.com/tqtriage/tqtriage/bus/bustest"
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
	// ackWait of the consumers the env's first bus makes (default the
	// short ackWait). A test that proves a job is answered at its first
	// delivery sets it long: a machine loaded by the rest of the suite
	// must not starve a handler past its deadline and count a second one.
	ackWait time.Duration
}

// firstDeliveryAckWait is that long ack wait.
const firstDeliveryAckWait = 20 * time.Second

func newEnv(t *testing.T) *env {
	t.Helper()
	e := &env{t: t, srv: bustest.Server(t), triage: triagesim.New(triagesim.Options{}), threatq: threatqsim.New(threatqsim.Options{})}
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
	aw := e.ackWait
	if aw == 0 {
		aw = ackWait
	}
	return bustest.Connect(e.t, e.srv, bus.Config{AckWait: aw}, e.log)
}

// workerConfig retries fast, so that failures play out in a test's time.
func workerConfig() worker.Config {
	return worker.Config{
		Retry:           retry.Policy{MaxAttempts: 3, InitialInterval: 5 * time.Millisecond, MaxInterval: 20 * time.Millisecond},
		RedeliveryDelay: 50 * time.Millisecond, MaxRedeliveryDelay: 200 * time.Millisecond,
	}
}

// withConcurrency is cfg with n jobs at once.
func withConcurrency(cfg worker.Config, n int) worker.Config {
	cfg.Concurrency = n
	return cfg
}

func (e *env) triageClient(rateLimit float64) worker.Triage {
	e.t.Helper()
	c, err := pipeline.NewTriage(context.Background(), pipeline.TriageSettings{BaseURL: e.tURL, ClientID: triagesim.DefaultClientID, ClientSecret: triagesim.DefaultClientSecret, RateLimit: rateLimit})
	if err != nil {
		e.t.Fatal(err)
	}
	return c
}

// worker is a worker as the command line builds one: with a read-only
// reader for dry runs beside its own client, and its gate.
func (e *env) worker(b *bus.Bus, cfg worker.Config) *worker.Worker {
	return e.workerWith(pipeline.TriageSettings{}, b, cfg)
}

// workerWith is a worker as the command line builds one on s (the
// simulator and its default credentials unless set); its gate probes
// until the test ends.
func (e *env) workerWith(s pipeline.TriageSettings, b *bus.Bus, cfg worker.Config) *worker.Worker {
	e.t.Helper()
	if s.BaseURL == "" {
		s.BaseURL = e.tURL
	}
	if s.ClientID == "" {
		s.ClientID = triagesim.DefaultClientID
	}
	if s.ClientSecret == "" && s.ClientSecretFunc == nil {
		s.ClientSecret = triagesim.DefaultClientSecret
	}
	s.Log = e.log
	w, err := pipeline.NewWorker(e.t.Context(), s, cfg, b)
	if err != nil {
		e.t.Fatal(err)
	}
	return w
}

// serveWorkers runs a worker replica on its own connection until the test
// ends.
func (e *env) serveWorkers(cfg worker.Config) *bus.Bus {
	b := e.bus()
	w := e.worker(b, cfg)
	serve(e.t, func(ctx context.Context) error { return pipeline.ServeWorkers(ctx, b, w, e.log, nil) })
	return b
}

func (e *env) writer() *writeback.Writer {
	return e.writerWith(pipeline.ThreatQSettings{}, writerConfig())
}

// writerConfig retries fast, so that failures play out in a test's time.
func writerConfig() writeback.Config {
	return writeback.Config{
		Retry:           retry.Policy{MaxAttempts: 2, InitialInterval: 5 * time.Millisecond, MaxInterval: 20 * time.Millisecond},
		RedeliveryDelay: 50 * time.Millisecond, MaxRedeliveryDelay: 300 * time.Millisecond,
	}
}

// writerWith is a writer with its gate, as the writeback command builds
// it, on s (the simulator and its default credentials unless set).
func (e *env) writerWith(s pipeline.ThreatQSettings, cfg writeback.Config) *writeback.Writer {
	e.t.Helper()
	if s.BaseURL == "" {
		s.BaseURL = e.qURL
	}
	if s.ClientID == "" {
		s.ClientID = threatqsim.DefaultClientID
	}
	if s.ClientSecret == "" && s.SecretFunc == nil {
		s.ClientSecret = threatqsim.DefaultClientSecret
	}
	s.Log = e.log
	tq, g, err := pipeline.NewThreatQReplica(e.t.Context(), s)
	if err != nil {
		e.t.Fatal(err)
	}
	cfg.Gate = g
	return writeback.New(cfg, tq)
}

func (e *env) once(cfg worker.Config) pipeline.Once {
	b := e.bus()
	return pipeline.Once{Bus: b, Worker: e.worker(b, cfg), Writer: e.writer(), Log: e.log}
}

// collection seeds a ThreatQ collection and returns its indicators' ids.
func (e *env) collection(hash string, inds []threatqsim.SeedIndicator) []int64 {
	return e.threatq.AddCollection(hash, "collection "+hash, inds)
}

// items reads a collection through the real ThreatQ client.
func (e *env) items(ctx context.Context, hash string) iter.Seq[run.Item] {
	e.t.Helper()
	tq, err := pipeline.NewThreatQ(ctx, pipeline.ThreatQSettings{BaseURL: e.qURL, ClientID: threatqsim.DefaultClientID, ClientSecret: threatqsim.DefaultClientSecret}, retry.Policy{})
	if err != nil {
		e.t.Fatal(err)
	}
	return run.FromCollection(ctx, tq, hash, 50)
}

// run is `tqtriage run` on the collection: publish, work, write back.
func (e *env) run(o pipeline.Once, action message.Action, hash string, po run.Options) pipeline.Outcome {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	po.Action = action
	out, err := o.Run(ctx, po, e.items(ctx, hash), run.FollowOptions{})
	if err != nil {
		e.t.Fatalf("%s run: %v", action, err)
	}
	return out
}

// results reads every stored result of a run, by indicator id.
func results(t *testing.T, b *bus.Bus, runID string) map[int64][]message.Result {
	t.Helper()
	out := map[int64][]message.Result{}
	err := b.ReadRun(context.Background(), runID, false, func(s bus.Stored) bool {
		if s.Receipt {
			return true
		}
		r, err := message.ParseResult(s.Data)
		if err != nil {
			t.Errorf("unreadable result: %v", err)
		}
		out[r.Indicator.ID] = append(out[r.Indicator.ID], r)
		return true
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// waitStatus waits until the run's tally satisfies ok.
func waitStatus(t *testing.T, b *bus.Bus, runID string, within time.Duration, ok func(*run.Tally) bool) *run.Tally {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		tally, _, err := run.Status(context.Background(), b, runID)
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

// itemsOf is a source of the indicators, numbered from 1.
func itemsOf(inds []threatqsim.SeedIndicator) iter.Seq[run.Item] {
	return func(yield func(run.Item) bool) {
		for i, s := range inds {
			if !yield(run.Item{Indicator: message.Indicator{ID: int64(i + 1), Type: s.Type, Value: s.Value}}) {
				return
			}
		}
	}
}

// waitJobsSettled waits until the jobs stream is empty: every job
// acknowledged (a work queue removes what is acknowledged).
func waitJobsSettled(t *testing.T, b *bus.Bus) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		n, err := b.JobsWaiting(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if n == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d jobs still unacknowledged", n)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// sampleIndicators returns n valid indicators of the four types.
func sampleIndicators(prefix string, n int) []threatqsim.SeedIndicator {
	return sample.Valid(prefix, n)
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
