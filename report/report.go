// Package report counts the results of a run and shows them: the tally by
// status that `status`, `publish --wait`, `run` and `demo` print, a progress
// line while a run is under way, and the summary at its end.
//
// A run's results are counted once per job: a repeated result (a redelivery
// past the duplicate window, a replayed dead letter) replaces the job's
// earlier one rather than adding to the count.
package report

import (
	"fmt"
	"io"
	"strings"

	"github.com/tqtriage/tqtriage/message"
)

// Tally is the latest status of every job of a run seen so far. Its memory
// is one byte per job (by seq), plus a map entry for each job that came
// without a seq.
type Tally struct {
	bySeq    []uint8 // index seq-1; 0 = no result yet, else 1+index in message.Statuses
	noSeq    map[int64]uint8
	counts   [8]int
	done     int
	unread   int // results that did not parse
	examples map[message.Status][]message.Result
	// LastStreamSeq is the highest results-stream sequence seen.
	LastStreamSeq uint64
}

// maxExamples is how many results of each problem status a summary shows.
const maxExamples = 5

func statusIndex(s message.Status) uint8 {
	for i, v := range message.Statuses {
		if v == s {
			return uint8(i + 1)
		}
	}
	return 0
}

// Add counts one result.
func (t *Tally) Add(r message.Result, streamSeq uint64) {
	if streamSeq > t.LastStreamSeq {
		t.LastStreamSeq = streamSeq
	}
	idx := statusIndex(r.Status)
	if idx == 0 {
		t.unread++
		return
	}
	var prev uint8
	switch {
	case r.Seq > 0:
		for int64(len(t.bySeq)) < r.Seq {
			t.bySeq = append(t.bySeq, make([]uint8, max(int(r.Seq)-len(t.bySeq), len(t.bySeq)))...)
		}
		prev, t.bySeq[r.Seq-1] = t.bySeq[r.Seq-1], idx
	default:
		if t.noSeq == nil {
			t.noSeq = map[int64]uint8{}
		}
		prev, t.noSeq[r.Indicator.ID] = t.noSeq[r.Indicator.ID], idx
	}
	if prev == 0 {
		t.done++
	} else {
		t.counts[prev]--
	}
	t.counts[idx]++
	switch r.Status {
	case message.StatusFailed, message.StatusInvalid, message.StatusSkipped, message.StatusNotFound:
		if t.examples == nil {
			t.examples = map[message.Status][]message.Result{}
		}
		if len(t.examples[r.Status]) < maxExamples {
			t.examples[r.Status] = append(t.examples[r.Status], r)
		}
	}
}

// latest is the latest status of r's job.
func (t *Tally) latest(r message.Result) message.Status {
	var idx uint8
	if r.Seq > 0 && int(r.Seq) <= len(t.bySeq) {
		idx = t.bySeq[r.Seq-1]
	} else if r.Seq == 0 {
		idx = t.noSeq[r.Indicator.ID]
	}
	if idx == 0 {
		return ""
	}
	return message.Statuses[idx-1]
}

// AddUnreadable counts a stored result that could not be parsed.
func (t *Tally) AddUnreadable() { t.unread++ }

// Done is the number of jobs with a result.
func (t *Tally) Done() int { return t.done }

// Count is the number of jobs whose latest result has status s.
func (t *Tally) Count(s message.Status) int { return t.counts[statusIndex(s)] }

// Unreadable is the number of stored results that did not parse.
func (t *Tally) Unreadable() int { return t.unread }

// Counts returns the non-zero counts by status, in message.Statuses order.
func (t *Tally) Counts() []StatusCount {
	var out []StatusCount
	for _, s := range message.Statuses {
		if n := t.Count(s); n > 0 {
			out = append(out, StatusCount{s, n})
		}
	}
	return out
}

// StatusCount is one line of a summary.
type StatusCount struct {
	Status message.Status `json:"status"`
	Count  int            `json:"count"`
}

// Line is a one-line progress: "120/300 jobs: created 100, exists 20".
func (t *Tally) Line(total int64) string {
	var b strings.Builder
	if total > 0 {
		fmt.Fprintf(&b, "%d/%d jobs", t.done, total)
	} else {
		fmt.Fprintf(&b, "%d jobs", t.done)
	}
	for i, c := range t.Counts() {
		if i == 0 {
			b.WriteString(": ")
		} else {
			b.WriteString(", ")
		}
		fmt.Fprintf(&b, "%s %d", c.Status, c.Count)
	}
	return b.String()
}

// Meaning says in a few words what each status means, for summaries.
var Meaning = map[message.Status]string{
	message.StatusCreated:  "new in Triage",
	message.StatusExists:   "already in Triage; its id written back",
	message.StatusUpdated:  "level and source set in Triage",
	message.StatusNotFound: "not in Triage; nothing updated",
	message.StatusInvalid:  "unsupported type or bad value; not sent",
	message.StatusSkipped:  "over the objects-per-run limit; not sent",
	message.StatusFailed:   "Triage could not be brought to answer; dead-lettered",
}

// Summary writes the run's summary: a header, the count of each status with
// its meaning, and a few examples of each problem status with its reason.
func (t *Tally) Summary(w io.Writer, header string, total int64) {
	fmt.Fprintln(w, header)
	if total > 0 {
		fmt.Fprintf(w, "  jobs        %d (results for %d)\n", total, t.done)
	} else {
		fmt.Fprintf(w, "  jobs        %d with a result\n", t.done)
	}
	for _, s := range message.Statuses {
		if n := t.Count(s); n > 0 {
			fmt.Fprintf(w, "  %-11s %-6d %s\n", s, n, Meaning[s])
		}
	}
	if t.unread > 0 {
		fmt.Fprintf(w, "  unreadable  %-6d results that did not parse\n", t.unread)
	}
	for _, s := range []message.Status{message.StatusFailed, message.StatusInvalid, message.StatusSkipped, message.StatusNotFound} {
		ex := t.examples[s]
		if len(ex) == 0 {
			continue
		}
		var still []message.Result
		for _, r := range ex {
			if t.latest(r) == s { // not since answered otherwise (a replay)
				still = append(still, r)
			}
		}
		if len(still) == 0 {
			continue
		}
		fmt.Fprintf(w, "  %s, for example:\n", s)
		for _, r := range still {
			fmt.Fprintf(w, "    indicator %d (%s %q): %s\n", r.Indicator.ID, r.Indicator.Type, clip(r.Indicator.Value, 80), r.Reason)
		}
	}
}

func clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}
