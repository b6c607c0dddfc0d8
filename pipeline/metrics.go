package pipeline

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/tqtriage/tqtriage/bus"
	"github.com/tqtriage/tqtriage/internal/httpmetrics"
)

// Metrics are the series a process exports on /metrics (docs/operations.md
// lists them): the executor's, the HTTP clients', and the Go runtime's and
// process's own.
type Metrics struct {
	Bus  *bus.Metrics
	HTTP *httpmetrics.Metrics // give it to TriageSettings and ThreatQSettings
	reg  *prometheus.Registry
}

// NewMetrics registers the series on a registry of their own.
func NewMetrics() *Metrics {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return &Metrics{Bus: bus.NewMetrics(reg), HTTP: httpmetrics.New(reg), reg: reg}
}

// Gatherer is what /metrics serves.
func (m *Metrics) Gatherer() prometheus.Gatherer { return m.reg }

// MustRegister adds collectors of the command's own (a build's version,
// say) to what /metrics serves.
func (m *Metrics) MustRegister(cs ...prometheus.Collector) { m.reg.MustRegister(cs...) }

// WatchConsumers adds the pending and ack-pending counts of the durable
// consumers, read from JetStream on b at each scrape.
func (m *Metrics) WatchConsumers(b *bus.Bus, durables ...string) {
	if m != nil && len(durables) > 0 {
		m.reg.MustRegister(b.ConsumerCollector(durables...))
	}
}

// WatchReady adds tqtriage_ready: 1 while ready says the process can do
// its work (what /readyz answers), else 0.
func (m *Metrics) WatchReady(ready func() error) {
	if m == nil {
		return
	}
	m.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "tqtriage_ready",
		Help: "1 while the process is ready to work (its /readyz answers 200), else 0.",
	}, func() float64 {
		if ready() != nil {
			return 0
		}
		return 1
	}))
}
