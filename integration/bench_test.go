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
	"github.com/tqtriage/tqtriage/run"
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
	sim := triagesim.New(triagesim.Options{Latency: latency})
	if rateLimit > 0 {
		sim.SetRateLimit(rateLimit, 0, time.Second)
	}
	ts := httptest.NewServer(sim)
	defer ts.Close()
	log := zerolog.Nop()
	bs, stop, err := pipeline.Embedded(context.Background(), b.TempDir(), bus.Config{}, log)
	if err != nil {
		b.Fatal(err)
	}
	defer stop()
	tc, err := pipeline.NewTriage(context.Background(), pipeline.TriageSettings{BaseURL: ts.URL, ClientID: triagesim.DefaultClientID, ClientSecret: triagesim.DefaultClientSecret, RateLimit: rateLimit})
	if err != nil {
		b.Fatal(err)
	}
	w, err := worker.New(worker.Config{ObjectsPerRun: jobs, Retry: retry.Policy{MaxAttempts: 3}, Concurrency: concurrency}, tc, bs)
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- pipeline.ServeWorkers(ctx, bs, w, log, nil) }()
	items := itemsOf(sampleIndicators("bench", jobs))
	runtime.GC()
	cpu0 := cpuTime()
	start := time.Now()
	b.StartTimer()
	rec, err := run.Publish(context.Background(), bs, run.Options{Action: message.ActionCreate}, items, log)
	if err != nil {
		b.Fatal(err)
	}
	tally, _, err := run.Follow(context.Background(), bs, rec.ID, run.FollowOptions{})
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

func lineOf(t *run.Tally, total int) string {
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
