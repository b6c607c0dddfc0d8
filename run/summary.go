package run

import (
	"fmt"
	"io"
	"strings"

	"github.com/tqtriage/tqtriage/internal/termsafe"
	"github.com/tqtriage/tqtriage/message"
)

// Line is a one-line progress: "120/300 jobs: created 100, exists 20".
func (t *Tally) Line(total int64) string {
	var b strings.Builder
	if total > 0 {
		fmt.Fprintf(&b, "%d/%d jobs", t.done, total)
	} else {
		fmt.Fprintf(&b, "%d jobs", t.done)
	}
	if c := t.CountsText(); c != "" {
		b.WriteString(": " + c)
	}
	return b.String()
}

// CountsText is the non-zero counts by status, in a summary's order:
// "created 100, exists 20" ("" before any result).
func (t *Tally) CountsText() string {
	var b strings.Builder
	for i, c := range t.Counts() {
		if i > 0 {
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

// DryRunMeaning says what each status of a dry run means: what the run
// would do.
var DryRunMeaning = map[message.Status]string{
	message.StatusWouldCreate: "not in Triage; would be created",
	message.StatusExists:      "already in Triage; create would leave it as it is",
	message.StatusWouldUpdate: "in Triage; its level or source would change",
	message.StatusUnchanged:   "in Triage with the level and source update would set",
	message.StatusNotFound:    "not in Triage; update would change nothing",
	message.StatusInvalid:     "unsupported type or bad value; would not be sent",
	message.StatusSkipped:     "over the objects-per-run limit; would not be sent",
	message.StatusFailed:      "Triage could not be read; dead-lettered",
}

func (t *Tally) meaning(s message.Status) string {
	if t.dryRun {
		return DryRunMeaning[s]
	}
	return Meaning[s]
}

// Header is the head of a run's summary: its id, action and source, and
// what went wrong while publishing.
func Header(r Record) string {
	src := termsafe.Line(r.Source)
	if r.SourceName != "" {
		src += " (" + termsafe.Line(r.SourceName) + ")"
	}
	h := fmt.Sprintf("run %s: %s from %s", r.ID, r.Action, src)
	if r.Upsert {
		h += ", upsert"
	}
	if r.DryRun {
		h += ", dry run: what it would do; nothing is written to Triage or ThreatQ"
	}
	if r.Rejected > 0 {
		h += fmt.Sprintf("; %d input lines or repeats not queued", r.Rejected)
	}
	if r.Error != "" {
		h += "\n  publishing stopped early: " + termsafe.Line(r.Error)
	}
	return h
}

// Summary writes the run's summary: a header, the count of each status with
// its meaning, a few examples of each problem status with its reason, and
// the results write-back could not write.
func (t *Tally) Summary(w io.Writer, header string, total int64) {
	fmt.Fprintln(w, header)
	col := 11 // the longest label; a dry run's would_create is longer
	if t.dryRun {
		col = 12
	}
	if total > 0 {
		fmt.Fprintf(w, "  %-*s %d (results for %d)\n", col, "jobs", total, t.done)
	} else {
		fmt.Fprintf(w, "  %-*s %d with a result\n", col, "jobs", t.done)
	}
	for _, s := range statuses {
		if n := t.Count(s); n > 0 {
			fmt.Fprintf(w, "  %-*s %-6d %s\n", col, s, n, t.meaning(s))
		}
	}
	if t.unread > 0 {
		fmt.Fprintf(w, "  %-*s %-6d results that did not parse\n", col, "unreadable", t.unread)
	}
	if t.apart > 0 {
		fmt.Fprintf(w, "  %-*s %-6d results naming no job of this run (a seq beyond its jobs); not counted\n", col, "apart", t.apart)
	}
	for _, s := range []message.Status{message.StatusFailed, message.StatusInvalid, message.StatusSkipped, message.StatusNotFound, message.StatusWouldUpdate} {
		var still []message.Result
		for _, r := range t.examples[s] {
			if t.latest(r) == s { // not since answered otherwise (a replay)
				still = append(still, r)
			}
		}
		if len(still) == 0 {
			continue
		}
		fmt.Fprintf(w, "  %s, for example:\n", s)
		for _, r := range still {
			fmt.Fprintf(w, "    indicator %d (%s %q): %s\n", r.Indicator.ID, termsafe.Line(r.Indicator.Type), termsafe.Clip(r.Indicator.Value, 80), termsafe.Line(r.Reason))
		}
	}
	if t.stale > 0 {
		fmt.Fprintf(w, "  superseded  %-6d results not written back: a later result of the same ThreatQ indicator had been written\n", t.stale)
	}
	if t.wbFailed > 0 {
		fmt.Fprintf(w, "  %-*s %d results could not be written to ThreatQ (dead letters on %s; `tqtriage dlq replay --action writeback`)\n", col, "write-back", t.wbFailed, message.DLQWriteback)
		for _, rc := range t.wbErrors {
			if t.get(rc.Seq, rc.Indicator)&wbFailBit != 0 { // not since written (a replay)
				fmt.Fprintf(w, "    indicator %d: %s\n", rc.Indicator, termsafe.Line(rc.Reason))
			}
		}
	}
}

// Failed reports whether a run should end with a non-zero exit: a job
// failed, a write-back could not be done, or publishing stopped early.
func (t *Tally) Failed(r Record) bool {
	return t.Count(message.StatusFailed) > 0 || t.wbFailed > 0 || r.Error != ""
}
