package bus

import (
	"context"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the executor's Prometheus series, labelled by consumer.
type Metrics struct {
	settled     *prometheus.CounterVec
	deadLetters *prometheus.CounterVec
	duration    *prometheus.HistogramVec
	jobs        prometheus.Gauge // jobs in a worker's hands
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
		jobs: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "tqtriage_jobs_in_flight", Help: "Jobs this process is working on: delivered to a worker and not yet settled.",
		}),
	}
	reg.MustRegister(m.settled, m.deadLetters, m.duration, m.jobs)
	return m
}

// working counts a delivery of consumer in or out of the process's hands.
func (m *Metrics) working(consumer string, delta float64) {
	if consumer == ConsumerWorkers {
		m.jobs.Add(delta)
	}
}

// consumerStateTimeout bounds the JetStream request of one scrape: a slow
// server makes the series go missing, never the scrape hang.
const consumerStateTimeout = 2 * time.Second

var (
	pendingDesc = prometheus.NewDesc("tqtriage_consumer_pending",
		"Messages stored for a durable consumer and not yet delivered, read from JetStream at each scrape: the jobs backlog (tqtriage-workers) or the results waiting for write-back (tqtriage-writeback).",
		[]string{"consumer"}, nil)
	ackPendingDesc = prometheus.NewDesc("tqtriage_consumer_ack_pending",
		"Messages delivered to a durable consumer's replicas and not yet acknowledged, read from JetStream at each scrape.",
		[]string{"consumer"}, nil)
)

// ConsumerCollector reports the pending and ack-pending counts of the
// durable consumers (ConsumerWorkers, ConsumerWriteback) as JetStream says
// them when Prometheus scrapes. A consumer that cannot be read within a
// short timeout has no series in that scrape.
func (b *Bus) ConsumerCollector(durables ...string) prometheus.Collector {
	return consumerCollector{b: b, durables: durables}
}

type consumerCollector struct {
	b        *Bus
	durables []string
}

func (c consumerCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- pendingDesc
	ch <- ackPendingDesc
}

func (c consumerCollector) Collect(ch chan<- prometheus.Metric) {
	for _, d := range c.durables {
		ctx, cancel := context.WithTimeout(context.Background(), consumerStateTimeout)
		st, err := c.b.ConsumerState(ctx, d)
		cancel()
		if err != nil {
			c.b.log.Debug().Err(err).Str("consumer", d).Msg("consumer state not read for metrics")
			continue
		}
		ch <- prometheus.MustNewConstMetric(pendingDesc, prometheus.GaugeValue, float64(st.Pending), d)
		ch <- prometheus.MustNewConstMetric(ackPendingDesc, prometheus.GaugeValue, float64(st.AckPending), d)
	}
}

func (m *Metrics) observe(consumer string, out Outcome, d time.Duration) {
	m.settled.WithLabelValues(consumer, out.Label()).Inc()
	if out.kind == KindDeadLetter {
		m.deadLetters.WithLabelValues(out.dlq).Inc()
	}
	m.duration.WithLabelValues(consumer).Observe(d.Seconds())
}
