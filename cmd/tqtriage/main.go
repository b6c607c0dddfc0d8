// Command tqtriage moves ThreatQ indicators into Cofense Triage through NATS
// JetStream and writes Triage's answers back onto the ThreatQ indicators.
// docs/cli.md fixes its subcommands, flags and environment; this package only
// reads them and wires the packages together.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime/pprof"
	"syscall"

	// Mozilla's roots, used when the system has none (the image is FROM
	// scratch): HTTPS to Triage and ThreatQ with public certificates
	// verifies anywhere. A system's own roots, when present, win.
	_ "golang.org/x/crypto/x509roots/fallback"

	"github.com/tqtriage/tqtriage/internal/termsafe"
)

const usage = `tqtriage moves ThreatQ indicators into Cofense Triage and writes Triage's answers back.

usage: tqtriage <command> [flags]

commands:
  worker     consume jobs and call Triage
  writeback  consume results and write attributes to ThreatQ
  publish    publish one run: --action create|update (--collection HASH | --file PATH|-) [--upsert] [--dry-run] [--wait [--report FILE]]
  run        the whole pipeline in one process (same flags as publish)
  status     RUN_ID [--json]: counts of a run by status
  runs       the runs started last, with their counts [--json]
  dlq        list [--json] | replay [--action A]: look at and re-send dead letters
  setup      create or update the streams, consumers and buckets (once, as an operator)
  demo       run against local Triage and ThreatQ simulators, no account needed
  sim        serve the Triage and ThreatQ simulators
  version    print the version, commit and build date (also --version)

Run 'tqtriage <command> -h' for a command's flags and environment variables.
`

// exitError carries an exit code: 1 for a run with failures or an error,
// 2 for a usage error.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

func usageErr(format string, args ...any) error {
	return &exitError{2, fmt.Errorf(format, args...)}
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	stopProfile := startProfile(os.Getenv("TQTRIAGE_PPROF"))
	err := dispatch(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stopProfile()
	if err == nil {
		return
	}
	code := 1
	var ee *exitError
	if errors.As(err, &ee) {
		code = ee.code
	}
	if !errors.Is(err, flag.ErrHelp) && !errors.Is(err, errSilent) {
		fmt.Fprintln(os.Stderr, "tqtriage:", termsafe.Text(err.Error()))
	}
	if errors.Is(err, flag.ErrHelp) {
		code = 0
	}
	os.Exit(code)
}

// errSilent ends the program with a non-zero exit after what had to be
// said was said (a summary with failures).
var errSilent = errors.New("failed")

func dispatch(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return &exitError{2, errSilent}
	}
	cmd, rest := args[0], args[1:]
	switch cmd {
	case "worker":
		return cmdWorker(ctx, rest, stdout, stderr)
	case "writeback":
		return cmdWriteback(ctx, rest, stdout, stderr)
	case "publish":
		return cmdPublish(ctx, rest, stdout, stderr)
	case "run":
		return cmdRun(ctx, rest, stdout, stderr)
	case "status":
		return cmdStatus(ctx, rest, stdout, stderr)
	case "runs":
		return cmdRuns(ctx, rest, stdout, stderr)
	case "dlq":
		return cmdDLQ(ctx, rest, stdout, stderr)
	case "setup":
		return cmdSetup(ctx, rest, stdout, stderr)
	case "demo":
		return cmdDemo(ctx, rest, stdout, stderr)
	case "sim":
		return cmdSim(ctx, rest, stdout, stderr)
	case "version", "-version", "--version":
		return cmdVersion(rest, stdout)
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return nil
	default:
		fmt.Fprint(stderr, usage)
		return usageErr("unknown command %q", cmd)
	}
}

// startProfile writes a CPU profile of the whole process to PREFIX.cpu,
// and a heap profile at its end to PREFIX.heap, when TQTRIAGE_PPROF names a
// PREFIX: for measuring a command as it really runs (go tool pprof).
func startProfile(prefix string) func() {
	if prefix == "" {
		return func() {}
	}
	cpu, err := os.Create(prefix + ".cpu")
	if err != nil {
		fmt.Fprintln(os.Stderr, "tqtriage: TQTRIAGE_PPROF:", err)
		return func() {}
	}
	if err := pprof.StartCPUProfile(cpu); err != nil {
		fmt.Fprintln(os.Stderr, "tqtriage: TQTRIAGE_PPROF:", err)
		cpu.Close()
		return func() {}
	}
	return func() {
		pprof.StopCPUProfile()
		cpu.Close()
		if heap, err := os.Create(prefix + ".heap"); err == nil {
			_ = pprof.Lookup("allocs").WriteTo(heap, 0)
			heap.Close()
		}
	}
}
