package bus

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tqtriage/tqtriage/message"
)

// Role is what a process does with the topology, and so which parts of it
// it opens: least privilege means a process touches only these (the NATS
// permission profiles in deployments/nats grant each role exactly them).
type Role string

// The roles.
const (
	RoleWorker    Role = "worker"    // consume jobs; store results, claims, dead letters
	RoleWriteback Role = "writeback" // consume results; store receipts, dead letters
	RolePublisher Role = "publisher" // store jobs and run records; follow a run's results
	RoleViewer    Role = "viewer"    // read run records, results and dead letters
	RoleOperator  Role = "operator"  // all of it: setup, dead-letter replay, run and demo
)

func (r Role) check() error {
	if _, ok := roleParts[r]; !ok {
		return fmt.Errorf("unknown role %q", r)
	}
	return nil
}

// Limits bound what the streams may hold, so that a flood is refused at
// publish with a clear error rather than filling the server's disk. Zero
// fields take the defaults of DefaultLimits; a negative one means none.
type Limits struct {
	JobsMaxMsgs     int64 // jobs waiting; new ones are refused beyond it
	JobsMaxBytes    int64
	ResultsMaxBytes int64 // the oldest results (and receipts) go first beyond it
	DLQMaxBytes     int64 // the oldest dead letters go first beyond it
	ClaimsMaxBytes  int64 // new admissions are refused beyond it
	// AppliedMaxBytes bounds write-back's order bucket: one small entry
	// per ThreatQ indicator written in the last 30 days; beyond it,
	// results of indicators not yet in it wait (are retried) until it is
	// raised.
	AppliedMaxBytes int64
}

// DefaultLimits are the limits setup gives the streams unless told
// otherwise.
// The server reserves each stream's bytes from its JetStream storage
// when the stream is made, so they are kept modest (3.9 GiB in all):
// about 3 million jobs waiting, the results of 5 million, 400,000 dead
// letters, the claims of 2 million indicators, the write-back order of
// about a million.
var DefaultLimits = Limits{
	JobsMaxMsgs:     10_000_000,
	JobsMaxBytes:    1 << 30,
	ResultsMaxBytes: 2 << 30,
	DLQMaxBytes:     256 << 20,
	ClaimsMaxBytes:  256 << 20,
	AppliedMaxBytes: 256 << 20,
}

// NoLimits leaves the streams unbounded but for message sizes: for a
// server of the process's own (run, demo), where no one else publishes and
// a run must never lose its results to a limit.
var NoLimits = Limits{JobsMaxMsgs: -1, JobsMaxBytes: -1, ResultsMaxBytes: -1, DLQMaxBytes: -1, ClaimsMaxBytes: -1, AppliedMaxBytes: -1}

func (l Limits) withDefaults() Limits {
	def := func(v *int64, d int64) {
		if *v == 0 {
			*v = d
		}
	}
	def(&l.JobsMaxMsgs, DefaultLimits.JobsMaxMsgs)
	def(&l.JobsMaxBytes, DefaultLimits.JobsMaxBytes)
	def(&l.ResultsMaxBytes, DefaultLimits.ResultsMaxBytes)
	def(&l.DLQMaxBytes, DefaultLimits.DLQMaxBytes)
	def(&l.ClaimsMaxBytes, DefaultLimits.ClaimsMaxBytes)
	def(&l.AppliedMaxBytes, DefaultLimits.AppliedMaxBytes)
	return l
}

// Message size limits of the streams: a job is at most
// message.MaxJobBytes; results and receipts are bounded by construction.
const (
	maxResultBytes = 64 << 10
	kvMaxBytes     = 64 << 20
)

// The parts of the topology.
type part int

const (
	partJobs part = iota
	partResults
	partDLQ
	partClaims
	partRuns
	partDeliveries
	partFleet
	partApplied   // write-back's order
	partWorkers   // the jobs' durable consumer
	partWriteback // the results' durable consumer
	numParts
)

var partNames = [numParts]string{
	partJobs: StreamJobs, partResults: StreamResults, partDLQ: StreamDLQ, partClaims: StreamClaims,
	partRuns: "bucket " + BucketRuns, partDeliveries: "bucket " + BucketDeliveries, partFleet: "bucket " + BucketFleet,
	partApplied: "bucket " + BucketApplied,
	partWorkers: "consumer " + ConsumerWorkers, partWriteback: "consumer " + ConsumerWriteback,
}

// roleParts are the parts each role opens: those it reads, and those it
// writes to (a publish on a subject without its stream is lost).
var roleParts = map[Role][]part{
	RoleWorker:    {partJobs, partWorkers, partResults, partDLQ, partClaims, partDeliveries, partFleet},
	RoleWriteback: {partResults, partWriteback, partDLQ, partDeliveries, partApplied},
	RolePublisher: {partJobs, partResults, partRuns},
	RoleViewer:    {partResults, partDLQ, partRuns},
	RoleOperator:  {partJobs, partResults, partDLQ, partClaims, partRuns, partDeliveries, partFleet, partApplied, partWorkers, partWriteback},
}

// open opens the parts of the role: each is looked up, and created when
// missing; an existing one that lacks what this version needs of it (a
// subject) is updated.
func (b *Bus) open(ctx context.Context) error {
	for _, p := range roleParts[b.cfg.Role] {
		if err := b.ensure(ctx, p, false); err != nil {
			return err
		}
	}
	return nil
}

// Setup creates or updates every part of the topology with this
// configuration (its replicas and limits): what an operator runs once, and
// again to change a limit. It is idempotent.
func (b *Bus) Setup(ctx context.Context) error {
	for p := range numParts {
		if err := b.ensure(ctx, p, true); err != nil {
			return err
		}
	}
	return nil
}

// apiTimeout bounds one JetStream API call of open and Setup: a request
// the server's permissions refuse gets no answer, and the refusal, noted
// meanwhile, is what the error says.
const apiTimeout = 5 * time.Second

// ensure opens part p: with update, it is created or updated to this
// configuration; without, it is created only when missing.
func (b *Bus) ensure(ctx context.Context, p part, update bool) error {
	ctx, cancel := context.WithTimeout(ctx, apiTimeout)
	defer cancel()
	since := time.Now()
	var err error
	switch p {
	case partJobs:
		b.jobs, err = b.ensureStream(ctx, b.jobsConfig(), update)
	case partResults:
		b.results, err = b.ensureStream(ctx, b.resultsConfig(), update)
	case partDLQ:
		b.dlq, err = b.ensureStream(ctx, b.dlqConfig(), update)
	case partClaims:
		b.claims, err = b.ensureStream(ctx, b.claimsConfig(), update)
	case partRuns:
		b.runs, err = b.ensureKV(ctx, b.runsConfig(), update)
	case partDeliveries:
		b.deliveries, err = b.ensureKV(ctx, b.deliveriesConfig(), update)
	case partFleet:
		b.fleet, err = b.ensureKV(ctx, b.fleetConfig(), update)
	case partApplied:
		b.applied, err = b.ensureKV(ctx, b.appliedConfig(), update)
	case partWorkers:
		err = b.ensureConsumer(ctx, StreamJobs, b.consumerConfig(ConsumerWorkers, message.JobsWildcard, "tqtriage worker replicas share it"), update)
	case partWriteback:
		err = b.ensureConsumer(ctx, StreamResults, b.consumerConfig(ConsumerWriteback, message.ResultsWildcard, "tqtriage write-back replicas share it"), update)
	}
	if err != nil {
		return b.explain(partNames[p], since, err)
	}
	return nil
}

func (b *Bus) ensureStream(ctx context.Context, cfg jetstream.StreamConfig, update bool) (jetstream.Stream, error) {
	if update {
		return b.js.CreateOrUpdateStream(ctx, cfg)
	}
	s, err := b.js.Stream(ctx, cfg.Name)
	switch {
	case errors.Is(err, jetstream.ErrStreamNotFound):
		return b.js.CreateStream(ctx, cfg)
	case err != nil:
		return nil, err
	}
	// An older version's stream may lack a subject this one stores on.
	have := s.CachedInfo().Config
	var missing []string
	for _, subj := range cfg.Subjects {
		if !slices.Contains(have.Subjects, subj) {
			missing = append(missing, subj)
		}
	}
	if len(missing) == 0 {
		return s, nil
	}
	have.Subjects = append(have.Subjects, missing...)
	return b.js.UpdateStream(ctx, have)
}

func (b *Bus) ensureKV(ctx context.Context, cfg jetstream.KeyValueConfig, update bool) (jetstream.KeyValue, error) {
	if update {
		return b.js.CreateOrUpdateKeyValue(ctx, cfg)
	}
	kv, err := b.js.KeyValue(ctx, cfg.Bucket)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		return b.js.CreateKeyValue(ctx, cfg)
	}
	return kv, err
}

func (b *Bus) ensureConsumer(ctx context.Context, stream string, cfg jetstream.ConsumerConfig, update bool) error {
	if update {
		_, err := b.js.CreateOrUpdateConsumer(ctx, stream, cfg)
		return err
	}
	c, err := b.js.Consumer(ctx, stream, cfg.Durable)
	switch {
	case errors.Is(err, jetstream.ErrConsumerNotFound):
		_, err = b.js.CreateConsumer(ctx, stream, cfg)
		return err
	case err != nil:
		return err
	}
	have := c.CachedInfo().Config
	if have.FilterSubject != cfg.FilterSubject || have.AckPolicy != cfg.AckPolicy {
		return fmt.Errorf("it filters %q with ack policy %s, where this version needs %q and %s: an operator runs `tqtriage setup`",
			have.FilterSubject, have.AckPolicy, cfg.FilterSubject, cfg.AckPolicy)
	}
	return nil
}

func (b *Bus) jobsConfig() jetstream.StreamConfig {
	c := b.cfg
	return jetstream.StreamConfig{
		Name:        StreamJobs,
		Description: "tqtriage jobs: one message per indicator of a run",
		Subjects:    []string{message.JobsWildcard},
		Retention:   jetstream.WorkQueuePolicy,
		Storage:     jetstream.FileStorage,
		Replicas:    c.Replicas,
		Duplicates:  c.DuplicateWindow,
		MaxMsgs:     c.Limits.JobsMaxMsgs,
		MaxBytes:    c.Limits.JobsMaxBytes,
		MaxMsgSize:  message.MaxJobBytes,
		// A flood is refused at publish, where a person sees it; never
		// are waiting jobs dropped to make room.
		Discard: jetstream.DiscardNew,
	}
}

func (b *Bus) resultsConfig() jetstream.StreamConfig {
	c := b.cfg
	return jetstream.StreamConfig{
		Name:        StreamResults,
		Description: "tqtriage results (exactly one per job, read by write-back and status) and write-back's receipts",
		Subjects:    []string{message.ResultsWildcard, message.ReceiptsWildcard},
		Retention:   jetstream.LimitsPolicy,
		Storage:     jetstream.FileStorage,
		Replicas:    c.Replicas,
		MaxAge:      c.ResultsMaxAge,
		Duplicates:  c.DuplicateWindow,
		AllowDirect: true,
		MaxBytes:    c.Limits.ResultsMaxBytes,
		MaxMsgSize:  maxResultBytes,
		// Answers must always be storable (a worker cannot hold a job
		// until space frees up): the oldest runs' results go first.
		Discard: jetstream.DiscardOld,
	}
}

func (b *Bus) dlqConfig() jetstream.StreamConfig {
	c := b.cfg
	return jetstream.StreamConfig{
		Name:        StreamDLQ,
		Description: "tqtriage dead letters: failed jobs, unparseable messages, write-backs that could not be done",
		Subjects:    []string{message.DLQWildcard},
		Retention:   jetstream.LimitsPolicy,
		Storage:     jetstream.FileStorage,
		Replicas:    c.Replicas,
		MaxAge:      c.DLQMaxAge,
		Duplicates:  2 * time.Minute,
		MaxBytes:    c.Limits.DLQMaxBytes,
		Discard:     jetstream.DiscardOld,
	}
}

func (b *Bus) claimsConfig() jetstream.StreamConfig {
	c := b.cfg
	return jetstream.StreamConfig{
		Name:              StreamClaims,
		Description:       "tqtriage objects-per-run admissions: a count per run and a claim per distinct indicator",
		Subjects:          []string{claimsPrefix + ">"},
		Retention:         jetstream.LimitsPolicy,
		Storage:           jetstream.FileStorage,
		Replicas:          c.Replicas,
		MaxAge:            c.ClaimsMaxAge,
		MaxMsgsPerSubject: 1,
		AllowDirect:       true,
		// Long enough to cover a redelivery after a worker died between
		// counting a key and storing its claim.
		Duplicates: c.DuplicateWindow,
		MaxBytes:   c.Limits.ClaimsMaxBytes,
		// A lost claim would let the cap be exceeded: refuse new ones
		// (the job is retried) rather than drop old ones.
		Discard: jetstream.DiscardNew,
	}
}

func (b *Bus) runsConfig() jetstream.KeyValueConfig {
	return jetstream.KeyValueConfig{
		Bucket:      BucketRuns,
		Description: "tqtriage runs: id, action, source, total, start",
		Storage:     jetstream.FileStorage,
		Replicas:    b.cfg.Replicas,
		TTL:         b.cfg.ResultsMaxAge,
		MaxBytes:    kvMaxBytes,
	}
}

func (b *Bus) deliveriesConfig() jetstream.KeyValueConfig {
	return jetstream.KeyValueConfig{
		Bucket:      BucketDeliveries,
		Description: "tqtriage deliveries that do not count toward a message's limit (snoozed, handed back)",
		Storage:     jetstream.FileStorage,
		Replicas:    b.cfg.Replicas,
		TTL:         b.cfg.ResultsMaxAge,
		MaxBytes:    kvMaxBytes,
	}
}

func (b *Bus) fleetConfig() jetstream.KeyValueConfig {
	return jetstream.KeyValueConfig{
		Bucket:      BucketFleet,
		Description: "tqtriage replicas sharing a budget (Triage's rate limit): their heartbeats, and the latest pause",
		Storage:     jetstream.MemoryStorage,
		Replicas:    b.cfg.Replicas,
		// Heartbeats of replicas long gone need not be kept.
		TTL:      time.Minute,
		MaxBytes: 1 << 20,
	}
}

// appliedConfig is write-back's order. An entry is kept as long as a dead
// letter (so that a result replayed late is still found older than what
// was written since), and only the latest value of each key.
func (b *Bus) appliedConfig() jetstream.KeyValueConfig {
	return jetstream.KeyValueConfig{
		Bucket:      BucketApplied,
		Description: "tqtriage write-back order: per ThreatQ indicator, when the last result written to each attribute was answered",
		Storage:     jetstream.FileStorage,
		Replicas:    b.cfg.Replicas,
		TTL:         b.cfg.DLQMaxAge,
		MaxBytes:    b.cfg.Limits.AppliedMaxBytes,
	}
}

// consumerConfig is a durable shared by every replica. It has no
// server-side MaxDeliver: the executor counts deliveries itself and gives
// up at its limit, where a server-side limit would leave the message stuck
// in its stream, silently.
func (b *Bus) consumerConfig(name, filter, what string) jetstream.ConsumerConfig {
	return jetstream.ConsumerConfig{
		Durable:       name,
		Description:   what,
		FilterSubject: filter,
		AckPolicy:     jetstream.AckExplicitPolicy,
		DeliverPolicy: jetstream.DeliverAllPolicy,
		AckWait:       b.cfg.AckWait,
		MaxDeliver:    -1,
		MaxAckPending: b.cfg.MaxAckPending,
	}
}

// jsErrStorageResourcesExceeded is the server's "insufficient storage
// resources available" (not among nats.go's named codes).
const jsErrStorageResourcesExceeded jetstream.ErrorCode = 10047

// refusals keeps the last permission violation the server reported (they
// come asynchronously), so that a call that timed out can say why.
type refusals struct {
	mu   sync.Mutex
	last string
	at   time.Time
}

func (r *refusals) note(err error) {
	if !errors.Is(err, nats.ErrPermissionViolation) {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.last, r.at = err.Error(), time.Now()
}

// since returns the last refusal reported at or after t.
func (r *refusals) since(t time.Time) string {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.at.Before(t) {
		return ""
	}
	return r.last
}

// explain turns a failure to open a part into an error a person can act
// on: a refused permission is named.
func (b *Bus) explain(what string, since time.Time, err error) error {
	// The refusal may arrive just after the call gave up.
	for i := 0; i < 10 && b.refusals.since(since) == ""; i++ {
		time.Sleep(20 * time.Millisecond)
	}
	if v := b.refusals.since(since); v != "" {
		return fmt.Errorf("open %s: NATS refused this user: %s. Grant the permission (deployments/nats/permissions.conf has one profile per role), or have an operator run `tqtriage setup` if what is missing is the topology itself", what, strings.TrimPrefix(v, "nats: "))
	}
	var je jetstream.JetStreamError
	if errors.As(err, &je) && je.APIError() != nil && je.APIError().ErrorCode == jsErrStorageResourcesExceeded {
		return fmt.Errorf("open %s: %w: the server has less JetStream storage left than the streams' limits reserve; give it more (max_file_store) or set smaller limits with `tqtriage setup` (see its -h)", what, err)
	}
	return fmt.Errorf("open %s: %w", what, err)
}
