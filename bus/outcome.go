package bus

import (
	"fmt"
	"time"
)

// Attempt is what a handler knows of a delivery besides its data.
type Attempt struct {
	// N counts the deliveries of the message that count, this one
	// included: 1 on the first. Deliveries that were snoozed or handed
	// back (a rate limit, a shutdown) do not count.
	N int
	// Max is the consumer's limit: a retryable failure on delivery Max is
	// given up, and a delivery beyond it is given up unseen.
	Max int
	// Subject and Seq say where the message is stored, and Stored when
	// (the stream's timestamp; zero when unknown).
	Subject string
	Seq     uint64
	Stored  time.Time
}

// Last reports whether this is the last delivery a retry may have.
func (a Attempt) Last() bool { return a.N >= a.Max }

// Publication is a message to store: an outcome's result or receipt, a job.
type Publication struct {
	Subject string
	// MsgID is its Nats-Msg-Id: a repeat within the stream's duplicate
	// window is dropped.
	MsgID string
	Data  []byte
}

// Kind is what an outcome does with its delivery.
type Kind uint8

// The kinds of outcome.
const (
	KindDone       Kind = iota + 1 // store the publications, then acknowledge
	KindError                      // the executor decides: retry later, or give up
	KindRetry                      // deliver again after a delay; the delivery counts
	KindSnooze                     // deliver again after a delay; the delivery does not count
	KindDeadLetter                 // store the delivery as a dead letter, then the publications, then acknowledge
	KindHandBack                   // deliver again now, elsewhere; the delivery does not count
)

var kindNames = [...]string{KindDone: "done", KindError: "error", KindRetry: "retry", KindSnooze: "snooze", KindDeadLetter: "dead letter", KindHandBack: "hand back"}

func (k Kind) String() string {
	if int(k) < len(kindNames) && kindNames[k] != "" {
		return kindNames[k]
	}
	return fmt.Sprintf("kind(%d)", k)
}

// Outcome is what a handler decided for one delivery. Handlers return one;
// only the executor acts on it, so that acknowledging, delaying and
// dead-lettering happen in one place, in the order that keeps exactly one
// result per job.
type Outcome struct {
	kind   Kind
	pubs   []Publication
	err    error
	delay  time.Duration
	dlq    string // KindDeadLetter: the dead-letter subject
	runID  string // KindDeadLetter: the run, for the dead letter's header
	reason string // KindDeadLetter, KindSnooze: why
	label  string // KindDone: the metrics label (a result status, "written", …)
}

// Done stores pubs (in order, each acknowledged by its stream), then
// acknowledges the delivery. label names the outcome in metrics.
func Done(label string, pubs ...Publication) Outcome {
	return Outcome{kind: KindDone, pubs: pubs, label: label}
}

// Err reports a failure. The executor decides its fate in one place: a
// cancelled handler hands the delivery back; an error that says it is
// retryable (internal/retry.IsRetryable) is delivered again after a growing
// delay, or after the server's Retry-After when it is longer, until the
// consumer's delivery limit; anything else, and a retryable error on the
// last delivery, is given up (the consumer's GiveUp).
func Err(err error) Outcome { return Outcome{kind: KindError, err: err} }

// Snooze delivers the message again after d without counting this
// delivery: the failure was the replica's condition (a rate limit, refused
// credentials), not the message's.
func Snooze(d time.Duration, why string) Outcome {
	return Outcome{kind: KindSnooze, delay: d, reason: why}
}

// DeadLettered stores the delivery, byte for byte, on the dead-letter subject
// with reason (and runID, when known) in its headers; then stores pubs;
// then acknowledges. What cannot be stored leaves the delivery for another
// try.
func DeadLettered(subject, runID, reason string, pubs ...Publication) Outcome {
	return Outcome{kind: KindDeadLetter, dlq: subject, runID: runID, reason: reason, pubs: pubs}
}

// HandBack returns the delivery at once, without counting it: the replica
// is shutting down and another one should take it now.
func HandBack() Outcome { return Outcome{kind: KindHandBack} }

// retryAfter is a counted redelivery after d; the executor makes it from
// an Err.
func retryAfter(d time.Duration, err error) Outcome {
	return Outcome{kind: KindRetry, delay: d, err: err}
}

// Kind is what the outcome does.
func (o Outcome) Kind() Kind { return o.kind }

// Publications are what the outcome stores before acknowledging.
func (o Outcome) Publications() []Publication { return o.pubs }

// Error is the failure of an Err or a retry.
func (o Outcome) Error() error { return o.err }

// Delay is how long a retry or a snooze waits.
func (o Outcome) Delay() time.Duration { return o.delay }

// DeadLetterSubject is where a dead letter goes.
func (o Outcome) DeadLetterSubject() string { return o.dlq }

// Reason is why a delivery is dead-lettered or snoozed.
func (o Outcome) Reason() string { return o.reason }

// Label names the outcome in metrics and logs.
func (o Outcome) Label() string {
	switch o.kind {
	case KindDone:
		return o.label
	case KindDeadLetter:
		return "dead_lettered"
	case KindRetry:
		return "redelivered"
	case KindSnooze:
		return "snoozed"
	case KindHandBack:
		return "handed_back"
	}
	return "error"
}
