package bus

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Handler works on one message and settles it (Ack, NakWithDelay, Term)
// itself. Its context ends only when the grace period after a shutdown
// runs out.
type Handler func(ctx context.Context, m jetstream.Msg)

// ConsumeOptions shape a consuming pool.
type ConsumeOptions struct {
	// Concurrency is the number of handlers at once (default 16). The
	// client buffers about as many messages, so that the ack-wait clock
	// of a message does not run while it waits in a deep buffer.
	Concurrency int
	// Grace is how long in-flight handlers may take to finish once the
	// pool is told to stop (default 25s); then their context is cancelled.
	Grace time.Duration
}

// Consume runs h on the messages of a durable consumer (ConsumerWorkers or
// ConsumerWriteback) until ctx ends. Then it stops pulling, hands back with
// a Nak what the client had buffered but not started, waits for the
// handlers in flight (cancelling them after the grace period) and returns.
// Nothing is lost: a message not acknowledged is redelivered.
func (b *Bus) Consume(ctx context.Context, durable string, o ConsumeOptions, h Handler) error {
	if o.Concurrency <= 0 {
		o.Concurrency = 16
	}
	if o.Grace <= 0 {
		o.Grace = 25 * time.Second
	}
	s, err := b.durableStream(durable)
	if err != nil {
		return err
	}
	cons, err := s.Consumer(ctx, durable)
	if err != nil {
		return fmt.Errorf("consumer %s: %w", durable, err)
	}
	it, err := cons.Messages(jetstream.PullMaxMessages(o.Concurrency), jetstream.WithMessagesErrOnMissingHeartbeat(false))
	if err != nil {
		return fmt.Errorf("consume %s: %w", durable, err)
	}

	// Handlers get their own context: a shutdown lets them finish what
	// they started, within the grace period.
	hctx, hcancel := context.WithCancel(context.WithoutCancel(ctx))
	defer hcancel()
	stopped := make(chan struct{})
	go func() {
		select {
		case <-ctx.Done():
			it.Drain()
			select {
			case <-time.After(o.Grace):
				b.log.Warn().Str("consumer", durable).Dur("grace", o.Grace).Msg("grace period over; cancelling jobs in flight")
				hcancel()
			case <-stopped:
			}
		case <-stopped:
		}
	}()
	defer close(stopped)

	slots := make(chan struct{}, o.Concurrency)
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		// Take a slot before pulling, so a message is only taken from
		// the buffer when a handler is free for it.
		slots <- struct{}{}
		m, err := it.Next()
		if err != nil {
			<-slots
			if errors.Is(err, jetstream.ErrMsgIteratorClosed) {
				if ctx.Err() != nil {
					return nil
				}
				return fmt.Errorf("consume %s: iterator closed", durable)
			}
			if errors.Is(err, jetstream.ErrNoHeartbeat) {
				continue
			}
			return fmt.Errorf("consume %s: %w", durable, err)
		}
		if ctx.Err() != nil {
			// Draining: this one was buffered, not started. Hand it
			// back so another replica takes it now, not after ack-wait.
			_ = m.Nak()
			<-slots
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-slots }()
			h(hctx, m)
		}()
	}
}

// ConsumerInfo returns the state of a durable consumer.
func (b *Bus) ConsumerInfo(ctx context.Context, durable string) (*jetstream.ConsumerInfo, error) {
	s, err := b.durableStream(durable)
	if err != nil {
		return nil, err
	}
	c, err := s.Consumer(ctx, durable)
	if err != nil {
		return nil, fmt.Errorf("consumer %s: %w", durable, err)
	}
	return c.Info(ctx)
}

// durableStream is the stream of one of the durable consumers.
func (b *Bus) durableStream(durable string) (jetstream.Stream, error) {
	switch durable {
	case ConsumerWorkers:
		return b.jobs, nil
	case ConsumerWriteback:
		return b.results, nil
	}
	return nil, fmt.Errorf("unknown consumer %q", durable)
}
