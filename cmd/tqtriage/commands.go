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
	"runtime/debug"
	"strconv"
	"strings"
	"time"

	"github.com/rs/zerolog"

	"github.com/tqtriage/tqtriage/bus"
	"github.com/tqtriage/tqtriage/internal/buildinfo"
	"github.com/tqtriage/tqtriage/internal/gate"
	"github.com/tqtriage/tqtriage/internal/httpmetrics"
	"github.com/tqtriage/tqtriage/internal/retry"
	"github.com/tqtriage/tqtriage/internal/termsafe"
	"github.com/tqtriage/tqtriage/internal/throttle"
	"github.com/tqtriage/tqtriage/message"
	"github.com/tqtriage/tqtriage/pipeline"
	"github.com/tqtriage/tqtriage/run"
	"github.com/tqtriage/tqtriage/threatq"
	"github.com/tqtriage/tqtriage/threatq/export"
)

const natsURLHelp = "NATS server (default nats://127.0.0.1:4222)"

func cmdWorker(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	return runReplica(ctx, args, stdout, stderr, "worker", bus.RoleWorker, addTriage, func(s *settings) buildFunc {
		t := readTriage(s)
		return func(ctx context.Context, log zerolog.Logger, hm *httpmetrics.Metrics) (replica, error) {
			t.settings.Metrics, t.settings.Log = hm, log
			// Built before NATS is tried (its gate obtains a token at
			// once); the claims and the fleet come with the bus.
			var claims lateClaims
			t.settings.Fleet = &throttle.FleetRef{}
			w, err := pipeline.NewWorker(ctx, t.settings, t.worker, &claims)
			if err != nil {
				return replica{}, err
			}
			return replica{gate: w.Gate(), serve: func(ctx context.Context, b *bus.Bus, log zerolog.Logger, m *bus.Metrics) error {
				claims.Claims = b
				// TRIAGE_RATE_LIMIT is the fleet's: every worker of
				// this NATS takes its share, and a 429 pauses all.
				leave, err := pipeline.JoinFleet(ctx, b, t.settings.Fleet)
				if err != nil {
					log.Warn().Err(err).Msg("could not join the workers' fleet: this replica takes the whole rate limit and pauses alone")
				}
				defer leave()
				log.Info().Int("concurrency", t.worker.Concurrency).Int("objects_per_run", t.worker.ObjectsPerRun).Float64("fleet_rate_limit", t.settings.RateLimit).Dur("max_pause", t.worker.MaxPause).
					Str("version", buildinfo.Get().Version).Str("commit", buildinfo.Get().Commit).Msg("worker started")
				return pipeline.ServeWorkers(ctx, b, w, log, m)
			}}, nil
		}
	})
}

func cmdWriteback(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	addFlags := func(s *settings) { addThreatQ(s); addWriteback(s) }
	return runReplica(ctx, args, stdout, stderr, "writeback", bus.RoleWriteback, addFlags, func(s *settings) buildFunc {
		t := readThreatQ(s, "to write attributes back")
		cfg := readWriteback(s, &t)
		return func(ctx context.Context, log zerolog.Logger, hm *httpmetrics.Metrics) (replica, error) {
			t.Metrics, t.Log = hm, log
			wr, g, err := newWriter(ctx, t, cfg)
			if err != nil {
				return replica{}, err
			}
			return replica{gate: g, serve: func(ctx context.Context, b *bus.Bus, log zerolog.Logger, m *bus.Metrics) error {
				log.Info().Int("concurrency", cfg.Concurrency).Dur("max_pause", cfg.MaxPause).
					Str("version", buildinfo.Get().Version).Str("commit", buildinfo.Get().Commit).Msg("write-back started")
				return pipeline.ServeWriteback(ctx, b, wr, log, m)
			}}, nil
		}
	})
}

// A replica is built in two steps: its remote service's client and gate
// from the settings (so that a bad address or secret fails before NATS is
// tried, and the gate starts obtaining a token at once), then its service
// on the connected bus, which serves until ctx ends.
type (
	buildFunc func(ctx context.Context, log zerolog.Logger, hm *httpmetrics.Metrics) (replica, error)
	replica   struct {
		gate  *gate.Gate // its standing with its remote service
		serve func(ctx context.Context, b *bus.Bus, log zerolog.Logger, m *bus.Metrics) error
	}
)

// runReplica is what the worker and write-back commands share: settings,
// logger, NATS, the HTTP endpoints, serving until a signal.
func runReplica(ctx context.Context, args []string, stdout, stderr io.Writer, name string, role bus.Role, addFlags func(*settings), read func(*settings) buildFunc) error {
	s := newSettings(name, name+" [flags]", stdout, stderr)
	addNATS(s, natsURLHelp)
	addFlags(s)
	addHTTP(s, map[string]string{"worker": workerHTTPAddr, "writeback": writebackHTTPAddr}[name])
	addLog(s)
	log, err := s.parseWithLogger(args, stderr)
	if err != nil {
		return err
	}
	build := read(s)
	if err := s.err(); err != nil {
		return usageErr("%w", err)
	}
	if gogc, ours := tuneCollector(); ours {
		log.Info().Int("gogc", gogc).Msg("the collector is set for a replica's small heap; set GOGC to choose")
	}
	m := pipeline.NewMetrics()
	rep, err := build(ctx, log, m.HTTP)
	if err != nil {
		return err
	}
	b, err := connect(ctx, s, log, role)
	if err != nil {
		return err
	}
	defer b.Close()
	m.WatchConsumers(b, roleConsumers[role]...)
	stopHTTP, err := serveHTTP(ctx, s.str("http-addr"), m, replicaReady(ctx, b, []*gate.Gate{rep.gate}, roleConsumers[role]...), log)
	if err != nil {
		return err
	}
	defer stopHTTP()
	err = rep.serve(ctx, b, log, m.Bus)
	log.Info().Msg(strings.Replace(name, "writeback", "write-back", 1) + " stopped")
	return err
}

// replicaGOGC is a worker or write-back replica's collector setting when
// GOGC is not set. Its heap is small (the jobs in hand, no embedded
// server), so Go's default of 100 has the collector run every few
// megabytes: `make bench`, the worker replica alone, 20,000 jobs, took
// 74 to 97 µs of CPU a job at 100 and 64 to 74 at 400, for a peak RSS of
// 43 MiB instead of 30. run keeps Go's default: its heap holds the
// embedded server's, and its peak would grow with it.
const replicaGOGC = 400

// tuneCollector sets replicaGOGC unless GOGC is set, and says which
// setting the collector runs at and whether it was ours.
func tuneCollector() (gogc int, ours bool) {
	if v, set := os.LookupEnv("GOGC"); set {
		n, _ := strconv.Atoi(v)
		return n, false
	}
	debug.SetGCPercent(replicaGOGC)
	return replicaGOGC, true
}

// addPublish adds the flags of one run.
func addPublish(s *settings) {
	s.add("action", "", "", "create or update (required)")
	s.add("collection", "", "", "ThreatQ data collection hash to read")
	s.add("file", "", "", "export file to read (JSON lines or CSV id,type,value); - for standard input")
	s.addBool("upsert", "", false, "update: create the indicators Triage does not have")
	s.add("run-id", "", "", "run id (default: a new one); an earlier one resumes its publishing, repeats dropped")
	s.add("page-size", "THREATQ_PAGE_SIZE", strconv.Itoa(threatq.DefaultPageSize), fmt.Sprintf("indicators per page when reading a collection (1 to %d)", threatq.MaxPageSize))
	addRunOutput(s)
}

// publishSetup is what the flags of one run say.
type publishSetup struct {
	opts       run.Options
	collection string
	file       string
	pageSize   int
	threatq    pipeline.ThreatQSettings // to read a collection
	report     string                   // --report FILE
}

func readPublish(s *settings) publishSetup {
	p := publishSetup{
		opts:       run.Options{Upsert: s.boolean("upsert"), ID: s.str("run-id"), DryRun: s.boolean("dry-run")},
		report:     s.str("report"),
		collection: s.str("collection"),
		file:       s.str("file"),
		pageSize:   s.integer("page-size", 1),
	}
	switch a := s.str("action"); a {
	case "":
		s.errs = append(s.errs, errors.New("--action is required: create or update"))
	default:
		action, err := message.ParseAction(a)
		if err != nil {
			s.errs = append(s.errs, fmt.Errorf("--action %q: want create or update", a))
		}
		p.opts.Action = action
	}
	if (p.collection == "") == (p.file == "") {
		s.errs = append(s.errs, errors.New("give one source: --collection HASH or --file PATH (- for standard input)"))
	}
	if p.collection != "" {
		p.threatq = readThreatQ(s, "to read a collection")
		p.threatq.ReadOnly = p.opts.DryRun
	}
	if p.pageSize > threatq.MaxPageSize {
		s.errs = append(s.errs, fmt.Errorf("%s=%d: at most %d", s.name("page-size"), p.pageSize, threatq.MaxPageSize))
	}
	if p.opts.Upsert && p.opts.Action == message.ActionCreate {
		s.errs = append(s.errs, errors.New("--upsert applies to --action update only"))
	}
	if p.opts.ID != "" {
		if err := message.CheckRunID(p.opts.ID); err != nil {
			s.errs = append(s.errs, fmt.Errorf("--run-id: %w", err))
		}
	}
	return p
}

// source opens the run's input. close must be called when publishing ends.
func (p *publishSetup) source(ctx context.Context, stdin io.Reader, m *pipeline.Metrics) (iter.Seq[run.Item], func(), error) {
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
		return run.FromExport(export.NewReader(r)), closeFn, nil
	}
	p.threatq.Metrics = m.HTTP
	tq, err := pipeline.NewThreatQ(ctx, p.threatq, retry.Policy{MaxAttempts: 6})
	if err != nil {
		return nil, nil, err
	}
	p.opts.Source = "collection " + p.collection
	// The name is for reports only; reading the collection will tell
	// whether it exists.
	p.opts.SourceName, _ = tq.CollectionName(ctx, p.collection)
	return run.FromCollection(ctx, tq, p.collection, p.pageSize), func() {}, nil
}

func cmdPublish(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	s := newSettings("publish", "publish --action create|update (--collection HASH | --file PATH|-) [--upsert] [--dry-run] [--wait [--report FILE]] [flags]", stdout, stderr)
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
	if p.report != "" && !s.boolean("wait") {
		s.errs = append(s.errs, errors.New("--report needs --wait: the report is written when the run is complete"))
	}
	if err := s.err(); err != nil {
		return usageErr("%w", err)
	}
	m := pipeline.NewMetrics()
	items, closeSrc, err := p.source(ctx, os.Stdin, m)
	if err != nil {
		return err
	}
	defer closeSrc()
	b, err := connect(ctx, s, log, bus.RolePublisher)
	if err != nil {
		return err
	}
	defer b.Close()
	if s.boolean("wait") {
		p.opts.Latency = run.NewLatency()
	}
	rec, err := run.Publish(ctx, b, p.opts, items, log)
	if rec.ID != "" {
		fmt.Fprintln(stdout, rec.ID)
	}
	if err != nil || !s.boolean("wait") {
		return err
	}
	fo := followOptions(stderr)
	fo.Latency = p.opts.Latency
	tally, rec, err := run.Follow(ctx, b, rec.ID, fo)
	failed := tally != nil && tally.Count(message.StatusFailed) > 0
	if rerr := writeReport(p.report, rec, tally, failed, m); rerr != nil {
		return errors.Join(err, rerr)
	}
	if err != nil {
		return err
	}
	tally.Summary(stdout, run.Header(rec), rec.Total)
	if failed {
		return errSilent
	}
	return nil
}

func cmdRun(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	s := newSettings("run", "run --action create|update (--collection HASH | --file PATH|-) [--upsert] [--dry-run] [--report FILE] [flags]", stdout, stderr)
	addPublish(s)
	addNATS(s, "NATS server (default: an embedded one, its store under --data-dir)")
	s.add("data-dir", "TQTRIAGE_DATA_DIR", "data", "store of the embedded NATS server")
	addTriage(s)
	addThreatQ(s)
	addWriteback(s)
	addHTTP(s, "")
	addLog(s)
	log, err := s.parseWithLogger(args, stderr)
	if err != nil {
		return err
	}
	p := readPublish(s)
	t := readTriage(s)
	q := p.threatq
	if p.collection == "" {
		q = readThreatQ(s, "to write attributes back")
	}
	wcfg := readWriteback(s, &q)
	if err := s.err(); err != nil {
		return usageErr("%w", err)
	}
	if p.opts.DryRun {
		// Nothing this process holds can write: real jobs and results
		// met on a shared server are left to other replicas.
		t.settings.ReadOnly, q.ReadOnly, wcfg.OnlyDryRuns = true, true, true
	}
	m := pipeline.NewMetrics()
	items, closeSrc, err := p.source(ctx, os.Stdin, m)
	if err != nil {
		return err
	}
	defer closeSrc()

	b, shutdown, err := connectOrEmbed(ctx, s, log)
	if err != nil {
		return err
	}
	defer shutdown()
	t.settings.Log = log
	w, err := newWorker(ctx, t, b, m)
	if err != nil {
		return err
	}
	q.Metrics, q.Log = m.HTTP, log
	wr, qg, err := newWriter(ctx, q, wcfg)
	if err != nil {
		return err
	}
	// A run whose credentials are refused publishes nothing: its jobs
	// would wait for credentials that may never work.
	if err := credentialsRefused(ctx, w.Gate(), qg); err != nil {
		return fmt.Errorf("nothing published: %w", err)
	}
	m.WatchConsumers(b, bus.ConsumerWorkers, bus.ConsumerWriteback)
	stopHTTP, err := serveHTTP(ctx, s.str("http-addr"), m, replicaReady(ctx, b, []*gate.Gate{w.Gate(), qg}, bus.ConsumerWorkers, bus.ConsumerWriteback), log)
	if err != nil {
		return err
	}
	defer stopHTTP()
	once := pipeline.Once{Bus: b, Worker: w, Writer: wr, Log: log, Metrics: m.Bus}
	out, err := once.Run(ctx, p.opts, items, followOptions(stderr))
	if out.Record.ID != "" {
		if rerr := writeReport(p.report, out.Record, out.Tally, out.Failed(), m); rerr != nil {
			err = errors.Join(err, rerr)
		}
	}
	return finishRun(stdout, out, err)
}

// finishRun prints what `run` came to and says how it should exit.
func finishRun(stdout io.Writer, out pipeline.Outcome, err error) error {
	if out.Record.ID != "" {
		fmt.Fprintln(stdout, out.Record.ID)
	}
	if out.Tally != nil {
		out.Tally.Summary(stdout, run.Header(out.Record), out.Record.Total)
	}
	if err != nil {
		return err
	}
	if out.Failed() {
		return errSilent
	}
	return nil
}

// connectOrEmbed connects to $NATS_URL, or, when it is unset, starts an
// embedded JetStream server with its store under --data-dir.
func connectOrEmbed(ctx context.Context, s *settings, log zerolog.Logger) (*bus.Bus, func(), error) {
	if s.str("nats-url") != "" {
		b, err := connect(ctx, s, log, bus.RoleOperator)
		if err != nil {
			return nil, nil, err
		}
		return b, b.Close, nil
	}
	dir := s.str("data-dir")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, nil, fmt.Errorf("data directory: %w", err)
	}
	cfg := busConfig(s, "", bus.RoleOperator)
	if err := s.err(); err != nil {
		return nil, nil, usageErr("%w", err)
	}
	b, stop, err := pipeline.Embedded(ctx, dir, cfg, log)
	if err != nil {
		return nil, nil, err
	}
	log.Info().Str("store", dir).Msg("embedded NATS server started")
	return b, stop, nil
}

func cmdStatus(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	s := newSettings("status", "status RUN_ID [--json] [flags]", stdout, stderr)
	s.addBool("json", "", false, "print one JSON document, the run's report (docs/operations.md)")
	addNATS(s, natsURLHelp)
	addLog(s)
	if err := s.parse(args); err != nil {
		return usageErr("%w", err)
	}
	// Flags may come after the run id too.
	var ids []string
	for s.fs.NArg() > 0 {
		ids = append(ids, s.fs.Arg(0))
		if err := s.parse(s.fs.Args()[1:]); err != nil {
			return usageErr("%w", err)
		}
	}
	if len(ids) != 1 {
		return usageErr("status takes one run id")
	}
	id := ids[0]
	log, err := newLogger(s, stderr)
	if err != nil {
		return usageErr("%w", err)
	}
	b, err := connect(ctx, s, log, bus.RoleViewer)
	if err != nil {
		return err
	}
	defer b.Close()
	tally, rec, err := run.Status(ctx, b, id)
	if errors.Is(err, run.ErrNotFound) {
		return fmt.Errorf("no run %s is recorded (runs are kept as long as their results)", id)
	}
	if err != nil {
		return err
	}
	if s.boolean("json") {
		return run.NewReport(rec, tally).Write(stdout)
	}
	state := tally.State(rec) // publishing and complete say enough as they are
	switch state {
	case "in_progress":
		state = fmt.Sprintf("in progress: %d of %d jobs have a result", tally.Done(), rec.Total)
	case "writing_back":
		state = fmt.Sprintf("every job has a result; %d still to be written back to ThreatQ", tally.AwaitingWriteback())
	}
	tally.Summary(stdout, run.Header(rec)+"\n  started "+rec.StartedAt.Local().Format(time.DateTime)+"; "+state, rec.Total)
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
	if verb == "list" {
		s.addBool("json", "", false, "print one JSON object a line, each dead letter with its data cut to 4 KiB (docs/operations.md)")
	}
	addNATS(s, natsURLHelp)
	addLog(s)
	if err := s.parse(args[1:]); err != nil {
		return usageErr("%w", err)
	}
	var kind message.Letters
	if a := s.str("action"); a != "" {
		var err error
		if kind, err = message.ParseLetters(a); err != nil {
			return usageErr("--action %w", err)
		}
		if verb == "replay" && !kind.Replayable() {
			return usageErr("dead letters on %s did not parse and cannot be replayed; list them, fix the publisher, publish again", kind.Subject())
		}
	}
	log, err := newLogger(s, stderr)
	if err != nil {
		return usageErr("%w", err)
	}
	role := bus.RoleViewer
	if verb == "replay" {
		role = bus.RoleOperator
	}
	b, err := connect(ctx, s, log, role)
	if err != nil {
		return err
	}
	defer b.Close()
	if verb == "replay" {
		n, err := b.Replay(ctx, kind, func(d bus.DeadLetter, err error) {
			switch {
			case bus.NotReplayable(err):
				fmt.Fprintf(stderr, "dead letter %d skipped: %s\n", d.Seq, termsafe.Line(err.Error()))
			case err != nil:
				fmt.Fprintf(stderr, "dead letter %d not replayed: %s\n", d.Seq, termsafe.Line(err.Error()))
			}
		})
		fmt.Fprintf(stdout, "replayed %d dead letters\n", n.Replayed)
		if n.Skipped > 0 {
			fmt.Fprintf(stdout, "skipped %d that cannot be replayed (see above; they stay on the dead-letter stream)\n", n.Skipped)
		}
		if err == nil && n.Skipped > 0 {
			err = errSilent
		}
		return err
	}
	if s.boolean("json") {
		var werr error
		err = b.ListDLQ(ctx, kind, func(d bus.DeadLetter) bool {
			werr = writeDeadLetterJSON(stdout, d)
			return werr == nil
		})
		return errors.Join(err, werr)
	}
	n := 0
	err = b.ListDLQ(ctx, kind, func(d bus.DeadLetter) bool {
		n++
		fmt.Fprintf(stdout, "%d\t%s\t%s\trun=%s\tdeliveries=%s\t%s\n\t%s\n", d.Seq, d.Time.Local().Format(time.DateTime), termsafe.Line(d.Subject),
			termsafe.Line(d.RunID), termsafe.Line(d.Deliveries), termsafe.Line(d.Reason), termsafe.Line(termsafe.Clip(string(d.Data), 300)))
		return true
	})
	fmt.Fprintf(stdout, "%d dead letters\n", n)
	return err
}
