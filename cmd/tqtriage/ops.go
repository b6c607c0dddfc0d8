package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/tqtriage/tqtriage/bus"
	"github.com/tqtriage/tqtriage/internal/termsafe"
	"github.com/tqtriage/tqtriage/message"
	"github.com/tqtriage/tqtriage/pipeline"
	"github.com/tqtriage/tqtriage/run"
	"github.com/tqtriage/tqtriage/worker"
)

// What operators see besides the work itself: dry runs, reports, JSON for
// scripts, metrics (docs/operations.md).

// addRunOutput adds the flags of a run's plan and report (publish, run).
func addRunOutput(s *settings) {
	s.addBool("dry-run", "", false, "only say what the run would do: workers read Triage and write nothing to Triage or ThreatQ")
	s.add("report", "", "", "write the run's summary as JSON to this file when it ends (publish: with --wait)")
}

// roleConsumers are the durable consumers whose backlog a replica of the
// role exports on /metrics.
var roleConsumers = map[bus.Role][]string{
	bus.RoleWorker:    {bus.ConsumerWorkers},
	bus.RoleWriteback: {bus.ConsumerWriteback},
}

// lateClaims lets a worker be built, with its clients, before the bus that
// holds the claims is connected: a bad setting fails before NATS is tried.
type lateClaims struct{ worker.Claims }

// followOptions show progress on w: a bar redrawn in place on a terminal,
// else a line every few seconds.
func followOptions(w io.Writer) run.FollowOptions {
	return run.FollowOptions{Progress: w, Terminal: isTerminal(w), Width: terminalWidth(w)}
}

// writeReport writes the report of rec to path (nothing when path is
// empty). failed is whether the command exits non-zero for the run.
func writeReport(path string, rec run.Record, tally *run.Tally, failed bool, m *pipeline.Metrics) error {
	if path == "" {
		return nil
	}
	if tally == nil {
		tally = new(run.Tally)
	}
	rep := run.NewReport(rec, tally)
	rep.Ended(time.Now(), m.HTTP.Requests())
	rep.Failed = failed
	// Written beside its final name, then renamed: a script never reads
	// half a report.
	tmp, err := os.CreateTemp(filepath.Dir(path), ".report-*")
	if err != nil {
		return fmt.Errorf("--report: %w", err)
	}
	defer os.Remove(tmp.Name())
	if err := errors.Join(rep.Write(tmp), tmp.Chmod(0o644), tmp.Close()); err != nil {
		return fmt.Errorf("--report: %w", err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("--report: %w", err)
	}
	return nil
}

func cmdRuns(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	s := newSettings("runs", "runs [--limit N] [--json] [flags]", stdout, stderr)
	s.add("limit", "", "20", "how many of the runs started last to show")
	s.addBool("json", "", false, "print one JSON object a line: each run's report, as status --json prints it")
	addNATS(s, natsURLHelp)
	addLog(s)
	log, err := s.parseWithLogger(args, stderr)
	if err != nil {
		return err
	}
	limit := s.integer("limit", 1)
	if s.fs.NArg() > 0 {
		s.errs = append(s.errs, errors.New("runs takes no arguments"))
	}
	if err := s.err(); err != nil {
		return usageErr("%w", err)
	}
	b, err := connect(ctx, s, log, bus.RoleViewer)
	if err != nil {
		return err
	}
	defer b.Close()
	recs, err := run.Recent(ctx, b, limit)
	if err != nil {
		return err
	}
	asJSON := s.boolean("json")
	for _, rec := range recs {
		tally, rec, err := run.Status(ctx, b, rec.ID)
		if err != nil {
			return err
		}
		if asJSON {
			data, err := message.Encode(run.NewReport(rec, tally))
			if err != nil {
				return err
			}
			fmt.Fprintf(stdout, "%s\n", termsafe.JSON(data))
			continue
		}
		kind := string(rec.Action)
		if rec.DryRun {
			kind += " (dry run)"
		}
		jobs := fmt.Sprintf("%d/%d", tally.Done(), rec.Total)
		if !rec.Published {
			jobs = fmt.Sprintf("%d/?", tally.Done())
		}
		fmt.Fprintf(stdout, "%s  %s  %-18s %-12s %-11s %s\n", rec.ID, rec.StartedAt.Local().Format(time.DateTime), kind,
			tally.State(rec), jobs, countsText(tally))
	}
	if !asJSON {
		fmt.Fprintf(stdout, "%d runs\n", len(recs))
	}
	return nil
}

// countsText is "created 31, exists 8, invalid 1".
func countsText(t *run.Tally) string {
	if c := t.CountsText(); c != "" {
		return c
	}
	return "no results yet"
}

// Bounds of a dead letter printed as JSON: whatever its headers and data
// say, a line stays a few KiB.
const (
	maxJSONHeader = 1024
	maxJSONData   = 4096
)

// deadLetterJSON is one line of `dlq list --json` (docs/operations.md).
type deadLetterJSON struct {
	Seq        uint64    `json:"seq"`
	Time       time.Time `json:"time"`
	Subject    string    `json:"subject"`
	Source     string    `json:"source,omitempty"`
	RunID      string    `json:"run_id,omitempty"`
	Deliveries *int64    `json:"deliveries,omitempty"`
	Reason     string    `json:"reason"`
	MsgID      string    `json:"msg_id,omitempty"`
	// Truncated: the message was cut to fit the dead-letter stream.
	Truncated bool `json:"truncated"`
	// Size is the stored data's length; Data its first maxJSONData bytes
	// as text (invalid UTF-8 replaced), DataClipped when cut here.
	Size        int    `json:"size"`
	Data        string `json:"data"`
	DataClipped bool   `json:"data_clipped"`
}

func writeDeadLetterJSON(w io.Writer, d bus.DeadLetter) error {
	j := deadLetterJSON{
		Seq: d.Seq, Time: d.Time.UTC(), Subject: termsafe.Clip(d.Subject, maxJSONHeader), Source: termsafe.Clip(d.Source, maxJSONHeader),
		RunID: termsafe.Clip(d.RunID, maxJSONHeader), Reason: termsafe.Clip(d.Reason, maxJSONHeader), MsgID: termsafe.Clip(d.MsgID, maxJSONHeader),
		Truncated: d.Truncated, Size: len(d.Data), Data: termsafe.Clip(string(d.Data), maxJSONData), DataClipped: len(d.Data) > maxJSONData,
	}
	if n, err := strconv.ParseInt(d.Deliveries, 10, 64); err == nil {
		j.Deliveries = &n
	}
	data, err := message.Encode(j)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(w, "%s\n", termsafe.JSON(data))
	return err
}
