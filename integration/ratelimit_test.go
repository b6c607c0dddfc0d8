package integration

import (
	"fmt"
	"testing"
	"time"

	"github.com/tqtriage/tqtriage/message"
	"github.com/tqtriage/tqtriage/pipeline"
	"github.com/tqtriage/tqtriage/run"
	"github.com/tqtriage/tqtriage/worker"
)

// TestRateLimitIsHonoured runs 300 creates against a Triage that takes 100
// requests a second: with TRIAGE_RATE_LIMIT under that, almost no request
// meets a 429; with no limit set, 429s come and are honoured, and every job
// still succeeds without spending its deliveries.
func TestRateLimitIsHonoured(t *testing.T) {
	for _, tc := range []struct {
		rate     float64
		max429   int64
		minSpent time.Duration
	}{
		{rate: 80, max429: 3, minSpent: 2 * time.Second}, // 300 at 80/s after a burst of 8
		{rate: 0, max429: 1 << 30},
	} {
		t.Run(fmt.Sprintf("limit %v", tc.rate), func(t *testing.T) {
			e := newEnv(t)
			e.triage.SetRateLimit(100, 0, time.Second)
			e.collection("rl", sampleIndicators("rate", 300))
			b := e.bus()
			w, err := worker.New(withConcurrency(workerConfig(), 32), e.triageClient(tc.rate), b)
			if err != nil {
				t.Fatal(err)
			}
			o := pipeline.Once{Bus: b, Worker: w, Writer: e.writer(), Log: e.log}
			start := time.Now()
			out := e.run(o, message.ActionCreate, "rl", run.Options{})
			spent := time.Since(start)
			st := e.triage.Stats()
			t.Logf("rate %v: %s in %v, %d requests answered 429", tc.rate, out.Tally.Line(300), spent.Round(time.Millisecond), st.RateLimited)
			if out.Failed() || out.Tally.Count(message.StatusCreated) != 300 || e.triage.Len() != 300 {
				t.Fatalf("%s; Triage holds %d", out.Tally.Line(300), e.triage.Len())
			}
			if st.RateLimited > tc.max429 || spent < tc.minSpent {
				t.Fatalf("%d requests got 429 (at most %d wanted), run took %v (at least %v wanted)", st.RateLimited, tc.max429, spent, tc.minSpent)
			}
		})
	}
}
