// Package pipeline assembles the parts into what the command line runs: the
// Triage and ThreatQ clients from plain settings, a worker replica and a
// write-back replica on a bus, and Once, the whole flow in one process
// (publish, work, write back) that `run` and `demo` use and that returns
// only when what a user sees in ThreatQ is complete.
//
// It reads no flags and no environment: cmd/tqtriage does, and hands it
// settings.
package pipeline

import (
	"context"
	"errors"
	"fmt"
	"iter"
	"net/http"
	"time"

	"github.com/rs/zerolog"

	"github.com/tqtriage/tqtriage/bus"
	"github.com/tqtriage/tqtriage/internal/httpclient"
	"github.com/tqtriage/tqtriage/internal/retry"
	"github.com/tqtriage/tqtriage/internal/throttle"
	"github.com/tqtriage/tqtriage/message"
	"github.com/tqtriage/tqtriage/publish"
	"github.com/tqtriage/tqtriage/report"
	"github.com/tqtriage/tqtriage/threatq"
	"github.com/tqtriage/tqtriage/triage"
	"github.com/tqtriage/tqtriage/worker"
	"github.com/tqtriage/tqtriage/writeback"
)

// TriageSettings connect to Cofense Triage.
type TriageSettings struct {
	BaseURL, ClientID, ClientSecret string
	InsecureSkipVerify              bool   // TRIAGE_VERIFY_SSL=false
	CAFile                          string // an extra CA bundle
	RateLimit                       float64
}

// NewTriage returns a Triage client that does not retry by itself (the
// worker does) and whose requests are paced by a throttle of the settings'
// rate limit, which also pauses after every 429.
func NewTriage(ctx context.Context, s TriageSettings) (*triage.Client, *throttle.Throttle, error) {
	th := throttle.New(s.RateLimit)
	// The client keeps ctx for token renewals; a shutdown (ctx ending)
	// must not stop the renewals of jobs finishing in their grace period.
	c, err := triage.New(context.WithoutCancel(ctx), triage.Config{
		BaseURL: s.BaseURL, ClientID: s.ClientID, ClientSecret: s.ClientSecret,
		HTTP: httpclient.Options{
			InsecureSkipVerify: s.InsecureSkipVerify, CAFile: s.CAFile,
			Wrap: func(rt http.RoundTripper) http.RoundTripper { return th.Transport(rt) },
		},
	})
	if err != nil {
		return nil, nil, err
	}
	return c, th, nil
}

// ThreatQSettings connect to ThreatQ.
type ThreatQSettings struct {
	BaseURL, ClientID, ClientSecret string
	Email, Password                 string // the password grant, when set
	InsecureSkipVerify              bool
	CAFile                          string
	AttributeSource                 string
}

// NewThreatQ returns a ThreatQ client. Reading collections retries by
// itself with policy; write-back passes retry.None and retries itself.
func NewThreatQ(ctx context.Context, s ThreatQSettings, policy retry.Policy) (*threatq.Client, error) {
	return threatq.New(context.WithoutCancel(ctx), threatq.Config{ // as in NewTriage
		BaseURL: s.BaseURL, ClientID: s.ClientID, ClientSecret: s.ClientSecret,
		Email: s.Email, Password: s.Password, AttributeSource: s.AttributeSource,
		HTTP:  httpclient.Options{InsecureSkipVerify: s.InsecureSkipVerify, CAFile: s.CAFile},
		Retry: policy,
	})
}

// ServeWorkers consumes jobs with w, concurrency at a time, until ctx ends;
// then it finishes or hands back what is in flight and waits for the last
// results to be stored.
func ServeWorkers(ctx context.Context, b *bus.Bus, w *worker.Worker, concurrency int) error {
	err := b.Consume(ctx, bus.ConsumerWorkers, bus.ConsumeOptions{Concurrency: concurrency}, w.Handle)
	w.Wait()
	return err
}

// ServeWriteback consumes results with wr until ctx ends.
func ServeWriteback(ctx context.Context, b *bus.Bus, wr *writeback.Writer, concurrency int) error {
	return b.Consume(ctx, bus.ConsumerWriteback, bus.ConsumeOptions{Concurrency: concurrency}, wr.Handle)
}

// WaitWrittenBack returns once the write-back consumer has settled every
// result up to the results-stream sequence last: written, found empty, or
// dead-lettered. Whichever write-back replica took them.
func WaitWrittenBack(ctx context.Context, b *bus.Bus, last uint64) error {
	if last == 0 {
		return nil
	}
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	for {
		info, err := b.ConsumerInfo(ctx, bus.ConsumerWriteback)
		if err == nil && info.AckFloor.Stream >= last {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for write-back: %w", ctx.Err())
		case <-t.C:
		}
	}
}

// WritebackFailures returns the dead-lettered write-backs of run id.
func WritebackFailures(ctx context.Context, b *bus.Bus, id string) ([]bus.DeadLetter, error) {
	var out []bus.DeadLetter
	err := b.ListDLQ(ctx, message.DLQWriteback, func(d bus.DeadLetter) bool {
		if d.Header.Get(message.HeaderRunID) == id {
			out = append(out, d)
		}
		return true
	})
	return out, err
}

// Once is the whole pipeline in one process.
type Once struct {
	Bus                  *bus.Bus
	Worker               *worker.Worker
	Writer               *writeback.Writer
	WorkerConcurrency    int
	WritebackConcurrency int
	Log                  zerolog.Logger
}

// Outcome is what a run came to.
type Outcome struct {
	Run               bus.Run
	Tally             *report.Tally
	WritebackFailures []bus.DeadLetter
}

// Failed reports whether the run should end with a non-zero exit: a job
// failed, a write-back could not be done, or publishing stopped early.
func (o Outcome) Failed() bool {
	return o.Tally == nil || o.Tally.Count(message.StatusFailed) > 0 || len(o.WritebackFailures) > 0 || o.Run.Error != ""
}

// Run publishes one run, works its jobs and writes its results back, and
// returns when every job has its result and every result is written back.
// The worker and write-back pools serve until Run returns.
func (o Once) Run(ctx context.Context, po publish.Options, items iter.Seq[publish.Item], wo publish.WaitOptions) (Outcome, error) {
	pctx, stopPools := context.WithCancel(ctx)
	poolErr := make(chan error, 2)
	go func() { poolErr <- ServeWorkers(pctx, o.Bus, o.Worker, o.WorkerConcurrency) }()
	go func() { poolErr <- ServeWriteback(pctx, o.Bus, o.Writer, o.WritebackConcurrency) }()
	defer func() {
		stopPools()
		for range 2 {
			if err := <-poolErr; err != nil {
				o.Log.Error().Err(err).Msg("pool stopped with an error")
			}
		}
	}()

	var out Outcome
	run, err := publish.Publish(ctx, o.Bus, po, items, o.Log)
	out.Run = run
	if err != nil && run.ID == "" {
		return out, err
	}
	pubErr := err
	tally, run, err := publish.Wait(ctx, o.Bus, run.ID, wo)
	out.Tally, out.Run = tally, run
	if err != nil {
		return out, errors.Join(pubErr, err)
	}
	if err := WaitWrittenBack(ctx, o.Bus, tally.LastStreamSeq); err != nil {
		return out, errors.Join(pubErr, err)
	}
	out.WritebackFailures, err = WritebackFailures(ctx, o.Bus, run.ID)
	return out, errors.Join(pubErr, err)
}
