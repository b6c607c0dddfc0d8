package run

import (
	"testing"
	"time"

	"github.com/tqtriage/tqtriage/message"
)

func TestLatencySamplesFirstAnswers(t *testing.T) {
	l := NewLatency()
	start := time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)
	for seq := int64(1); seq <= 100*latencyEvery; seq++ {
		l.Sent(seq, start)
	}
	answer := func(seq int64, after time.Duration) message.Result {
		return message.Result{Seq: seq, AnsweredAt: start.Add(after).Format(message.AnsweredAtFormat)}
	}
	// Sampled jobs answered after 1s..100s; a second answer (a replay)
	// and jobs not sampled change nothing.
	for i := int64(1); i <= 100; i++ {
		l.Answered(answer(i*latencyEvery, time.Duration(i)*time.Second))
		l.Answered(answer(i*latencyEvery, time.Hour))
		l.Answered(answer(i*latencyEvery+1, time.Hour))
	}
	l.Answered(message.Result{Seq: 2 * latencyEvery}) // no answered_at
	r := l.Report()
	if r == nil || r.Samples != 100 || r.P50Seconds != 50 || r.P90Seconds != 90 || r.P99Seconds != 99 || r.MaxSeconds != 100 {
		t.Fatalf("report = %+v, want 100 samples, p50 50s, p90 90s, p99 99s, max 100s", r)
	}
}

func TestLatencyIsBounded(t *testing.T) {
	l := NewLatency()
	for seq := int64(1); seq <= 4*maxLatencySamples*latencyEvery; seq++ {
		l.Sent(seq, time.Now())
	}
	if n := len(l.sent); n != maxLatencySamples {
		t.Fatalf("%d samples held, want at most %d", n, maxLatencySamples)
	}
	var none *Latency
	none.Sent(latencyEvery, time.Now())
	none.Answered(message.Result{Seq: latencyEvery})
	if none.Report() != nil || NewLatency().Report() != nil {
		t.Fatal("a sampler without answers reports something")
	}
}
