package bus

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

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
	if err := checkSubject(p.Subject); err != nil {
		return PubAck{}, fmt.Errorf("publish: %w", err)
	}
	m := &nats.Msg{Subject: p.Subject, Data: p.Data, Header: hdr}
	var opts []jetstream.PublishOpt
	if p.MsgID != "" {
		opts = append(opts, jetstream.WithMsgID(p.MsgID))
	}
	since := time.Now()
	ack, err := b.js.PublishMsg(ctx, m, opts...)
	if err != nil {
		if v := b.refusals.since(since); v != "" {
			return PubAck{}, fmt.Errorf("publish to %s: NATS refused this user: %s", p.Subject, strings.TrimPrefix(v, "nats: "))
		}
		return PubAck{}, fmt.Errorf("publish to %s: %w", p.Subject, requestFailed(ctx, err))
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
	if err := checkSubject(p.Subject); err != nil {
		return nil, fmt.Errorf("publish: %w", err)
	}
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

// transientError marks a failure of the bus (a timeout, a lost connection)
// as worth another try: the message's own fate is not decided by it.
type transientError struct{ error }

func (transientError) Retryable() bool { return true }
func (e transientError) Unwrap() error { return e.error }

// requestFailed is transient(err) for a request to NATS made under the
// caller's ctx. A request NATS does not answer in time ends in
// context.DeadlineExceeded whether the deadline was the caller's or the
// client's own (nats.go gives a request without one 5 s): left in the
// chain, the client's would read as the caller having ended, which is
// never retried, and the message would be dead-lettered on its first
// delivery. Seen in a container test: a NATS node stopped, the write-back
// order entry of one indicator not stored in time, its result
// dead-lettered. While the caller's ctx has not ended, the deadline is
// not the caller's: the error keeps its text, not its identity.
func requestFailed(ctx context.Context, err error) error {
	if errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil {
		err = fmt.Errorf("%s (no answer from NATS in time)", err)
	}
	return transient(err)
}

func transient(err error) error {
	if err == nil || errors.Is(err, context.Canceled) || Permanent(err) {
		return err
	}
	return transientError{err}
}

// Permanent reports a publish failure that no retry can cure: a subject
// the server refuses, a message over its maximum size.
func Permanent(err error) bool {
	if errors.Is(err, nats.ErrMaxPayload) || errors.Is(err, nats.ErrBadSubject) || errors.Is(err, nats.ErrBadHeaderMsg) || errors.Is(err, errSubjectTooLong) {
		return true
	}
	a := apiError(err)
	return a != nil && a.ErrorCode == jetstream.JSErrCodeStreamMessageExceedsMaximum
}

// apiError is the stream's own answer in err, if err holds one.
func apiError(err error) *jetstream.APIError {
	var je jetstream.JetStreamError
	if errors.As(err, &je) {
		return je.APIError()
	}
	return nil
}

// maxSubjectBytes bounds the subjects this program publishes on. The
// server closes the connection of a client whose control line (subject
// and reply) is over its limit (4 KiB by default); every subject here is
// made of validated parts and far shorter, so a longer one is a bug,
// refused before it can cost the connection.
const maxSubjectBytes = 512

var errSubjectTooLong = fmt.Errorf("subject longer than %d bytes", maxSubjectBytes)

func checkSubject(s string) error {
	if len(s) > maxSubjectBytes {
		return errSubjectTooLong
	}
	return nil
}

func isWrongLastSequence(err error) bool {
	a := apiError(err)
	return a != nil && (a.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence || a.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant)
}
