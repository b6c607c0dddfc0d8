package bus

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the executor's Prometheus series, labelled by consumer.
type Metrics struct {
	settled     *prometheus.CounterVec
	deadLetters *prometheus.CounterVec
	duration    *prometheus.HistogramVec
}

// NewMetrics registers the executor's series on reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		settled: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tqtriage_messages_settled_total",
			Help: "Messages settled by a consumer, by outcome: a result status or write-back outcome when done, else redelivered, snoozed, handed_back or dead_lettered.",
		}, []string{"consumer", "outcome"}),
		deadLetters: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tqtriage_dead_letters_total", Help: "Messages dead-lettered, by dead-letter subject.",
		}, []string{"subject"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "tqtriage_message_duration_seconds", Help: "Time from delivery to settlement of a message, by consumer.",
			Buckets: prometheus.ExponentialBuckets(0.005, 2, 14),
		}, []string{"consumer"}),
	}
	reg.MustRegister(m.settled, m.deadLetters, m.duration)
	return m
}

func (m *Metrics) observe(consumer string, out Outcome, d time.Duration) {
	m.settled.WithLabelValues(consumer, out.Label()).Inc()
	if out.kind == KindDeadLetter {
		m.deadLetters.WithLabelValues(out.dlq).Inc()
	}
	m.duration.WithLabelValues(consumer).Observe(d.Seconds())
}
