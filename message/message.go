// Package message holds tqtriage's wire contracts, version 1, as docs/messages.md
// fixes them: the subjects, the job a publisher sends, the result a worker
// answers and the statuses a result can have. Operators and other programs
// depend on these shapes; change them only with a new version.
//
// The package parses and checks; it does no I/O.
package message

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"time"

	"github.com/tqtriage/tqtriage/internal/termsafe"
)

// Version is the contract version written in every job and result.
const Version = 1

// Subjects and the prefixes of the per-action and per-run ones.
const (
	JobsPrefix    = "tqtriage.jobs."    // + action
	ResultsPrefix = "tqtriage.results." // + run id
	DLQPrefix     = "tqtriage.dlq."     // + action, "invalid" or "writeback"
	// ReceiptsPrefix + run id: write-back's receipts (see Receipt).
	ReceiptsPrefix = "tqtriage.written."

	JobsWildcard    = JobsPrefix + ">"
	ResultsWildcard = ResultsPrefix + ">"
	DLQWildcard     = DLQPrefix + ">"

	ReceiptsWildcard = ReceiptsPrefix + ">"

	DLQInvalid   = DLQPrefix + string(LettersInvalid)
	DLQWriteback = DLQPrefix + string(LettersWriteback)

	// DryRunJobsPrefix + action: the jobs of a dry run. Under
	// tqtriage.jobs.> (the same stream, consumer and permissions), but not
	// tqtriage.jobs.<action>: a worker that predates dry runs refuses such
	// a job as unparseable (dead letter on tqtriage.dlq.invalid) instead of
	// ignoring its dry_run field and writing to Triage.
	DryRunJobsPrefix = JobsPrefix + "dryrun."
)

// Action is what a job asks of Triage.
type Action string

// The actions of a job.
const (
	ActionCreate Action = "create"
	ActionUpdate Action = "update"
)

// ParseAction reads an action given by a person or a message.
func ParseAction(s string) (Action, error) {
	switch a := Action(s); a {
	case ActionCreate, ActionUpdate:
		return a, nil
	case "":
		return "", errors.New("no action: want create or update")
	}
	return "", fmt.Errorf("action %q: want create or update", s)
}

// Letters names a kind of dead letter: the last token of its subject,
// tqtriage.dlq.<kind>.
type Letters string

// The kinds of dead letter: failed jobs of each action, results that could
// not be written back, and messages that did not parse.
const (
	LettersCreate            = Letters(ActionCreate)
	LettersUpdate            = Letters(ActionUpdate)
	LettersWriteback Letters = "writeback"
	LettersInvalid   Letters = "invalid"
)

// ParseLetters reads a kind of dead letter given by a person.
func ParseLetters(s string) (Letters, error) {
	switch l := Letters(s); l {
	case LettersCreate, LettersUpdate, LettersWriteback, LettersInvalid:
		return l, nil
	}
	return "", fmt.Errorf("%q: want create, update, writeback or invalid", s)
}

// Subject is the dead-letter subject of the kind.
func (l Letters) Subject() string { return DLQPrefix + string(l) }

// Replayable reports whether letters of this kind can be sent again:
// those that did not parse cannot.
func (l Letters) Replayable() bool { return l != LettersInvalid }

// Status is what became of one job.
type Status string

// The statuses of docs/messages.md, and nothing else.
const (
	StatusCreated  Status = "created"   // Triage created the indicator
	StatusExists   Status = "exists"    // create found it already in Triage
	StatusUpdated  Status = "updated"   // update set level and source
	StatusNotFound Status = "not_found" // update found nothing (and no upsert)
	StatusInvalid  Status = "invalid"   // unsupported type or bad value: never sent
	StatusSkipped  Status = "skipped"   // over the run's objects-per-run cap
	StatusFailed   Status = "failed"    // retries could not fix it; dead-lettered
)

// Statuses lists every status of an ordinary run in the order a summary
// prints them.
var Statuses = []Status{StatusCreated, StatusExists, StatusUpdated, StatusNotFound, StatusInvalid, StatusSkipped, StatusFailed}

// The statuses only a dry run answers: what would happen. A dry run also
// answers exists, not_found, invalid, skipped and failed, never created or
// updated.
const (
	StatusWouldCreate Status = "would_create" // not in Triage: the job would create it
	StatusWouldUpdate Status = "would_update" // in Triage with another level or source: the job would set them
	StatusUnchanged   Status = "unchanged"    // in Triage with the level and source the job would set
)

// DryRunStatuses lists the statuses only a dry run answers.
var DryRunStatuses = []Status{StatusWouldCreate, StatusWouldUpdate, StatusUnchanged}

// Valid reports whether s is one of Statuses or DryRunStatuses.
func (s Status) Valid() bool {
	return slices.Contains(Statuses, s) || s.DryRunOnly()
}

// DryRunOnly reports whether only a dry run answers s.
func (s Status) DryRunOnly() bool { return slices.Contains(DryRunStatuses, s) }

// Writes reports whether an ordinary run's s means Triage was written to:
// a dry run never answers it.
func (s Status) Writes() bool { return s == StatusCreated || s == StatusUpdated }

// Indicator is a ThreatQ indicator as a job carries it.
type Indicator struct {
	ID    int64  `json:"id"`
	Type  string `json:"type"`
	Value string `json:"value"`
}

// Job asks a worker to create or update one indicator in Triage. Seq,
// ThreatLevel, ThreatSource, Upsert and ReplyTo are optional: empty ones
// take the worker's configuration.
type Job struct {
	V            int       `json:"v"`
	RunID        string    `json:"run_id"`
	Action       Action    `json:"action"`
	Seq          int64     `json:"seq,omitempty"`
	Indicator    Indicator `json:"indicator"`
	ThreatLevel  string    `json:"threat_level,omitempty"`
	ThreatSource string    `json:"threat_source,omitempty"`
	Upsert       bool      `json:"upsert,omitempty"`
	ReplyTo      string    `json:"reply_to,omitempty"`
	// ThreatQAttributes are the attributes the ThreatQ indicator holds
	// already, of the names tqtriage writes (its Triage ID, Threat Level,
	// Threat Source), with their row ids: an update finds its Triage
	// indicator by that ID. Optional: a job without them is looked up.
	ThreatQAttributes []Attribute `json:"threatq_attributes,omitempty"`
	// ThreatQKnown says the publisher read the indicator's attributes:
	// ThreatQAttributes is all it held of those names (none when empty).
	// Write-back then changes those rows without listing them first.
	ThreatQKnown bool `json:"threatq_known,omitempty"`
	// DryRun asks what the job would do, without any write to Triage or
	// ThreatQ. A dry-run job is published on DryRunJobSubject, which
	// ParseJob takes as dry whatever this field says.
	DryRun bool `json:"dry_run,omitempty"`

	problem string // set by ParseJob: see Problem
}

// TriageIndicator is Triage's view of an indicator, as a result carries it.
type TriageIndicator struct {
	ID           string `json:"id"`
	ThreatLevel  string `json:"threat_level"`
	ThreatType   string `json:"threat_type"`
	ThreatValue  string `json:"threat_value"`
	ThreatSource string `json:"threat_source"`
	CreatedAt    string `json:"created_at,omitempty"`
	UpdatedAt    string `json:"updated_at,omitempty"`
}

// Attribute is a name/value of a ThreatQ indicator: to write onto it (in a
// result), or held by it already (in a job, with its row ID).
type Attribute struct {
	ID    int64  `json:"id,omitempty"`
	Name  string `json:"name"`
	Value string `json:"value"`
}

// Attribute returns the value of the first of the job's ThreatQ attributes
// named name, or "".
func (j Job) Attribute(name string) string {
	for _, a := range j.ThreatQAttributes {
		if a.Name == name {
			return a.Value
		}
	}
	return ""
}

// Result is the one answer to one job.
type Result struct {
	V          int              `json:"v"`
	RunID      string           `json:"run_id"`
	Action     Action           `json:"action"`
	Seq        int64            `json:"seq,omitempty"`
	Indicator  Indicator        `json:"indicator"`
	Status     Status           `json:"status"`
	Reason     string           `json:"reason"`
	Triage     *TriageIndicator `json:"triage,omitempty"`
	Attributes []Attribute      `json:"attributes,omitempty"`
	// Attempts is how many times the job was delivered to a worker when
	// it was answered (each delivery tries Triage a few times, with
	// backoff); 0 when it never reached Triage (invalid, skipped).
	Attempts int `json:"attempts"`
	// AnsweredAt is when the worker answered, RFC 3339 in UTC with
	// nanoseconds (AnsweredAtFormat); optional, absent from results of
	// older workers. Write-back applies the results of one ThreatQ
	// indicator in this order.
	AnsweredAt string `json:"answered_at,omitempty"`
	// DryRun: the answer of a dry-run job, what would happen. It carries
	// no attributes, and write-back writes nothing for it.
	DryRun bool `json:"dry_run,omitempty"`
	// ThreatQAttributes and ThreatQKnown are the job's: what ThreatQ held
	// of the attributes write-back sets, when the publisher read them.
	ThreatQAttributes []Attribute `json:"threatq_attributes,omitempty"`
	ThreatQKnown      bool        `json:"threatq_known,omitempty"`
}

// AnsweredAtFormat is the layout of Result.AnsweredAt.
const AnsweredAtFormat = time.RFC3339Nano

// Answered is r's AnsweredAt as a time, and whether it has a valid one.
func (r Result) Answered() (time.Time, bool) {
	if r.AnsweredAt == "" || len(r.AnsweredAt) > 64 {
		return time.Time{}, false
	}
	t, err := time.Parse(AnsweredAtFormat, r.AnsweredAt)
	return t, err == nil
}

// JobSubject is the subject a job of action is published on.
func JobSubject(action Action) string { return JobsPrefix + string(action) }

// DryRunJobSubject is the subject a dry-run job of action is published on.
func DryRunJobSubject(action Action) string { return DryRunJobsPrefix + string(action) }

// ResultSubject is the default reply subject of a run.
func ResultSubject(runID string) string { return ResultsPrefix + runID }

// DLQSubject is the dead-letter subject of a job's action.
func DLQSubject(action Action) string { return DLQPrefix + string(action) }

// MsgID is the Nats-Msg-Id of a job and of its result: a re-published job
// or a repeated result within the stream's duplicate window is dropped.
func MsgID(runID string, action Action, indicatorID int64) string {
	return runID + "/" + string(action) + "/" + strconv.FormatInt(indicatorID, 10)
}

// ResultMsgID is the Nats-Msg-Id of the result of the job stored at
// stream sequence jobSeq: a redelivery of that job repeats it (and the
// repeat is dropped), a replay of it is a new message with an answer of its
// own. It is made of validated fields and the server's sequence only, so a
// forged job cannot suppress another's result.
func ResultMsgID(runID string, action Action, indicatorID int64, jobSeq uint64) string {
	return MsgID(runID, action, indicatorID) + "/" + strconv.FormatUint(jobSeq, 10)
}

// ValidRunID reports whether id can be a run id (CheckRunID).
func ValidRunID(id string) bool { return CheckRunID(id) == nil }

// MaxRunIDLen is the longest run id.
const MaxRunIDLen = 64

// CheckRunID says why id cannot be a run id: it must be one subject token
// of 1 to 64 letters, digits, '-' and '_', so that tqtriage.results.<run_id>
// is a plain subject.
func CheckRunID(id string) error {
	ok := id != "" && len(id) <= MaxRunIDLen
	for i := 0; ok && i < len(id); i++ {
		c := id[i]
		ok = 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '_'
	}
	if !ok {
		return fmt.Errorf("run id %q: want 1 to %d letters, digits, '-' or '_'", termsafe.Clip(id, MaxRunIDLen+8), MaxRunIDLen)
	}
	return nil
}

// ParseError says why a job cannot be worked on at all. Such a job goes to
// tqtriage.dlq.invalid with its raw bytes and this reason.
type ParseError struct{ Reason string }

func (e *ParseError) Error() string { return "unparseable job: " + e.Reason }

func parseErr(format string, args ...any) error {
	return &ParseError{Reason: fmt.Sprintf(format, args...)}
}

// Limits on what a job may say. A message over MaxJobBytes, or one that
// lacks what an answer needs (version, run id, action, indicator id), does
// not parse: it is dead-lettered. Any other field over its limit parses,
// and the job is answered invalid with the reason (Job.Problem).
const (
	MaxJobBytes      = 64 << 10
	MaxValueBytes    = 8192 // a longer indicator value is refused (as the mapping refuses it)
	MaxTypeBytes     = 64
	MaxLevelBytes    = 32
	MaxSourceBytes   = 256
	MaxSeq           = 1_000_000_000
	MaxAttributes    = 16  // threatq_attributes
	MaxAttrBytes     = 256 // an attribute's name, and its value
	maxReplyToBytes  = len(ResultsPrefix) + MaxRunIDLen
	maxQuotedInError = 80
)

// ParseJob decodes and checks a job that arrived on subject. It is strict
// about what the worker needs to answer (size, version, run id, action
// matching the subject, an indicator id): without these there is no one to
// answer, and the message is a *ParseError. Every other field is bounded
// here too; a job over a limit parses with its Problem set, so that it is
// answered invalid with the reason. Fields it does not know are ignored, so
// that a later minor addition does not dead-letter every job. The reply
// subject is always tqtriage.results.<run_id>.
func ParseJob(subject string, data []byte) (Job, error) {
	var j Job
	if len(data) > MaxJobBytes {
		return j, parseErr("a job of %d bytes; at most %d are accepted", len(data), MaxJobBytes)
	}
	if len(bytes.TrimSpace(data)) == 0 {
		return j, parseErr("empty message")
	}
	if err := json.Unmarshal(data, &j); err != nil {
		var se *json.SyntaxError
		var te *json.UnmarshalTypeError
		switch {
		case errors.As(err, &se):
			return j, parseErr("not JSON: %v (at byte %d)", se, se.Offset)
		case errors.As(err, &te):
			return j, parseErr("field %q: want a %s, got a JSON %s", te.Field, te.Type, te.Value)
		default:
			return j, parseErr("not a job: %v", err)
		}
	}
	if j.V != Version {
		return j, parseErr("version %d; this worker reads version %d", j.V, Version)
	}
	if err := CheckRunID(j.RunID); err != nil {
		return j, parseErr("run_id: %v", err)
	}
	if _, err := ParseAction(string(j.Action)); err != nil {
		return j, parseErr("action %q: want create or update", termsafe.Clip(string(j.Action), maxQuotedInError))
	}
	switch subject {
	case "", JobSubject(j.Action):
	case DryRunJobSubject(j.Action):
		// The subject says dry, whatever the field does: a job that
		// would write must never pass for one that only reads.
		j.DryRun = true
	default:
		return j, parseErr("action %q arrived on %s", j.Action, subject)
	}
	if j.Indicator.ID <= 0 {
		return j, parseErr("indicator.id is missing or not positive")
	}
	j.problem = j.check()
	// Whatever reply_to said, the answer goes to the run's own subject:
	// a job cannot send its result into another run, or to a subject
	// the server refuses.
	j.ReplyTo = ResultSubject(j.RunID)
	return j, nil
}

// check says which field of a parsed job is over its limit, if any.
func (j *Job) check() string {
	over := func(field string, got, limit int) string {
		return fmt.Sprintf("%s is %d bytes long; at most %d are accepted", field, got, limit)
	}
	switch {
	case j.Seq < 0 || j.Seq > MaxSeq:
		return fmt.Sprintf("seq %d is outside 0 to %d", j.Seq, MaxSeq)
	case j.ReplyTo != "" && j.ReplyTo != ResultSubject(j.RunID):
		if len(j.ReplyTo) > maxReplyToBytes {
			return fmt.Sprintf("reply_to (%d bytes) is not %s", len(j.ReplyTo), ResultSubject(j.RunID))
		}
		return fmt.Sprintf("reply_to %q is not %s, the only subject a job of this run may answer on", j.ReplyTo, ResultSubject(j.RunID))
	case len(j.Indicator.Type) > MaxTypeBytes:
		return over("indicator.type", len(j.Indicator.Type), MaxTypeBytes)
	case len(j.Indicator.Value) > MaxValueBytes:
		return over("indicator.value", len(j.Indicator.Value), MaxValueBytes)
	case len(j.ThreatLevel) > MaxLevelBytes:
		return over("threat_level", len(j.ThreatLevel), MaxLevelBytes)
	case len(j.ThreatSource) > MaxSourceBytes:
		return over("threat_source", len(j.ThreatSource), MaxSourceBytes)
	case len(j.ThreatQAttributes) > MaxAttributes:
		return fmt.Sprintf("threatq_attributes has %d entries; at most %d are accepted", len(j.ThreatQAttributes), MaxAttributes)
	}
	for _, a := range j.ThreatQAttributes {
		if len(a.Name) > MaxAttrBytes || len(a.Value) > MaxAttrBytes {
			return fmt.Sprintf("an attribute of threatq_attributes is over %d bytes", MaxAttrBytes)
		}
	}
	return ""
}

// Problem says why a parsed job cannot be worked on (a field over its
// limit, a foreign reply_to): it is answered invalid with this reason.
func (j Job) Problem() string { return j.problem }

// ParseResult decodes a result and checks its version and status.
func ParseResult(data []byte) (Result, error) {
	var r Result
	if err := json.Unmarshal(data, &r); err != nil {
		return r, fmt.Errorf("result: %w", err)
	}
	if r.V != Version {
		return r, fmt.Errorf("result: version %d; this reader knows %d", r.V, Version)
	}
	if !r.Status.Valid() {
		return r, fmt.Errorf("result: unknown status %q", r.Status)
	}
	if r.Status.DryRunOnly() && !r.DryRun {
		return r, fmt.Errorf("result: status %q is a dry run's, and the result is not", r.Status)
	}
	if r.DryRun && r.Status.Writes() {
		return r, fmt.Errorf("result: a dry run never answers %q", r.Status)
	}
	if err := CheckRunID(r.RunID); err != nil {
		return r, fmt.Errorf("result: %w", err)
	}
	return r, nil
}

// Bounds on what a result carries of its job: a result must stay small
// whatever the job said.
const (
	maxResultType  = MaxTypeBytes
	maxResultValue = 1024
)

// NewResult starts the result of job j. It carries a bounded copy of the
// indicator's type and value (a valid value is never cut: the mapping
// refuses longer ones). Its seq is the job's, whatever it is: a reader
// counts a result beyond its run's jobs apart.
func NewResult(j Job, status Status, reason string) Result {
	ind := j.Indicator
	ind.Type = termsafe.Clip(ind.Type, maxResultType)
	if status == StatusInvalid {
		ind.Value = termsafe.Clip(ind.Value, maxResultValue)
	}
	return Result{V: Version, RunID: j.RunID, Action: j.Action, Seq: j.Seq, Indicator: ind, Status: status, Reason: reason, DryRun: j.DryRun}
}

// Encode writes v as JSON without HTML escaping: a value of '<' stays one
// byte, not six, so a result stays within its bounds.
func Encode(v any) ([]byte, error) {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	return bytes.TrimSuffix(b.Bytes(), []byte("\n")), nil
}

// Receipt says that write-back has settled one stored result: written to
// ThreatQ, found with nothing to write, or dead-lettered. A run is written
// back when each of its results has a receipt; receipts are stored on
// tqtriage.written.<run_id>, beside the results, so that one reader
// follows both in order.
type Receipt struct {
	V     int    `json:"v"`
	RunID string `json:"run_id"`
	Seq   int64  `json:"seq,omitempty"` // the job's seq, when its result had one
	// Indicator is the ThreatQ indicator id of the result.
	Indicator int64 `json:"indicator"`
	// Result is the stream sequence of the result this receipt settles.
	Result  uint64         `json:"result"`
	Outcome ReceiptOutcome `json:"outcome"`
	// Reason says why, for dead_lettered; for stale, and for a written
	// result some of whose attributes a later result had set, which
	// attributes were left as the later result set them.
	Reason string `json:"reason,omitempty"`
}

// ReceiptOutcome is what write-back did with a result.
type ReceiptOutcome string

// The outcomes of a receipt.
const (
	ReceiptWritten      ReceiptOutcome = "written"       // its attributes are on ThreatQ
	ReceiptNothing      ReceiptOutcome = "nothing"       // it had no attributes to write
	ReceiptDeadLettered ReceiptOutcome = "dead_lettered" // on tqtriage.dlq.writeback
	// ReceiptStale: a later result of the same ThreatQ indicator had
	// already been written, so this older one was not (write-back applies
	// an indicator's results in the order they were answered).
	ReceiptStale ReceiptOutcome = "stale"
)

// ReceiptSubject is where the receipts of a run are stored.
func ReceiptSubject(runID string) string { return ReceiptsPrefix + runID }

// ReceiptMsgID makes a second receipt for one stored result a duplicate.
func ReceiptMsgID(resultSeq uint64) string {
	return "receipt/" + strconv.FormatUint(resultSeq, 10)
}

// ParseReceipt decodes a receipt and checks its version and outcome.
func ParseReceipt(data []byte) (Receipt, error) {
	var r Receipt
	if err := json.Unmarshal(data, &r); err != nil {
		return r, fmt.Errorf("receipt: %w", err)
	}
	if r.V != Version {
		return r, fmt.Errorf("receipt: version %d; this reader knows %d", r.V, Version)
	}
	switch r.Outcome {
	case ReceiptWritten, ReceiptNothing, ReceiptDeadLettered, ReceiptStale:
	default:
		return r, fmt.Errorf("receipt: unknown outcome %q", r.Outcome)
	}
	return r, nil
}

// Header names tqtriage sets on dead letters.
const (
	HeaderReason     = "Tqtriage-Reason"     // why the message was dead-lettered
	HeaderSubject    = "Tqtriage-Subject"    // the subject it arrived on
	HeaderRunID      = "Tqtriage-Run"        // the run, when known
	HeaderDeliveries = "Tqtriage-Deliveries" // how often it was delivered
	HeaderMsgID      = "Tqtriage-Msg-Id"     // the original message's Nats-Msg-Id
	HeaderTruncated  = "Tqtriage-Truncated"  // the original size, when the data was cut to fit
)
