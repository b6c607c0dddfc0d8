package bus

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// apiError is a JetStream error in a publish acknowledgement.
type apiError struct {
	Code        int    `json:"code"`
	ErrCode     int    `json:"err_code"`
	Description string `json:"description"`
}

func (e *apiError) Error() string {
	return fmt.Sprintf("JetStream: %s (code %d, error %d)", e.Description, e.Code, e.ErrCode)
}

// pubAckError reads a raw publish acknowledgement and returns its error.
func pubAckError(data []byte) error {
	var ack struct {
		Error *apiError `json:"error"`
	}
	if err := json.Unmarshal(data, &ack); err != nil {
		return fmt.Errorf("unreadable publish acknowledgement %q: %w", data, err)
	}
	if ack.Error != nil {
		return ack.Error
	}
	return nil
}

func isWrongLastSequence(err error) bool {
	var ae *apiError
	if errors.As(err, &ae) {
		return ae.ErrCode == int(jetstream.JSErrCodeStreamWrongLastSequence) || ae.ErrCode == int(jetstream.JSErrCodeStreamWrongLastSequenceConstant)
	}
	var je jetstream.JetStreamError
	if errors.As(err, &je) && je.APIError() != nil {
		c := je.APIError().ErrorCode
		return c == jetstream.JSErrCodeStreamWrongLastSequence || c == jetstream.JSErrCodeStreamWrongLastSequenceConstant
	}
	return false
}

// Publish stores one message and waits for the stream's acknowledgement.
// msgID, when set, is its Nats-Msg-Id.
func (b *Bus) Publish(ctx context.Context, subject, msgID string, data []byte, hdr nats.Header) (*jetstream.PubAck, error) {
	m := &nats.Msg{Subject: subject, Data: data, Header: hdr}
	var opts []jetstream.PublishOpt
	if msgID != "" {
		opts = append(opts, jetstream.WithMsgID(msgID))
	}
	ack, err := b.js.PublishMsg(ctx, m, opts...)
	if err != nil {
		return nil, fmt.Errorf("publish to %s: %w", subject, err)
	}
	return ack, nil
}

// PublishAsync stores one message without waiting; the future tells the
// outcome and must be checked (a missing acknowledgement is a lost
// message). The number in flight is bounded by the connection's settings:
// PublishAsync blocks while too many are pending.
func (b *Bus) PublishAsync(subject, msgID string, data []byte, hdr nats.Header) (jetstream.PubAckFuture, error) {
	m := &nats.Msg{Subject: subject, Data: data, Header: hdr}
	var opts []jetstream.PublishOpt
	if msgID != "" {
		opts = append(opts, jetstream.WithMsgID(msgID))
	}
	f, err := b.js.PublishMsgAsync(m, opts...)
	if err != nil {
		return nil, fmt.Errorf("publish to %s: %w", subject, err)
	}
	return f, nil
}

// PublishAsyncComplete is closed when every asynchronous publish so far is
// acknowledged or failed.
func (b *Bus) PublishAsyncComplete() <-chan struct{} { return b.js.PublishAsyncComplete() }
