package run

import (
	"bytes"
	"encoding/json"
	"io"
	"time"

	"github.com/tqtriage/tqtriage/internal/termsafe"
	"github.com/tqtriage/tqtriage/message"
)

// Report is a run's summary for scripts: what `status --json` prints and
// `--report FILE` writes (docs/operations.md fixes its shape). Written, a
// value or reason with control characters is escaped (termsafe.JSON),
// never printed raw.
type Report struct {
	RunID      string         `json:"run_id"`
	Action     message.Action `json:"action"`
	DryRun     bool           `json:"dry_run"`
	Upsert     bool           `json:"upsert"`
	Source     string         `json:"source"`
	SourceName string         `json:"source_name,omitempty"`
	// State is publishing, in_progress, writing_back or complete.
	State       string     `json:"state"`
	StartedAt   time.Time  `json:"started_at"`
	PublishedAt *time.Time `json:"published_at,omitempty"`
	// EndedAt and DurationSeconds: when the command stopped following the
	// run (--report only), and how long after the start.
	EndedAt         *time.Time `json:"ended_at,omitempty"`
	DurationSeconds float64    `json:"duration_seconds,omitempty"`
	Jobs            int64      `json:"jobs"`     // stored, once published
	Results         int        `json:"results"`  // jobs with a result
	Rejected        int64      `json:"rejected"` // input lines or repeats not queued
	// Statuses counts the jobs by their latest result's status: every
	// status of an ordinary run (or of a dry run), zeros included.
	Statuses   map[message.Status]int `json:"statuses"`
	Unreadable int                    `json:"unreadable"`
	Apart      int                    `json:"apart"`
	WriteBack  WriteBackReport        `json:"write_back"`
	// Requests made by this process to each service, by operation
	// (--report only; for publish --wait, only the collection's reading:
	// the workers' requests are in their /metrics).
	Requests map[string]map[string]int64 `json:"requests,omitempty"`
	// JobLatency is how long jobs took from being sent to being answered,
	// sampled (one job in 16, of the first 262144) by a command that
	// published the run and followed it (`run`, `publish --wait`); by the
	// workers' clocks for the answer.
	JobLatency *LatencyReport `json:"job_latency,omitempty"`
	// Errors are the first problems (failed, invalid, skipped, not_found
	// results), grouped by status and reason in the order they came.
	Errors []ReasonGroup `json:"errors"`
	// OtherErrors counts problem results whose reason came after the
	// groups were full.
	OtherErrors int `json:"other_errors"`
	// PublishError says why publishing stopped early, when it did.
	PublishError string `json:"publish_error,omitempty"`
	// Failed: the command exits non-zero for this run.
	Failed bool `json:"failed"`
}

// WriteBackReport is what write-back did with the run's results.
type WriteBackReport struct {
	Awaiting int                `json:"awaiting"` // results without a receipt yet
	Failed   int                `json:"failed"`   // results dead-lettered on tqtriage.dlq.writeback
	Errors   []WriteBackFailure `json:"errors,omitempty"`
}

// WriteBackFailure is one result write-back could not write.
type WriteBackFailure struct {
	Indicator int64  `json:"indicator"`
	Reason    string `json:"reason"`
}

// ReasonGroup is the problem results of one status and reason.
type ReasonGroup struct {
	Status message.Status `json:"status"`
	Reason string         `json:"reason"`
	Count  int            `json:"count"`
	// Indicators are the first few of them, as their jobs named them.
	Indicators []message.Indicator `json:"indicators"`
}

// Bounds of the groups: a reason is cut to maxReasonBytes and a group
// keeps maxGroupExamples indicators, so that a report stays small whatever
// the results say.
const (
	maxReasonGroups  = 20
	maxReasonBytes   = 512
	maxGroupExamples = 3
	maxExampleValue  = 256
)

// reasons groups the problem results of a run by status and reason, in
// the order they came. Counts are of results as read: a job answered
// again (a replayed dead letter) is counted in both of its groups.
type reasons struct {
	groups []ReasonGroup
	other  int
}

func (g *reasons) add(r message.Result) {
	switch r.Status {
	case message.StatusFailed, message.StatusInvalid, message.StatusSkipped, message.StatusNotFound:
	default:
		return
	}
	reason := termsafe.Clip(r.Reason, maxReasonBytes)
	ind := r.Indicator
	ind.Value = termsafe.Clip(ind.Value, maxExampleValue)
	for i := range g.groups {
		if gr := &g.groups[i]; gr.Status == r.Status && gr.Reason == reason {
			gr.Count++
			if len(gr.Indicators) < maxGroupExamples {
				gr.Indicators = append(gr.Indicators, ind)
			}
			return
		}
	}
	if len(g.groups) >= maxReasonGroups {
		g.other++
		return
	}
	g.groups = append(g.groups, ReasonGroup{Status: r.Status, Reason: reason, Count: 1, Indicators: []message.Indicator{ind}})
}

// State says where the run is: publishing, in_progress (jobs without a
// result), writing_back (results without a receipt) or complete.
func (t *Tally) State(rec Record) string {
	switch {
	case !rec.Published:
		return "publishing"
	case int64(t.done) < rec.Total:
		return "in_progress"
	case t.awaiting > 0:
		return "writing_back"
	}
	return "complete"
}

// NewReport is the report of rec as t counts it.
func NewReport(rec Record, t *Tally) Report {
	r := Report{
		RunID: rec.ID, Action: rec.Action, DryRun: rec.DryRun, Upsert: rec.Upsert,
		Source: rec.Source, SourceName: rec.SourceName, State: t.State(rec),
		StartedAt: rec.StartedAt, PublishedAt: rec.EndedAt,
		Jobs: rec.Total, Results: t.done, Rejected: rec.Rejected,
		Statuses:   map[message.Status]int{},
		Unreadable: t.unread, Apart: t.apart,
		WriteBack:    WriteBackReport{Awaiting: t.awaiting, Failed: t.wbFailed},
		Errors:       t.reasons.groups,
		OtherErrors:  t.reasons.other,
		PublishError: rec.Error,
		Failed:       t.Failed(rec),
		JobLatency:   t.latency.Report(),
	}
	kinds := message.Statuses
	if rec.DryRun {
		kinds = []message.Status{message.StatusWouldCreate, message.StatusExists, message.StatusWouldUpdate, message.StatusUnchanged,
			message.StatusNotFound, message.StatusInvalid, message.StatusSkipped, message.StatusFailed}
	}
	for _, s := range kinds {
		r.Statuses[s] = t.Count(s)
	}
	for _, s := range statuses { // a status of the other kind, forged or not, is shown too
		if n := t.Count(s); n > 0 {
			r.Statuses[s] = n
		}
	}
	if r.Errors == nil {
		r.Errors = []ReasonGroup{}
	}
	for _, rc := range t.wbErrors {
		if t.get(rc.Seq, rc.Indicator)&wbFailBit != 0 {
			r.WriteBack.Errors = append(r.WriteBack.Errors, WriteBackFailure{Indicator: rc.Indicator, Reason: termsafe.Clip(rc.Reason, maxReasonBytes)})
		}
	}
	return r
}

// Ended sets when the command stopped following the run, and the requests
// it made.
func (r *Report) Ended(at time.Time, requests map[string]map[string]int64) {
	at = at.UTC()
	r.EndedAt = &at
	r.DurationSeconds = at.Sub(r.StartedAt).Seconds()
	if len(requests) > 0 {
		r.Requests = requests
	}
}

// Write writes r as one indented JSON document.
func (r Report) Write(w io.Writer) error {
	data, err := message.Encode(r)
	if err != nil {
		return err
	}
	var out []byte
	if out, err = indent(termsafe.JSON(data)); err != nil {
		return err
	}
	_, err = w.Write(append(out, '\n'))
	return err
}

func indent(data []byte) ([]byte, error) {
	var b bytes.Buffer
	if err := json.Indent(&b, data, "", "  "); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}
