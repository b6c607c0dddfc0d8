package run

import (
	"fmt"
	"io"
	"strings"
	"unicode/utf8"

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
	if t.apart > 0 {
		fmt.Fprintf(w, "  apart       %-6d results naming no job of this run (a seq beyond its jobs); not counted\n", t.apart)
	}
	for _, s := range []message.Status{message.StatusFailed, message.StatusInvalid, message.StatusSkipped, message.StatusNotFound} {
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
			fmt.Fprintf(w, "    indicator %d (%s %q): %s\n", r.Indicator.ID, termsafe.Line(r.Indicator.Type), clip(r.Indicator.Value, 80), termsafe.Line(r.Reason))
		}
	}
	if t.stale > 0 {
		fmt.Fprintf(w, "  superseded  %-6d results not written back: a later result of the same ThreatQ indicator had been written\n", t.stale)
	}
	if t.wbFailed > 0 {
		fmt.Fprintf(w, "  write-back  %d results could not be written to ThreatQ (dead letters on %s; `tqtriage dlq replay --action writeback`)\n", t.wbFailed, message.DLQWriteback)
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

// clip cuts s to n bytes on a rune boundary; %q then escapes the rest.
func clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n] + "…"
}
