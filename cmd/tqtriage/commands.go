package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"iter"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/tqtriage/tqtriage/bus"
	"github.com/tqtriage/tqtriage/internal/retry"
	"github.com/tqtriage/tqtriage/message"
	"github.com/tqtriage/tqtriage/pipeline"
	"github.com/tqtriage/tqtriage/publish"
	"github.com/tqtriage/tqtriage/threatq/export"
)

const natsURLHelp = "NATS server (default nats://127.0.0.1:4222)"

func cmdWorker(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	return runReplica(ctx, args, stdout, stderr, "worker", addTriage, func(s *settings) startFunc {
		t := readTriage(s)
		return func(ctx context.Context, b *bus.Bus, log zerolog.Logger, reg *prometheus.Registry) (func(context.Context) error, error) {
			w, err := newWorker(ctx, t, b, log, reg)
			if err != nil {
				return nil, err
			}
			log.Info().Int("concurrency", t.conc).Int("objects_per_run", t.worker.ObjectsPerRun).Float64("rate_limit", t.settings.RateLimit).Msg("worker started")
			return func(ctx context.Context) error { return pipeline.ServeWorkers(ctx, b, w, t.conc) }, nil
		}
	})
}

func cmdWriteback(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	return runReplica(ctx, args, stdout, stderr, "writeback", addThreatQ, func(s *settings) startFunc {
		t := readThreatQ(s, "to write attributes back")
		return func(ctx context.Context, b *bus.Bus, log zerolog.Logger, reg *prometheus.Registry) (func(context.Context) error, error) {
			wr, err := newWriter(ctx, t, b, log, reg)
			if err != nil {
				return nil, err
			}
			log.Info().Int("concurrency", t.conc).Msg("write-back started")
			return func(ctx context.Context) error { return pipeline.ServeWriteback(ctx, b, wr, t.conc) }, nil
		}
	})
}

// startFunc builds a replica on a connected bus and returns what serves it
// until its context ends.
type startFunc func(ctx context.Context, b *bus.Bus, log zerolog.Logger, reg *prometheus.Registry) (func(context.Context) error, error)

// runReplica is what the worker and write-back commands share: settings,
// logger, NATS, the HTTP endpoints, serving until a signal.
func runReplica(ctx context.Context, args []string, stdout, stderr io.Writer, name string, addFlags func(*settings), read func(*settings) startFunc) error {
	s := newSettings(name, name+" [flags]", stdout, stderr)
	addNATS(s, natsURLHelp)
	addFlags(s)
	addHTTP(s, ":8080")
	addLog(s)
	log, err := s.parseWithLogger(args, stderr)
	if err != nil {
		return err
	}
	start := read(s)
	if err := s.err(); err != nil {
		return usageErr("%w", err)
	}
	b, err := connect(ctx, s, log)
	if err != nil {
		return err
	}
	defer b.Close()
	reg := prometheus.NewRegistry()
	serve, err := start(ctx, b, log, reg)
	if err != nil {
		return err
	}
	stopHTTP, err := serveHTTP(ctx, s.str("http-addr"), reg, natsReady(b), log)
	if err != nil {
		return err
	}
	defer stopHTTP()
	err = serve(ctx)
	log.Info().Msg(strings.Replace(name, "writeback", "write-back", 1) + " stopped")
	return err
}

// addPublish adds the flags of one run.
func addPublish(s *settings) {
	s.add("action", "", "", "create or update (required)")
	s.add("collection", "", "", "ThreatQ data collection hash to read")
	s.add("file", "", "", "export file to read (JSON lines or CSV id,type,value); - for standard input")
	s.addBool("upsert", "", false, "update: create the indicators Triage does not have")
	s.add("run-id", "", "", "run id (default: a new one); an earlier one resumes its publishing, repeats dropped")
	s.add("page-size", "THREATQ_PAGE_SIZE", "100", "indicators per page when reading a collection (1 to 500)")
}

type publishSetup struct {
	opts       publish.Options
	collection string
	file       string
	pageSize   int
}

func readPublish(s *settings) publishSetup {
	p := publishSetup{
		opts:       publish.Options{Action: s.str("action"), Upsert: s.boolean("upsert"), RunID: s.str("run-id")},
		collection: s.str("collection"),
		file:       s.str("file"),
		pageSize:   s.integer("page-size", 1),
	}
	switch p.opts.Action {
	case message.ActionCreate, message.ActionUpdate:
	case "":
		s.errs = append(s.errs, errors.New("--action is required: create or update"))
	default:
		s.errs = append(s.errs, fmt.Errorf("--action %q: want create or update", p.opts.Action))
	}
	if (p.collection == "") == (p.file == "") {
		s.errs = append(s.errs, errors.New("give one source: --collection HASH or --file PATH (- for standard input)"))
	}
	if p.pageSize > 500 {
		s.errs = append(s.errs, fmt.Errorf("%s=%d: at most 500", s.name("page-size"), p.pageSize))
	}
	if p.opts.Upsert && p.opts.Action == message.ActionCreate {
		s.errs = append(s.errs, errors.New("--upsert applies to --action update only"))
	}
	if p.opts.RunID != "" && !message.ValidRunID(p.opts.RunID) {
		s.errs = append(s.errs, fmt.Errorf("--run-id %q: want 1 to 64 letters, digits, '-' or '_'", p.opts.RunID))
	}
	return p
}

// source opens the run's input. close must be called when publishing ends.
func (p *publishSetup) source(ctx context.Context, s *settings, stdin io.Reader) (iter.Seq[publish.Item], func(), error) {
	if p.file != "" {
		var r io.Reader = stdin
		closeFn := func() {}
		p.opts.Source = "stdin"
		if p.file != "-" {
			f, err := os.Open(p.file)
			if err != nil {
				return nil, nil, fmt.Errorf("export file: %w", err)
			}
			r, closeFn = f, func() { f.Close() }
			abs, _ := filepath.Abs(p.file)
			p.opts.Source = "file " + abs
		}
		return publish.FromExport(export.NewReader(r)), closeFn, nil
	}
	t := readThreatQ(s, "to read a collection")
	if err := s.err(); err != nil {
		return nil, nil, usageErr("%w", err)
	}
	tq, err := pipeline.NewThreatQ(ctx, t.settings, retry.Policy{MaxAttempts: 6})
	if err != nil {
		return nil, nil, err
	}
	p.opts.Source = "collection " + p.collection
	if name, err := tq.CollectionName(ctx, p.collection); err == nil {
		p.opts.SourceName = name
	} else {
		// The name is for reports only; reading the collection will tell
		// whether it exists.
		p.opts.SourceName = ""
	}
	return publish.FromCollection(ctx, tq, p.collection, p.pageSize), func() {}, nil
}

func cmdPublish(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	s := newSettings("publish", "publish --action create|update (--collection HASH | --file PATH|-) [--upsert] [--wait] [flags]", stdout, stderr)
	addPublish(s)
	s.addBool("wait", "", false, "follow the run until every job has a result, then print the summary")
	addNATS(s, natsURLHelp)
	addThreatQ(s)
	addLog(s)
	log, err := s.parseWithLogger(args, stderr)
	if err != nil {
		return err
	}
	p := readPublish(s)
	if err := s.err(); err != nil {
		return usageErr("%w", err)
	}
	items, closeSrc, err := p.source(ctx, s, os.Stdin)
	if err != nil {
		return err
	}
	defer closeSrc()
	b, err := connect(ctx, s, log)
	if err != nil {
		return err
	}
	defer b.Close()
	run, err := publish.Publish(ctx, b, p.opts, items, log)
	if run.ID != "" {
		fmt.Fprintln(stdout, run.ID)
	}
	if err != nil {
		return err
	}
	if !s.boolean("wait") {
		return nil
	}
	tally, run, err := publish.Wait(ctx, b, run.ID, publish.WaitOptions{Out: stderr, Terminal: isTerminal(stderr)})
	if err != nil {
		return err
	}
	tally.Summary(stdout, runHeader(run), run.Total)
	if tally.Count(message.StatusFailed) > 0 {
		return errSilent
	}
	return nil
}

func runHeader(r bus.Run) string {
	src := r.Source
	if r.SourceName != "" {
		src += " (" + r.SourceName + ")"
	}
	h := fmt.Sprintf("run %s: %s from %s", r.ID, r.Action, src)
	if r.Upsert {
		h += ", upsert"
	}
	if r.Rejected > 0 {
		h += fmt.Sprintf("; %d input lines or repeats not queued", r.Rejected)
	}
	if r.Error != "" {
		h += "\n  publishing stopped early: " + r.Error
	}
	return h
}

func cmdRun(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	s := newSettings("run", "run --action create|update (--collection HASH | --file PATH|-) [--upsert] [flags]", stdout, stderr)
	addPublish(s)
	addNATS(s, "NATS server (default: an embedded one, its store under --data-dir)")
	s.add("data-dir", "TQTRIAGE_DATA_DIR", "data", "store of the embedded NATS server")
	addTriage(s)
	addThreatQ(s)
	addHTTP(s, "")
	addLog(s)
	log, err := s.parseWithLogger(args, stderr)
	if err != nil {
		return err
	}
	p := readPublish(s)
	t := readTriage(s)
	q := readThreatQ(s, "to write attributes back")
	if err := s.err(); err != nil {
		return usageErr("%w", err)
	}
	items, closeSrc, err := p.source(ctx, s, os.Stdin)
	if err != nil {
		return err
	}
	defer closeSrc()

	b, shutdown, err := connectOrEmbed(ctx, s, log)
	if err != nil {
		return err
	}
	defer shutdown()
	reg := prometheus.NewRegistry()
	w, err := newWorker(ctx, t, b, log, reg)
	if err != nil {
		return err
	}
	wr, err := newWriter(ctx, q, b, log, reg)
	if err != nil {
		return err
	}
	stopHTTP, err := serveHTTP(ctx, s.str("http-addr"), reg, natsReady(b), log)
	if err != nil {
		return err
	}
	defer stopHTTP()
	once := pipeline.Once{Bus: b, Worker: w, Writer: wr, WorkerConcurrency: t.conc, WritebackConcurrency: q.conc, Log: log}
	out, err := once.Run(ctx, p.opts, items, publish.WaitOptions{Out: stderr, Terminal: isTerminal(stderr)})
	if out.Run.ID != "" {
		fmt.Fprintln(stdout, out.Run.ID)
	}
	if out.Tally != nil {
		printOutcome(stdout, out)
	}
	if err != nil {
		return err
	}
	if out.Failed() {
		return errSilent
	}
	return nil
}

func printOutcome(w io.Writer, out pipeline.Outcome) {
	out.Tally.Summary(w, runHeader(out.Run), out.Run.Total)
	if n := len(out.WritebackFailures); n > 0 {
		fmt.Fprintf(w, "  write-back  %d results could not be written to ThreatQ (dead letters on %s; `tqtriage dlq replay --action writeback`)\n", n, message.DLQWriteback)
		for i, d := range out.WritebackFailures {
			if i == 5 {
				break
			}
			fmt.Fprintf(w, "    %s\n", d.Reason())
		}
	}
}

// connectOrEmbed connects to $NATS_URL, or, when it is unset, starts an
// embedded JetStream server with its store under --data-dir.
func connectOrEmbed(ctx context.Context, s *settings, log zerolog.Logger) (*bus.Bus, func(), error) {
	if s.str("nats-url") != "" {
		b, err := connect(ctx, s, log)
		if err != nil {
			return nil, nil, err
		}
		return b, b.Close, nil
	}
	dir := s.str("data-dir")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, nil, fmt.Errorf("data directory: %w", err)
	}
	srv, err := bus.StartEmbedded(bus.EmbeddedOptions{StoreDir: dir})
	if err != nil {
		return nil, nil, err
	}
	cfg := busConfig(s, "")
	cfg.InProcess = srv
	b, err := bus.Connect(ctx, cfg, log)
	if err != nil {
		srv.Shutdown()
		return nil, nil, err
	}
	log.Info().Str("store", dir).Msg("embedded NATS server started")
	return b, func() { b.Close(); srv.Shutdown(); srv.WaitForShutdown() }, nil
}

func cmdStatus(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	s := newSettings("status", "status RUN_ID [flags]", stdout, stderr)
	addNATS(s, natsURLHelp)
	addLog(s)
	if err := s.parse(args); err != nil {
		return usageErr("%w", err)
	}
	if s.fs.NArg() != 1 {
		return usageErr("status takes one run id")
	}
	id := s.fs.Arg(0)
	log, err := newLogger(s, stderr)
	if err != nil {
		return usageErr("%w", err)
	}
	b, err := connect(ctx, s, log)
	if err != nil {
		return err
	}
	defer b.Close()
	tally, run, err := publish.Status(ctx, b, id)
	if errors.Is(err, bus.ErrRunNotFound) {
		return fmt.Errorf("no run %s is recorded (runs are kept as long as their results)", id)
	}
	if err != nil {
		return err
	}
	state := "complete"
	switch {
	case !run.Published:
		state = "publishing"
	case int64(tally.Done()) < run.Total:
		state = fmt.Sprintf("in progress: %d of %d jobs have a result", tally.Done(), run.Total)
	}
	tally.Summary(stdout, runHeader(run)+"\n  started "+run.StartedAt.Local().Format(time.DateTime)+"; "+state, run.Total)
	return nil
}

const dlqUsage = "usage: tqtriage dlq list|replay [--action create|update|writeback|invalid] [flags]"

func cmdDLQ(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) > 0 {
		switch args[0] {
		case "-h", "-help", "--help", "help":
			fmt.Fprintf(stdout, "%s\n\nRun 'tqtriage dlq list -h' or 'tqtriage dlq replay -h' for the flags.\n", dlqUsage)
			return flag.ErrHelp
		}
	}
	if len(args) == 0 || (args[0] != "list" && args[0] != "replay") {
		return usageErr("%s", dlqUsage)
	}
	verb := args[0]
	s := newSettings("dlq "+verb, "dlq "+verb+" [--action A] [flags]", stdout, stderr)
	s.add("action", "", "", "only the dead letters of this action: create, update, writeback (and invalid, for list)")
	addNATS(s, natsURLHelp)
	addLog(s)
	if err := s.parse(args[1:]); err != nil {
		return usageErr("%w", err)
	}
	action := s.str("action")
	switch action {
	case "", message.ActionCreate, message.ActionUpdate, "writeback":
	case "invalid":
		if verb == "replay" {
			return usageErr("dead letters on %s did not parse and cannot be replayed; list them, fix the publisher, publish again", message.DLQInvalid)
		}
	default:
		return usageErr("--action %q: want create, update, writeback or invalid", action)
	}
	log, err := newLogger(s, stderr)
	if err != nil {
		return usageErr("%w", err)
	}
	b, err := connect(ctx, s, log)
	if err != nil {
		return err
	}
	defer b.Close()
	if verb == "replay" {
		n, err := b.Replay(ctx, action, func(d bus.DeadLetter, err error) {
			if err != nil {
				fmt.Fprintf(stderr, "dead letter %d: %v\n", d.Seq, err)
			}
		})
		fmt.Fprintf(stdout, "replayed %d dead letters\n", n)
		return err
	}
	filter := ""
	if action != "" {
		filter = message.DLQPrefix + action
	}
	n := 0
	err = b.ListDLQ(ctx, filter, func(d bus.DeadLetter) bool {
		n++
		fmt.Fprintf(stdout, "%d\t%s\t%s\trun=%s\tdeliveries=%s\t%s\n\t%s\n", d.Seq, d.Time.Local().Format(time.DateTime), d.Subject,
			d.Header.Get(message.HeaderRunID), d.Header.Get(message.HeaderDeliveries), d.Reason(), clip(string(d.Data), 300))
		return true
	})
	fmt.Fprintf(stdout, "%d dead letters\n", n)
	return err
}

func clip(s string, n int) string {
	s = strings.ReplaceAll(s, "\n", " ")
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}
