package bus

import (
	"context"
	"errors"
	"fmt"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// PubAck is a stream's acknowledgement of a stored message.
type PubAck struct {
	Seq       uint64 // its stream sequence
	Duplicate bool   // dropped as a repeat of its Nats-Msg-Id
}

// Future is the acknowledgement of an asynchronous publish, to come.
type Future interface {
	// Wait returns the acknowledgement or the failure, or ctx's error.
	Wait(ctx context.Context) (PubAck, error)
}

// Publish stores one message and waits for the stream's acknowledgement.
func (b *Bus) Publish(ctx context.Context, p Publication) (PubAck, error) {
	return b.publish(ctx, p, nil)
}

func (b *Bus) publish(ctx context.Context, p Publication, hdr nats.Header) (PubAck, error) {
	m := &nats.Msg{Subject: p.Subject, Data: p.Data, Header: hdr}
	var opts []jetstream.PublishOpt
	if p.MsgID != "" {
		opts = append(opts, jetstream.WithMsgID(p.MsgID))
	}
	ack, err := b.js.PublishMsg(ctx, m, opts...)
	if err != nil {
		return PubAck{}, fmt.Errorf("publish to %s: %w", p.Subject, transient(err))
	}
	return PubAck{Seq: ack.Sequence, Duplicate: ack.Duplicate}, nil
}

// PublishAsync stores one message without waiting; the future tells the
// outcome and must be checked (a missing acknowledgement is a lost
// message). The number in flight is bounded by the connection's settings:
// PublishAsync blocks while too many are pending.
func (b *Bus) PublishAsync(p Publication) (Future, error) {
	f, err := b.publishAsync(p)
	if err != nil {
		return nil, err
	}
	return future{f}, nil
}

func (b *Bus) publishAsync(p Publication) (jetstream.PubAckFuture, error) {
	m := &nats.Msg{Subject: p.Subject, Data: p.Data}
	var opts []jetstream.PublishOpt
	if p.MsgID != "" {
		opts = append(opts, jetstream.WithMsgID(p.MsgID))
	}
	f, err := b.js.PublishMsgAsync(m, opts...)
	if err != nil {
		return nil, fmt.Errorf("publish to %s: %w", p.Subject, transient(err))
	}
	return f, nil
}

type future struct{ f jetstream.PubAckFuture }

func (f future) Wait(ctx context.Context) (PubAck, error) {
	select {
	case a := <-f.f.Ok():
		return PubAck{Seq: a.Sequence, Duplicate: a.Duplicate}, nil
	case err := <-f.f.Err():
		return PubAck{}, fmt.Errorf("publish to %s: %w", f.f.Msg().Subject, transient(err))
	case <-ctx.Done():
		return PubAck{}, ctx.Err()
	}
}

// PublishAsyncComplete is closed when every asynchronous publish so far is
// acknowledged or failed.
func (b *Bus) PublishAsyncComplete() <-chan struct{} { return b.js.PublishAsyncComplete() }

// transientError marks a failure of the bus (a timeout, a lost connection)
// as worth another try: the message's own fate is not decided by it.
type transientError struct{ error }

func (transientError) Retryable() bool { return true }
func (e transientError) Unwrap() error { return e.error }

func transient(err error) error {
	if err == nil || errors.Is(err, context.Canceled) {
		return err
	}
	return transientError{err}
}

func isWrongLastSequence(err error) bool {
	var je jetstream.JetStreamError
	if errors.As(err, &je) && je.APIError() != nil {
		c := je.APIError().ErrorCode
		return c == jetstream.JSErrCodeStreamWrongLastSequence || c == jetstream.JSErrCodeStreamWrongLastSequenceConstant
	}
	return false
}
