package integration

import (
	"context"
	"net/http/httptest"
	"runtime"
	"syscall"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/tqtriage/tqtriage/bus"
	"github.com/tqtriage/tqtriage/internal/retry"
	"github.com/tqtriage/tqtriage/message"
	"github.com/tqtriage/tqtriage/pipeline"
	"github.com/tqtriage/tqtriage/publish"
	"github.com/tqtriage/tqtriage/report"
	"github.com/tqtriage/tqtriage/triage/triagesim"
	"github.com/tqtriage/tqtriage/worker"
)

// BenchmarkPipeline measures a worker replica against the bound Triage
// sets: concurrency ÷ latency when Triage answers in a fixed time, or its
// rate limit. Each iteration publishes a run of jobs, works it and waits
// for every result. It reports jobs a second, their ratio to the bound,
// the share of requests answered 429, and the CPU time of the whole
// process (worker, JetStream server and simulator together) per job.
//
//	go test -run '^$' -bench Pipeline -benchtime 1x ./integration
func BenchmarkPipeline(b *testing.B) {
	for _, c := range []struct {
		name        string
		jobs        int
		concurrency int
		latency     time.Duration
		rateLimit   float64 // Triage's limit, and the worker's TRIAGE_RATE_LIMIT
	}{
		{"latency20ms/c32", 3000, 32, 20 * time.Millisecond, 0},
		{"latency20ms/c64", 4000, 64, 20 * time.Millisecond, 0},
		{"ratelimit300/c64", 1500, 64, 5 * time.Millisecond, 300},
	} {
		b.Run(c.name, func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				benchRun(b, c.jobs, c.concurrency, c.latency, c.rateLimit)
			}
		})
	}
}

func benchRun(b *testing.B, jobs, concurrency int, latency time.Duration, rateLimit float64) {
	b.StopTimer()
	srv, err := bus.StartEmbedded(bus.EmbeddedOptions{StoreDir: b.TempDir()})
	if err != nil {
		b.Fatal(err)
	}
	defer func() { srv.Shutdown(); srv.WaitForShutdown() }()
	sim := triagesim.New(triagesim.Options{Latency: latency})
	if rateLimit > 0 {
		sim.SetRateLimit(rateLimit, 0, time.Second)
	}
	ts := httptest.NewServer(sim)
	defer ts.Close()
	log := zerolog.Nop()
	bs, err := bus.Connect(context.Background(), bus.Config{InProcess: srv}, log)
	if err != nil {
		b.Fatal(err)
	}
	defer bs.Close()
	tc, _, err := pipeline.NewTriage(context.Background(), pipeline.TriageSettings{BaseURL: ts.URL, ClientID: triagesim.DefaultClientID, ClientSecret: triagesim.DefaultClientSecret, RateLimit: rateLimit})
	if err != nil {
		b.Fatal(err)
	}
	w, err := worker.New(worker.Config{ObjectsPerRun: jobs, Retry: retry.Policy{MaxAttempts: 3}}, tc, bs, log, nil)
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- pipeline.ServeWorkers(ctx, bs, w, concurrency) }()
	inds := sampleIndicators("bench", jobs)
	items := func(yield func(publish.Item) bool) {
		for i, s := range inds {
			if !yield(publish.Item{Indicator: message.Indicator{ID: int64(i + 1), Type: s.Type, Value: s.Value}}) {
				return
			}
		}
	}
	runtime.GC()
	cpu0 := cpuTime()
	start := time.Now()
	b.StartTimer()
	run, err := publish.Publish(context.Background(), bs, publish.Options{Action: message.ActionCreate}, items, log)
	if err != nil {
		b.Fatal(err)
	}
	tally, _, err := publish.Wait(context.Background(), bs, run.ID, publish.WaitOptions{})
	b.StopTimer()
	elapsed := time.Since(start)
	cpu := cpuTime() - cpu0
	cancel()
	<-served
	if err != nil || tally.Count(message.StatusCreated) != jobs {
		b.Fatalf("run: %v; %s", err, lineOf(tally, jobs))
	}
	bound := float64(concurrency) / latency.Seconds()
	if rateLimit > 0 {
		bound = min(bound, rateLimit)
	}
	rate := float64(jobs) / elapsed.Seconds()
	st := sim.Stats()
	b.ReportMetric(rate, "jobs/s")
	b.ReportMetric(rate/bound, "of-bound")
	b.ReportMetric(100*float64(st.RateLimited)/float64(st.Total()), "%429")
	b.ReportMetric(float64(cpu.Microseconds())/float64(jobs), "cpu-µs/job")
	b.Logf("%d jobs in %v: %.0f jobs/s against a bound of %.0f (%.2f); %d of %d requests answered 429; %.0f µs of CPU per job, all parts",
		jobs, elapsed.Round(time.Millisecond), rate, bound, rate/bound, st.RateLimited, st.Total(), float64(cpu.Microseconds())/float64(jobs))
}

func lineOf(t *report.Tally, total int) string {
	if t == nil {
		return "no results"
	}
	return t.Line(int64(total))
}

// cpuTime is the process's user and system CPU time so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
