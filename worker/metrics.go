package worker

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the worker's Prometheus series.
type Metrics struct {
	jobs        *prometheus.CounterVec
	retries     prometheus.Counter
	deadLetters *prometheus.CounterVec
	duration    *prometheus.HistogramVec
}

// NewMetrics registers the worker's series on reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		jobs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tqtriage_jobs_total", Help: "Jobs settled, by action and outcome (a result status, or redelivered).",
		}, []string{"action", "outcome"}),
		retries: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tqtriage_triage_retries_total", Help: "Triage calls tried again within a delivery.",
		}),
		deadLetters: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tqtriage_dead_letters_total", Help: "Messages dead-lettered, by subject.",
		}, []string{"subject"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "tqtriage_job_duration_seconds", Help: "Time from delivery to settlement of a job.",
			Buckets: prometheus.ExponentialBuckets(0.005, 2, 14),
		}, []string{"action"}),
	}
	reg.MustRegister(m.jobs, m.retries, m.deadLetters, m.duration)
	return m
}

func (m *Metrics) observe(action string, out outcome, d time.Duration) {
	switch {
	case out.result != nil:
		m.jobs.WithLabelValues(action, string(out.result.Status)).Inc()
		if out.deadLetter != "" {
			m.deadLetters.WithLabelValues("tqtriage.dlq." + action).Inc()
		}
	case out.handBack:
		m.jobs.WithLabelValues(action, "handed_back").Inc()
	default:
		m.jobs.WithLabelValues(action, "redelivered").Inc()
	}
	m.duration.WithLabelValues(action).Observe(d.Seconds())
}
