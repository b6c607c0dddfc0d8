package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/rs/zerolog"

	"github.com/tqtriage/tqtriage/bus"
	"github.com/tqtriage/tqtriage/internal/retry"
	"github.com/tqtriage/tqtriage/internal/sample"
	"github.com/tqtriage/tqtriage/message"
	"github.com/tqtriage/tqtriage/pipeline"
	"github.com/tqtriage/tqtriage/run"
	"github.com/tqtriage/tqtriage/threatq"
	"github.com/tqtriage/tqtriage/threatq/threatqsim"
	"github.com/tqtriage/tqtriage/triage/triagesim"
	"github.com/tqtriage/tqtriage/worker"
	"github.com/tqtriage/tqtriage/writeback"
)

// sims are the two simulators, served on real listeners.
type sims struct {
	triage     *triagesim.Server
	threatq    *threatqsim.Server
	triageURL  string
	threatqURL string
	servers    []*http.Server
}

// serveSims serves both simulators; with admin, the ThreatQ listener also
// answers the outage knob of `sim` (simAdmin).
func serveSims(triageAddr, threatqAddr string, to triagesim.Options, qo threatqsim.Options, admin bool, log zerolog.Logger) (*sims, error) {
	s := &sims{triage: triagesim.New(to), threatq: threatqsim.New(qo)}
	var err error
	if s.triageURL, err = s.serve(triageAddr, s.triage, log); err != nil {
		return nil, fmt.Errorf("Triage simulator: %w", err)
	}
	var qh http.Handler = s.threatq
	if admin {
		qh = simAdmin(s.threatq, log)
	}
	if s.threatqURL, err = s.serve(threatqAddr, qh, log); err != nil {
		s.close()
		return nil, fmt.Errorf("ThreatQ simulator: %w", err)
	}
	return s, nil
}

// simAdmin is the ThreatQ simulator with its outage knob, for trials and
// the container tests, where the simulator runs in its own process:
//
//	POST /_sim/threatq/down  every ThreatQ request is answered 503 from now on
//	POST /_sim/threatq/up    ThreatQ answers again
//
// Only `sim` serves it; a real ThreatQ has no such path.
func simAdmin(q *threatqsim.Server, log zerolog.Logger) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/", q)
	for path, down := range map[string]bool{"/_sim/threatq/down": true, "/_sim/threatq/up": false} {
		mux.HandleFunc("POST "+path, func(w http.ResponseWriter, _ *http.Request) {
			q.SetDown(down)
			log.Info().Bool("down", down).Msg("ThreatQ simulator outage switched")
			w.WriteHeader(http.StatusNoContent)
		})
	}
	return mux
}

func (s *sims) serve(addr string, h http.Handler, log zerolog.Logger) (string, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return "", err
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	s.servers = append(s.servers, srv)
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error().Err(err).Msg("simulator stopped")
		}
	}()
	return "http://" + ln.Addr().String(), nil
}

func (s *sims) close() {
	for _, srv := range s.servers {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		_ = srv.Shutdown(ctx)
		cancel()
	}
}

// sampleInTriage counts the indicators of a sample collection of n that
// seedSample also puts in Triage: not all of sample.InTriage (an invalid
// sample indicator takes the place of one of them).
func sampleInTriage(n int) int {
	in := map[string]bool{}
	for _, ind := range sample.Indicators(n) {
		in[ind.Value] = true
	}
	c := 0
	for _, ind := range sample.InTriage() {
		if in[ind.ThreatValue] {
			c++
		}
	}
	return c
}

// seedSample loads the sample collection into ThreatQ and a few of its
// indicators into Triage: some from tqtriage's own source, and, where
// Triage keeps one indicator per source, a few of the same values from
// another team's. It returns how many of those another team's are.
func (s *sims) seedSample(n int) (int, error) {
	s.threatq.AddCollection(sample.CollectionHash, sample.CollectionName, sample.Indicators(n))
	if _, err := s.triage.Seed(sample.InTriage()...); err != nil {
		return 0, err
	}
	if s.triage.Options().Uniqueness != triagesim.UniquePerSource {
		return 0, nil
	}
	seeded, err := s.triage.Seed(sample.FromOtherSource()...)
	return len(seeded), err
}

func cmdSim(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	s := newSettings("sim", "sim [flags]", stdout, stderr)
	s.add("triage-addr", "SIM_TRIAGE_ADDR", "127.0.0.1:8081", "address of the Triage simulator")
	s.add("threatq-addr", "SIM_THREATQ_ADDR", "127.0.0.1:8082", "address of the ThreatQ simulator")
	s.add("sample", "SIM_SAMPLE", "300", "indicators in the sample collection (0: none)")
	s.add("triage-latency", "SIM_TRIAGE_LATENCY", "0s", "Triage: delay of every answer")
	s.add("triage-latency-jitter", "SIM_TRIAGE_LATENCY_JITTER", "0s", "Triage: random extra delay, up to this")
	s.add("triage-token-lifetime", "SIM_TRIAGE_TOKEN_LIFETIME", "2h", "Triage: access token lifetime")
	s.add("triage-rate-limit", "SIM_TRIAGE_RATE_LIMIT", "0", "Triage: API requests a second before 429 (0: none)")
	s.add("triage-retry-after", "SIM_TRIAGE_RETRY_AFTER", "0s", "Triage: Retry-After sent with a 429 (0: the refill time)")
	s.add("triage-failure-rate", "SIM_TRIAGE_FAILURE_RATE", "0", "Triage: share of API requests answered 503 (0 to 1)")
	s.add("triage-uniqueness", "SIM_TRIAGE_UNIQUENESS", "source", "Triage: one indicator per type, value and source (source), or per type and value (value)")
	s.add("threatq-latency", "SIM_THREATQ_LATENCY", "0s", "ThreatQ: delay of every answer")
	s.add("threatq-token-lifetime", "SIM_THREATQ_TOKEN_LIFETIME", "48h", "ThreatQ: access token lifetime")
	s.add("threatq-error-rate", "SIM_THREATQ_ERROR_RATE", "0", "ThreatQ: share of API requests answered 5xx (0 to 1)")
	s.add("threatq-max-page-size", "SIM_THREATQ_MAX_PAGE_SIZE", "1000", "ThreatQ: largest collection page")
	addLog(s)
	log, err := s.parseWithLogger(args, stderr)
	if err != nil {
		return err
	}
	to := triagesim.Options{
		Latency: s.duration("triage-latency"), LatencyJitter: s.duration("triage-latency-jitter"),
		TokenLifetime: s.duration("triage-token-lifetime"), RateLimit: s.float("triage-rate-limit", 0),
		RetryAfter: s.duration("triage-retry-after"), FailureRate: s.float("triage-failure-rate", 0),
	}
	switch s.str("triage-uniqueness") {
	case "source":
	case "value":
		to.Uniqueness = triagesim.UniquePerValue
	default:
		s.errs = append(s.errs, fmt.Errorf("%s=%q: want source or value", s.name("triage-uniqueness"), s.str("triage-uniqueness")))
	}
	qo := threatqsim.Options{
		Latency: s.duration("threatq-latency"), TokenLifetime: s.duration("threatq-token-lifetime"),
		ErrorRate: s.float("threatq-error-rate", 0), MaxPageSize: s.integer("threatq-max-page-size", 1),
	}
	n := s.integer("sample", 0)
	if err := s.err(); err != nil {
		return usageErr("%w", err)
	}
	sm, err := serveSims(s.str("triage-addr"), s.str("threatq-addr"), to, qo, true, log)
	if err != nil {
		return err
	}
	defer sm.close()
	if n > 0 {
		if _, err := sm.seedSample(n); err != nil {
			return err
		}
	}
	fmt.Fprintf(stdout, "Triage simulator   %s  (TRIAGE_CLIENT_ID=%s TRIAGE_CLIENT_SECRET=%s)\n", sm.triageURL, triagesim.DefaultClientID, triagesim.DefaultClientSecret)
	fmt.Fprintf(stdout, "ThreatQ simulator  %s  (THREATQ_CLIENT_ID=%s THREATQ_CLIENT_SECRET=%s)\n", sm.threatqURL, threatqsim.DefaultClientID, threatqsim.DefaultClientSecret)
	fmt.Fprintf(stdout, "ThreatQ outage     POST %s/_sim/threatq/down, POST %s/_sim/threatq/up\n", sm.threatqURL, sm.threatqURL)
	if n > 0 {
		fmt.Fprintf(stdout, "sample collection  %s (%d indicators)\n", sample.CollectionHash, n)
	}
	<-ctx.Done()
	return nil
}

func cmdDemo(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	s := newSettings("demo", "demo [flags]", stdout, stderr)
	s.add("size", "DEMO_SIZE", "300", "indicators in the sample collection")
	s.add("triage-latency", "DEMO_TRIAGE_LATENCY", "20ms", "how long the Triage simulator takes to answer")
	s.add("log-level", "LOG_LEVEL", "warn", "log level: debug, info, warn, error")
	s.add("log-format", "LOG_FORMAT", "console", "log format: json or console")
	log, err := s.parseWithLogger(args, stderr)
	if err != nil {
		return err
	}
	size := s.integer("size", 20)
	latency := s.duration("triage-latency")
	if err := s.err(); err != nil {
		return usageErr("%w", err)
	}

	sm, err := serveSims("127.0.0.1:0", "127.0.0.1:0", triagesim.Options{Latency: latency, LatencyJitter: latency / 2}, threatqsim.Options{}, false, log)
	if err != nil {
		return err
	}
	defer sm.close()
	others, err := sm.seedSample(size)
	if err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "tqtriage-demo-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	once, tq, stop, err := demoPipeline(ctx, sm, filepath.Join(dir, "nats"), log)
	if err != nil {
		return err
	}
	defer stop()

	fmt.Fprintf(stdout, "tqtriage demo: a ThreatQ collection of %d indicators (%q) goes to Cofense Triage.\n", size, sample.CollectionName)
	fmt.Fprintf(stdout, "Simulators: Triage at %s (%d of the indicators already there), ThreatQ at %s; NATS JetStream embedded.\n", sm.triageURL, sampleInTriage(size), sm.threatqURL)
	fmt.Fprintf(stdout, "Another team's source (%s) holds %d of the same values in Triage; it keeps one indicator per source, so tqtriage leaves theirs alone.\n\n", sample.OtherSource, others)
	failed := false
	for _, step := range []struct {
		title string
		opts  run.Options
	}{
		{"1. dry run of create: what it would do, reading Triage and writing nothing", run.Options{Action: message.ActionCreate, DryRun: true}},
		{"2. create: every valid indicator becomes a Triage threat indicator (Malicious)", run.Options{Action: message.ActionCreate}},
		{"3. update: the same collection again, now Suspicious; the ThreatQ attributes change in place", run.Options{Action: message.ActionUpdate, ThreatLevel: "Suspicious"}},
	} {
		fmt.Fprintln(stdout, step.title)
		step.opts.Source = "collection " + sample.CollectionHash
		step.opts.SourceName = sample.CollectionName
		out, err := once.Run(ctx, step.opts, run.FromCollection(ctx, tq, sample.CollectionHash, 100), followOptions(stderr))
		if out.Tally != nil {
			out.Tally.Summary(stdout, run.Header(out.Record), out.Record.Total)
		}
		if err != nil {
			return err
		}
		failed = failed || out.Failed()
		fmt.Fprintln(stdout)
	}
	sm.showEnd(stdout)
	if failed {
		return errSilent
	}
	return nil
}

// demoPipeline assembles the whole pipeline on an embedded server against
// the simulators, with the defaults a newcomer gets.
func demoPipeline(ctx context.Context, sm *sims, storeDir string, log zerolog.Logger) (pipeline.Once, *threatq.Client, func(), error) {
	b, stop, err := pipeline.Embedded(ctx, storeDir, bus.Config{Name: "tqtriage-demo"}, log)
	if err != nil {
		return pipeline.Once{}, nil, nil, err
	}
	fail := func(err error) (pipeline.Once, *threatq.Client, func(), error) {
		stop()
		return pipeline.Once{}, nil, nil, err
	}
	triage := pipeline.TriageSettings{BaseURL: sm.triageURL, ClientID: triagesim.DefaultClientID, ClientSecret: triagesim.DefaultClientSecret}
	w, err := pipeline.NewWorker(ctx, triage, worker.Config{}, b)
	if err != nil {
		return fail(err)
	}
	tq, err := pipeline.NewThreatQ(ctx, pipeline.ThreatQSettings{BaseURL: sm.threatqURL, ClientID: threatqsim.DefaultClientID, ClientSecret: threatqsim.DefaultClientSecret}, retry.None)
	if err != nil {
		return fail(err)
	}
	return pipeline.Once{Bus: b, Worker: w, Writer: writeback.New(writeback.Config{}, tq), Log: log}, tq, stop, nil
}

// showEnd prints what one ThreatQ indicator ended up with, and Triage's size.
func (s *sims) showEnd(stdout io.Writer) {
	id := int64(0)
	if ids := s.threatq.AllAttributes(); len(ids) > 0 {
		for k := range ids {
			if id == 0 || k < id {
				id = k
			}
		}
		fmt.Fprintf(stdout, "ThreatQ indicator %d now carries:\n", id)
		for _, a := range s.threatq.Attributes(id) {
			fmt.Fprintf(stdout, "  %-14s %s\n", a.Name, a.Value)
		}
	}
	fmt.Fprintf(stdout, "Triage holds %d threat indicators.\n", s.triage.Len())
	var theirs []string
	for _, in := range sample.FromOtherSource() {
		if got, ok := s.triage.FindFrom(in.ThreatType, in.ThreatValue, in.ThreatSource); ok {
			theirs = append(theirs, got.ThreatLevel)
		}
	}
	if len(theirs) > 0 {
		fmt.Fprintf(stdout, "The %d of %s are as they were: %s.\n", len(theirs), sample.OtherSource, strings.Join(slices.Compact(theirs), ", "))
	}
}
