package bus

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/tqtriage/tqtriage/internal/retry"
)

// Defaults of a Consumer's fields left zero.
const (
	DefaultConcurrency = 16
	DefaultGrace       = 25 * time.Second
)

// Consumer is one handler on a durable consumer, and how its deliveries
// are settled. The handler sees data (a parsed job or result), never
// JetStream, and returns an Outcome; Serve alone acknowledges, delays or
// dead-letters.
type Consumer[T any] struct {
	// Durable is ConsumerWorkers or ConsumerWriteback.
	Durable string
	// Decode parses a delivered message. What it refuses is dead-lettered
	// on Undecodable with its error as the reason, and acknowledged: never
	// retried, never dropped silently.
	Decode      func(subject string, data []byte) (T, error)
	Undecodable string
	// Handle works on one message. Its context carries a logger with the
	// delivery's fields (zerolog.Ctx), and ends only when the grace
	// period after a shutdown runs out.
	Handle func(ctx context.Context, v T, a Attempt) Outcome
	// GiveUp is the outcome of a message whose retries ran out or whose
	// failure cannot pass, reason saying why: typically DeadLettered.
	GiveUp func(v T, a Attempt, reason string) Outcome
	// LogFields adds a message's identity to its log lines.
	LogFields func(v T, c zerolog.Context) zerolog.Context

	// MaxDeliver is how many counted deliveries a message gets (required).
	MaxDeliver int
	// RedeliveryDelay is the wait before a retry; it doubles with each
	// counted delivery up to MaxRedeliveryDelay (both required). A
	// server's longer Retry-After wins.
	RedeliveryDelay, MaxRedeliveryDelay time.Duration
	// Concurrency is the number of handlers at once (default
	// DefaultConcurrency). The client buffers about as many messages, so
	// that the ack-wait clock of a message does not run in a deep buffer.
	Concurrency int
	// Grace is how long handlers in flight may take to finish once Serve
	// is told to stop (default DefaultGrace); then their context ends.
	Grace time.Duration
	// Gate, when set, holds the pulling while the replica cannot work
	// (nil: never held).
	Gate Gate

	Log     zerolog.Logger
	Metrics *Metrics // nil: none
}

// Gate says when a replica may take work (internal/gate.Gate is one).
// The executor waits on it before it pulls. While it is closed (the
// replica's credentials refused, a rate limit's pause), the executor pulls
// nothing and hands back, uncounted, what the client had buffered; the
// handlers in flight run on.
type Gate interface {
	// Wait returns once the replica may take work, with a channel that
	// is closed when it may no longer; or ctx's error.
	Wait(ctx context.Context) (<-chan struct{}, error)
}

// Serve runs c on its durable consumer until ctx ends. Then it stops
// pulling, hands back what the client had buffered but not started, waits
// for the handlers in flight (cancelling them after the grace period) and
// for the acknowledgements that wait on their publications, and returns.
// Nothing is lost: a message not acknowledged is delivered again.
func Serve[T any](ctx context.Context, b *Bus, c Consumer[T]) error {
	if c.Decode == nil || c.Handle == nil || c.GiveUp == nil || c.Undecodable == "" {
		return errors.New("serve: a consumer needs Decode, Handle, GiveUp and Undecodable")
	}
	if c.MaxDeliver <= 0 || c.RedeliveryDelay <= 0 || c.MaxRedeliveryDelay <= 0 {
		return errors.New("serve: a consumer needs MaxDeliver, RedeliveryDelay and MaxRedeliveryDelay")
	}
	if c.Concurrency <= 0 {
		c.Concurrency = DefaultConcurrency
	}
	if c.Grace <= 0 {
		c.Grace = DefaultGrace
	}
	s, err := b.durableStream(c.Durable)
	if err != nil {
		return err
	}
	cons, err := s.Consumer(ctx, c.Durable)
	if err != nil {
		return fmt.Errorf("consumer %s: %w", c.Durable, err)
	}
	// The heartbeat derives from the consumer's own ack deadline, so the
	// two can never disagree.
	ackWait := cons.CachedInfo().Config.AckWait
	if ackWait <= 0 {
		ackWait = DefaultAckWait
	}
	e := &executor[T]{b: b, c: c, every: ackWait / 3, log: c.Log.With().Str("consumer", c.Durable).Logger()}
	err = e.pool(ctx, cons)
	e.pending.Wait()
	return err
}

// executor settles the deliveries of one consumer.
type executor[T any] struct {
	b     *Bus
	c     Consumer[T]
	every time.Duration // heartbeat interval
	log   zerolog.Logger

	// pending counts acknowledgements waiting on publications, so that
	// Serve does not return (and the connection close) under them.
	pending sync.WaitGroup
}

// pool pulls messages and runs handlers, Concurrency at a time, while
// the gate (if any) lets it.
func (e *executor[T]) pool(ctx context.Context, cons jetstream.Consumer) error {
	// Handlers get their own context: a shutdown lets them finish what
	// they started, within the grace period.
	hctx, hcancel := context.WithCancel(context.WithoutCancel(ctx))
	defer hcancel()
	stopped := make(chan struct{})
	go func() {
		select {
		case <-ctx.Done():
			select {
			case <-time.After(e.c.Grace):
				e.log.Warn().Dur("grace", e.c.Grace).Msg("grace period over; cancelling the messages in flight")
				hcancel()
			case <-stopped:
			}
		case <-stopped:
		}
	}()
	defer close(stopped)

	// Concurrency handlers, each a goroutine that lives as long as the
	// pool: a goroutine a message would grow its stack again for every
	// one (JSON, HTTP), ~5% of a run's CPU.
	slots := make(chan struct{}, e.c.Concurrency)
	work := make(chan jetstream.Msg)
	var wg sync.WaitGroup
	defer wg.Wait()
	defer close(work)
	for range e.c.Concurrency {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for m := range work {
				e.deliver(hctx, m)
				<-slots
			}
		}()
	}
	for {
		var held <-chan struct{} // never closed without a gate
		if e.c.Gate != nil {
			var err error
			if held, err = e.c.Gate.Wait(ctx); err != nil {
				return nil // stopped while held: nothing pulled
			}
		}
		if err := e.pull(ctx, hctx, cons, held, slots, work); err != nil || ctx.Err() != nil {
			return err
		}
		e.log.Info().Msg("stopped taking messages until the replica can work again; those buffered were handed back")
	}
}

// pull takes messages until ctx ends or held is closed; then it hands
// back, uncounted, what the client had buffered and returns nil.
func (e *executor[T]) pull(ctx, hctx context.Context, cons jetstream.Consumer, held <-chan struct{}, slots chan struct{}, work chan<- jetstream.Msg) error {
	it, err := cons.Messages(jetstream.PullMaxMessages(e.c.Concurrency), jetstream.WithMessagesErrOnMissingHeartbeat(false))
	if err != nil {
		return fmt.Errorf("consume %s: %w", e.c.Durable, err)
	}
	draining := make(chan struct{})
	done := make(chan struct{})
	defer close(done)
	go func() {
		select {
		case <-ctx.Done():
		case <-held:
		case <-done:
			it.Stop()
			return
		}
		// Stop pulling; Next gives what was buffered, then says closed.
		// draining is closed first, so that the loop never reads the
		// end of a drained iterator as a failure.
		close(draining)
		it.Drain()
	}()
	var back []jetstream.Msg // buffered, not started: handed back once the iterator is closed
	for {
		// Take a slot before pulling, so a message is only taken from
		// the buffer when a handler is free for it; once draining, take
		// the rest without one, so that none waits for a handler (and
		// its ack wait runs out) before it is handed back.
		select {
		case slots <- struct{}{}:
		case <-draining:
			return e.handBack(hctx, it, back)
		}
		m, err := it.Next()
		if err != nil {
			<-slots
			switch {
			case errors.Is(err, jetstream.ErrMsgIteratorClosed) && isClosed(draining):
				return e.handBack(hctx, it, back)
			case errors.Is(err, jetstream.ErrMsgIteratorClosed):
				return fmt.Errorf("consume %s: iterator closed", e.c.Durable)
			case errors.Is(err, jetstream.ErrNoHeartbeat):
				continue
			}
			return fmt.Errorf("consume %s: %w", e.c.Durable, err)
		}
		if isClosed(draining) {
			back = append(back, m)
			<-slots
			continue
		}
		work <- m // a handler is free, or about to be: the slot says so
	}
}

// handBack takes what a draining iterator still holds and hands it back,
// with back, uncounted, so that another replica takes it now rather than
// after its ack wait. Only once the iterator is closed (its subscription
// gone from the server): a message handed back earlier could be sent
// again at once to the subscription on its way out, and be lost there,
// to come back after its ack wait as a counted delivery.
func (e *executor[T]) handBack(ctx context.Context, it jetstream.MessagesContext, back []jetstream.Msg) error {
	for {
		m, err := it.Next()
		switch {
		case err == nil:
			back = append(back, m)
			continue
		case errors.Is(err, jetstream.ErrNoHeartbeat):
			continue
		}
		for _, m := range back {
			e.settle(ctx, &delivery[T]{m: m, log: e.log}, HandBack())
		}
		if errors.Is(err, jetstream.ErrMsgIteratorClosed) {
			return nil
		}
		return fmt.Errorf("consume %s: %w", e.c.Durable, err)
	}
}

func isClosed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// deliver works on one message and settles it.
func (e *executor[T]) deliver(ctx context.Context, m jetstream.Msg) {
	start := time.Now()
	md, err := m.Metadata()
	if err != nil {
		// Not a JetStream message: nothing to acknowledge.
		e.log.Error().Err(err).Str("subject", m.Subject()).Msg("message without JetStream metadata ignored")
		return
	}
	if e.c.Metrics != nil {
		e.c.Metrics.working(e.c.Durable, 1)
		defer e.c.Metrics.working(e.c.Durable, -1)
	}
	d := &delivery[T]{m: m, md: md, log: e.log}
	d.a = Attempt{N: e.b.countedDeliveries(ctx, e.c.Durable, md), Max: e.c.MaxDeliver, Subject: m.Subject(), Seq: md.Sequence.Stream, Stored: md.Timestamp}
	d.log = e.log.With().Uint64("stream_seq", d.a.Seq).Int("attempt", d.a.N).Logger()

	// The ack deadline runs while the handler waits on a remote service:
	// report progress so the server does not give the message to another
	// replica meanwhile.
	hb := newHeartbeat(m, e.every)
	out := e.decide(ctx, d)
	hb.stop()

	e.settle(ctx, d, out)
	if e.c.Metrics != nil {
		e.c.Metrics.observe(e.c.Durable, out, time.Since(start))
	}
}

// delivery is one message in the executor's hands.
type delivery[T any] struct {
	m       jetstream.Msg
	md      *jetstream.MsgMetadata // nil: handed back unseen while draining
	a       Attempt
	v       T
	decoded bool
	log     zerolog.Logger
	// final: the outcome being settled is already the answer to a
	// failure to store an earlier one; a second failure dead-letters
	// the message alone.
	final bool
}

// giveUp is the outcome of a delivery whose answer cannot be had.
func (e *executor[T]) giveUp(d *delivery[T], reason string) Outcome {
	if !d.decoded {
		return DeadLettered(e.c.Undecodable, "", reason)
	}
	return e.c.GiveUp(d.v, d.a, reason)
}

// decide decodes and handles one delivery, and resolves an Err into a
// retry or a give-up. A panic anywhere in it is an error like any other:
// retried, then given up, never a lost message or a dead replica.
func (e *executor[T]) decide(ctx context.Context, d *delivery[T]) (out Outcome) {
	defer func() {
		if p := recover(); p != nil {
			d.log.Error().Interface("panic", p).Msg("handler panicked; the message will be delivered again")
			out = retryAfter(e.delay(d.a.N), fmt.Errorf("handler panicked: %v", p))
		}
	}()
	v, err := e.c.Decode(d.m.Subject(), d.m.Data())
	if err != nil {
		return DeadLettered(e.c.Undecodable, "", err.Error())
	}
	d.v, d.decoded = v, true
	if e.c.LogFields != nil {
		d.log = e.c.LogFields(v, d.log.With()).Logger()
	}
	a := d.a
	if a.N > a.Max {
		// Delivered past the limit without an answer (a replica died on
		// it each time): stop here rather than try again.
		return e.c.GiveUp(v, a, fmt.Sprintf("delivered %d times without an answer (limit %d)", a.N, a.Max))
	}
	out = e.handle(d.log.WithContext(ctx), v, a, &d.log)
	if out.kind != KindError {
		return out
	}
	return e.resolve(ctx, v, a, out.err)
}

// handle runs the handler, turning a panic into a retryable error.
func (e *executor[T]) handle(ctx context.Context, v T, a Attempt, log *zerolog.Logger) (out Outcome) {
	defer func() {
		if p := recover(); p != nil {
			log.Error().Interface("panic", p).Msg("handler panicked")
			out = Err(panicError{p})
		}
	}()
	return e.c.Handle(ctx, v, a)
}

type panicError struct{ v any }

func (p panicError) Error() string   { return fmt.Sprintf("handler panicked: %v", p.v) }
func (p panicError) Retryable() bool { return true }

// resolve decides the fate of a failure: the one place that tells a retry
// from a give-up.
func (e *executor[T]) resolve(ctx context.Context, v T, a Attempt, err error) Outcome {
	switch {
	case ctx.Err() != nil:
		// Shutting down and out of grace: the work was cut short, not
		// failed.
		return HandBack()
	case !retry.IsRetryable(err):
		return e.c.GiveUp(v, a, err.Error())
	case a.Last():
		return e.c.GiveUp(v, a, fmt.Sprintf("gave up after %d deliveries: %v", a.N, err))
	}
	d := e.delay(a.N)
	if after, ok := retry.RetryAfter(err); ok && after > d {
		d = after
	}
	return retryAfter(d, err)
}

func (e *executor[T]) delay(n int) time.Duration {
	return retry.Doubling(e.c.RedeliveryDelay, e.c.MaxRedeliveryDelay, n)
}

// settle carries out an outcome. It is the only function in the program
// that acknowledges, delays, hands back or dead-letters a consumed message.
// The order keeps "exactly one result per job, nothing lost": a dead letter
// is stored before the publications, the publications before the
// acknowledgement, and whatever cannot be stored for now leaves the message
// unacknowledged for a counted redelivery. What can never be stored (a
// publication the server refuses for good) is final: the message's answer
// becomes its give-up, and if that cannot be stored either, the message is
// dead-lettered alone and acknowledged. Nothing loops forever.
func (e *executor[T]) settle(ctx context.Context, d *delivery[T], out Outcome) {
	m, log := d.m, d.log
	switch out.kind {
	case KindHandBack:
		e.b.markUncounted(ctx, e.c.Durable, m, d.md)
		_ = m.Nak()
		return
	case KindSnooze:
		e.b.markUncounted(ctx, e.c.Durable, m, d.md)
		log.Info().Str("reason", out.reason).Dur("redeliver_in", out.delay).Msg("message snoozed; this delivery does not count")
		e.nak(d, out.delay)
		return
	case KindRetry:
		log.Warn().Err(out.err).Dur("redeliver_in", out.delay).Msg("message will be delivered again")
		e.nak(d, out.delay)
		return
	case KindDeadLetter:
		if err := e.b.storeDeadLetter(ctx, m, d.md, out.dlq, out.runID, out.reason); err != nil {
			log.Error().Err(err).Msg("could not store the dead letter; the message will be delivered again")
			e.nak(d, e.delay(d.a.N))
			return
		}
		log.Error().Str("reason", out.reason).Str("dead_letter", out.dlq).Msg("message dead-lettered")
	case KindDone:
		log.Debug().Str("outcome", out.label).Msg("message done")
	default:
		log.Error().Stringer("kind", out.kind).Msg("unknown outcome; the message will be delivered again")
		e.nak(d, e.delay(d.a.N))
		return
	}
	e.publishThenAck(ctx, d, out.pubs)
}

func (e *executor[T]) nak(d *delivery[T], after time.Duration) {
	if err := d.m.NakWithDelay(after); err != nil {
		d.log.Warn().Err(err).Msg("could not delay the message; it returns after the ack wait")
	}
}

// publishThenAck stores pubs and acknowledges the message once the stream
// has them all. The handler's slot is free meanwhile: the acknowledgement
// waits off it (worth ~10% of throughput).
func (e *executor[T]) publishThenAck(ctx context.Context, d *delivery[T], pubs []Publication) {
	futures := make([]jetstream.PubAckFuture, 0, len(pubs))
	for _, p := range pubs {
		f, err := e.b.publishAsync(p)
		if err != nil {
			e.publishFailed(ctx, d, p, err)
			return
		}
		futures = append(futures, f)
	}
	if len(futures) == 0 {
		ack(d.m, d.log)
		return
	}
	e.pending.Add(1)
	go func() {
		defer e.pending.Done()
		for i, f := range futures {
			select {
			case <-f.Ok():
			case err := <-f.Err():
				e.publishFailed(ctx, d, pubs[i], err)
				return
			}
		}
		ack(d.m, d.log)
	}()
}

// publishFailed settles a delivery whose publication p was not stored.
func (e *executor[T]) publishFailed(ctx context.Context, d *delivery[T], p Publication, err error) {
	if !Permanent(err) {
		d.log.Error().Err(err).Str("subject", p.Subject).Msg("a publication was not stored; the message will be delivered again")
		e.nak(d, e.delay(d.a.N))
		return
	}
	reason := fmt.Sprintf("the answer could not be stored on %s: %v", p.Subject, err)
	d.log.Error().Err(err).Str("subject", p.Subject).Msg("a publication was refused for good")
	if d.final {
		// Even the give-up could not be stored: keep the message itself.
		e.settle(ctx, d, DeadLettered(e.c.Undecodable, "", reason))
		return
	}
	d.final = true
	e.settle(ctx, d, e.giveUp(d, reason))
}

func ack(m jetstream.Msg, log zerolog.Logger) {
	if err := m.Ack(); err != nil {
		log.Warn().Err(err).Msg("could not acknowledge; a redelivery repeats its stored publications harmlessly")
	}
}

// heartbeat tells the server a message is still being worked on, every
// interval, until stopped.
type heartbeat struct {
	mu      sync.Mutex
	t       *time.Timer
	stopped bool
}

func newHeartbeat(m jetstream.Msg, every time.Duration) *heartbeat {
	h := &heartbeat{}
	h.mu.Lock() // the timer may fire before h.t is stored
	defer h.mu.Unlock()
	h.t = time.AfterFunc(every, func() {
		_ = m.InProgress()
		h.mu.Lock()
		defer h.mu.Unlock()
		if !h.stopped {
			h.t.Reset(every)
		}
	})
	return h
}

func (h *heartbeat) stop() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.stopped = true
	h.t.Stop()
}

// durableStream is the stream of one of the durable consumers.
func (b *Bus) durableStream(durable string) (jetstream.Stream, error) {
	var s jetstream.Stream
	switch durable {
	case ConsumerWorkers:
		s = b.jobs
	case ConsumerWriteback:
		s = b.results
	default:
		return nil, fmt.Errorf("unknown consumer %q", durable)
	}
	if s == nil {
		return nil, fmt.Errorf("consumer %s: its stream is not opened by role %s", durable, b.cfg.Role)
	}
	return s, nil
}

// ConsumerState is what JetStream says of a durable consumer.
type ConsumerState struct {
	Pending    uint64        // stored messages not yet delivered
	AckPending int           // delivered, not yet acknowledged
	AckWait    time.Duration // its ack deadline
	MaxDeliver int           // its server-side delivery limit (-1: none)
}

// ConsumerState reads the state of a durable consumer.
func (b *Bus) ConsumerState(ctx context.Context, durable string) (ConsumerState, error) {
	s, err := b.durableStream(durable)
	if err != nil {
		return ConsumerState{}, err
	}
	// Looking the consumer up fetches its info: one request, not two.
	c, err := s.Consumer(ctx, durable)
	if err != nil {
		return ConsumerState{}, fmt.Errorf("consumer %s: %w", durable, err)
	}
	info := c.CachedInfo()
	return ConsumerState{
		Pending: info.NumPending, AckPending: info.NumAckPending,
		AckWait: info.Config.AckWait, MaxDeliver: info.Config.MaxDeliver,
	}, nil
}
