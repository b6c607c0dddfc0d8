// Package metricstest reads a /metrics page the way tests check it: the
// families Prometheus's own parser finds, and the value of one series.
package metricstest

import (
	"io"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// Parse reads a page in the text exposition format.
func Parse(r io.Reader) (map[string]*dto.MetricFamily, error) {
	p := expfmt.NewTextParser(model.UTF8Validation)
	return p.TextToMetricFamilies(r)
}

// Value is the value of the first series of name whose labels include
// labels: a counter's or gauge's value, a histogram's count, an untyped
// value; nil when there is no such series.
func Value(mfs map[string]*dto.MetricFamily, name string, labels map[string]string) *float64 {
	mf := mfs[name]
	if mf == nil {
		return nil
	}
series:
	for _, m := range mf.Metric {
		got := map[string]string{}
		for _, l := range m.Label {
			got[l.GetName()] = l.GetValue()
		}
		for k, v := range labels {
			if got[k] != v {
				continue series
			}
		}
		var v float64
		switch {
		case m.Counter != nil:
			v = m.Counter.GetValue()
		case m.Gauge != nil:
			v = m.Gauge.GetValue()
		case m.Histogram != nil:
			v = float64(m.Histogram.GetSampleCount())
		case m.Untyped != nil:
			v = m.Untyped.GetValue()
		}
		return &v
	}
	return nil
}
