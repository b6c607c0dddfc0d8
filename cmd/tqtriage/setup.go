package main

import (
	"context"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/rs/zerolog"

	"github.com/tqtriage/tqtriage/bus"
)

func addLimits(s *settings) {
	l := bus.DefaultLimits
	s.add("jobs-max-msgs", "TQTRIAGE_JOBS_MAX_MSGS", strconv.FormatInt(l.JobsMaxMsgs, 10), "jobs the jobs stream holds at most; more are refused at publish")
	s.add("jobs-max-bytes", "TQTRIAGE_JOBS_MAX_BYTES", sizeString(l.JobsMaxBytes), "bytes the jobs stream holds at most; more jobs are refused at publish")
	s.add("results-max-bytes", "TQTRIAGE_RESULTS_MAX_BYTES", sizeString(l.ResultsMaxBytes), "bytes of results and receipts kept at most; the oldest go first")
	s.add("dlq-max-bytes", "TQTRIAGE_DLQ_MAX_BYTES", sizeString(l.DLQMaxBytes), "bytes of dead letters kept at most; the oldest go first")
	s.add("claims-max-bytes", "TQTRIAGE_CLAIMS_MAX_BYTES", sizeString(l.ClaimsMaxBytes), "bytes of objects-per-run claims kept at most; new admissions are refused beyond")
	s.add("applied-max-bytes", "TQTRIAGE_APPLIED_MAX_BYTES", sizeString(l.AppliedMaxBytes), "bytes of write-back order (one entry per ThreatQ indicator written in 30 days) kept at most; beyond, new indicators' write-backs wait")
}

func readLimits(s *settings) bus.Limits {
	return bus.Limits{
		JobsMaxMsgs:     int64(s.integer("jobs-max-msgs", 1)),
		JobsMaxBytes:    s.size("jobs-max-bytes"),
		ResultsMaxBytes: s.size("results-max-bytes"),
		DLQMaxBytes:     s.size("dlq-max-bytes"),
		ClaimsMaxBytes:  s.size("claims-max-bytes"),
		AppliedMaxBytes: s.size("applied-max-bytes"),
	}
}

// cmdSetup creates or updates the topology: what an operator runs once.
func cmdSetup(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	s := newSettings("setup", "setup [flags]", stdout, stderr)
	addNATS(s, natsURLHelp)
	addLimits(s)
	s.add("wait", "TQTRIAGE_SETUP_WAIT", "0s", "keep trying this long while NATS is unreachable or its JetStream not ready (0: try once)")
	addLog(s)
	log, err := s.parseWithLogger(args, stderr)
	if err != nil {
		return err
	}
	cfg := busConfig(s, s.str("nats-url"), bus.RoleOperator)
	cfg.Limits = readLimits(s)
	wait := s.duration("wait")
	if err := s.err(); err != nil {
		return usageErr("%w", err)
	}
	// A one-shot setup (compose, a Kubernetes Job) may start with the
	// cluster: it tries again until the servers answer and JetStream has
	// a leader, or --wait has passed.
	deadline := time.Now().Add(wait)
	for {
		err = setupOnce(ctx, cfg, log)
		if err == nil || ctx.Err() != nil || time.Now().After(deadline) {
			break
		}
		log.Warn().Err(err).Msg("NATS not ready for setup; trying again")
		select {
		case <-ctx.Done():
		case <-time.After(2 * time.Second):
		}
	}
	if err != nil {
		return err
	}
	l := cfg.Limits
	fmt.Fprintf(stdout, "tqtriage's streams, consumers and buckets are in place (replicas %d):\n", cfg.Replicas)
	fmt.Fprintf(stdout, "  %-18s jobs: at most %d messages, %s; more are refused at publish\n", bus.StreamJobs, l.JobsMaxMsgs, sizeString(l.JobsMaxBytes))
	fmt.Fprintf(stdout, "  %-18s results and receipts: %s, the oldest go first\n", bus.StreamResults, sizeString(l.ResultsMaxBytes))
	fmt.Fprintf(stdout, "  %-18s dead letters: %s, the oldest go first\n", bus.StreamDLQ, sizeString(l.DLQMaxBytes))
	fmt.Fprintf(stdout, "  %-18s objects-per-run claims: %s; new admissions are refused beyond\n", bus.StreamClaims, sizeString(l.ClaimsMaxBytes))
	fmt.Fprintf(stdout, "  %-18s write-back order: %s; beyond, new indicators' write-backs wait\n", bus.BucketApplied, sizeString(l.AppliedMaxBytes))
	fmt.Fprintf(stdout, "  consumers %s, %s; buckets %s, %s\n", bus.ConsumerWorkers, bus.ConsumerWriteback, bus.BucketRuns, bus.BucketDeliveries)
	return nil
}

func setupOnce(ctx context.Context, cfg bus.Config, log zerolog.Logger) error {
	b, err := bus.Connect(ctx, cfg, log)
	if err != nil {
		return err
	}
	defer b.Close()
	return b.Setup(ctx)
}

var sizeUnits = []struct {
	suffix string
	bytes  int64
}{{"TiB", 1 << 40}, {"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}}

// sizeString writes n bytes in the largest unit that divides it.
func sizeString(n int64) string {
	for _, u := range sizeUnits {
		if n >= u.bytes && n%u.bytes == 0 {
			return strconv.FormatInt(n/u.bytes, 10) + u.suffix
		}
	}
	return strconv.FormatInt(n, 10)
}

// size reads a number of bytes, plain or with a KiB, MiB, GiB or TiB unit.
func (s *settings) size(flagName string) int64 {
	v := s.str(flagName)
	num, mult := v, int64(1)
	for _, u := range sizeUnits {
		if n, ok := strings.CutSuffix(v, u.suffix); ok {
			num, mult = strings.TrimSpace(n), u.bytes
			break
		}
	}
	n, err := strconv.ParseInt(num, 10, 64)
	if err != nil || n < 1 || n > (1<<62)/mult {
		s.errs = append(s.errs, fmt.Errorf("%s=%q: want a size such as 8GiB, 512MiB or a number of bytes", s.name(flagName), v))
		return 0
	}
	return n * mult
}
