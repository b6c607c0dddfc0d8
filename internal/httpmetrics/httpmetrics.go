// Package httpmetrics counts the requests tqtriage sends to Triage and
// ThreatQ, as Prometheus series: requests by service, operation and status
// code, their duration, 429 answers and token requests. It is a
// RoundTripper wrapper (httpclient.Options.Wrap), so it sees every request
// the clients send, retries and token renewals included, and the clients
// know nothing of it.
//
// Labels stay few whatever the traffic: the operation is named from the
// request's method and a path template (Routes), never from the raw path,
// which holds indicator and attribute ids; anything else is "other".
package httpmetrics

import (
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// The services, as the service label says them.
const (
	Triage  = "triage"
	ThreatQ = "threatq"
)

// The operations that are not an API call of their own.
const (
	OpToken = "token" // an OAuth token request: the first, or a renewal
	OpOther = "other" // a request no route names
)

// Route names the operation of requests of Method whose path ends in
// Template's segments; a "*" segment stands for any one segment (an id).
type Route struct {
	Method, Template, Operation string
}

// TriageRoutes are the requests the Triage client makes (docs/api.md).
var TriageRoutes = []Route{
	{http.MethodPost, "/oauth/token", OpToken},
	{http.MethodPost, "/api/public/v2/threat_indicators", "create_indicator"},
	{http.MethodPut, "/api/public/v2/threat_indicators/*", "update_indicator"},
	{http.MethodGet, "/api/public/v2/threat_indicators/*", "get_indicator"},
	// FindIndicator is a filtered listing.
	{http.MethodGet, "/api/public/v2/threat_indicators", "find_indicator"},
	{http.MethodGet, "/api/public/v2/system/status", "ping"},
}

// ThreatQRoutes are the requests the ThreatQ client makes (docs/api.md).
var ThreatQRoutes = []Route{
	{http.MethodPost, "/api/token", OpToken},
	{http.MethodGet, "/api/indicators/query/hash/*", "list_collection"},
	{http.MethodGet, "/api/search/query/*", "collection_name"},
	{http.MethodGet, "/api/indicators/*/attributes", "list_attributes"},
	{http.MethodPost, "/api/indicators/*/attributes", "add_attribute"},
	{http.MethodPut, "/api/indicators/*/attributes/*", "change_attribute"},
	{http.MethodDelete, "/api/indicators/*/attributes/*", "delete_attribute"},
}

// Operation names the operation of a request to a service with routes.
func Operation(routes []Route, method, path string) string {
	return compile(routes).operation(method, path)
}

// compiled are routes with their templates split into segments once,
// rather than on every request a transport counts.
type compiled []compiledRoute

type compiledRoute struct {
	method, operation string
	tpl               []string
}

func compile(routes []Route) compiled {
	out := make(compiled, len(routes))
	for i, r := range routes {
		out[i] = compiledRoute{method: r.Method, operation: r.Operation, tpl: split(r.Template)}
	}
	return out
}

func (rs compiled) operation(method, path string) string {
	segs := split(path)
	for _, r := range rs {
		if r.method == method && matchTail(r.tpl, segs) {
			return r.operation
		}
	}
	return OpOther
}

func split(p string) []string { return strings.Split(strings.Trim(p, "/"), "/") }

// matchTail reports whether tpl matches the last segments of path: a base
// URL may carry a prefix of its own (https://host/triage/api/…).
func matchTail(tpl, path []string) bool {
	if len(tpl) > len(path) {
		return false
	}
	path = path[len(path)-len(tpl):]
	for i, s := range tpl {
		if s != "*" && s != path[i] {
			return false
		}
	}
	return true
}

// Metrics are the series; a nil *Metrics counts nothing.
type Metrics struct {
	requests    *prometheus.CounterVec
	duration    *prometheus.HistogramVec
	rateLimited *prometheus.CounterVec
	tokens      *prometheus.CounterVec
}

// New registers the series on reg.
func New(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tqtriage_http_requests_total",
			Help: "Requests sent to Triage or ThreatQ, by service, operation and status code (\"error\": no answer).",
		}, []string{"service", "operation", "code"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "tqtriage_http_request_duration_seconds",
			Help:    "Time from sending a request to Triage or ThreatQ to its answer's headers, by service and operation.",
			Buckets: prometheus.ExponentialBuckets(0.005, 2, 14),
		}, []string{"service", "operation"}),
		rateLimited: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tqtriage_rate_limited_total",
			Help: "Requests answered 429 Too Many Requests, by service.",
		}, []string{"service"}),
		tokens: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tqtriage_token_refreshes_total",
			Help: "OAuth token requests (the first and every renewal), by service and outcome: ok, refused (400, 401, 403: the credentials) or error.",
		}, []string{"service", "outcome"}),
	}
	reg.MustRegister(m.requests, m.duration, m.rateLimited, m.tokens)
	return m
}

// Wrap returns a wrapper for httpclient.Options.Wrap that counts the
// requests of service (Triage or ThreatQ) named by routes. With a nil m it
// returns the transport it is given.
func (m *Metrics) Wrap(service string, routes []Route) func(http.RoundTripper) http.RoundTripper {
	return func(base http.RoundTripper) http.RoundTripper {
		if m == nil {
			return base
		}
		return &transport{m: m, service: service, routes: compile(routes), base: base}
	}
}

type transport struct {
	m       *Metrics
	service string
	routes  compiled
	base    http.RoundTripper
}

func (t *transport) RoundTrip(req *http.Request) (*http.Response, error) {
	op := t.routes.operation(req.Method, req.URL.Path)
	start := time.Now()
	resp, err := t.base.RoundTrip(req)
	t.m.duration.WithLabelValues(t.service, op).Observe(time.Since(start).Seconds())
	code := "error"
	if err == nil {
		code = codeLabel(resp.StatusCode)
		if resp.StatusCode == http.StatusTooManyRequests {
			t.m.rateLimited.WithLabelValues(t.service).Inc()
		}
	}
	t.m.requests.WithLabelValues(t.service, op, code).Inc()
	if op == OpToken {
		t.m.tokens.WithLabelValues(t.service, tokenOutcome(resp, err)).Inc()
	}
	return resp, err
}

// codeLabel is a status code as a label; a code no server should send
// is "other", so that a hostile one cannot grow the series.
func codeLabel(code int) string {
	if code < 100 || code > 599 {
		return "other"
	}
	return strconv.Itoa(code)
}

func tokenOutcome(resp *http.Response, err error) string {
	switch {
	case err != nil:
		return "error"
	case resp.StatusCode >= 200 && resp.StatusCode < 300:
		return "ok"
	case resp.StatusCode == http.StatusBadRequest, resp.StatusCode == http.StatusUnauthorized, resp.StatusCode == http.StatusForbidden:
		return "refused"
	}
	return "error"
}

// Requests returns the requests counted so far, by service and operation,
// whatever their answer: the "requests made" of a run's report.
func (m *Metrics) Requests() map[string]map[string]int64 {
	out := map[string]map[string]int64{}
	if m == nil {
		return out
	}
	ch := make(chan prometheus.Metric, 64)
	go func() { m.requests.Collect(ch); close(ch) }()
	for pm := range ch {
		var d dto.Metric
		if pm.Write(&d) != nil || d.Counter == nil {
			continue
		}
		var service, op string
		for _, l := range d.Label {
			switch l.GetName() {
			case "service":
				service = l.GetValue()
			case "operation":
				op = l.GetValue()
			}
		}
		if out[service] == nil {
			out[service] = map[string]int64{}
		}
		out[service][op] += int64(d.Counter.GetValue())
	}
	return out
}
