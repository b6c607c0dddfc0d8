// Package bus is tqtriage's NATS JetStream wiring, in one place: the
// connection, the streams, durable consumers and buckets every process
// relies on (created or updated at start, so a fresh server is enough),
// publishing with acknowledgement, the executor that consumes a durable
// consumer and alone settles its messages (Serve), the per-run admission
// claims that make the objects-per-run cap exact, run records, and dead
// letters.
//
// It knows the subjects and stream layout of docs/flow.md but nothing of
// Triage or ThreatQ. The worker, write-back and run packages speak its
// plain types (Publication, Outcome, Attempt, Stored) and never JetStream.
package bus

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/tqtriage/tqtriage/internal/redact"
)

// Stream, consumer and bucket names.
const (
	StreamJobs    = "TQTRIAGE_JOBS"
	StreamResults = "TQTRIAGE_RESULTS"
	StreamDLQ     = "TQTRIAGE_DLQ"
	StreamClaims  = "TQTRIAGE_CLAIMS"
	BucketRuns    = "TQTRIAGE_RUNS"
	// BucketDeliveries counts the deliveries of a message that do not
	// count toward its limit (snoozed, handed back).
	BucketDeliveries = "TQTRIAGE_DELIVERIES"
	// BucketApplied keeps, per ThreatQ indicator, when the last result
	// written to each of its attributes was answered (write-back order).
	BucketApplied = "TQTRIAGE_APPLIED"

	ConsumerWorkers   = "tqtriage-workers"
	ConsumerWriteback = "tqtriage-writeback"

	claimsPrefix = "tqtriage.claims."
)

// Defaults of Config fields left zero.
const (
	// DefaultAckWait is the durable consumers' ack deadline. The executor
	// reports progress every third of it while a message is worked on.
	DefaultAckWait = 30 * time.Second
	// DefaultMaxAckPending is shared by every replica of a consumer: it
	// must exceed the fleet's total concurrency.
	DefaultMaxAckPending = 20000
	// DefaultDuplicateWindow of the jobs and results streams.
	DefaultDuplicateWindow = 10 * time.Minute
	// DefaultResultsMaxAge is how long status can report a run.
	DefaultResultsMaxAge = 7 * 24 * time.Hour
)

// Config says where NATS is and how the topology is shaped. The zero value
// of every duration and count takes the default noted beside it.
type Config struct {
	URL      string // default nats://127.0.0.1:4222
	Name     string // connection name shown by the server
	Creds    string // NATS_CREDS: a .creds file
	TLSCA    string // NATS_TLS_CA
	TLSCert  string // NATS_TLS_CERT
	TLSKey   string // NATS_TLS_KEY
	Replicas int    // stream replication factor (default 1; 3 on a three-node cluster)

	// InProcess, when set, connects to this embedded server without TCP.
	InProcess nats.InProcessConnProvider

	// DuplicateWindow of the jobs and results streams (default 10m): a job
	// re-published, or a result repeated by a redelivery, within it is
	// dropped by its Nats-Msg-Id.
	DuplicateWindow time.Duration
	ResultsMaxAge   time.Duration // default 7 days: how long status can report a run
	DLQMaxAge       time.Duration // default 30 days
	ClaimsMaxAge    time.Duration // default 7 days: a run's cap is kept this long

	// AckWait of the durable consumers (default DefaultAckWait).
	AckWait time.Duration
	// MaxAckPending of the durable consumers (default DefaultMaxAckPending).
	MaxAckPending int

	// Limits keeps the streams from filling the server's disk.
	Limits Limits

	// Role says what the process does, and so which streams, consumers
	// and buckets it opens (default RoleOperator: all of them).
	Role Role
}

func (c Config) withDefaults() Config {
	if c.URL == "" {
		c.URL = nats.DefaultURL
	}
	if c.Replicas <= 0 {
		c.Replicas = 1
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&c.DuplicateWindow, DefaultDuplicateWindow)
	def(&c.ResultsMaxAge, DefaultResultsMaxAge)
	def(&c.DLQMaxAge, 30*24*time.Hour)
	def(&c.ClaimsMaxAge, DefaultResultsMaxAge)
	def(&c.AckWait, DefaultAckWait)
	if c.MaxAckPending <= 0 {
		c.MaxAckPending = DefaultMaxAckPending
	}
	c.Limits = c.Limits.withDefaults()
	if c.Role == "" {
		c.Role = RoleOperator
	}
	return c
}

// Bus is a connection with the topology in place.
type Bus struct {
	cfg Config
	nc  *nats.Conn
	js  jetstream.JetStream
	log zerolog.Logger

	jobs, results, dlq, claims       jetstream.Stream
	runs, deliveries, fleet, applied jetstream.KeyValue

	claimMu     sync.Mutex
	claimQueues map[string]*claimQueue // by run and limit: claims waiting for a commit

	refusals refusals // permission violations the server reported
}

// Connect connects to NATS, reconnecting for ever on a lost connection, and
// opens what cfg.Role needs of the topology: what exists is used as it is
// (an operator shapes it with Setup), what is missing is created when the
// connection's user may. A missing permission is an error within seconds
// that names it.
func Connect(ctx context.Context, cfg Config, log zerolog.Logger) (*Bus, error) {
	cfg = cfg.withDefaults()
	if err := cfg.Role.check(); err != nil {
		return nil, err
	}
	b := &Bus{cfg: cfg, log: log}
	opts := []nats.Option{
		nats.Name(cfg.Name),
		// Answers come to an inbox of the role's own, so that the
		// permission profiles can let each user read only its own.
		nats.CustomInboxPrefix(InboxPrefix(cfg.Role)),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(time.Second),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil {
				log.Warn().Err(err).Msg("NATS connection lost; reconnecting")
			}
		}),
		nats.ReconnectHandler(func(c *nats.Conn) { log.Info().Str("server", c.ConnectedUrlRedacted()).Msg("NATS reconnected") }),
		nats.ErrorHandler(func(_ *nats.Conn, s *nats.Subscription, err error) {
			b.refusals.note(err)
			ev := log.Warn().Err(err)
			if s != nil {
				ev = ev.Str("subject", s.Subject)
			}
			ev.Msg("NATS asynchronous error")
		}),
	}
	if cfg.InProcess != nil {
		opts = append(opts, nats.InProcessServer(cfg.InProcess))
	}
	if cfg.Creds != "" {
		opts = append(opts, nats.UserCredentials(cfg.Creds))
	}
	if cfg.TLSCA != "" {
		opts = append(opts, nats.RootCAs(cfg.TLSCA))
	}
	if cfg.TLSCert != "" || cfg.TLSKey != "" {
		if cfg.TLSCert == "" || cfg.TLSKey == "" {
			return nil, errors.New("NATS TLS: set both NATS_TLS_CERT and NATS_TLS_KEY")
		}
		opts = append(opts, nats.ClientCert(cfg.TLSCert, cfg.TLSKey))
	}
	url := cfg.URL
	if cfg.InProcess != nil {
		url = ""
	}
	nc, err := nats.Connect(url, opts...)
	if err != nil {
		return nil, fmt.Errorf("connect to NATS at %s: %w", redact.URL(cfg.URL), errors.New(redact.URL(err.Error())))
	}
	js, err := jetstream.New(nc,
		jetstream.WithPublishAsyncMaxPending(4096),
		jetstream.WithPublishAsyncTimeout(30*time.Second),
	)
	if err != nil {
		nc.Close()
		return nil, fmt.Errorf("JetStream: %w", err)
	}
	b.nc, b.js = nc, js
	if err := b.open(ctx); err != nil {
		nc.Close()
		return nil, err
	}
	return b, nil
}

// InboxPrefix is the prefix of the subjects a role's answers come to.
func InboxPrefix(r Role) string { return "_INBOX_" + string(r) }

// Connected reports whether the connection is up, for health checks.
func (b *Bus) Connected() bool { return b.nc.IsConnected() }

// JobsWaiting is the number of jobs stored and not yet acknowledged.
func (b *Bus) JobsWaiting(ctx context.Context) (uint64, error) {
	info, err := b.jobs.Info(ctx)
	if err != nil {
		return 0, fmt.Errorf("jobs stream: %w", err)
	}
	return info.State.Msgs, nil
}

// Close waits for pending asynchronous publishes (up to 10s) and closes
// the connection.
func (b *Bus) Close() {
	select {
	case <-b.js.PublishAsyncComplete():
	case <-time.After(10 * time.Second):
		b.log.Warn().Int("pending", b.js.PublishAsyncPending()).Msg("closing with publishes still unacknowledged")
	}
	if err := b.nc.Drain(); err != nil {
		b.nc.Close()
	}
	// Drain is asynchronous; wait a bounded time for it.
	deadline := time.Now().Add(5 * time.Second)
	for !b.nc.IsClosed() && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
}
