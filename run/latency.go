package run

import (
	"math"
	"slices"
	"sync"
	"time"

	"github.com/tqtriage/tqtriage/message"
)

// Latency samples how long a run's jobs take from being sent to being
// answered (the result's answered_at), for the report of a command that
// both publishes and follows the run. It holds at most maxLatencySamples
// jobs, one in latencyEvery: a run of any size costs it a bounded map.
// A nil *Latency samples nothing.
type Latency struct {
	mu   sync.Mutex
	sent map[int64]time.Time // sampled seq → when it was sent, until answered
	took []time.Duration
}

const (
	latencyEvery      = 16
	maxLatencySamples = 1 << 14 // the first 262144 jobs of a run, one in 16
)

// NewLatency is a sampler for one run.
func NewLatency() *Latency { return &Latency{sent: map[int64]time.Time{}} }

// Sent notes that the job seq was sent at t, if it is a sample.
func (l *Latency) Sent(seq int64, t time.Time) {
	if l == nil || seq%latencyEvery != 0 {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.sent)+len(l.took) < maxLatencySamples {
		l.sent[seq] = t
	}
}

// Answered notes r, a result: its job's first answer ends a sample. A
// result without answered_at (an older worker's) ends none.
func (l *Latency) Answered(r message.Result) {
	if l == nil || r.Seq%latencyEvery != 0 {
		return
	}
	at, ok := r.Answered()
	if !ok {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if t, ok := l.sent[r.Seq]; ok {
		delete(l.sent, r.Seq)
		l.took = append(l.took, max(0, at.Sub(t)))
	}
}

// LatencyReport is the sampled jobs' time from sent to answered.
type LatencyReport struct {
	Samples    int     `json:"samples"`
	P50Seconds float64 `json:"p50_seconds"`
	P90Seconds float64 `json:"p90_seconds"`
	P99Seconds float64 `json:"p99_seconds"`
	MaxSeconds float64 `json:"max_seconds"`
}

// Report is what l sampled; nil when it sampled nothing.
func (l *Latency) Report() *LatencyReport {
	if l == nil {
		return nil
	}
	l.mu.Lock()
	took := slices.Clone(l.took)
	l.mu.Unlock()
	if len(took) == 0 {
		return nil
	}
	slices.Sort(took)
	at := func(p float64) float64 {
		i := int(math.Ceil(p*float64(len(took)))) - 1
		return took[max(0, min(i, len(took)-1))].Seconds()
	}
	return &LatencyReport{Samples: len(took), P50Seconds: at(0.50), P90Seconds: at(0.90), P99Seconds: at(0.99), MaxSeconds: took[len(took)-1].Seconds()}
}
