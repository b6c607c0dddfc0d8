package httpmetrics_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/tqtriage/tqtriage/internal/httpclient"
	"github.com/tqtriage/tqtriage/internal/httpmetrics"
	"github.com/tqtriage/tqtriage/internal/retry"
	"github.com/tqtriage/tqtriage/threatq"
	"github.com/tqtriage/tqtriage/threatq/threatqsim"
	"github.com/tqtriage/tqtriage/triage"
	"github.com/tqtriage/tqtriage/triage/triagesim"
)

func TestOperationFromMethodAndPathTemplate(t *testing.T) {
	for _, c := range []struct {
		routes       []httpmetrics.Route
		method, path string
		want         string
	}{
		{httpmetrics.TriageRoutes, "POST", "/oauth/token", "token"},
		{httpmetrics.TriageRoutes, "POST", "/prefix/oauth/token", "token"},
		{httpmetrics.TriageRoutes, "POST", "/api/public/v2/threat_indicators", "create_indicator"},
		{httpmetrics.TriageRoutes, "PUT", "/api/public/v2/threat_indicators/325", "update_indicator"},
		{httpmetrics.TriageRoutes, "GET", "/api/public/v2/threat_indicators/325", "get_indicator"},
		{httpmetrics.TriageRoutes, "GET", "/api/public/v2/threat_indicators", "find_indicator"},
		{httpmetrics.TriageRoutes, "GET", "/api/public/v2/system/status", "ping"},
		{httpmetrics.TriageRoutes, "DELETE", "/api/public/v2/threat_indicators/325", "other"},
		{httpmetrics.TriageRoutes, "GET", "/api/public/v2/reports/1", "other"},
		{httpmetrics.TriageRoutes, "GET", "/", "other"},
		{httpmetrics.TriageRoutes, "GET", "", "other"},
		{httpmetrics.ThreatQRoutes, "POST", "/api/token", "token"},
		{httpmetrics.ThreatQRoutes, "GET", "/api/indicators/query/hash/5a3d", "list_collection"},
		{httpmetrics.ThreatQRoutes, "GET", "/api/search/query/5a3d", "collection_name"},
		{httpmetrics.ThreatQRoutes, "GET", "/api/indicators/106767/attributes", "list_attributes"},
		{httpmetrics.ThreatQRoutes, "POST", "/api/indicators/106767/attributes", "add_attribute"},
		{httpmetrics.ThreatQRoutes, "PUT", "/api/indicators/106767/attributes/9", "change_attribute"},
		{httpmetrics.ThreatQRoutes, "DELETE", "/api/indicators/106767/attributes/9", "delete_attribute"},
		{httpmetrics.ThreatQRoutes, "GET", "/api/indicators/106767", "other"},
	} {
		if got := httpmetrics.Operation(c.routes, c.method, c.path); got != c.want {
			t.Errorf("%s %s: operation %q, want %q", c.method, c.path, got, c.want)
		}
	}
}

// The clients' own requests against the simulators land on the operations
// the routes name, and nothing of theirs is "other".
func TestClientsRequestsAreNamed(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := httpmetrics.New(reg)
	ctx := context.Background()

	ts := httptest.NewServer(triagesim.New(triagesim.Options{}))
	defer ts.Close()
	tc, err := triage.New(ctx, triage.Config{BaseURL: ts.URL, ClientID: triagesim.DefaultClientID, ClientSecret: triagesim.DefaultClientSecret,
		HTTP: httpclient.Options{Wrap: m.Wrap(httpmetrics.Triage, httpmetrics.TriageRoutes)}})
	if err != nil {
		t.Fatal(err)
	}
	in, err := tc.CreateIndicator(ctx, triage.NewIndicator{ThreatLevel: "Malicious", ThreatType: "Hostname", ThreatValue: "metrics.example.com", ThreatSource: "ThreatQ"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tc.FindIndicator(ctx, "Hostname", "metrics.example.com", "ThreatQ"); err != nil {
		t.Fatal(err)
	}
	if _, err := tc.GetIndicator(ctx, in.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := tc.UpdateIndicator(ctx, in.ID, "Benign", ""); err != nil {
		t.Fatal(err)
	}
	_, err = tc.CreateIndicator(ctx, triage.NewIndicator{ThreatLevel: "Malicious", ThreatType: "Hostname", ThreatValue: "metrics.example.com", ThreatSource: "ThreatQ"})
	if err == nil {
		t.Fatal("a second create of one indicator succeeded")
	}

	qsim := threatqsim.New(threatqsim.Options{})
	ids := qsim.AddCollection("c0ffee", "a collection", []threatqsim.SeedIndicator{{Type: "FQDN", Value: "a.example.com"}})
	qs := httptest.NewServer(qsim)
	defer qs.Close()
	qc, err := threatq.New(ctx, threatq.Config{BaseURL: qs.URL, ClientID: threatqsim.DefaultClientID, ClientSecret: threatqsim.DefaultClientSecret, Retry: retry.None,
		HTTP: httpclient.Options{Wrap: m.Wrap(httpmetrics.ThreatQ, httpmetrics.ThreatQRoutes)}})
	if err != nil {
		t.Fatal(err)
	}
	for _, err := range qc.CollectionIndicators(ctx, "c0ffee", 10) {
		if err != nil {
			t.Fatal(err)
		}
	}
	if _, err := qc.CollectionName(ctx, "c0ffee"); err != nil {
		t.Fatal(err)
	}
	if err := qc.SetAttributes(ctx, ids[0], []threatq.Attribute{{Name: "Threat Level", Value: "Malicious"}}); err != nil {
		t.Fatal(err)
	}
	if err := qc.SetAttributes(ctx, ids[0], []threatq.Attribute{{Name: "Threat Level", Value: "Benign"}}); err != nil {
		t.Fatal(err)
	}

	want := map[string]map[string]bool{
		"triage":  {"token": true, "create_indicator": true, "find_indicator": true, "get_indicator": true, "update_indicator": true},
		"threatq": {"token": true, "list_collection": true, "collection_name": true, "list_attributes": true, "add_attribute": true, "change_attribute": true},
	}
	got := m.Requests()
	for service, ops := range want {
		for op := range ops {
			if got[service][op] == 0 {
				t.Errorf("%s %s: no request counted; counted %v", service, op, got[service])
			}
		}
		if n := got[service]["other"]; n > 0 {
			t.Errorf("%s: %d requests named other: %v", service, n, got[service])
		}
	}
	// The second create's 422: its code is a label.
	if n := value(t, reg, "tqtriage_http_requests_total", map[string]string{"service": "triage", "operation": "create_indicator", "code": "422"}); n != 1 {
		t.Errorf("creates answered 422: %v, want 1", n)
	}
	if n := got["triage"]["token"]; n != 1 {
		t.Errorf("Triage token requests: %d, want 1 (one token for every call)", n)
	}
}

// value is the value of the counter name with labels.
func value(t *testing.T, reg *prometheus.Registry, name string, labels map[string]string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	series:
		for _, m := range mf.Metric {
			for _, l := range m.Label {
				if labels[l.GetName()] != l.GetValue() {
					continue series
				}
			}
			return m.Counter.GetValue()
		}
	}
	t.Fatalf("no series %s%v", name, labels)
	return 0
}

func TestRateLimitsTokensAndTransportErrorsAreCounted(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := httpmetrics.New(reg)
	status := map[string]int{"/api/token": 401, "/oauth/token": 200, "/api/public/v2/threat_indicators": 429}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/weird" {
			w.WriteHeader(999)
			return
		}
		w.WriteHeader(status[r.URL.Path])
	}))
	defer srv.Close()
	hc := &http.Client{Transport: m.Wrap(httpmetrics.Triage, httpmetrics.TriageRoutes)(http.DefaultTransport)}
	qc := &http.Client{Transport: m.Wrap(httpmetrics.ThreatQ, httpmetrics.ThreatQRoutes)(http.DefaultTransport)}
	do := func(c *http.Client, method, url string) {
		req, _ := http.NewRequest(method, url, strings.NewReader(""))
		resp, err := c.Do(req)
		if err == nil {
			resp.Body.Close()
		}
	}
	do(hc, "POST", srv.URL+"/oauth/token")
	do(hc, "GET", srv.URL+"/api/public/v2/threat_indicators?filter[threat_value]=x")
	do(hc, "GET", srv.URL+"/api/public/v2/threat_indicators?filter[threat_value]=y")
	do(qc, "POST", srv.URL+"/api/token")
	do(qc, "GET", srv.URL+"/weird")
	do(qc, "GET", "http://127.0.0.1:1/api/search/query/x") // refused: no answer

	expect := `
# HELP tqtriage_rate_limited_total Requests answered 429 Too Many Requests, by service.
# TYPE tqtriage_rate_limited_total counter
tqtriage_rate_limited_total{service="triage"} 2
# HELP tqtriage_token_refreshes_total OAuth token requests (the first and every renewal), by service and outcome: ok, refused (400, 401, 403: the credentials) or error.
# TYPE tqtriage_token_refreshes_total counter
tqtriage_token_refreshes_total{outcome="ok",service="triage"} 1
tqtriage_token_refreshes_total{outcome="refused",service="threatq"} 1
# HELP tqtriage_http_requests_total Requests sent to Triage or ThreatQ, by service, operation and status code ("error": no answer).
# TYPE tqtriage_http_requests_total counter
tqtriage_http_requests_total{code="200",operation="token",service="triage"} 1
tqtriage_http_requests_total{code="401",operation="token",service="threatq"} 1
tqtriage_http_requests_total{code="429",operation="find_indicator",service="triage"} 2
tqtriage_http_requests_total{code="error",operation="collection_name",service="threatq"} 1
tqtriage_http_requests_total{code="other",operation="other",service="threatq"} 1
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(expect), "tqtriage_rate_limited_total", "tqtriage_token_refreshes_total", "tqtriage_http_requests_total"); err != nil {
		t.Error(err)
	}
	if n := testutil.CollectAndCount(reg, "tqtriage_http_request_duration_seconds"); n != 5 {
		t.Errorf("duration series: %d, want one per service and operation, 5", n)
	}
}

func TestNilMetricsWrapsNothing(t *testing.T) {
	var m *httpmetrics.Metrics
	if rt := m.Wrap(httpmetrics.Triage, httpmetrics.TriageRoutes)(http.DefaultTransport); rt != http.DefaultTransport {
		t.Errorf("a nil *Metrics wrapped the transport")
	}
	if len(m.Requests()) != 0 {
		t.Errorf("a nil *Metrics counted requests")
	}
}
