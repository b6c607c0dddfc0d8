package integration

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
	dto "github.com/prometheus/client_model/go"

	"github.com/tqtriage/tqtriage/bus"
	"github.com/tqtriage/tqtriage/internal/metricstest"
	"github.com/tqtriage/tqtriage/internal/retry"
	"github.com/tqtriage/tqtriage/message"
	"github.com/tqtriage/tqtriage/pipeline"
	"github.com/tqtriage/tqtriage/run"
	"github.com/tqtriage/tqtriage/threatq/threatqsim"
	"github.com/tqtriage/tqtriage/triage/triagesim"
	"github.com/tqtriage/tqtriage/writeback"
)

// metricsOnce is the /metrics page of one small pipeline, scraped once for
// the tests that read it.
var metricsOnce struct {
	sync.Once
	families map[string]*dto.MetricFamily
	err      error
}

// pipelineMetrics runs a small pipeline as `run` assembles it, with every
// series a process exports: two runs of ten creates, the first answered
// 429 twice, the second 400 three times (three failed jobs, dead-lettered),
// and returns its /metrics page as parsed.
func pipelineMetrics(t *testing.T) map[string]*dto.MetricFamily {
	metricsOnce.Do(func() {
		metricsOnce.families, metricsOnce.err = runForMetrics(t)
	})
	if metricsOnce.err != nil {
		t.Fatal(metricsOnce.err)
	}
	return metricsOnce.families
}

func runForMetrics(t *testing.T) (map[string]*dto.MetricFamily, error) {
	e := newEnv(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	m := pipeline.NewMetrics()
	b := e.bus()
	w, err := pipeline.NewWorker(ctx, pipeline.TriageSettings{BaseURL: e.tURL, ClientID: triagesim.DefaultClientID, ClientSecret: triagesim.DefaultClientSecret, Metrics: m.HTTP}, workerConfig(), b)
	if err != nil {
		return nil, err
	}
	tq, err := pipeline.NewThreatQ(ctx, pipeline.ThreatQSettings{BaseURL: e.qURL, ClientID: threatqsim.DefaultClientID, ClientSecret: threatqsim.DefaultClientSecret, Metrics: m.HTTP}, retry.None)
	if err != nil {
		return nil, err
	}
	wr := writeback.New(writeback.Config{Retry: retry.Policy{MaxAttempts: 2, InitialInterval: 5 * time.Millisecond, MaxInterval: 20 * time.Millisecond},
		RedeliveryDelay: 50 * time.Millisecond, MaxRedeliveryDelay: 300 * time.Millisecond}, tq)
	m.WatchConsumers(b, bus.ConsumerWorkers, bus.ConsumerWriteback)
	m.WatchReady(func() error { return nil })
	o := pipeline.Once{Bus: b, Worker: w, Writer: wr, Log: e.log, Metrics: m.Bus}

	for i, fail := range []struct{ n, status int }{{2, http.StatusTooManyRequests}, {3, http.StatusBadRequest}} {
		hash := fmt.Sprintf("metrics%d", i)
		e.collection(hash, sampleIndicators(hash, 10))
		items := e.items(ctx, hash) // not counted: another client
		e.triage.FailNext(fail.n, fail.status)
		out, err := o.Run(ctx, run.Options{Action: message.ActionCreate}, items, run.FollowOptions{WrittenBack: true})
		if err != nil {
			return nil, err
		}
		if got := out.Tally.Count(message.StatusFailed); got != i*3 {
			return nil, fmt.Errorf("run %d: %d failed, want %d: %s", i, got, i*3, out.Tally.Line(out.Record.Total))
		}
	}

	srv := httptest.NewServer(promhttp.HandlerFor(m.Gatherer(), promhttp.HandlerOpts{}))
	defer srv.Close()
	resp, err := http.Get(srv.URL)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	return metricstest.Parse(resp.Body)
}

// sumOf adds up the series of name whose labels include labels.
func sumOf(mfs map[string]*dto.MetricFamily, name string, labels map[string]string) float64 {
	total := 0.0
	mf := mfs[name]
	if mf == nil {
		return 0
	}
series:
	for _, m := range mf.Metric {
		for _, l := range m.Label {
			if v, ok := labels[l.GetName()]; ok && v != l.GetValue() {
				continue series
			}
		}
		if m.Counter != nil {
			total += m.Counter.GetValue()
		}
	}
	return total
}

func TestMetricsOfASmallPipeline(t *testing.T) {
	mfs := pipelineMetrics(t)
	type L = map[string]string
	for _, c := range []struct {
		name   string
		labels L
		want   float64
	}{
		{"tqtriage_http_requests_total", L{"service": "triage", "operation": "create_indicator", "code": "201"}, 17},
		{"tqtriage_http_requests_total", L{"service": "triage", "operation": "create_indicator", "code": "429"}, 2},
		{"tqtriage_http_requests_total", L{"service": "triage", "operation": "create_indicator", "code": "400"}, 3},
		{"tqtriage_http_request_duration_seconds", L{"service": "triage", "operation": "create_indicator"}, 22},
		{"tqtriage_rate_limited_total", L{"service": "triage"}, 2},
		{"tqtriage_token_refreshes_total", L{"service": "triage", "outcome": "ok"}, 1},
		{"tqtriage_token_refreshes_total", L{"service": "threatq", "outcome": "ok"}, 1},
		{"tqtriage_messages_settled_total", L{"consumer": "tqtriage-workers", "outcome": "created"}, 17},
		{"tqtriage_messages_settled_total", L{"consumer": "tqtriage-workers", "outcome": "dead_lettered"}, 3},
		{"tqtriage_messages_settled_total", L{"consumer": "tqtriage-writeback", "outcome": "written"}, 17},
		{"tqtriage_messages_settled_total", L{"consumer": "tqtriage-writeback", "outcome": "nothing"}, 3},
		{"tqtriage_dead_letters_total", L{"subject": "tqtriage.dlq.create"}, 3},
		{"tqtriage_message_duration_seconds", L{"consumer": "tqtriage-workers"}, 20},
		{"tqtriage_message_duration_seconds", L{"consumer": "tqtriage-writeback"}, 20},
		{"tqtriage_jobs_in_flight", nil, 0},
		{"tqtriage_consumer_pending", L{"consumer": "tqtriage-workers"}, 0},
		{"tqtriage_consumer_pending", L{"consumer": "tqtriage-writeback"}, 0},
		{"tqtriage_consumer_ack_pending", L{"consumer": "tqtriage-workers"}, 0},
		{"tqtriage_consumer_ack_pending", L{"consumer": "tqtriage-writeback"}, 0},
		{"tqtriage_ready", nil, 1},
	} {
		got := metricstest.Value(mfs, c.name, c.labels)
		switch {
		case got == nil:
			t.Errorf("%s%v: no such series", c.name, c.labels)
		case *got != c.want:
			t.Errorf("%s%v = %v, want %v", c.name, c.labels, *got, c.want)
		}
	}
	// Write-back's requests: one add per created result (its three
	// attributes in an array), and no listing (the collection read
	// brought the indicators' attributes).
	if n := sumOf(mfs, "tqtriage_http_requests_total", L{"service": "threatq", "operation": "list_attributes"}); n != 0 {
		t.Errorf("list_attributes: %v, want 0", n)
	}
	if n := sumOf(mfs, "tqtriage_http_requests_total", L{"service": "threatq", "operation": "add_attribute"}); n != 17 {
		t.Errorf("add_attribute: %v, want 17", n)
	}
	if n := sumOf(mfs, "tqtriage_http_requests_total", L{"operation": "other"}); n != 0 {
		t.Errorf("%v requests named other", n)
	}
	for _, name := range []string{"go_goroutines", "process_resident_memory_bytes"} {
		if mfs[name] == nil {
			t.Errorf("no %s", name)
		}
	}
	// Low cardinality: no label holds a run id or an indicator value.
	for name, mf := range mfs {
		for _, m := range mf.Metric {
			for _, l := range m.Label {
				if len(l.GetValue()) > 40 || message.ValidRunID(l.GetValue()) && len(l.GetValue()) > 20 {
					t.Errorf("%s: label %s=%q looks like data, not a class", name, l.GetName(), l.GetValue())
				}
			}
		}
	}
}
