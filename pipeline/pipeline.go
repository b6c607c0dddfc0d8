// Package pipeline assembles the parts into what the command line runs: the
// Triage and ThreatQ clients from plain settings, a worker replica and a
// write-back replica on a bus, and Once, the whole flow in one process
// (publish, work, write back) that `run` and `demo` use and that returns
// only when what a user sees in ThreatQ is complete. The integration tests
// assemble through it too.
//
// It reads no flags and no environment: cmd/tqtriage does, and hands it
// settings.
package pipeline

import (
	"context"
	"errors"
	"iter"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"

	"github.com/tqtriage/tqtriage/bus"
	"github.com/tqtriage/tqtriage/internal/buildinfo"
	"github.com/tqtriage/tqtriage/internal/gate"
	"github.com/tqtriage/tqtriage/internal/httpclient"
	"github.com/tqtriage/tqtriage/internal/httpmetrics"
	"github.com/tqtriage/tqtriage/internal/retry"
	"github.com/tqtriage/tqtriage/internal/throttle"
	"github.com/tqtriage/tqtriage/run"
	"github.com/tqtriage/tqtriage/threatq"
	"github.com/tqtriage/tqtriage/triage"
	"github.com/tqtriage/tqtriage/worker"
	"github.com/tqtriage/tqtriage/writeback"
)

// TriageSettings connect to Cofense Triage.
type TriageSettings struct {
	BaseURL, ClientID, ClientSecret string
	// ClientSecretFunc, when set, is read for each token request instead
	// of ClientSecret ($TRIAGE_CLIENT_SECRET_FILE, read again each time).
	ClientSecretFunc   func() (string, error)
	InsecureSkipVerify bool   // TRIAGE_VERIFY_SSL=false
	CAFile             string // an extra CA bundle
	RateLimit          float64
	// MaxPause bounds the pause a 429 starts, whatever its Retry-After
	// (default worker.DefaultMaxPause).
	MaxPause time.Duration
	// Timeout bounds one HTTP request (default httpclient's). Pauses and
	// the rate limit are waited for before it starts.
	Timeout time.Duration
	// Log is told when a 429 pauses the replica (zero value: nowhere).
	Log zerolog.Logger
	// Metrics counts the client's requests (nil: none).
	Metrics *httpmetrics.Metrics
	// ReadOnly builds a client that can only read (a dry run's): any
	// request but GET, and the token's POST, is refused before it is sent.
	ReadOnly bool
	// Fleet, when set, makes RateLimit the budget of every replica that
	// joins the fleet set in it (one API client, one limit), shared
	// equally, and a 429 one of them meets a pause for all.
	Fleet *throttle.FleetRef
}

// NewTriage returns a Triage client whose requests are paced by a
// throttle of the settings' rate limit, which also pauses every request
// after a 429 for its Retry-After, at most MaxPause. It makes one attempt
// per call: the worker retries.
func NewTriage(ctx context.Context, s TriageSettings) (*triage.Client, error) {
	return newTriage(ctx, s, triageThrottle(s, nil))
}

// triageThrottle paces a replica's Triage requests: its rate limit, and
// the pause after a 429, at most MaxPause, which it logs and tells paused.
func triageThrottle(s TriageSettings, paused func(time.Duration)) *throttle.Throttle {
	if s.MaxPause <= 0 {
		s.MaxPause = worker.DefaultMaxPause
	}
	return throttle.New(s.RateLimit, throttle.MaxPause(s.MaxPause), throttle.OnPause(onPause(s.Log, "Triage", "TRIAGE_MAX_PAUSE", s.MaxPause, paused)),
		throttle.Shared(s.Fleet))
}

// lateGate is a gate given to a throttle before it exists: the gate's
// probe needs the client, which needs the throttle.
type lateGate struct{ atomic.Pointer[gate.Gate] }

// paused pauses the gate, once there is one, for a pause a 429 started:
// the replica pulls no message that would wait in its buffer through it.
func (l *lateGate) paused(service string) func(time.Duration) {
	return func(d time.Duration) {
		if g := l.Load(); g != nil {
			g.Pause(d, service+" answered 429")
		}
	}
}

func newTriage(ctx context.Context, s TriageSettings, th *throttle.Throttle) (*triage.Client, error) {
	// The client keeps ctx for token renewals; a shutdown (ctx ending)
	// must not stop the renewals of jobs finishing in their grace period.
	return triage.New(context.WithoutCancel(ctx), triage.Config{
		BaseURL: s.BaseURL, ClientID: s.ClientID, ClientSecret: s.ClientSecret, ClientSecretFunc: s.ClientSecretFunc,
		UserAgent: buildinfo.UserAgent(),
		HTTP: httpclient.Options{
			InsecureSkipVerify: s.InsecureSkipVerify, CAFile: s.CAFile, Timeout: s.Timeout,
			// The throttle waits before a request is sent, outside what
			// the metrics time.
			Wrap:     s.Metrics.Wrap(httpmetrics.Triage, httpmetrics.TriageRoutes),
			ReadOnly: s.ReadOnly, TokenPath: triage.TokenPath,
		},
		Pacer: th,
	})
}

// NewWorker returns a worker on claims with two Triage clients built from
// s: one for its jobs, and a read-only one for its dry runs, through which
// a dry-run job reads and can do nothing else. With s.ReadOnly both are
// read-only, and the worker takes dry-run jobs alone. Unless cfg has a
// gate, the worker gets one (internal/gate): closed until the client has
// obtained a token and while Triage refuses its credentials, probing with
// a fresh token until ctx ends; and paused for every pause a 429 starts
// in the clients, so that the replica pulls no job that would wait in its
// buffer through the pause.
func NewWorker(ctx context.Context, s TriageSettings, cfg worker.Config, claims worker.Claims) (*worker.Worker, error) {
	// One throttle: the replica's rate limit and 429 pauses hold for
	// both.
	var g lateGate
	th := triageThrottle(s, g.paused("Triage"))
	tc, err := newTriage(ctx, s, th)
	if err != nil {
		return nil, err
	}
	if cfg.Gate == nil {
		cfg.Gate = gate.New(ctx, gate.Config{Service: "Triage", Probe: tc.Authenticate, Log: s.Log})
	}
	g.Store(cfg.Gate)
	onlyDry := s.ReadOnly
	s.ReadOnly = true
	ro, err := newTriage(ctx, s, th)
	if err != nil {
		return nil, err
	}
	w, err := worker.New(cfg, tc, claims)
	if err != nil {
		return nil, err
	}
	w.WithReader(ro)
	if onlyDry {
		// Both clients read only: real jobs are not this one's.
		w.OnlyDryRuns()
	}
	return w, nil
}

// onPause logs the start of a pause after a 429 (saying when the server's
// Retry-After was longer than the setting allows) and tells paused.
func onPause(log zerolog.Logger, service, setting string, most time.Duration, paused func(time.Duration)) func(asked, pause time.Duration) {
	return func(asked, pause time.Duration) {
		if paused != nil {
			paused(pause)
		}
		ev := log.Warn().Dur("pause", pause)
		if asked > 0 {
			ev = ev.Dur("retry_after", asked)
		}
		if asked > pause {
			ev.Dur("max_pause", most).Msg(service + " answered 429 asking for a longer pause than " + setting + " allows; every request of this replica pauses for " + setting + ", then asks again")
			return
		}
		ev.Msg(service + " answered 429; every request of this replica pauses")
	}
}

// ThreatQSettings connect to ThreatQ.
type ThreatQSettings struct {
	BaseURL, ClientID, ClientSecret string
	Email, Password                 string // the password grant, when set
	// SecretFunc, when set, is read for each token request instead of
	// ClientSecret or Password ($THREATQ_CLIENT_SECRET_FILE or
	// $THREATQ_PASSWORD_FILE, read again each time).
	SecretFunc         func() (string, error)
	InsecureSkipVerify bool
	CAFile             string
	AttributeSource    string
	// MaxPause bounds the pause a 429 starts, whatever its Retry-After
	// (default writeback.DefaultMaxPause).
	MaxPause time.Duration
	// Log is told when a 429 pauses the replica (zero value: nowhere).
	Log     zerolog.Logger
	Metrics *httpmetrics.Metrics // nil: none

	paused func(time.Duration) // NewThreatQReplica: the gate's pause
	// ReadOnly: as TriageSettings.ReadOnly (a dry run reads the
	// collection and writes nothing back).
	ReadOnly bool
}

// NewThreatQ returns a ThreatQ client whose requests pause after a 429
// for its Retry-After, at most MaxPause. Reading collections retries by
// itself with policy; write-back passes retry.None and retries itself.
func NewThreatQ(ctx context.Context, s ThreatQSettings, policy retry.Policy) (*threatq.Client, error) {
	if s.MaxPause <= 0 {
		s.MaxPause = writeback.DefaultMaxPause
	}
	th := throttle.New(0, throttle.MaxPause(s.MaxPause), throttle.OnPause(onPause(s.Log, "ThreatQ", "THREATQ_MAX_PAUSE", s.MaxPause, s.paused)))
	return threatq.New(context.WithoutCancel(ctx), threatq.Config{ // as in NewTriage
		BaseURL: s.BaseURL, ClientID: s.ClientID, ClientSecret: s.ClientSecret, SecretFunc: s.SecretFunc,
		Email: s.Email, Password: s.Password, AttributeSource: s.AttributeSource,
		UserAgent: buildinfo.UserAgent(),
		HTTP: httpclient.Options{InsecureSkipVerify: s.InsecureSkipVerify, CAFile: s.CAFile,
			Wrap:     s.Metrics.Wrap(httpmetrics.ThreatQ, httpmetrics.ThreatQRoutes),
			ReadOnly: s.ReadOnly, TokenPath: threatq.TokenPath},
		Retry: policy,
		Pacer: th,
	})
}

// NewThreatQReplica returns a write-back replica's ThreatQ client (with
// retry.None: write-back retries) and its gate, as NewWorker's: closed
// until the client has a token and while ThreatQ refuses its credentials,
// and paused for every pause a 429 starts in the client.
func NewThreatQReplica(ctx context.Context, s ThreatQSettings) (*threatq.Client, *gate.Gate, error) {
	var g lateGate
	s.paused = g.paused("ThreatQ")
	c, err := NewThreatQ(ctx, s, retry.None)
	if err != nil {
		return nil, nil, err
	}
	g.Store(gate.New(ctx, gate.Config{Service: "ThreatQ", Probe: c.Authenticate, Log: s.Log}))
	return c, g.Load(), nil
}

// FleetGroup is the fleet the worker replicas of one Triage API client
// share its rate limit in.
const FleetGroup = "triage"

// JoinFleet makes this replica a member of the workers' fleet on b and
// sets it in ref, so that the Triage throttles built with ref share one
// limit and its pauses. leave must be called when the replica stops.
func JoinFleet(ctx context.Context, b *bus.Bus, ref *throttle.FleetRef) (leave func(), err error) {
	f, err := b.JoinFleet(ctx, FleetGroup)
	if err != nil {
		return func() {}, err
	}
	ref.Set(f)
	return f.Leave, nil
}

// ServeWorkers consumes jobs with w until ctx ends; then it finishes or
// hands back what is in flight and waits for the last results to be
// stored. m may be nil.
func ServeWorkers(ctx context.Context, b *bus.Bus, w *worker.Worker, log zerolog.Logger, m *bus.Metrics) error {
	return bus.Serve(ctx, b, w.Consumer(log, m))
}

// ServeWriteback consumes results with wr until ctx ends, applying the
// results of each ThreatQ indicator in the order they were answered (the
// order kept on b). m may be nil.
func ServeWriteback(ctx context.Context, b *bus.Bus, wr *writeback.Writer, log zerolog.Logger, m *bus.Metrics) error {
	wr.KeepOrder(b)
	return bus.Serve(ctx, b, wr.Consumer(log, m))
}

// Once is the whole pipeline in one process.
type Once struct {
	Bus     *bus.Bus
	Worker  *worker.Worker
	Writer  *writeback.Writer
	Log     zerolog.Logger
	Metrics *bus.Metrics // nil: none
}

// Outcome is what a run came to.
type Outcome struct {
	Record run.Record
	Tally  *run.Tally
}

// Failed reports whether the run should end with a non-zero exit: a job
// failed, a write-back could not be done, or publishing stopped early.
func (o Outcome) Failed() bool { return o.Tally == nil || o.Tally.Failed(o.Record) }

// Run publishes one run, works its jobs and writes its results back, and
// returns when every job has its result and every result is written back.
// The worker and write-back pools serve until Run returns.
func (o Once) Run(ctx context.Context, po run.Options, items iter.Seq[run.Item], fo run.FollowOptions) (Outcome, error) {
	pctx, stopPools := context.WithCancel(ctx)
	poolErr := make(chan error, 2)
	go func() { poolErr <- ServeWorkers(pctx, o.Bus, o.Worker, o.Log, o.Metrics) }()
	go func() { poolErr <- ServeWriteback(pctx, o.Bus, o.Writer, o.Log, o.Metrics) }()
	defer func() {
		stopPools()
		for range 2 {
			if err := <-poolErr; err != nil {
				o.Log.Error().Err(err).Msg("pool stopped with an error")
			}
		}
	}()

	// Follow from the start, beside publishing, so that publishing stays
	// only so far ahead of the answers: the jobs waiting in the embedded
	// server (and its memory) stay bounded, however large the run.
	if po.ID == "" {
		po.ID = run.NewID(time.Now())
	}
	var answered atomic.Int64
	po.Ahead, po.Answered = runAhead, answered.Load
	fo.WrittenBack, fo.Answered, fo.AwaitRecord = true, &answered, time.Minute
	if po.Latency == nil {
		po.Latency = run.NewLatency()
	}
	fo.Latency = po.Latency
	fctx, stopFollow := context.WithCancel(ctx)
	defer stopFollow()
	type followed struct {
		tally *run.Tally
		rec   run.Record
		err   error
	}
	done := make(chan followed, 1)
	go func() {
		tally, rec, err := run.Follow(fctx, o.Bus, po.ID, fo)
		done <- followed{tally, rec, err}
	}()

	var out Outcome
	rec, pubErr := run.Publish(ctx, o.Bus, po, items, o.Log)
	out.Record = rec
	if pubErr != nil && !rec.Published {
		// Nothing was recorded as published: there is nothing to follow
		// to its end.
		stopFollow()
		<-done
		return out, pubErr
	}
	f := <-done
	out.Tally, out.Record = f.tally, f.rec
	return out, errors.Join(pubErr, f.err)
}

// embeddedDuplicateWindow is the duplicate window of an embedded server's
// streams.
const embeddedDuplicateWindow = 3 * time.Minute

// runAhead is how many jobs a run in one process publishes ahead of their
// answers: plenty to keep any worker concurrency busy.
const runAhead = 4096

// Embedded starts a JetStream server in this process with its store under
// dir, and connects cfg to it without TCP. stop closes both.
func Embedded(ctx context.Context, dir string, cfg bus.Config, log zerolog.Logger) (b *bus.Bus, stop func(), err error) {
	srv, err := bus.StartEmbedded(bus.EmbeddedOptions{StoreDir: dir})
	if err != nil {
		return nil, nil, err
	}
	cfg.InProcess = srv
	if cfg.Limits == (bus.Limits{}) {
		// The server is this process's own: nothing to protect it from,
		// and no storage to reserve.
		cfg.Limits = bus.NoLimits
	}
	if cfg.DuplicateWindow == 0 {
		// The server keeps every message id of the window in memory;
		// within one process no redelivery comes later than the
		// executor's longest delay (2 minutes), so a shorter window keeps
		// a large run's memory flat at no cost to its promises.
		cfg.DuplicateWindow = embeddedDuplicateWindow
	}
	if b, err = bus.Connect(ctx, cfg, log); err != nil {
		srv.Shutdown()
		srv.WaitForShutdown()
		return nil, nil, err
	}
	return b, func() { b.Close(); srv.Shutdown(); srv.WaitForShutdown() }, nil
}
