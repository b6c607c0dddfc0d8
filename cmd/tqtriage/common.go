package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/rs/zerolog"
	"golang.org/x/term"

	"github.com/tqtriage/tqtriage/bus"
	"github.com/tqtriage/tqtriage/internal/buildinfo"
	"github.com/tqtriage/tqtriage/internal/gate"
	"github.com/tqtriage/tqtriage/internal/termsafe"
	"github.com/tqtriage/tqtriage/mapping"
	"github.com/tqtriage/tqtriage/pipeline"
	"github.com/tqtriage/tqtriage/threatq"
	"github.com/tqtriage/tqtriage/worker"
	"github.com/tqtriage/tqtriage/writeback"
)

// The setting groups, one function each, so every subcommand that needs a
// group names it the same way.

func addLog(s *settings) {
	s.add("log-level", "LOG_LEVEL", "info", "log level: debug, info, warn, error")
	s.add("log-format", "LOG_FORMAT", "json", "log format: json or console")
}

func addNATS(s *settings, urlHelp string) {
	s.add("nats-url", "NATS_URL", "", urlHelp)
	s.add("nats-creds", "NATS_CREDS", "", "NATS credentials file")
	s.add("nats-tls-ca", "NATS_TLS_CA", "", "CA bundle for the NATS server's certificate")
	s.add("nats-tls-cert", "NATS_TLS_CERT", "", "client certificate for NATS")
	s.add("nats-tls-key", "NATS_TLS_KEY", "", "client key for NATS")
	s.add("nats-replicas", "NATS_REPLICAS", "1", "replication factor of the streams (3 on a three-node cluster)")
}

// The default HTTP addresses of the replicas differ, so that a worker and
// a write-back started on one host with defaults do not collide
// (docs/cli.md); `sim` keeps to 127.0.0.1:8081 and :8082.
const (
	workerHTTPAddr    = ":8080"
	writebackHTTPAddr = ":8090"
)

func addHTTP(s *settings, def string) {
	s.add("http-addr", "HTTP_ADDR", def, "address of /metrics, /healthz and /readyz (empty: none)")
}

func addTriage(s *settings) {
	s.add("triage-base-url", "TRIAGE_BASE_URL", "", "Cofense Triage address, e.g. https://triage.example.com")
	s.add("triage-client-id", "TRIAGE_CLIENT_ID", "", "Triage API client id (the secret: $TRIAGE_CLIENT_SECRET or $TRIAGE_CLIENT_SECRET_FILE)")
	s.add("triage-threat-level", "TRIAGE_THREAT_LEVEL", mapping.LevelMalicious, "threat level sent to Triage: Malicious, Suspicious or Benign")
	s.add("triage-objects-per-run", "TRIAGE_OBJECTS_PER_RUN", strconv.Itoa(worker.DefaultObjectsPerRun), "at most this many distinct indicators of one run reach Triage")
	s.addBool("triage-verify-ssl", "TRIAGE_VERIFY_SSL", true, "verify Triage's TLS certificate")
	s.add("triage-ca-file", "TRIAGE_CA_FILE", "", "extra CA bundle for Triage's certificate")
	s.add("triage-source", "TRIAGE_SOURCE", worker.DefaultThreatSource, "threat source sent to Triage")
	s.add("triage-rate-limit", "TRIAGE_RATE_LIMIT", "0", "requests a second to Triage from all the worker replicas together, shared among them (0: no limit; a 429 pauses them all anyway)")
	s.add("triage-max-pause", "TRIAGE_MAX_PAUSE", worker.DefaultMaxPause.String(), "longest pause after a 429, whatever its Retry-After asks for")
	s.add("worker-concurrency", "WORKER_CONCURRENCY", strconv.Itoa(worker.DefaultConcurrency), "jobs calling Triage at once from this replica (it holds twice as many)")
	s.add("worker-max-deliver", "WORKER_MAX_DELIVER", strconv.Itoa(worker.DefaultMaxDeliver), "deliveries of a job before a retryable failure is final")
}

// addThreatQ adds the flags that reach ThreatQ: for write-back and for
// reading a collection.
func addThreatQ(s *settings) {
	s.add("threatq-base-url", "THREATQ_BASE_URL", "", "ThreatQ address, e.g. https://threatq.example.com")
	s.add("threatq-client-id", "THREATQ_CLIENT_ID", "", "ThreatQ API client id (the secret: $THREATQ_CLIENT_SECRET or $THREATQ_CLIENT_SECRET_FILE)")
	s.add("threatq-email", "THREATQ_EMAIL", "", "use the password grant as this user (the password: $THREATQ_PASSWORD or $THREATQ_PASSWORD_FILE)")
	s.addBool("threatq-verify-ssl", "THREATQ_VERIFY_SSL", true, "verify ThreatQ's TLS certificate")
	s.add("threatq-ca-file", "THREATQ_CA_FILE", "", "extra CA bundle for ThreatQ's certificate")
}

// addWriteback adds the flags of write-back alone.
func addWriteback(s *settings) {
	s.add("threatq-attribute-source", "THREATQ_ATTRIBUTE_SOURCE", threatq.DefaultAttributeSource, "source named on the attributes written back")
	s.add("writeback-concurrency", "WRITEBACK_CONCURRENCY", strconv.Itoa(writeback.DefaultConcurrency), "results written back at once by this replica")
	s.add("threatq-max-pause", "THREATQ_MAX_PAUSE", writeback.DefaultMaxPause.String(), "longest pause of write-back after a 429, whatever its Retry-After asks for")
}

// parseWithLogger parses a command's arguments and builds its logger, the
// preamble of every command; a problem with either is a usage error.
func (s *settings) parseWithLogger(args []string, w io.Writer) (zerolog.Logger, error) {
	if err := s.parse(args); err != nil {
		return zerolog.Nop(), usageErr("%w", err)
	}
	log, err := newLogger(s, w)
	if err != nil {
		return log, usageErr("%w", err)
	}
	return log, nil
}

func newLogger(s *settings, w io.Writer) (zerolog.Logger, error) {
	lvl, err := zerolog.ParseLevel(strings.ToLower(s.str("log-level")))
	if err != nil || lvl == zerolog.NoLevel {
		return zerolog.Nop(), fmt.Errorf("%s=%q: want debug, info, warn or error", s.name("log-level"), s.str("log-level"))
	}
	var out io.Writer = w
	switch s.str("log-format") {
	case "json", "":
	case "console":
		// For people: what a value or a server said is escaped, so a
		// log line cannot rewrite the terminal (JSON escapes it anyway).
		out = zerolog.ConsoleWriter{Out: w, TimeFormat: time.TimeOnly,
			FormatMessage: safeText, FormatFieldValue: safeText, FormatErrFieldValue: safeText}
	default:
		return zerolog.Nop(), fmt.Errorf("%s=%q: want json or console", s.name("log-format"), s.str("log-format"))
	}
	return zerolog.New(out).Level(lvl).With().Timestamp().Logger(), nil
}

// safeText is a console log value with what could rewrite a terminal
// escaped.
func safeText(i any) string {
	if i == nil {
		return ""
	}
	return termsafe.Line(fmt.Sprint(i))
}

// busConfig is the NATS side of a command that acts as role. The
// connection is named for the command and the host, so that the server's
// connection list tells replicas apart.
func busConfig(s *settings, url string, role bus.Role) bus.Config {
	host, _ := os.Hostname()
	return bus.Config{
		URL: url, Name: strings.TrimSpace("tqtriage " + s.fs.Name() + " " + host), Role: role,
		Creds: s.str("nats-creds"), TLSCA: s.str("nats-tls-ca"), TLSCert: s.str("nats-tls-cert"), TLSKey: s.str("nats-tls-key"),
		Replicas: s.integer("nats-replicas", 1),
	}
}

// connect connects to $NATS_URL (default nats://127.0.0.1:4222) as role.
func connect(ctx context.Context, s *settings, log zerolog.Logger, role bus.Role) (*bus.Bus, error) {
	cfg := busConfig(s, s.str("nats-url"), role)
	if err := s.err(); err != nil {
		return nil, usageErr("%w", err)
	}
	return bus.Connect(ctx, cfg, log)
}

// triageSetup is what the worker's settings say.
type triageSetup struct {
	settings pipeline.TriageSettings
	worker   worker.Config
}

func readTriage(s *settings) triageSetup {
	var t triageSetup
	t.settings = pipeline.TriageSettings{
		BaseURL:            s.required("triage-base-url", "to reach Triage"),
		ClientID:           s.required("triage-client-id", "to reach Triage"),
		ClientSecretFunc:   s.secretSource("TRIAGE_CLIENT_SECRET", true, "to reach Triage"),
		InsecureSkipVerify: !s.boolean("triage-verify-ssl"),
		CAFile:             s.str("triage-ca-file"),
		RateLimit:          s.float("triage-rate-limit", 0),
		MaxPause:           s.atLeast("triage-max-pause", time.Second),
	}
	level, err := mapping.ParseThreatLevel(s.str("triage-threat-level"))
	if err != nil {
		s.errs = append(s.errs, fmt.Errorf("%s: %w", s.name("triage-threat-level"), err))
	}
	t.worker = worker.Config{
		ThreatLevel:   level,
		ThreatSource:  s.str("triage-source"),
		ObjectsPerRun: s.integer("triage-objects-per-run", 1),
		MaxDeliver:    s.integer("worker-max-deliver", 1),
		Concurrency:   s.integer("worker-concurrency", 1),
		MaxPause:      t.settings.MaxPause,
	}
	return t
}

// readThreatQ reads the settings that reach ThreatQ, once per command.
func readThreatQ(s *settings, why string) pipeline.ThreatQSettings {
	email := s.str("threatq-email")
	t := pipeline.ThreatQSettings{
		BaseURL:            s.required("threatq-base-url", why),
		ClientID:           s.required("threatq-client-id", why),
		Email:              email,
		InsecureSkipVerify: !s.boolean("threatq-verify-ssl"),
		CAFile:             s.str("threatq-ca-file"),
	}
	if email != "" {
		t.SecretFunc = s.secretSource("THREATQ_PASSWORD", true, "with $THREATQ_EMAIL (the password grant)")
	} else {
		t.SecretFunc = s.secretSource("THREATQ_CLIENT_SECRET", true, why)
	}
	return t
}

// readWriteback reads write-back's own settings onto t.
func readWriteback(s *settings, t *pipeline.ThreatQSettings) writeback.Config {
	t.AttributeSource = s.str("threatq-attribute-source")
	t.MaxPause = s.atLeast("threatq-max-pause", time.Second)
	return writeback.Config{Concurrency: s.integer("writeback-concurrency", 1), MaxPause: t.MaxPause}
}

// newWorker builds a worker on b from the Triage settings, with its gate
// (pipeline.NewWorker), which starts obtaining a token at once.
func newWorker(ctx context.Context, t triageSetup, b *bus.Bus, m *pipeline.Metrics) (*worker.Worker, error) {
	t.settings.Metrics = m.HTTP
	return pipeline.NewWorker(ctx, t.settings, t.worker, b)
}

// newWriter builds a writer from the ThreatQ settings, with its gate,
// which starts obtaining a token at once.
func newWriter(ctx context.Context, t pipeline.ThreatQSettings, cfg writeback.Config) (*writeback.Writer, *gate.Gate, error) {
	tq, g, err := pipeline.NewThreatQReplica(ctx, t)
	if err != nil {
		return nil, nil, err
	}
	cfg.Gate = g
	return writeback.New(cfg, tq), g, nil
}

// credentialsRefused waits for the first token of each gate and returns
// the first refusal, if any: a one-shot command ends on it rather than
// wait for credentials that may never work. Other failures (a service
// down) are waited out like any replica does.
func credentialsRefused(ctx context.Context, gates ...*gate.Gate) error {
	for _, g := range gates {
		if err := g.Started(ctx); err != nil && gate.Refused(err) {
			return g.Ready()
		}
	}
	return nil
}

// serveHTTP serves /metrics, /healthz and /readyz on addr until ctx ends.
// ready reports whether the process can do its work (replicaReady).
func serveHTTP(ctx context.Context, addr string, m *pipeline.Metrics, ready func() error, log zerolog.Logger) (func(), error) {
	if addr == "" {
		return func() {}, nil
	}
	m.WatchReady(ready)
	if m != nil {
		m.MustRegister(buildInfoGauge())
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(m.Gatherer(), promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") })
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if err := ready(); err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ready")
	})
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("HTTP_ADDR %s: %w", addr, err)
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error().Err(err).Msg("HTTP server stopped")
		}
	}()
	log.Info().Str("addr", ln.Addr().String()).Msg("serving /metrics, /healthz, /readyz")
	return func() {
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}, nil
}

// buildInfoGauge is tqtriage_build_info{version,commit} = 1: the usual
// Prometheus idiom, so a dashboard can join any series to the build that
// produced it.
func buildInfoGauge() prometheus.Collector {
	bi := buildinfo.Get()
	g := prometheus.NewGauge(prometheus.GaugeOpts{
		Name:        "tqtriage_build_info",
		Help:        "The build of tqtriage serving these metrics (value 1).",
		ConstLabels: prometheus.Labels{"version": bi.Version, "commit": bi.Commit},
	})
	g.Set(1)
	return g
}

// replicaReady is what /readyz says of a replica: ready only while it is
// not draining (ctx has not ended), its NATS connection is up, each gate
// holds a token its service accepts, and its durable consumers are in
// place; else why not.
func replicaReady(ctx context.Context, b *bus.Bus, gates []*gate.Gate, durables ...string) func() error {
	return func() error {
		if ctx.Err() != nil {
			return errors.New("draining: stopping, taking no more work")
		}
		if !b.Connected() {
			return errors.New("NATS not connected")
		}
		for _, g := range gates {
			if err := g.Ready(); err != nil {
				return err
			}
		}
		for _, d := range durables {
			cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			_, err := b.ConsumerState(cctx, d)
			cancel()
			if err != nil {
				return err
			}
		}
		return nil
	}
}

// terminalWidth is the columns of w when it is a terminal (0: unknown).
func terminalWidth(w io.Writer) int {
	f, ok := w.(*os.File)
	if !ok {
		return 0
	}
	cols, _, err := term.GetSize(int(f.Fd()))
	if err != nil {
		return 0
	}
	return cols
}

// isTerminal reports whether f is a terminal (for progress redrawn in place).
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}
